"""Decode speed and cache memory of ``generate()``: an SRU++ model against a GPT-2 of the same parameter
count (``scripts/bench_generate.py`` is its command line and describes the method).

    models = build_models(SIZES["small"], max_len=POSITIONS, device=torch.device("cpu"), dtype=torch.float32)
    row = bench_context(models, ctx=256, batch=1, new_tokens=32, repeats=3, vocab=16384, device="cpu")
    print(HEADER, format_row(256, row), sep="\\n")
"""

from __future__ import annotations

import itertools
import statistics
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.streamers import BaseStreamer

from sru_lm import SRULMConfig, SRULMForCausalLM

from .machine import command_line, now

# Equal parameter counts. SRU++ layers have no feed-forward block (about d^2 weights each against GPT-2's
# 12 d^2), so at the same size the hybrid is wider; attention on every 5th layer as in the SRU++ paper
# (WikiText-103 17.3 vs 17.1 ppl with attention on every layer), d_proj = d/4, heads of 64.
ATTENTION_EVERY = 5
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
POSITIONS = 4160  # GPT-2's position table at least (4096 + new tokens): it counts in GPT-2's parameters
SRU, GPT2 = "SRU++", "GPT-2"
HEADER = (
    "| context | SRU++ ms/token | GPT-2 ms/token | SRU++ tokens/s | GPT-2 tokens/s | speedup "
    "| SRU++ cache MiB | GPT-2 cache MiB | cache ratio |"
)


def build_models(spec: dict, max_len: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """``{"SRU++": ..., "GPT-2": ...}`` with random weights for one entry of :data:`SIZES`, in eval mode,
    generating greedily without stopping (no EOS)."""
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=spec["vocab"], n_positions=max_len, attn_implementation="sdpa", **spec["gpt2"],
                   bos_token_id=0, eos_token_id=0)
    )
    sru = SRULMForCausalLM(
        SRULMConfig(vocab_size=spec["vocab"], attention_every_n_layers=ATTENTION_EVERY, **spec["sru"],
                    pad_token_id=0)
    )
    models = {SRU: sru, GPT2: gpt2}
    for m in models.values():
        m.to(device=device, dtype=dtype).eval()
        m.generation_config.eos_token_id = None
        m.generation_config.pad_token_id = 0
    return models


def cache_bytes(cache) -> int:
    """Bytes the cache has allocated, spare capacity included."""
    if hasattr(cache, "nbytes"):  # SRULMCache: its state, and its preallocated keys/values
        return cache.nbytes()
    tensors = []
    for layer in cache.layers:
        tensors += [getattr(layer, name, None) for name in ("keys", "values")]
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
    """Seconds per decode step of one ``generate()`` run of 1 + ``new_tokens`` tokens (the prefill step
    excluded): ``new_tokens`` values."""
    timer = StepTimer()
    model.generate(ids, max_new_tokens=1 + new_tokens, min_new_tokens=1 + new_tokens, do_sample=False,
                   streamer=timer)
    return [b - a for a, b in itertools.pairwise(timer.times[1:])]  # times[1]: after prefill + 1st token


def bench_context(models, ctx: int, batch: int, new_tokens: int, repeats: int, vocab: int, device) -> dict:
    """One context length: per model ``{"ms": median ms per decode step, "tok_s": tokens/s over the batch,
    "mib": cache MiB after the run}``. The models run alternately, so background load hits both alike."""
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


def format_row(ctx: int, row: dict) -> str:
    """One line of the table under :data:`HEADER`: speedup = GPT-2 ms / SRU++ ms, cache ratio = SRU++ MiB /
    GPT-2 MiB."""
    s, g = row[SRU], row[GPT2]
    return (
        f"| {ctx} | {s['ms']:.2f} | {g['ms']:.2f} | {s['tok_s']:.1f} | {g['tok_s']:.1f} "
        f"| {g['ms'] / s['ms']:.2f}x | {s['mib']:.2f} | {g['mib']:.2f} | {s['mib'] / g['mib']:.3f} |"
    )


def _kw(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def report(size: str, spec: dict, params: dict[str, float], dtype: torch.dtype, batch: int, new_tokens: int,
           repeats: int, rows: list[str], machine: str) -> str:
    """The markdown file: the machine, the command, both models (``params`` in millions) and the table."""
    return "\n".join([
        f"# generate() decode benchmark: SRU++ vs GPT-2 ({size})",
        "",
        f"- date: {now()}",
        f"- machine: {machine}",
        f"- command: `{command_line()}`",
        f"- SRU++: {params[SRU]:.1f}M parameters, {_kw(spec['sru'])}, attention every {ATTENTION_EVERY}th layer, "
        f"vocab {spec['vocab']}",
        f"- GPT-2 (transformers GPT2LMHeadModel, SDPA, DynamicCache): {params[GPT2]:.1f}M parameters, "
        f"{_kw(spec['gpt2'])}, vocab {spec['vocab']}",
        f"- {dtype}, batch {batch}, greedy; ms/token = median of {new_tokens} decode steps x {repeats} runs; "
        "speedup = GPT-2 ms / SRU++ ms; cache ratio = SRU++ MiB / GPT-2 MiB (allocated, after the run)",
        "",
        HEADER,
        "|" + "---|" * 9,
        *rows,
        "",
    ])
