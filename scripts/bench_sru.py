"""CPU speed of a 2-layer SRU side by side with its peers and its floor: inference, forward+backward,
and one-token decode.

The peers, the floors and how they are timed: ``sru_lm/bench/sru.py``. The official ``sru`` package (the
``bench`` extra) is optional: without it its row is left out and the "x sru" columns read "-".

    python scripts/bench_sru.py                                   # prints the table (~3 minutes)
    python scripts/bench_sru.py --out benchmarks/bench_sru.md     # and writes it, with the machine
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from sru_lm.bench import machine_description
from sru_lm.bench.sru import SIZES, bench_size, load_average, parse_size, report, table
from sru_lm.ops import cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", nargs="+", default=[f"{L}x{B}x{d}" for L, B, d in SIZES], help="LxBxd ...")
    ap.add_argument("--repeats", type=int, default=15, help="rounds per size (the reference gets a third)")
    ap.add_argument("--decode-steps", type=int, default=50, help="tokens per timed decode call")
    ap.add_argument("--no-reference", action="store_true", help="skip our slow reference loop")
    ap.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = ap.parse_args()
    try:
        sizes = [parse_size(s) for s in args.sizes]
    except ValueError as e:
        ap.error(str(e))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not cpu.available():
        print(f"warning: the CPU fast path is unavailable ({cpu.why_unavailable()})", file=sys.stderr)

    machine, load_at_start = machine_description(), load_average()
    sections = []
    for L, B, d in sizes:
        res = bench_size(L, B, d, args.repeats, args.decode_steps, reference=not args.no_reference)
        sections.append(table(L, B, d, res, args.decode_steps))
        print(sections[-1] + "\n", flush=True)

    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report(sections, machine, args.threads, load_at_start))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
