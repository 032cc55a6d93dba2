"""Decode speed and cache memory of ``generate()``: an SRU++ model against a GPT-2 of the same size.

For each context length both models get the same random prompt and generate 1 + N tokens greedily; a
streamer timestamps every token, and the time per token is the median over the N decode steps of
``--repeats`` runs (the prefill step is left out), the two models run alternately so background load hits
both alike. Cache memory is
what ``generate(..., return_dict_in_generate=True).cache`` holds after the run (allocated bytes, spare
capacity included). Random weights: speed and memory do not depend on training.

    python scripts/bench_generate.py                                  # CPU, ~19M parameters, a few minutes
    python scripts/bench_generate.py --size 124m --batch 1            # GPU, bf16, GPT-2 small's size
    python scripts/bench_generate.py --out benchmarks/bench_generate.md
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.streamers import BaseStreamer

from sru_lm import SRULMConfig, SRULMForCausalLM

# Equal parameter counts. SRU++ layers have no feed-forward block (about d^2 weights each against GPT-2's
# 12 d^2), so at the same size the hybrid is wider; attention on every 5th layer as in the SRU++ paper
# (WikiText-103 17.3 vs 17.1 ppl with attention on every layer), d_proj = d/4, heads of 64.
SIZES = {
    "small": dict(
        vocab=16384,
        gpt2=dict(n_embd=384, n_layer=6, n_head=6),
        sru=dict(hidden_size=768, num_hidden_layers=10, projection_size=192, num_attention_heads=3),
    ),
    "124m": dict(
        vocab=50257,
        gpt2=dict(n_embd=768, n_layer=12, n_head=12),
        sru=dict(hidden_size=1536, num_hidden_layers=20, projection_size=384, num_attention_heads=6),
    ),
}


def build_models(size: str, max_len: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    spec = SIZES[size]
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=spec["vocab"], n_positions=max_len, attn_implementation="sdpa", **spec["gpt2"],
                   bos_token_id=0, eos_token_id=0)
    )
    sru = SRULMForCausalLM(
        SRULMConfig(vocab_size=spec["vocab"], attention_every_n_layers=5, **spec["sru"], pad_token_id=0)
    )
    models = {"SRU++": sru, "GPT-2": gpt2}
    for m in models.values():
        m.to(device=device, dtype=dtype).eval()
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
    return models


def cache_bytes(cache) -> int:
    tensors = []
    for layer in cache.layers:
        tensors += [getattr(layer, name, None) for name in ("keys", "values", "c")]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class StepTimer(BaseStreamer):
    """Timestamps every token ``generate()`` hands to its streamer: the prompt, then each new token."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def decode_step_times(model, ids: torch.Tensor, new_tokens: int) -> list[float]:
    """Seconds per decode step of one ``generate()`` run (the prefill step excluded)."""
    timer = StepTimer()
    model.generate(ids, max_new_tokens=1 + new_tokens, min_new_tokens=1 + new_tokens, do_sample=False,
                   streamer=timer)
    return [b - a for a, b in itertools.pairwise(timer.times[1:])]  # times[1]: after prefill + 1st token


def bench_context(models, ctx: int, batch: int, new_tokens: int, repeats: int, vocab: int, device) -> dict:
    ids = torch.randint(1, vocab, (batch, ctx), device=device)
    for m in models.values():
        decode_step_times(m, ids, 2)  # warm-up: allocator, kernels, lazy imports
    steps = {name: [] for name in models}
    for _ in range(repeats):
        for name, m in models.items():
            steps[name] += decode_step_times(m, ids, new_tokens)
    row = {}
    for name, m in models.items():
        out = m.generate(ids, max_new_tokens=1 + new_tokens, min_new_tokens=1 + new_tokens, do_sample=False,
                         return_dict_in_generate=True)
        ms = statistics.median(steps[name]) * 1e3
        row[name] = dict(ms=ms, tok_s=batch * 1e3 / ms, mib=cache_bytes(out.cache) / 2**20)
    return row


def _kw(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = f", load average {os.getloadavg()[0]:.1f} at the start" if hasattr(os, "getloadavg") else ""
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads{load}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=32, help="decode steps timed per run")
    p.add_argument("--repeats", type=int, default=3, help="generate() runs per model and context")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default=None, help="default: bf16 on CUDA, else fp32")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--out", default=None, help="also write the table as markdown to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    machine_desc = machine()
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.manual_seed(0)
    models = build_models(args.size, max(4160, max(args.contexts) + args.new_tokens + 8), device, dtype)
    params = {name: sum(p.numel() for p in m.parameters()) / 1e6 for name, m in models.items()}

    header = (
        "| context | SRU++ ms/token | GPT-2 ms/token | SRU++ tokens/s | GPT-2 tokens/s | speedup "
        "| SRU++ cache MiB | GPT-2 cache MiB | cache ratio |"
    )
    lines = [header, "|" + "---|" * 9]
    print(f"SRU++ {params['SRU++']:.1f}M vs GPT-2 {params['GPT-2']:.1f}M parameters, {dtype}, batch {args.batch}")
    print(header)
    for ctx in args.contexts:
        r = bench_context(models, ctx, args.batch, args.new_tokens, args.repeats, SIZES[args.size]["vocab"], device)
        s, g = r["SRU++"], r["GPT-2"]
        line = (
            f"| {ctx} | {s['ms']:.2f} | {g['ms']:.2f} | {s['tok_s']:.1f} | {g['tok_s']:.1f} "
            f"| {g['ms'] / s['ms']:.2f}x | {s['mib']:.2f} | {g['mib']:.2f} | {s['mib'] / g['mib']:.3f} |"
        )
        lines.append(line)
        print(line, flush=True)

    if args.out:
        spec = SIZES[args.size]
        text = "\n".join([
            f"# generate() decode benchmark: SRU++ vs GPT-2 ({args.size})",
            "",
            f"- date: {datetime.date.today().isoformat()}",
            f"- machine: {machine_desc}; torch {torch.__version__}; Python {platform.python_version()}",
            f"- command: `{' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])}`",
            f"- SRU++: {params['SRU++']:.1f}M parameters, {_kw(spec['sru'])}, attention every 5th layer, "
            f"vocab {spec['vocab']}",
            f"- GPT-2 (transformers GPT2LMHeadModel, SDPA, DynamicCache): {params['GPT-2']:.1f}M parameters, "
            f"{_kw(spec['gpt2'])}, vocab {spec['vocab']}",
            f"- {dtype}, batch {args.batch}, greedy; ms/token = median of {args.new_tokens} decode steps x "
            f"{args.repeats} runs; "
            "speedup = GPT-2 ms / SRU++ ms; cache ratio = SRU++ MiB / GPT-2 MiB (allocated, after the run)",
            "",
            *lines,
            "",
        ])
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
