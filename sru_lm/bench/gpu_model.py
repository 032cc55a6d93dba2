"""The whole model on a GPU: training tokens/s and ``generate()`` speed and cache memory of a ~125M SRU++ LM
against a GPT-2 of the same size (transformers ``GPT2LMHeadModel``, SDPA, random weights), eager and
compiled. ``scripts/bench_gpu_model.py`` is the command line.

- Training: one step = forward, loss, backward and a fused AdamW update, fp32 weights under bf16 autocast,
  on random tokens; tokens/s over ``steps`` timed steps after ``warmup`` (the device synchronized around).
- Decoding (:func:`decode_row`): greedy ``generate()`` in bf16, the median decode step over a few runs
  (:func:`sru_lm.bench.generate.decode_step_times`), cache bytes after the run; GPT-2 also with a static
  cache under ``torch.compile`` (``generation_config.cache_implementation = "static"``, which ``generate``
  compiles), its compile time kept out of the median by a warm-up of the same shape and reported.

Models: :data:`sru_lm.bench.generate.SIZES` (``"124m"`` on the GPU; the tests use ``"tiny"``), built by
:func:`sru_lm.bench.generate.build_models`. :func:`record_kernels` lists the Triton kernel variants a run
launches, with no GPU, for ``scripts/triton_aot.py``.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

from sru_lm.ops import triton_backend as tb

from .generate import GPT2, POSITIONS, SIZES, SRU, build_models, cache_bytes, decode_step_times
from .machine import command_line, machine_description, now

TINY = dict(vocab=128, gpt2=dict(n_embd=32, n_layer=2, n_head=2),
            sru=dict(hidden_size=64, num_hidden_layers=2, projection_size=16, num_attention_heads=2))
TRAIN = [(1024, 8), (4096, 2)]  # (sequence length, batch): 8K tokens per step
DECODE = [(1, 2048), (64, 4096)]  # (batch, context)
GPT2_COMPILED = "GPT-2 compiled"


def spec_of(size: str) -> dict:
    return TINY if size == "tiny" else SIZES[size]


def train_models(spec: dict, max_len: int, device: torch.device) -> dict[str, torch.nn.Module]:
    """Both models in fp32 (autocast makes the matmuls bf16), in training mode."""
    models = build_models(spec, max_len, device, torch.float32)
    for m in models.values():
        m.train()
    return models


def train_tokens_per_s(model: torch.nn.Module, seq: int, batch: int, vocab: int, device: torch.device,
                       steps: int = 8, warmup: int = 2) -> float:
    """Training tokens/s: forward + loss + backward + AdamW step, bf16 autocast, random tokens."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    ids = torch.randint(1, vocab, (batch, seq), device=device)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        with amp:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * seq * steps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compiled_copy(gpt2: torch.nn.Module) -> torch.nn.Module:
    """GPT-2 that ``generate`` runs with a static cache and a compiled decode step (shares the weights)."""
    m = copy.copy(gpt2)
    m.generation_config = copy.deepcopy(gpt2.generation_config)
    m.generation_config.cache_implementation = "static"
    return m


def decode_row(model: torch.nn.Module, ids: torch.Tensor, new_tokens: int, repeats: int) -> dict:
    """``{"ms", "tok_s", "mib", "first_s"}`` of one model and prompt: the median decode step of ``repeats``
    greedy ``generate()`` runs of 1 + ``new_tokens`` tokens, after a warm-up run of the same shape (so a
    compiled static cache compiles once, in the warm-up, whose seconds are ``first_s``); cache MiB after
    the run."""
    t0 = time.perf_counter()
    decode_step_times(model, ids, new_tokens)
    first = time.perf_counter() - t0
    steps = [s for _ in range(repeats) for s in decode_step_times(model, ids, new_tokens)]
    out = model.generate(ids, max_new_tokens=1 + new_tokens, min_new_tokens=1 + new_tokens, do_sample=False,
                         return_dict_in_generate=True)
    ms = statistics.median(steps) * 1e3
    return dict(ms=ms, tok_s=ids.shape[0] * 1e3 / ms, mib=cache_bytes(out.cache) / 2**20, first_s=first)


def _fill_ratios(lines: list[str], rows_done: list) -> None:
    """Put "x tokens/s, x cache" against GPT-2 eager into each decode row once GPT-2's row of its setting
    exists (rows are written as they finish)."""
    gpt2 = {(b, c): r for b, c, n, r, _ in rows_done if n == GPT2}
    for b, c, _, r, i in rows_done:
        g = gpt2.get((b, c))
        cell = "-" if g is None else f"{r['tok_s'] / g['tok_s']:.2f}x tokens/s, {r['mib'] / g['mib']:.3f}x cache"
        lines[i] = " | ".join(lines[i].split(" | ")[:6]) + f" | {cell} |"


