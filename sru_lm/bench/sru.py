"""CPU speed of a 2-layer SRU side by side with its peers and its floor: inference, forward+backward and
one-token decode (``scripts/bench_sru.py`` is its command line).

Peers (input = hidden = d, sequence-first, fp32): official ``sru`` 2.6.0 when importable (its CPU
inference is a C++ loop, its CPU training a Python loop), ``nn.LSTM``, ``nn.GRU``, ours on the reference
loop and ours on the CPU fast path (``sru_lm.ops.cpu``). Floors, what any SRU must spend:
  - inference: the projection matmul of each layer plus one vectorized elementwise pass over its U
    (``torch.sigmoid(U)``: reads and writes U once, about the bytes and math of the recurrence);
  - training: the forward matmul and the two backward matmuls (grad input, grad weight) of each
    projection, plus three elementwise passes per layer (one forward; two backward, which reads and
    writes about twice the bytes of the forward: U, x, c, grad h in; grad U, grad x out);
  - decode (B=1): the two projection matmuls alone.
Timings are medians over ``repeats`` rounds; every round times each model once, in turn, so background
load on a shared machine hits all of them alike.

    res = bench_size(64, 4, 64, repeats=2, decode_steps=10)  # {row: {"infer"|"train"|"decode": seconds}}
    print(table(64, 4, 64, res, decode_steps=10))
"""

from __future__ import annotations

import importlib.metadata
import os
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from sru_lm.layers.sru import SRU
from sru_lm.ops import cpu

from .machine import command_line, now

SIZES = [(128, 16, 256), (256, 8, 512)]  # (L, B, d)
NUM_LAYERS = 2
TASKS = ("infer", "train", "decode")
OFFICIAL = "official sru 2.6.0"  # row names, in table order
FLOOR, LSTM, GRU, REFERENCE, FAST = "floor", "nn.LSTM", "nn.GRU", "ours, reference", "ours, fast path"

Results = dict[str, dict[str, float | None]]  # row -> task -> median seconds per call


def parse_size(size: str) -> tuple[int, int, int]:
    """``"128x16x256"`` -> ``(L, B, d)``."""
    parts = size.split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"a size is LxBxd with positive integers, e.g. 128x16x256, got {size!r}")
    L, B, d = map(int, parts)
    return L, B, d


# ---- peers ---------------------------------------------------------------------------------------


def our_sru(d: int, backend: str) -> nn.Module:
    return SRU(d, d, num_layers=NUM_LAYERS, backend=backend)


