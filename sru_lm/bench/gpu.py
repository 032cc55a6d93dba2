"""The SRU recurrence on a GPU: our Triton kernels against the bytes floor, the projection matmuls and cuDNN's
LSTM, a sweep of kernel configs that fills the defaults table, and one-token decoding.

``scripts/bench_gpu.py`` is the command line. Everything here also runs on CPU tensors under
``TRITON_INTERPRET=1`` at tiny sizes (the tests do), and :func:`record_kernels` lists, with no GPU, every
kernel variant a run will launch, for ``scripts/triton_aot.py`` to compile ahead of time.

Method: correctness first (forward and every gradient against the reference, all options on); then
median milliseconds of ``triton.testing.do_bench`` (wall-clock medians on CPU). The floor of a pass is
the time of a device copy moving as many bytes (read + written). Peers: the projection ``x @ W`` alone
(the matmul the layer cannot avoid), ``torch.nn.LSTM`` (cuDNN), ``nn.LSTMCell`` for a decode step, and the
official ``sru`` 2.6.0 CUDA kernel and layer (:class:`OfficialSRU`), built during the run from a patched
private copy of the installed package's source and skipped, with the reason in the report, when ``sru`` is
missing or does not build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sru_lm.layers import SRUCell
from sru_lm.ops import sru_recurrence
from sru_lm.ops import triton_backend as tb

from .machine import command_line, machine_description, now

SIZES = [(128, 32, 512), (1024, 16, 2048)]  # (L, B, d), sequence-first; input = hidden = d, k = 3
DECODE = (2048, (1, 64))  # d, batch sizes of the one-token decode table
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STACK_LAYERS = 12


def sweep_grid() -> list[tb.KernelConfig]:
    """The configs swept at each size: 18, chosen from the sm_90 static report (sru_lm/ops/TRITON_NOTES.md).

    Both schedules; blocks of 32-256 units (at L=128 B=32 d=512, 32 gives 3.9 programs per SM of an
    H200, 64 gives 1.9); 1, 2 or 4 units per thread (bf16 needs 2 for the step schedule's loads to be
    4 bytes, the smallest cp.async); chunks of 8 or 16 steps; 1-4 pipeline stages; one saved-c backward.
    A config costs three kernels (forward, forward saving c, backward) per dtype, compiled ahead of time.
    """
    K = tb.KernelConfig
    tile = [K(block_h=32), K(block_h=64), K(block_h=128), K(block_h=64, vec=2), K(block_h=128, vec=2),
            K(block_h=32, t_fwd=16, t_bwd=16), K(block_h=64, t_fwd=16, t_bwd=16), K(block_h=64, recompute=False)]
    step = [K(sched="step", block_h=b, vec=v, stages=s) for b, v, s in (
        (32, 1, 3), (64, 1, 3), (128, 1, 3), (64, 2, 3), (128, 2, 3), (128, 4, 3),
        (64, 2, 1), (64, 2, 2), (64, 2, 4), (256, 2, 3))]
    return tile + step


# ------------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------------


def bench(fn: Callable, device: torch.device, grads=None) -> float:
    """Median milliseconds of fn(): do_bench on a GPU, a few wall-clock runs elsewhere."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=10, rep=40, grad_to_none=grads, return_mode="median")
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_floor(nbytes: int, device: torch.device) -> float:
    """Time to move ``nbytes`` (read + written) through memory: a copy of nbytes/2."""
    src = torch.empty(max(nbytes // 2, 4) // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src), device)


def floor_bytes(L: int, B: int, d: int, dtype: torch.dtype) -> dict[str, int]:
    """Bytes a scan must move: forward reads U (3d) and x, writes h (+ c_last fp32); the backward also reads
    U, x, dh and writes dU, dx."""
    es = torch.tensor([], dtype=dtype).element_size()
    n = L * B * d
    return {"fwd": 5 * es * n + 4 * B * d, "fwd+bwd": (5 + 9) * es * n}


# ------------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------------


def scan_inputs(L: int, B: int, d: int, dtype: torch.dtype, device, grad=True, options=False, seed=0) -> list:
    """Arguments of ``sru_recurrence`` (k = 3, unidirectional); ``options``: initial state, 10% padding,
    dropout mask."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    U = rnd(L, B, 3 * d).to(dtype).requires_grad_(grad)
    x = rnd(L, B, d).to(dtype).requires_grad_(grad)
    v, b = rnd(1, 2, d, scale=0.5).requires_grad_(grad), rnd(1, 2, d, scale=0.5).requires_grad_(grad)
    c0 = rnd(B, d).requires_grad_(grad) if options else None
    pad = (torch.rand(L, B, generator=g) < 0.1).to(device) if options else None
    drop = ((torch.rand(B, d, generator=g) < 0.8).float() / 0.8).to(device) if options else None
    return [U, x, v, b, c0, pad, drop, False, 1.3]


def check(L: int, B: int, d: int, dtype: torch.dtype, device, cfg: tb.KernelConfig | None = None) -> tuple[bool, float]:
    """Forward and every gradient of the Triton backend against the reference, all options on: (ok, worst
    error scaled by each tensor's largest magnitude)."""
    inp = scan_inputs(L, B, d, dtype, device, options=True, seed=1)
    tensors = [t for t in inp[:5] if t is not None]
    g = torch.Generator().manual_seed(2)
    gh = torch.randn(L, B, d, generator=g).to(device, dtype)
    gc = torch.randn(B, d, generator=g).to(device)
    out = []
    with config(cfg):
        for backend in ("triton", "reference"):
            h, c = sru_recurrence(*inp, backend=backend)
            grads = torch.autograd.grad((h.float() * gh.float()).sum() + (c * gc).sum(), tensors)
            out.append((h, c, *grads))
    tol = dict(atol=1e-4, rtol=1e-3) if dtype == torch.float32 else dict(atol=2e-2, rtol=1.6e-2)
    worst, ok = 0.0, True
    for a, r in zip(out[0], out[1], strict=True):
        scale = r.float().abs().max().clamp_min(1.0)
        a, r = a.float() / scale, r.float() / scale
        worst = max(worst, (a - r).abs().max().item())
        ok &= bool(torch.isclose(a, r, **tol).all()) and not a.isnan().any()
    return ok, worst


class config:
    """``with config(cfg):`` every scan inside uses ``cfg`` (None: the defaults table)."""

    def __init__(self, cfg: tb.KernelConfig | None):
        self.kw = dataclasses.asdict(cfg) if cfg is not None else {}

    def __enter__(self):
        self.saved = dict(tb._overrides)
        tb.set_kernel_config(**self.kw)

    def __exit__(self, *exc):
        tb.set_kernel_config(**self.saved)


def scan_fwd(inp: list) -> Callable:
    def run():
        with torch.no_grad():
            return tb.sru_recurrence_triton(*inp)
    return run


def scan_fwd_bwd(inp: list, gh: torch.Tensor) -> Callable:
    def run():
        h, _ = tb.sru_recurrence_triton(*inp)
        torch.autograd.backward(h, gh)
    return run


# ------------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------------


def sweep(L: int, B: int, d: int, dtype: torch.dtype, device, cfgs: list[tb.KernelConfig]) -> dict:
    """``{cfg: (fwd ms, fwd+bwd ms)}`` for every config (a config that fails to run gets None)."""
    inp = scan_inputs(L, B, d, dtype, device)
    gh = torch.randn(L, B, d, device=device).to(dtype)
    out = {}
    for cfg in cfgs:
        try:
            with config(cfg):
                out[cfg] = (bench(scan_fwd(inp), device), bench(scan_fwd_bwd(inp, gh), device, grads=inp[:4]))
        except Exception as e:  # noqa: BLE001 - one config that cannot run (resources) is a row, not a crash
            print(f"  config {cfg} failed: {type(e).__name__}: {str(e)[:120]}", flush=True)
            out[cfg] = None
    return out


def best(results: dict, which: int) -> tb.KernelConfig | None:
    ok = {c: t for c, t in results.items() if t is not None}
    return min(ok, key=lambda c: ok[c][which]) if ok else None


def time_size(L: int, B: int, d: int, dtype: torch.dtype, device, lstm: bool = True) -> dict[str, float]:
    """Timings at one size with the defaults table: floors, our scan, the projection, our SRU layer
    (``sru_lm.layers.SRUCell``, k = 3), cuDNN LSTM."""
    r: dict[str, float] = {}
    fb = floor_bytes(L, B, d, dtype)
    r["floor fwd"] = copy_floor(fb["fwd"], device)
    r["floor fwd+bwd"] = copy_floor(fb["fwd+bwd"], device)
    inp = scan_inputs(L, B, d, dtype, device)
    gh = torch.randn(L, B, d, device=device).to(dtype)
    r["ours fwd"] = bench(scan_fwd(inp), device)
    r["ours fwd+bwd"] = bench(scan_fwd_bwd(inp, gh), device, grads=inp[:4])

    X = torch.randn(L * B, d, device=device, dtype=dtype)
    W = torch.randn(d, 3 * d, device=device, dtype=dtype)
    dU = torch.randn(L * B, 3 * d, device=device, dtype=dtype)
    r["projection fwd"] = bench(lambda: X @ W, device)
    r["projection fwd+bwd"] = bench(lambda: (X @ W, dU @ W.T, X.T @ dU), device)

    layer = SRUCell(d, d, backend="triton").to(device, dtype)
    xin = torch.randn(L, B, d, device=device, dtype=dtype).requires_grad_()
    with torch.no_grad():
        r["our layer fwd"] = bench(lambda: layer(xin), device)
    r["our layer fwd+bwd"] = bench(lambda: torch.autograd.backward(layer(xin)[0], gh), device,
                                   grads=[xin, *layer.parameters()])
    if lstm and device.type == "cuda":
        net = torch.nn.LSTM(d, d).to(device, dtype)
        with torch.no_grad():
            r["cuDNN LSTM fwd"] = bench(lambda: net(xin), device)
        r["cuDNN LSTM fwd+bwd"] = bench(lambda: torch.autograd.backward(net(xin)[0], gh), device,
                                        grads=[xin, *net.parameters()])
    return r


def time_decode(d: int, B: int, device, layers: int = STACK_LAYERS) -> dict[str, float]:
    """One token, bf16: our step kernel, one layer's step (``SRUCell.step``), a stack of layers, eager and
    replayed from a CUDA graph (in-place state, ``sru_step_triton_``), and ``nn.LSTMCell``."""
    dtype, r = torch.bfloat16, {}
    U = torch.randn(B, 3 * d, device=device, dtype=dtype)
    x = torch.randn(B, d, device=device, dtype=dtype)
    v, b = torch.randn(1, 2, d, device=device) * 0.5, torch.zeros(1, 2, d, device=device)
    c = torch.zeros(B, d, device=device)
    h = torch.empty(B, d, device=device, dtype=dtype)
    r["ours step kernel"] = bench(lambda: tb.sru_step_triton_(U, x, v, b, c, h), device)
    stack = [SRUCell(d, d, backend="triton").to(device, dtype).eval() for _ in range(layers)]
    states = [torch.zeros(B, d, device=device) for _ in stack]
    outs = [torch.empty(B, d, device=device, dtype=dtype) for _ in stack]

    def layer_step(cell=stack[0], cs=states[0], hs=outs[0], inp=x):
        U = cell.compute_U(inp)
        tb.sru_step_triton_(U, inp, cell.weight_c, cell.bias, cs, hs, scale_x=cell.scale_x)

    def stack_step():
        inp = x
        for cell, cs, hs in zip(stack, states, outs, strict=True):
            layer_step(cell, cs, hs, inp)
            inp = hs

    with torch.no_grad():
        r["ours layer step (SRUCell.step), eager"] = bench(lambda: stack[0].step(x, c), device)
        r[f"ours {layers}-layer stack step, eager"] = bench(stack_step, device)
        if device.type == "cuda":
            r["ours layer step, CUDA graph"] = bench(capture(layer_step).replay, device)
            r[f"ours {layers}-layer stack step, CUDA graph"] = bench(capture(stack_step).replay, device)
        cell = torch.nn.LSTMCell(d, d).to(device, dtype)
        hc = (torch.zeros(B, d, device=device, dtype=dtype), torch.zeros(B, d, device=device, dtype=dtype))
        r["nn.LSTMCell step, eager"] = bench(lambda: cell(x, hc), device)
    return r


def capture(fn: Callable) -> torch.cuda.CUDAGraph:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):  # load kernels and warm up outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        fn()
    return graph


# ------------------------------------------------------------------------------------------------------
# The official sru 2.6.0 kernel, built from a patched private copy
# ------------------------------------------------------------------------------------------------------

OFFICIAL_SOURCES = ("sru_cuda_impl.cpp", "sru_cuda_kernel.cu", "sru_cpu_impl.cpp")


def patch_official_source(text: str) -> str:
    """The official C++/CUDA source with the ``Tensor.type()`` calls that torch >= 2.10 removed replaced by
    ``scalar_type()`` (``AT_DISPATCH`` takes a scalar type; ``is_cuda()`` is on the tensor itself)."""
    text = text.replace(".type().is_cuda()", ".is_cuda()")
    text = text.replace(".type().scalarType()", ".scalar_type()")
    return re.sub(r"\.type\(\)", ".scalar_type()", text)


class OfficialSRU:
    """The official ``sru`` package with its CUDA kernel built from a patched private copy of its sources.

    :meth:`start` compiles in a background thread (the run's checks go on meanwhile); :meth:`ready` waits
    for it and imports ``sru`` with its own unpatched import-time build turned off (the ops are registered
    already). ``sru`` holds the module once ready; ``error`` says why it is not, for the report."""

    def __init__(self, error: str = ""):
        self.sru = None
        self.error = error
        self._thread: threading.Thread | None = None
        self._waited = False

    @classmethod
    def start(cls) -> OfficialSRU:
        peer = cls()
        if "sru" in sys.modules:  # its import-time build registered the ops already (or a stub)
            peer.error = "sru was imported before its patched build: not timed"
        elif importlib.util.find_spec("sru") is None:
            peer.error = "sru is not installed (pip install sru==2.6.0; .whl carries it to the device)"
        else:
            peer._thread = threading.Thread(target=peer._build, daemon=True)
            peer._thread.start()
        return peer

    def _build(self) -> None:
        try:
            from torch.utils import cpp_extension

            src = Path(importlib.util.find_spec("sru").origin).parent / "csrc"
            tmp = Path(tempfile.mkdtemp(prefix="sru_official_"))
            for name in OFFICIAL_SOURCES:
                (tmp / name).write_text(patch_official_source((src / name).read_text()))
            cpp_extension.load(name="sru_official_patched", sources=[str(tmp / n) for n in OFFICIAL_SOURCES],
                               build_directory=str(tmp), extra_cflags=["-O3"], extra_cuda_cflags=["-O3"],
                               is_python_module=False, verbose=False)
        except Exception as e:  # noqa: BLE001 - a peer that does not build is a note in the report
            self.error = f"build failed: {type(e).__name__}: {_reason(e)}"

    def ready(self, timeout: float = 90.0) -> bool:
        """Whether the official package can be timed; waits up to ``timeout`` s for the build, once."""
        if self._thread is not None and not self._waited:
            self._waited = True
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.error = f"build not finished after waiting {timeout:.0f} s: not timed"
            elif not self.error:
                self._import()
        return self.sru is not None

    def _import(self) -> None:
        from torch.utils import cpp_extension

        real_load = cpp_extension.load
        cpp_extension.load = lambda *a, **k: None  # sru's modules build their unpatched sources at import
        try:
            import sru

            self.sru = sru
        except Exception as e:  # noqa: BLE001
            self.error = f"import failed: {type(e).__name__}: {_reason(e)}"
        finally:
            cpp_extension.load = real_load


def _reason(e: Exception) -> str:
    """One line of an exception: the first compiler ``error:`` line of a failed build, else the last line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line.lower()]
    return (errors or lines or [""])[0 if errors else -1][:200]


def time_official(L: int, B: int, d: int, dtype: torch.dtype, device, sru) -> dict[str, float]:
    """The official kernel alone (``sru_forward_simple``, fp32: it has no bf16), checked against ours on its
    interleaved (L, B, d, 3) layout; the official ``SRUCell`` fwd and fwd+bwd, fp32 or (for bf16) amp fp16."""
    r: dict[str, float] = {}
    U = torch.randn(L, B, 3 * d, device=device)
    x = torch.randn(L, B, d, device=device)
    wc, bias = torch.rand(2 * d, device=device) - 0.5, torch.zeros(2 * d, device=device)
    c0 = torch.zeros(B, d, device=device)
    op = torch.ops.sru_cuda.sru_forward_simple
    r["official kernel fwd (fp32)"] = bench(lambda: op(U, x, wc, bias, c0, None, None, L, B, d), device)
    h_off = op(U, x, wc, bias, c0, None, None, L, B, d)[0]
    U_ours = U.view(L, B, d, 3).permute(0, 1, 3, 2).reshape(L, B, 3 * d)  # (L, B, 3d), gates blocked
    with torch.no_grad():
        h_ours, _ = tb.sru_recurrence_triton(U_ours, x, wc.view(1, 2, d), bias.view(1, 2, d),
                                             None, None, None, False, 1.0)
    r["official vs ours max |h diff|"] = (h_off - h_ours).abs().max().item()

    amp = dtype != torch.float32
    tag = "amp fp16" if amp else "fp32"
    cell = sru.SRUCell(d, d, amp_recurrence_fp16=amp).to(device)
    # amp: fp16 input, as its highway term must match the fp16 U inside the official kernel
    xin = torch.randn(L, B, d, device=device, dtype=torch.float16 if amp else torch.float32).requires_grad_()
    gh = torch.randn(L, B, d, device=device)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else contextlib.nullcontext

    def fwd_bwd():
        with ctx():
            h, _ = cell(xin)
        torch.autograd.backward(h, gh.to(h.dtype))

    with torch.no_grad(), ctx():
        r[f"official layer fwd ({tag})"] = bench(lambda: cell(xin), device)
    r[f"official layer fwd+bwd ({tag})"] = bench(fwd_bwd, device, grads=[xin, *cell.parameters()])
    return r


def time_official_decode(d: int, B: int, device, sru) -> dict[str, float]:
    """One token through the official ``SRUCell`` (fp32; its inference path for L = 1)."""
    cell = sru.SRUCell(d, d).to(device).eval()
    x, c0 = torch.randn(B, d, device=device), torch.zeros(B, d, device=device)
    with torch.no_grad():
        return {"official sru layer step (fp32), eager": bench(lambda: cell(x, c0), device)}



# ------------------------------------------------------------------------------------------------------
# Kernel variants a run launches (for ahead-of-time compilation)
# ------------------------------------------------------------------------------------------------------


def record_kernels(sizes=SIZES, dtypes=DTYPES, do_sweep=True, decode=True) -> list[dict]:
    """The kernel launches of :func:`run` with the same arguments, recorded with no GPU: the same functions
    run on CPU tensors inside :func:`sru_lm.ops.triton_backend.recording`, with the real widths and batch
    sizes and L = 2 (L never enters a kernel's specialization; B picks the size class). Returns the
    :func:`sru_lm.ops.triton_backend._describe` records, for ``scripts/triton_aot.py``."""
    cpu = torch.device("cpu")
    with tb.recording() as rec:
        for _, B, d in sizes:
            for dtype in dtypes.values():
                check(2, B, d, dtype, cpu)
                if do_sweep:
                    sweep(2, B, d, dtype, cpu, sweep_grid())
                time_size(2, B, d, dtype, cpu)
        if decode:
            d, batches = DECODE
            for B in batches:
                time_decode(d, B, cpu, layers=1)
    return list(rec)


# ------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------


def fmt(ms: float | None, ref: float | None = None) -> str:
    if ms is None:
        return "-"
    s = f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"
    return s + (f" ({ms / ref:.2f}x floor)" if ref else "")


ROWS = ["floor fwd", "ours fwd", "official kernel fwd (fp32)", "floor fwd+bwd", "ours fwd+bwd", "projection fwd",
        "projection fwd+bwd", "our layer fwd", "our layer fwd+bwd", "official layer fwd (fp32)",
        "official layer fwd+bwd (fp32)", "official layer fwd (amp fp16)", "official layer fwd+bwd (amp fp16)",
        "cuDNN LSTM fwd", "cuDNN LSTM fwd+bwd"]
FLOOR_OF = {"ours fwd": "floor fwd", "ours fwd+bwd": "floor fwd+bwd", "official kernel fwd (fp32)": "floor fwd"}


def cfg_str(cfg: tb.KernelConfig | None) -> str:
    if cfg is None:
        return "-"
    base = f"{cfg.sched} block {cfg.block_h} vec {cfg.vec} ({cfg.num_warps} warps)"
    if cfg.sched == "step":
        return base + f" stages {cfg.stages}"
    return base + f" T {cfg.t_fwd}, {'recompute' if cfg.recompute else 'saved c'}"


def defaults_table(choice: dict[str, tb.KernelConfig]) -> str:
    """The :data:`sru_lm.ops.triton_backend.DEFAULTS` entries to paste, one per measured size class."""
    lines = [f"DEFAULTS_MEASURED = {bool(choice)}", "DEFAULTS: dict[str, KernelConfig] = {"]
    for name, _ in tb.SIZE_CLASSES:
        cfg = choice.get(name, tb.DEFAULTS[name])
        fields = ", ".join(f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg)
                           if getattr(cfg, f.name) != f.default)
        note = "" if name in choice else "  # not measured: kept"
        lines.append(f"    {name!r}: KernelConfig({fields}),{note}")
    return "\n".join(lines + ["}"])


def official_layer(r: dict[str, float]) -> tuple[str, float | None]:
    """The official layer fwd+bwd that one column compares against: amp fp16 if timed (the bf16 columns),
    else fp32."""
    for tag in ("amp fp16", "fp32"):
        if f"official layer fwd+bwd ({tag})" in r:
            return tag, r[f"official layer fwd+bwd ({tag})"]
    return "", None


def ratio(ours: float | None, theirs: float | None) -> str:
    """``ours / theirs``, with how many times faster ours is; '-' when either is missing."""
    if not ours or not theirs:
        return "-"
    return f"{ours / theirs:.2f} ({theirs / ours:.1f}x faster)" if ours <= theirs else f"{ours / theirs:.2f} (slower)"


def official_table(results: dict, note: str = "") -> list[str]:
    """Ours against the official ``sru`` 2.6.0 at each column, measured in this run: the recurrence forward
    against its kernel forward (fp32, its only fast dtype), one layer fwd+bwd against its layer (amp fp16 in
    the bf16 columns, fp32 in the fp32 ones), the ratios ours/official, and how far its h is from ours."""
    out = ["", "Against the official `sru` 2.6.0, same run (ms; ours/official, below 1 is faster):", "",
           "| size | ours fwd | official kernel fwd (fp32) | ours/official | our layer fwd+bwd | "
           "official layer fwd+bwd | ours/official | official vs ours max abs h diff |", "|" + "---|" * 8]
    for (L, B, d), dt in results:
        r = results[((L, B, d), dt)]
        tag, lay = official_layer(r)
        diff = r.get("official vs ours max |h diff|")
        out.append(f"| L={L} B={B} d={d} {dt} | {fmt(r.get('ours fwd'))} | {fmt(r.get('official kernel fwd (fp32)'))}"
                   f" | {ratio(r.get('ours fwd'), r.get('official kernel fwd (fp32)'))}"
                   f" | {fmt(r.get('our layer fwd+bwd'))} | {fmt(lay)}{f' ({tag})' if tag else ''}"
                   f" | {ratio(r.get('our layer fwd+bwd'), lay)} | {'-' if diff is None else f'{diff:.1e}'} |")
    if note:
        out += ["", f"Official sru: {note}"]
    return out


def report(results: dict, checks: dict, sweeps: dict, decode: dict, seconds: float, decode_d: int = DECODE[0],
           official_note: str = "") -> str:
    """Markdown: machine, date, command, the timing table, the goals' ratios, ours against the official
    ``sru`` (a column of '-' and ``official_note`` when it was not timed), the sweep and the defaults."""
    cols = list(results)
    out = [f"# SRU recurrence on the GPU ({now()})", "", f"- machine: {machine_description()}",
           f"- command: `{command_line()}` ({seconds:.0f} s)",
           f"- configs: the defaults table ({'measured' if tb.DEFAULTS_MEASURED else 'placeholders, not measured'})"
           " unless a row says otherwise; median ms of do_bench", "",
           "| what (ms) | " + " | ".join(f"L={L} B={B} d={d} {dt}" for (L, B, d), dt in cols) + " |",
           "|" + "---|" * (len(cols) + 1)]
    for row in ROWS:
        cells = [fmt(results[k].get(row), results[k].get(FLOOR_OF.get(row, ""))) for k in cols]
        if any(c != "-" for c in cells):
            out.append(f"| {row} | " + " | ".join(cells) + " |")
    out.append("| correctness vs reference (max scaled error) | "
               + " | ".join(checks.get(k, "-") for k in cols) + " |")
    out += ["", "Goals (this run):", ""]
    for k in cols:
        r = results[k]
        parts = []
        if r.get("ours fwd") and r.get("floor fwd"):
            parts.append(f"recurrence fwd {r['ours fwd'] / r['floor fwd']:.2f}x floor (goal <= 1.5x)")
        if r.get("ours fwd") and r.get("official kernel fwd (fp32)"):
            parts.append(f"{r['official kernel fwd (fp32)'] / r['ours fwd']:.1f}x faster than the official kernel "
                         "(goal >= 3x)")
        if r.get("ours fwd+bwd") and r.get("floor fwd+bwd"):
            parts.append(f"fwd+bwd {r['ours fwd+bwd'] / r['floor fwd+bwd']:.2f}x floor (goal <= 2x)")
        lay = r.get("our layer fwd+bwd")
        if lay and r.get("projection fwd+bwd") and r.get("floor fwd+bwd"):
            parts.append(f"layer fwd+bwd {lay / (r['projection fwd+bwd'] + r['floor fwd+bwd']):.2f}x "
                         "(matmuls + floor) (goal <= 1.3x in bf16)")
        if lay and r.get("cuDNN LSTM fwd+bwd"):
            parts.append(f"{r['cuDNN LSTM fwd+bwd'] / lay:.1f}x faster than cuDNN LSTM (goal >= 15x in bf16)")
        tag, official_lay = official_layer(r)
        if lay and official_lay:
            parts.append(f"{official_lay / lay:.1f}x faster than the official layer ({tag})")
        out.append(f"- L={k[0][0]} B={k[0][1]} d={k[0][2]} {k[1]}: " + ("; ".join(parts) or "-"))
    out += official_table(results, official_note)
    if decode:
        batches = sorted({B for _, B in decode})
        out += ["", f"Decode, one token, d={decode_d}, bf16 (ms):", "",
                "| what | " + " | ".join(f"B={B}" for B in batches) + " |", "|" + "---|" * (len(batches) + 1)]
        for name in dict.fromkeys(n for n, _ in decode):
            out.append(f"| {name} | " + " | ".join(fmt(decode.get((name, B))) for B in batches) + " |")
    if sweeps:
        choice = {}
        out += ["", "Sweep (ms, fwd / fwd+bwd; best first by fwd+bwd):", ""]
        for (size, dt), res in sweeps.items():
            ranked = sorted((c for c in res if res[c]), key=lambda c: res[c][1])
            L, B, d = size
            out.append(f"- L={L} B={B} d={d} {dt}: " + "; ".join(
                f"{cfg_str(c)}: {res[c][0]:.3f} / {res[c][1]:.3f}" for c in ranked[:8]))
            f_best = best(res, 0)
            out.append(f"  - fastest forward: {cfg_str(f_best)} {res[f_best][0]:.3f}" if f_best else "  - none ran")
            if dt == "bf16" and ranked:
                choice[tb.size_class(B, 1, d)] = ranked[0]
        out += ["", "Defaults table from this sweep (bf16 fwd+bwd), for sru_lm/ops/triton_backend.py:", "",
                "```python", defaults_table(choice), "```"]
    return "\n".join(out) + "\n"


def run(sizes=SIZES, dtypes=DTYPES, device=None, do_sweep=True, decode=True, official=True,
        log=print) -> tuple[str, bool]:
    """Checks, sweep, timings and decode at these sizes, the official ``sru`` beside ours when ``official``
    (CUDA only); returns (markdown report, all checks passed)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.time()
    if not official:
        peer = OfficialSRU("not asked for (--no-official)")
    elif device.type != "cuda":
        peer = OfficialSRU("its kernel needs a CUDA device")
    else:
        peer = OfficialSRU.start()  # compiles while the checks and the sweep run
    checks, ok = {}, True
    for L, B, d in sizes:
        for dt, dtype in dtypes.items():
            good, err = check(L, B, d, dtype, device)
            ok &= good
            checks[((L, B, d), dt)] = f"{'ok' if good else 'FAIL'} {err:.1e}"
            log(f"check L={L} B={B} d={d} {dt}: {checks[((L, B, d), dt)]}")
    sweeps, results = {}, {}
    for L, B, d in sizes:
        for dt, dtype in dtypes.items():
            if do_sweep:
                sweeps[((L, B, d), dt)] = sweep(L, B, d, dtype, device, sweep_grid())
            results[((L, B, d), dt)] = r = time_size(L, B, d, dtype, device)
            if peer.ready():
                try:
                    r.update(time_official(L, B, d, dtype, device, peer.sru))
                except Exception as e:  # noqa: BLE001 - a peer that fails is a note, never the end of the run
                    peer.error = f"timing failed at L={L} B={B} d={d} {dt}: {type(e).__name__}: {_reason(e)}"
                    peer.sru = None
            log(f"timed L={L} B={B} d={d} {dt} ({time.time() - t0:.0f} s)")
    if peer.error:
        log(f"official sru: {peer.error}")
    dec = {}
    d, batches = DECODE if device.type == "cuda" else (sizes[0][2], (1, 2))
    for B in batches if decode else ():
        layers = STACK_LAYERS if device.type == "cuda" else 2
        dec.update({(name, B): ms for name, ms in time_decode(d, B, device, layers).items()})
        if peer.ready():
            with contextlib.suppress(Exception):  # the sequence timings above already vouch for the build
                dec.update({(name, B): ms for name, ms in time_official_decode(d, B, device, peer.sru).items()})
    return report(results, checks, sweeps, dec, time.time() - t0, d, official_note=peer.error), ok
