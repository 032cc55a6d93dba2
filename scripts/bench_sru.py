"""CPU speed of a 2-layer SRU side by side with its peers and its floor: inference, forward+backward,
and one-token decode.

Models (input = hidden = d, sequence-first, fp32): official ``sru`` 2.6.0 when importable (its CPU
inference is a C++ loop, its CPU training a Python loop), ``nn.LSTM``, ``nn.GRU``, ours on the reference
loop and ours on the CPU fast path (``sru_lm.ops.cpu``). Floors, what any SRU must spend:
  - inference: the projection matmul of each layer plus one vectorized elementwise pass over its U
    (``torch.sigmoid(U)``: reads and writes U once, about the bytes and math of the recurrence);
  - training: the forward matmul and the two backward matmuls (grad input, grad weight) of each
    projection, plus three elementwise passes per layer (one forward; two backward, which reads and
    writes about twice the bytes of the forward: U, x, c, grad h in; grad U, grad x out);
  - decode (B=1): the two projection matmuls alone.
Timings are medians over ``--repeats`` rounds; every round times each model once, in turn, so background
load on a shared machine hits all of them alike.

    python scripts/bench_sru.py                                   # prints the table (~3 minutes)
    python scripts/bench_sru.py --out benchmarks/bench_sru.md     # and writes it, with the machine
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from sru_lm.ops import cpu, sru_recurrence, sru_step

SIZES = [(128, 16, 256), (256, 8, 512)]  # (L, B, d)
NUM_LAYERS = 2


# ---- models --------------------------------------------------------------------------------------


class FunctionalSRU(nn.Module):
    """Ours, straight from weights + ``sru_recurrence``/``sru_step``: used when ``sru_lm.layers.sru``
    is not there."""

    def __init__(self, d: int, num_layers: int, backend: str) -> None:
        super().__init__()
        self.backend = backend
        self.W = nn.ParameterList(nn.Parameter(torch.randn(d, 3 * d) / d**0.5) for _ in range(num_layers))
        self.v = nn.ParameterList(nn.Parameter(torch.rand(1, 2, d) - 0.5) for _ in range(num_layers))
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(1, 2, d)) for _ in range(num_layers))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cs = []
        for W, v, b in zip(self.W, self.v, self.b, strict=True):
            U = x @ W  # (L, B, 3d)
            x, c = sru_recurrence(U, x, v, b, backend=self.backend)
            cs.append(c)
        return x, torch.stack(cs)

    def step(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cs = []
        for i, (W, v, b) in enumerate(zip(self.W, self.v, self.b, strict=True)):
            x, ci = sru_step(x @ W, x, v, b, c[i], backend=self.backend)
            cs.append(ci)
        return x, torch.stack(cs)


def our_sru(d: int, backend: str) -> nn.Module:
    try:
        from sru_lm.layers.sru import SRU
    except ImportError:
        return FunctionalSRU(d, NUM_LAYERS, backend)
    return SRU(d, d, num_layers=NUM_LAYERS, backend=backend)


def official_sru(d: int) -> nn.Module | None:
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns that its CUDA kernels did not build
            import sru
        warnings.filterwarnings("ignore", "Running SRU on CPU with grad_enabled", UserWarning)
    except Exception:
        return None
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
    is_lstm = isinstance(model, nn.LSTM)

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
            if name.startswith("official"):
                c = torch.zeros(NUM_LAYERS, 1, d)
                for _ in range(decode_steps):
                    out, c = model(h.unsqueeze(0), c)
                    h = out[0]
            elif isinstance(model, nn.LSTM | nn.GRU):
                zeros = torch.zeros(NUM_LAYERS, 1, d)
                state = (zeros, zeros) if is_lstm else zeros
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


# ---- report --------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}"


def table(L: int, B: int, d: int, res: dict[str, dict[str, float | None]], decode_steps: int) -> str:
    floor, lstm, off = res["floor"], res["nn.LSTM"], res.get("official sru 2.6.0")
    off = off or {"infer": None, "train": None, "decode": None}
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


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{model}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}; "
            f"load average {load:.1f} at start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", nargs="+", default=[f"{L}x{B}x{d}" for L, B, d in SIZES], help="LxBxd ...")
    ap.add_argument("--repeats", type=int, default=15, help="rounds per size (the reference gets a third)")
    ap.add_argument("--decode-steps", type=int, default=50, help="tokens per timed decode call")
    ap.add_argument("--no-reference", action="store_true", help="skip our slow reference loop")
    ap.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not cpu.available():
        print(f"warning: the CPU fast path is unavailable ({cpu.why_unavailable()})", file=sys.stderr)

    head = machine()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    sections = []
    for L, B, d in (map(int, size.split("x")) for size in args.sizes):
        models: dict[str, nn.Module] = {}
        off = official_sru(d)
        if off is not None:
            models["official sru 2.6.0"] = off
        models["nn.LSTM"] = nn.LSTM(d, d, NUM_LAYERS)
        models["nn.GRU"] = nn.GRU(d, d, NUM_LAYERS)
        models["ours, fast path"] = our_sru(d, "cpu" if cpu.available() else "reference")
        fns = {"floor": floor_fns(L, B, d, args.decode_steps)}
        fns.update({name: model_fns(name, m, L, B, d, args.decode_steps) for name, m in models.items()})
        res: dict[str, dict[str, float | None]] = {name: {} for name in fns}
        for task in ("infer", "train", "decode"):
            t = measure({name: f[task] for name, f in fns.items()}, args.repeats)
            for name in fns:
                res[name][task] = t[name]
        if not args.no_reference:  # slow: on its own, fewer rounds, listed before the fast path
            ref = model_fns("ours, reference", our_sru(d, "reference"), L, B, d, args.decode_steps)
            fast = res.pop("ours, fast path")
            res["ours, reference"] = {task: measure({task: ref[task]}, max(3, args.repeats // 3), 1)[task]
                                      for task in ref}
            res["ours, fast path"] = fast
        sections.append(table(L, B, d, res, args.decode_steps))
        print(sections[-1] + "\n", flush=True)

    if args.out:
        versions = f"torch {torch.__version__}"
        try:
            versions += f", sru {importlib.metadata.version('sru')}"
        except importlib.metadata.PackageNotFoundError:
            pass
        text = "\n".join([
            "# SRU on CPU: inference, forward+backward and decode against the peers and the floor",
            "",
            f"- date: {datetime.date.today().isoformat()}",
            f"- machine: {head}",
            f"- software: {versions}, Python {platform.python_version()}",
            f"- command: `python {' '.join(sys.argv)}`",
            "- times: medians; ratios are row / column (below 1 = faster). Floors as defined in "
            "`scripts/bench_sru.py`.",
            *(["- **busy machine**: other jobs were running (load average above the thread count), so "
               "absolute times are inflated and ratios noisy; re-run on a quiet machine."]
              if load_at_start > args.threads else []),
            "",
            *[s + "\n" for s in sections],
        ])
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