def official_sru(d: int) -> nn.Module | None:
    """The official ``sru`` package's SRU, or None when it does not import (it is the optional peer)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns that its CUDA kernels did not build
            import sru
    except Exception:
        return None
    warnings.filterwarnings("ignore", "Running SRU on CPU with grad_enabled", UserWarning)
    return sru.SRU(d, d, num_layers=NUM_LAYERS)


# ---- what is timed -------------------------------------------------------------------------------


def floor_fns(L: int, B: int, d: int, decode_steps: int) -> dict[str, Callable[[], object]]:
    Ws = [torch.randn(d, 3 * d) / d**0.5 for _ in range(NUM_LAYERS)]
    x = torch.randn(L * B, d)
    gU = torch.randn(L * B, 3 * d)
    x1 = torch.randn(1, d)

    def infer():
        for W in Ws:
            torch.sigmoid(x @ W)

    def train():
        for W in Ws:
            U = x @ W
            for _ in range(3):  # one forward pass, two backward
                torch.sigmoid(U)
            gU @ W.T  # grad of the layer input
            x.T @ gU  # grad of W

    def decode():
        for _ in range(decode_steps):
            for W in Ws:
                x1 @ W

    return {"infer": infer, "train": train, "decode": decode}


def model_fns(name: str, model: nn.Module, L: int, B: int, d: int, decode_steps: int) -> dict[str, Callable]:
    x = torch.randn(L, B, d)
    xg = x.clone().requires_grad_()
    g = torch.randn(L, B, d)
    x1 = torch.randn(1, d)

    def infer():
        model.eval()
        with torch.no_grad():
            model(x)

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        xg.grad = None
        out = model(xg)[0]
        out.backward(g)

    def decode():  # decode_steps tokens at B=1, each fed the previous step's output and state
        model.eval()
        with torch.no_grad():
            h = x1
            if name == OFFICIAL:
                c = torch.zeros(NUM_LAYERS, 1, d)
                for _ in range(decode_steps):
                    out, c = model(h.unsqueeze(0), c)
                    h = out[0]
            elif isinstance(model, nn.LSTM | nn.GRU):
                zeros = torch.zeros(NUM_LAYERS, 1, d)
                state = (zeros, zeros) if isinstance(model, nn.LSTM) else zeros
                for _ in range(decode_steps):
                    out, state = model(h.unsqueeze(0), state)
                    h = out[0]
            else:
                c = torch.zeros(NUM_LAYERS, 1, d)
                for _ in range(decode_steps):
                    h, c = model.step(h, c)

    return {"infer": infer, "train": train, "decode": decode}


def measure(fns: dict[str, Callable], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds of each function over `repeats` rounds, the functions timed in turn each round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_size(L: int, B: int, d: int, repeats: int, decode_steps: int, reference: bool = True) -> Results:
    """Median seconds of every row (floor, peers, ours) for every task at one size. Ours runs the CPU fast
    path when it is available, else the reference under the fast path's name (the script warns). The slow
    reference row (``reference=True``) is timed on its own with a third of the rounds."""
    backend = "cpu" if cpu.available() else "reference"
    models: dict[str, nn.Module] = {}
    off = official_sru(d)
    if off is not None:
        models[OFFICIAL] = off
    models[LSTM] = nn.LSTM(d, d, NUM_LAYERS)
    models[GRU] = nn.GRU(d, d, NUM_LAYERS)
    models[FAST] = our_sru(d, backend)
    fns = {FLOOR: floor_fns(L, B, d, decode_steps)}
    fns.update({name: model_fns(name, m, L, B, d, decode_steps) for name, m in models.items()})
    res: Results = {name: {} for name in fns}
    for task in TASKS:
        t = measure({name: f[task] for name, f in fns.items()}, repeats)
        for name in fns:
            res[name][task] = t[name]
    if reference:  # listed before the fast path
        ref = model_fns(REFERENCE, our_sru(d, "reference"), L, B, d, decode_steps)
        fast = res.pop(FAST)
        res[REFERENCE] = {task: measure({task: ref[task]}, max(3, repeats // 3), 1)[task] for task in TASKS}
        res[FAST] = fast
    return res


# ---- report --------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}"


def table(L: int, B: int, d: int, res: Results, decode_steps: int) -> str:
    """One size's markdown table: each row's times and its ratios to the floor, ``nn.LSTM`` and the
    official ``sru`` (``-`` where that peer is missing; decode has no floor column)."""
    floor, lstm = res[FLOOR], res[LSTM]
    off = res.get(OFFICIAL) or dict.fromkeys(TASKS)
    lines = [
        f"### L={L} B={B} d={d}, {NUM_LAYERS} layers (decode: B=1, per token)",
        "",
        "| model | inference ms | x floor | x LSTM | x sru | fwd+bwd ms | x floor | x LSTM | x sru "
        "| decode us | x LSTM | x sru |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in res.items():
        cells = [name]
        for task, unit, fmt in (("infer", 1e3, ".1f"), ("train", 1e3, ".1f"), ("decode", 1e6 / decode_steps, ".0f")):
            t = r.get(task)
            cells.append("-" if t is None else format(t * unit, fmt))
            if task != "decode":
                cells.append(ratio(t, floor[task]))
            cells += [ratio(t, lstm[task]), ratio(t, off[task])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def report(sections: list[str], machine: str, threads: int, load_at_start: float) -> str:
    """The markdown file: where, when and how it was measured, then the tables. A load average above
    the thread count marks the machine as busy."""
    versions = "not installed"
    try:
        versions = importlib.metadata.version("sru")
    except importlib.metadata.PackageNotFoundError:
        pass
    return "\n".join([
        "# SRU on CPU: inference, forward+backward and decode against the peers and the floor",
        "",
        f"- date: {now()}",
        f"- machine: {machine}",
        f"- software: official sru {versions}",
        f"- command: `{command_line()}`",
        "- times: medians; ratios are row / column (below 1 = faster). Floors as defined in "
        "`sru_lm/bench/sru.py`.",
        *(["- **busy machine**: other jobs were running (load average above the thread count), so "
           "absolute times are inflated and ratios noisy; re-run on a quiet machine."]
          if load_at_start > threads else []),
        "",
        *[s + "\n" for s in sections],
    ])
