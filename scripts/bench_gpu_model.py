"""The ~125M SRU++ LM against GPT-2 124M on a GPU: training tokens/s at sequence 1024 and 4096 (bf16), and
``generate()`` ms/token and cache memory at batch 1 (2K context) and batch 64 (4K context), against GPT-2
eager and compiled (static cache). ``sru_lm.bench.gpu_model`` holds the method.

    python scripts/bench_gpu_model.py --out benchmarks/bench_gpu_model_h200.md     # GPU, a few minutes
    python scripts/bench_gpu_model.py --size tiny --device cpu --no-compiled        # the logic, seconds
"""

from __future__ import annotations

import argparse
import os

from sru_lm.bench import gpu_model
from sru_lm.ops import triton_aot


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="124m", help="124m, or tiny for a check of the logic")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--out", help="also write the report (date, machine, command) to this markdown file")
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--no-compiled", action="store_true", help="skip GPT-2 with a compiled static-cache decode")
    p.add_argument("--steps", type=int, default=8, help="timed training steps per model and length")
    p.add_argument("--new-tokens", type=int, default=16, help="decode steps timed per generate() run")
    p.add_argument("--repeats", type=int, default=3, help="generate() runs per model and setting")
    args = p.parse_args()
    tiny = args.size == "tiny"

    def save(text: str) -> None:  # after every row: a run stopped by its time limit keeps what it measured
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                f.write(text)

    with triton_aot.watch() as compiles:
        report = gpu_model.run(
            args.size, args.device,
            train=[] if args.no_train else [(32, 2)] if tiny else gpu_model.TRAIN,
            decode=[] if args.no_decode else [(1, 16), (2, 16)] if tiny else gpu_model.DECODE,
            compiled=not args.no_compiled, steps=args.steps, new_tokens=args.new_tokens, repeats=args.repeats,
            log=lambda s: print(s, flush=True), on_update=save)
    report += "\n" + compiles.summary() + "\n"
    print(report)
    save(report)


if __name__ == "__main__":
    main()
