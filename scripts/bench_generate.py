"""Decode speed and cache memory of ``generate()``, in three modes.

``--mode context`` (default): an SRU++ model against a GPT-2 of the same size. For each context length both
models get the same random prompt and generate 1 + N tokens greedily; a streamer timestamps every token, and
the time per token is the median over the N decode steps of ``--repeats`` runs (the prefill step is left
out), the two models run alternately so background load hits both alike. Cache memory is what
``generate(..., return_dict_in_generate=True).cache`` holds after the run (allocated bytes, spare capacity
included). Random weights: speed and memory do not depend on training.

``--mode long``: ms/token and cache bytes sampled along one long generation (e.g. 32K tokens) for SRU++ with
sliding-window attention, the same weights with full attention, and GPT-2 (``sru_lm.bench.long_generation``).

``--mode assisted``: a trained target decoding greedily alone, with a smaller trained SRU++ draft, and with
prompt lookup, at equal output: tokens/s and acceptance rate (``sru_lm.bench.assisted``).

    python scripts/bench_generate.py                                  # CPU, ~19M parameters, a few minutes
    python scripts/bench_generate.py --size 124m --batch 1            # GPU, bf16, GPT-2 small's size
    python scripts/bench_generate.py --out benchmarks/bench_generate.md
    python scripts/bench_generate.py --mode long --threads 1 --out benchmarks/bench_generate_long.md
    python scripts/bench_generate.py --mode assisted --target outputs/target/model --draft outputs/main_lm/model
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

from sru_lm.bench import assisted, long_generation, machine_description
from sru_lm.bench.generate import GPT2, HEADER, POSITIONS, SIZES, SRU, bench_context, build_models, format_row, report

MODES = {"long": long_generation, "assisted": assisted}


def context_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=32, help="decode steps timed per run")
    p.add_argument("--repeats", type=int, default=3, help="generate() runs per model and context")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: bf16 on CUDA, else fp32")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="also write the table as markdown to this file")


def run_context(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_description()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    spec = SIZES[args.size]
    torch.manual_seed(0)
    models = build_models(spec, max(POSITIONS, max(args.contexts) + args.new_tokens + 8), device, dtype)
    params = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in models.items()}

    print(f"SRU++ {params[SRU]:.1f}M vs GPT-2 {params[GPT2]:.1f}M parameters, {dtype}, batch {args.batch}")
    print(HEADER)
    rows = []
    for ctx in args.contexts:
        row = bench_context(models, ctx, args.batch, args.new_tokens, args.repeats, spec["vocab"], device)
        rows.append(format_row(ctx, row))
        print(rows[-1], flush=True)

    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(report(args.size, spec, params, dtype, args.batch, args.new_tokens, args.repeats, rows, machine))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    pick = argparse.ArgumentParser(add_help=False)
    pick.add_argument("--mode", choices=["context", *MODES], default="context")
    mode = pick.parse_known_args(argv)[0].mode
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["context", *MODES], default="context",
                   help="context: SRU++ vs GPT-2 by context length; long: one long generation; assisted: "
                        "draft models and prompt lookup (each mode has its own options: --mode M --help)")
    if mode == "context":
        context_arguments(p)
        run_context(p.parse_args(argv))
    else:
        MODES[mode].add_arguments(p)
        MODES[mode].run(p.parse_args(argv))


if __name__ == "__main__":
    main()
