"""Decoding's few-row CPU matmuls: ``F.linear`` against the small-batch kernel (:func:`sru_lm.ops.cpu.linear`)
for the weight shapes of the SRU++ models in ``benchmarks/`` and 1 to 8 rows (a decode step has 1, a
speculative verification of k drafts k + 1).

Per (shape, rows) the two take turns ``--repeats`` times, each turn timing ``--calls`` calls, and the fastest
turn of each counts, so a slow stretch of a shared machine hits both alike. The weights of one shape total a few
MB, so after the first call they come from the cache: the figures are the compute side; in a model, whose
weights do not fit the cache, both read them from memory once per call, which the kernel does once for all rows.

    python -m sru_lm.bench.linear --threads 1
    python scripts/bench_linear.py --threads 1 --out benchmarks/bench_linear.md
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ..ops import cpu
from .machine import command_line, emit_report, machine_description, now

# (out_features, in_features) of the 12.4M target and the 2.5M main-job model (benchmarks/bench_generate_assisted.md)
SHAPES = {
    "LM head, hidden 768": (8192, 768),
    "out_proj, 192 -> 3x768": (2304, 192),
    "in_proj, 768 -> 192": (192, 768),
    "768 x 768": (768, 768),
    "LM head, hidden 256": (8192, 256),
    "out_proj, 64 -> 3x256": (768, 64),
    "in_proj, 256 -> 64": (64, 256),
}
ROWS = tuple(range(1, 9))


def time_pair(x: torch.Tensor, w: torch.Tensor, calls: int, repeats: int) -> tuple[float, float]:
    """(F.linear, kernel) microseconds per call, the fastest of ``repeats`` alternating turns of ``calls``."""
    best = [float("inf"), float("inf")]
    fns = (lambda: F.linear(x, w), lambda: cpu.linear(x, w))
    with torch.inference_mode():
        for fn in fns:
            fn()
        for _ in range(repeats):
            for i, fn in enumerate(fns):
                t = time.perf_counter()
                for _ in range(calls):
                    fn()
                best[i] = min(best[i], (time.perf_counter() - t) / calls * 1e6)
    return best[0], best[1]


def run_all(shapes: dict[str, tuple[int, int]], rows: tuple[int, ...], calls: int, repeats: int,
            seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for name, (o, i) in shapes.items():
        w = torch.randn(o, i, generator=g)
        for m in rows:
            x = torch.randn(m, i, generator=g)
            torch.testing.assert_close(cpu.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-4)
            base, kernel = time_pair(x, w, calls, repeats)
            out.append(dict(shape=name, out=o, inp=i, rows=m, f_linear_us=base, kernel_us=kernel))
            print(f"{name} ({o}, {i}) rows {m}: F.linear {base:.1f} us, kernel {kernel:.1f} us, "
                  f"{base / kernel:.2f}x", flush=True)
    return out


def table(results: list[dict]) -> list[str]:
    """One line per shape: F.linear / kernel microseconds for each row count, and the speedup."""
    rows = sorted({r["rows"] for r in results})
    lines = ["| weight (out, in) | " + " | ".join(f"{m} row{'s' if m > 1 else ''}" for m in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for name in dict.fromkeys(r["shape"] for r in results):
        rs = {r["rows"]: r for r in results if r["shape"] == name}
        first = next(iter(rs.values()))
        cells = [f"{r['f_linear_us']:.0f} / {r['kernel_us']:.0f} ({r['f_linear_us'] / r['kernel_us']:.2f}x)"
                 for r in (rs[m] for m in rows)]
        lines.append(f"| {name} ({first['out']}, {first['inp']}) | " + " | ".join(cells) + " |")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--calls", type=int, default=50, help="calls per timed turn")
    parser.add_argument("--repeats", type=int, default=5, help="turns per (shape, rows); the fastest counts")
    parser.add_argument("--out", default=None, help="write the markdown report here")


def run(args: argparse.Namespace) -> list[dict]:
    if args.calls < 1 or args.repeats < 1:
        raise ValueError(f"--calls and --repeats must be >= 1, got {args.calls} and {args.repeats}")
    if not cpu.available():
        raise RuntimeError(f"the CPU kernel is unavailable ({cpu.why_unavailable()}): {cpu.HOW_TO_GET_IT}")
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_description()
    results = run_all(SHAPES, ROWS, args.calls, args.repeats)
    lines = [
        "# Few-row CPU matmuls: F.linear vs the small-batch kernel",
        "",
        f"- date: {now()}",
        f"- machine: {machine}",
        f"- command: `{command_line()}`",
        f"- fp32, x (rows, in) @ W^T; per cell `F.linear us / kernel us (speedup)`, the fastest of {args.repeats} "
        f"alternating turns of {args.calls} calls; outputs checked against F.linear first",
        "- the weights stay in cache between calls here; in a model they stream from memory (see the module "
        "docstring of `sru_lm/bench/linear.py`)",
        "",
        *table(results),
    ]
    emit_report("\n".join(lines) + "\n", args.out)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
