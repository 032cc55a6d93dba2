"""GPU benchmark of the SRU recurrence: our Triton kernels against the bytes floor, the projection matmuls,
cuDNN's LSTM and the official `sru` 2.6.0 kernel and layer (built during the run from a patched copy of the
installed package's source; skipped, with the reason in the report, without `sru` or when it does not
build); a sweep of kernel configs that prints the defaults table; one-token decoding.
``sru_lm.bench.gpu`` holds the method.

    python scripts/bench_gpu.py --out benchmarks/bench_gpu_h200.md      # checks, sweep, timings, decode
    python scripts/bench_gpu.py --no-sweep --sizes 1024x16x2048         # the defaults table only
    python scripts/bench_gpu.py --dry-run                               # CPU, Triton interpreter, tiny sizes

Exit status 1 when a kernel disagrees with the reference. On a GPU it also prints which Triton kernels
came from the compiled cache (``scripts/triton_aot.py``) and which were compiled during the run.
"""

from __future__ import annotations

import argparse
import os
import sys


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the report, with date, machine and command, to this markdown file")
    p.add_argument("--sizes", default="128x32x512,1024x16x2048", help="comma-separated LxBxd (sequence-first)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated, of fp32 and bf16")
    p.add_argument("--no-sweep", action="store_true", help="time the defaults table only")
    p.add_argument("--no-decode", action="store_true", help="skip the one-token decode table")
    p.add_argument("--no-official", action="store_true", help="skip building and timing the official sru")
    p.add_argument("--dry-run", action="store_true", help="CPU under TRITON_INTERPRET=1 at 12x2x40: the logic")
    args = p.parse_args()
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":  # must be set before triton is imported
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, TRITON_INTERPRET="1"))

    import torch

    from sru_lm.bench import gpu
    from sru_lm.ops import triton_aot

    sizes = [(12, 2, 40)] if args.dry_run else [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    dtypes = {name: gpu.DTYPES[name] for name in args.dtypes.split(",")}
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run to check the logic on CPU")
        return 2
    with triton_aot.watch() as compiles:
        report, ok = gpu.run(sizes, dtypes, "cpu" if args.dry_run else "cuda", do_sweep=not args.no_sweep,
                             decode=not args.no_decode, official=not args.no_official,
                             log=lambda s: print(s, flush=True))
    report += "\n" + compiles.summary() + "\n"
    print(report)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