def run(size: str = "124m", device=None, train=TRAIN, decode=DECODE, compiled: bool = True, steps: int = 8,
        new_tokens: int = 16, repeats: int = 3, log=print, on_update=lambda text: None) -> str:
    """Training and decoding tables as markdown (with date, machine and command); ``on_update`` gets the
    report so far after every row (the script rewrites its file, so a run cut short keeps its rows)."""
    rows_done: list = []
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = spec_of(size)
    t_start = time.time()
    lines = [f"# ~125M SRU++ vs GPT-2 on {device.type.upper()} ({now()})" if size == "124m" else
             f"# SRU++ vs GPT-2 ({size}) on {device.type} ({now()})", "",
             f"- machine: {machine_description()}", f"- command: `{command_line()}`",
             f"- Triton defaults table: {'measured' if tb.DEFAULTS_MEASURED else 'placeholders, not yet measured'}"]
    max_len = max([POSITIONS] + [s for s, _ in train] + [c + new_tokens + 8 for _, c in decode])
    torch.manual_seed(0)
    if train:
        models = train_models(spec, max_len, device)
        params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in models.items()}
        lines += [f"- SRU++ {params[SRU]:.1f}M parameters ({spec['sru']}), GPT-2 {params[GPT2]:.1f}M "
                  f"({spec['gpt2']}), vocab {spec['vocab']}", "",
                  f"Training, bf16 autocast, fused AdamW, {steps} timed steps:", "",
                  "| seq x batch | SRU++ tokens/s | GPT-2 tokens/s | SRU++ / GPT-2 |", "|---|---|---|---|"]
        for seq, batch in train:
            tps = {n: train_tokens_per_s(m, seq, batch, spec["vocab"], device, steps) for n, m in models.items()}
            lines.append(f"| {seq} x {batch} | {tps[SRU]:,.0f} | {tps[GPT2]:,.0f} | {tps[SRU] / tps[GPT2]:.2f}x |")
            log(lines[-1])
            on_update("\n".join(lines) + "\n")
        del models
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if decode:
        models = build_models(spec, max_len, device, torch.bfloat16)
        if compiled:
            models[GPT2_COMPILED] = compiled_copy(models[GPT2])
        lines += ["", f"generate(), bf16, greedy, median of {new_tokens} decode steps x {repeats} runs; "
                  "cache = allocated bytes after the run; warm-up s = the first run of the same shape (any "
                  "compilation included):", "",
                  "| batch, context | model | ms/token | tokens/s | cache MiB | warm-up s | vs GPT-2 eager |",
                  "|---|---|---|---|---|---|---|"]
        # eager rows of every setting first, the compiled GPT-2 last: a run cut short keeps the eager table
        eager = {n: m for n, m in models.items() if n != GPT2_COMPILED}
        order = [(b, c, n) for b, c in decode for n in eager] + [(b, c, GPT2_COMPILED) for b, c in decode
                                                                 if GPT2_COMPILED in models]
        prompts = {(b, c): torch.randint(1, spec["vocab"], (b, c), device=device) for b, c in decode}
        for batch, ctx, name in order:
            r = decode_row(models[name], prompts[(batch, ctx)], new_tokens, repeats)
            lines.append(f"| {batch}, {ctx} | {name} | {r['ms']:.2f} | {r['tok_s']:,.1f} | {r['mib']:.1f} | "
                         f"{r['first_s']:.1f} | - |")
            rows_done.append((batch, ctx, name, r, len(lines) - 1))
            _fill_ratios(lines, rows_done)
            log(lines[-1])
            on_update("\n".join(lines) + "\n")
    lines += ["", f"({time.time() - t_start:.0f} s)"]
    return "\n".join(lines) + "\n"


def record_kernels(size: str = "124m", train=TRAIN, decode=DECODE) -> list[dict]:
    """The Triton launches of :func:`run`, recorded on CPU with no GPU (see
    :func:`sru_lm.ops.triton_backend.recording`): the real widths and batch sizes, sequences of 2 tokens
    (L does not enter a kernel's specialization), the SRU layers forced onto the Triton backend."""
    spec = spec_of(size)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    with tb.recording() as rec:
        models = build_models(spec, 16, cpu, torch.float32)
        sru = models[SRU].train()
        sru.config.sru_backend = "triton"
        for _, batch in train:
            ids = torch.randint(1, spec["vocab"], (batch, 2))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = sru(input_ids=ids, labels=ids).loss
            loss.backward()
        sru.to(torch.bfloat16).eval()
        for batch, _ in decode:
            ids = torch.randint(1, spec["vocab"], (batch, 2))
            sru.generate(ids, max_new_tokens=2, min_new_tokens=2, do_sample=False)
    return list(rec)
