"""GPU benchmark of the SRU recurrence: our Triton kernels beside the official `sru` 2.6.0 CUDA kernel,
cuDNN nn.LSTM, the projection matmul alone, and the bytes floor (a device copy of the same byte count).

    python scripts/bench_gpu.py --out benchmarks/bench_gpu_h200.md     # one GPU, under 6 minutes
    python scripts/bench_gpu.py --quick                                # no block-size sweep
    TRITON_INTERPRET=1 python scripts/bench_gpu.py --dry-run           # CPU: the logic, tiny sizes

It first checks our forward and every gradient against the reference at the real sizes (exit status 1
on a mismatch), sweeps a few block sizes and both backward modes (saved c / recompute), then times
everything with triton.testing.do_bench (median, cold L2) and prints the tables. The official kernel is
built from a private temporary copy of the installed package's CUDA source with `.type()` patched to
`.scalar_type()` (it does not build on torch >= 2.10 otherwise); it is skipped if `sru` is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import re
import statistics
import sys
import tempfile
import threading
import time

SIZES = [(128, 32, 512), (1024, 16, 2048)]  # (L, B, d), sequence-first
DRY_SIZES = [(12, 2, 40)]
FWD_SWEEP = [  # (block_h, vec, t_fwd); T=16 with vec=2 spills registers in fp32 (ptxas, sm_90)
    (32, 1, 8), (64, 1, 8), (128, 1, 8), (32, 1, 16), (64, 1, 16), (128, 2, 8), (128, 2, 16),
]
BWD_SWEEP = [(True, 4), (True, 8), (True, 16), (False, 4), (False, 8)]  # (recompute, t_bwd)
DECODE_D, DECODE_BATCHES, STACK_LAYERS = 2048, (1, 32), 12


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="write the tables, with date, device and command, to this markdown file")
    p.add_argument("--quick", action="store_true", help="skip the block-size sweep (heuristic config only)")
    p.add_argument("--no-official", action="store_true", help="skip building and timing the official sru")
    p.add_argument("--sizes", default=",".join(f"{L}x{B}x{d}" for L, B, d in SIZES),
                   help="comma-separated LxBxd sizes (sequence-first)")
    p.add_argument("--dtypes", default="fp32,bf16", help="comma-separated, of fp32 and bf16")
    p.add_argument("--no-decode", action="store_true", help="skip the one-token decode table")
    p.add_argument("--dry-run", action="store_true",
                   help="run on CPU under TRITON_INTERPRET=1 at tiny sizes: correctness and table logic only")
    return p.parse_args()


args = parse_args()
if args.dry_run:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

from sru_lm.ops import triton_backend as tb  # noqa: E402
from sru_lm.ops.naive import sru_recurrence_ref  # noqa: E402

DEVICE = torch.device("cpu" if args.dry_run else "cuda")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------------


def bench(fn, grads=None) -> float:
    """Median milliseconds of fn(): do_bench on a GPU, a few wall-clock runs under the interpreter."""
    if DEVICE.type == "cuda":
        return triton.testing.do_bench(fn, warmup=10, rep=60, grad_to_none=grads, return_mode="median")
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_floor(nbytes: int) -> float:
    """Time to move ``nbytes`` (read + written) through memory: a copy of nbytes/2."""
    src = torch.empty(max(nbytes // 2, 4) // 4, dtype=torch.float32, device=DEVICE)
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src))


# ------------------------------------------------------------------------------------------------------
# The official sru 2.6.0 kernel, built from a patched private copy
# ------------------------------------------------------------------------------------------------------


class Official:
    """Builds the official extension in a background thread; ``ready()`` joins it."""

    def __init__(self, enabled: bool):
        self.error = "" if enabled else "skipped (--no-official or --dry-run)"
        self.sru = None
        self._thread = None
        if enabled:
            self._thread = threading.Thread(target=self._build, daemon=True)
            self._thread.start()

    def _build(self):
        try:
            import importlib.util

            spec = importlib.util.find_spec("sru")
            if spec is None:
                raise RuntimeError("sru is not installed (pip install sru==2.6.0)")
            from torch.utils import cpp_extension

            src = os.path.join(os.path.dirname(spec.origin), "csrc")
            tmp = tempfile.mkdtemp(prefix="sru_official_")
            names = ["sru_cuda_impl.cpp", "sru_cuda_kernel.cu", "sru_cpu_impl.cpp"]
            for name in names:
                text = open(os.path.join(src, name)).read()
                text = text.replace(".type().is_cuda()", ".is_cuda()")
                text = text.replace(".type().scalarType()", ".scalar_type()")
                text = re.sub(r"\.type\(\)", ".scalar_type()", text)
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
            major, minor = torch.cuda.get_device_capability()
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
            cpp_extension.load(
                name="sru_official_patched", sources=[os.path.join(tmp, n) for n in names],
                build_directory=tmp, extra_cflags=["-O3"], extra_cuda_cflags=["-O3"],
                is_python_module=False, verbose=False,
            )
            # the package JIT-builds its unpatched sources at import: the ops are registered already
            real_load = cpp_extension.load
            cpp_extension.load = lambda *a, **k: None
            try:
                import sru
            finally:
                cpp_extension.load = real_load
            self.sru = sru
        except Exception as e:  # reported in the table, never fatal
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"

    def ready(self) -> bool:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.sru is not None


# ------------------------------------------------------------------------------------------------------
# Inputs and layers
# ------------------------------------------------------------------------------------------------------


def scan_inputs(L, B, d, dtype, grad=True, options=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE)

    U = rnd(L, B, 3 * d).to(dtype).requires_grad_(grad)
    x = rnd(L, B, d).to(dtype).requires_grad_(grad)
    v, b = rnd(1, 2, d, scale=0.5).requires_grad_(grad), rnd(1, 2, d, scale=0.5).requires_grad_(grad)
    c0 = rnd(B, d).requires_grad_(grad) if options else None
    pad = (torch.rand(L, B, generator=g) < 0.1).to(DEVICE) if options else None
    drop = ((torch.rand(B, d, generator=g) < 0.8).float() / 0.8).to(DEVICE) if options else None
    return [U, x, v, b, c0, pad, drop, False, 1.3]


def run_scan(inp):
    return tb.sru_recurrence_triton(*inp)


def fwd_bwd(fn, inp, gh):
    def step():
        h, _ = fn(inp)
        torch.autograd.backward(h, gh)

    return step


def check_correctness(L, B, d, dtype) -> tuple[bool, str]:
    """Forward and every gradient vs the reference, all options on (initial state, padding, dropout)."""
    inp = scan_inputs(L, B, d, dtype, options=True, seed=1)
    tensors = [t for t in inp[:5] if t is not None]
    gh = torch.randn(L, B, d, device=DEVICE).to(dtype)
    gc = torch.randn(B, d, device=DEVICE)
    out = []
    for fn in (tb.sru_recurrence_triton, sru_recurrence_ref):
        h, c = fn(*inp)
        grads = torch.autograd.grad((h.float() * gh.float()).sum() + (c * gc).sum(), tensors)
        out.append((h, c, *grads))
    tol = dict(atol=1e-4, rtol=1e-3) if dtype == torch.float32 else dict(atol=2e-2, rtol=1.6e-2)
    worst, ok = 0.0, True
    for name, a, r in zip(["h", "c_last", "dU", "dx", "dv", "db", "dc0"], out[0], out[1], strict=True):
        scale = r.float().abs().max().clamp_min(1.0)
        err = ((a.float() - r.float()).abs().max() / scale).item()
        worst = max(worst, err)
        try:
            torch.testing.assert_close(a.float() / scale, r.float() / scale, **tol)
        except AssertionError:
            ok = False
            print(f"  MISMATCH {name} at L={L} B={B} d={d} {dtype}: max scaled error {err:.2e}", flush=True)
    return ok, f"{worst:.1e}"


class OurLayer:
    """Projection + recurrence, input = hidden = d, k = 3: what an SRU layer costs with our kernel."""

    def __init__(self, d, dtype):
        self.W = (torch.randn(d, 3 * d, device=DEVICE) / d**0.5).to(dtype).requires_grad_()
        self.v = (torch.rand(1, 2, d, device=DEVICE) - 0.5).requires_grad_()
        self.b = torch.zeros(1, 2, d, device=DEVICE).requires_grad_()

    def __call__(self, x):
        L, B, d = x.shape
        U = (x.reshape(L * B, d) @ self.W).view(L, B, 3 * d)  # gate blocks [U_x | U_f | U_r]
        return tb.sru_recurrence_triton(U, x, self.v, self.b, None, None, None, False, 1.0)

    def params(self):
        return [self.W, self.v, self.b]


def fmt(ms: float | None, ref: float | None = None, label: str = "floor") -> str:
    if ms is None:
        return "-"
    s = f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"
    if ref:
        s += f" ({ms / ref:.2f}x {label})"
    return s


# ------------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------------


def sweep(L, B, d, dtype, lines) -> tuple[dict, dict]:
    """Best forward config, then best backward mode for it; returns the two override dicts."""
    inp = scan_inputs(L, B, d, dtype)
    gh = torch.randn(L, B, d, device=DEVICE).to(dtype)
    fwd_times = {}
    for block_h, vec, t_fwd in FWD_SWEEP if DEVICE.type == "cuda" else FWD_SWEEP[:2]:
        tb.set_kernel_config(block_h=block_h, vec=vec, t_fwd=t_fwd)
        with torch.no_grad():
            fwd_times[(block_h, vec, t_fwd)] = bench(lambda: run_scan(inp))
    best_fwd = min(fwd_times, key=fwd_times.get)
    fwd_cfg = dict(zip(("block_h", "vec", "t_fwd"), best_fwd, strict=True))
    bwd_times = {}
    for recompute, t_bwd in BWD_SWEEP:
        tb.set_kernel_config(**fwd_cfg, recompute=recompute, t_bwd=t_bwd)
        bwd_times[(recompute, t_bwd)] = bench(fwd_bwd(run_scan, inp, gh), grads=inp[:4])
    best_bwd = min(bwd_times, key=bwd_times.get)
    tb.set_kernel_config()
    fmt_f = ", ".join(f"{k[0]}/{k[1]}/{k[2]}: {t:.3f}" for k, t in fwd_times.items())
    fmt_b = ", ".join(f"{'recompute' if k[0] else 'saved c'}/{k[1]}: {t:.3f}" for k, t in bwd_times.items())
    lines.append(f"- L={L} B={B} d={d} {dtype_name(dtype)}: fwd (block_h/vec/t_fwd) {fmt_f}; "
                 f"fwd+bwd (mode/t_bwd) {fmt_b}")
    return fwd_cfg, dict(fwd_cfg, recompute=best_bwd[0], t_bwd=best_bwd[1])


def dtype_name(dtype):
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]


def time_size(L, B, d, dtype, cfgs, official: Official) -> dict:
    """All timings at one size and dtype; keys are row names."""
    r: dict[str, float | None] = {}
    es = torch.tensor([], dtype=dtype).element_size()
    N = L * B * d
    r["floor fwd"] = copy_floor(5 * es * N + 4 * B * d)  # read U (3d) + x, write h; c_last fp32
    r["floor fwd+bwd"] = copy_floor((5 + 9) * es * N)  # + read U, x, dh; write dU, dx
    inp = scan_inputs(L, B, d, dtype)
    gh = torch.randn(L, B, d, device=DEVICE).to(dtype)
    fwd_cfg, bwd_cfg = cfgs
    for tag, cfg_f, cfg_b in (("heuristic", {}, {}), ("best", fwd_cfg, bwd_cfg)):
        if tag == "best" and not fwd_cfg:
            break
        tb.set_kernel_config(**cfg_f)
        with torch.no_grad():
            r[f"ours fwd ({tag})"] = bench(lambda: run_scan(inp))
        tb.set_kernel_config(**cfg_b)
        r[f"ours fwd+bwd ({tag})"] = bench(fwd_bwd(run_scan, inp, gh), grads=inp[:4])
    tb.set_kernel_config(**bwd_cfg)

    # the projection alone: forward matmul, and forward + the two backward matmuls
    X = torch.randn(L * B, d, device=DEVICE, dtype=dtype)
    W = torch.randn(d, 3 * d, device=DEVICE, dtype=dtype)
    dU = torch.randn(L * B, 3 * d, device=DEVICE, dtype=dtype)
    r["projection fwd"] = bench(lambda: X @ W)
    r["projection fwd+bwd"] = bench(lambda: (X @ W, dU @ W.T, X.T @ dU))

    layer = OurLayer(d, dtype)
    xin = torch.randn(L, B, d, device=DEVICE, dtype=dtype).requires_grad_()
    with torch.no_grad():
        r["our layer fwd"] = bench(lambda: layer(xin))
    r["our layer fwd+bwd"] = bench(lambda: torch.autograd.backward(layer(xin)[0], gh),
                                   grads=[xin, *layer.params()])

    if DEVICE.type == "cuda":
        lstm = torch.nn.LSTM(d, d).to(DEVICE, dtype)
        r["cuDNN LSTM fwd"] = _no_grad_bench(lambda: lstm(xin))
        r["cuDNN LSTM fwd+bwd"] = bench(lambda: torch.autograd.backward(lstm(xin)[0], gh),
                                        grads=[xin, *lstm.parameters()])
        del lstm
    if official.ready():
        try:  # a peer that fails is reported in its rows' place, never fatal
            r.update(time_official(L, B, d, dtype, official.sru))
        except Exception as e:  # noqa: BLE001
            official.error = f"timing failed at L={L} B={B} d={d} {dtype_name(dtype)}: {type(e).__name__}: " + (
                str(e).splitlines()[-1][:200] if str(e) else "")
            print(official.error, flush=True)
    tb.set_kernel_config()
    return r


def _no_grad_bench(fn):
    with torch.no_grad():
        return bench(fn)


def time_official(L, B, d, dtype, sru) -> dict:
    """The official kernel alone (fp32: it has no bf16) and the official layer (fp32, or amp fp16)."""
    r = {}
    if dtype == torch.float32:
        U = torch.randn(L, B, d * 3, device=DEVICE)
        x = torch.randn(L, B, d, device=DEVICE)
        wc, bias = torch.rand(2 * d, device=DEVICE) - 0.5, torch.zeros(2 * d, device=DEVICE)
        c0 = torch.zeros(B, d, device=DEVICE)
        op = torch.ops.sru_cuda.sru_forward_simple
        r["official kernel fwd"] = bench(lambda: op(U, x, wc, bias, c0, None, None, L, B, d))
        # cross-check: same math on the interleaved (L, B, d, 3) layout
        h_off = op(U, x, wc, bias, c0, None, None, L, B, d)[0]
        U_ours = U.view(L, B, d, 3).permute(0, 1, 3, 2).reshape(L, B, 3 * d)
        with torch.no_grad():
            h_ours, _ = tb.sru_recurrence_triton(U_ours, x, wc.view(1, 2, d), bias.view(1, 2, d),
                                                 None, None, None, False, 1.0)
        r["official vs ours max |dh|"] = (h_off - h_ours).abs().max().item()
    amp = dtype != torch.float32
    cell = sru.SRUCell(d, d, amp_recurrence_fp16=amp).to(DEVICE)
    # amp: fp16 input, as its highway term must match the fp16 U inside the official kernel
    xin = torch.randn(L, B, d, device=DEVICE, dtype=torch.float16 if amp else torch.float32).requires_grad_()
    gh = torch.randn(L, B, d, device=DEVICE)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.float16)) if amp else contextlib.nullcontext

    def fwd():
        with ctx():
            return cell(xin)

    def fwdbwd():
        with ctx():
            h, _ = cell(xin)
        torch.autograd.backward(h, gh.to(h.dtype))

    tag = "amp fp16" if amp else "fp32"
    r[f"official layer fwd ({tag})"] = _no_grad_bench(fwd)
    r[f"official layer fwd+bwd ({tag})"] = bench(fwdbwd, grads=[xin, *cell.parameters()])
    return r


def time_decode(official: Official) -> dict:
    """One token, d = DECODE_D, bf16: our step eager and in a CUDA graph, the layer step, the peers."""
    r = {}
    for B in DECODE_BATCHES:
        r.update({(name, B): ms for name, ms in _decode_at(B, official).items()})
    return r


def _decode_at(B: int, official: Official) -> dict:
    d, dtype, r = DECODE_D, torch.bfloat16, {}
    layer = OurLayer(d, dtype)
    W, v, b = layer.W.detach(), layer.v.detach(), layer.b.detach()
    x = torch.randn(B, d, device=DEVICE, dtype=dtype)
    U = torch.randn(B, 3 * d, device=DEVICE, dtype=dtype)
    c = torch.zeros(B, d, device=DEVICE)
    h = torch.empty(B, d, device=DEVICE, dtype=dtype)

    def one_layer():
        tb.sru_step_triton_(x @ W, x, v, b, c, h)

    stack = [OurLayer(d, dtype) for _ in range(STACK_LAYERS)]
    states = [torch.zeros(B, d, device=DEVICE) for _ in stack]
    outs = [torch.empty(B, d, device=DEVICE, dtype=dtype) for _ in stack]

    def stack_step():
        inp = x
        for lay, cs, hs in zip(stack, states, outs, strict=True):
            tb.sru_step_triton_(inp @ lay.W.detach(), inp, lay.v.detach(), lay.b.detach(), cs, hs)
            inp = hs

    r["ours step, eager"] = bench(lambda: tb.sru_step_triton(U, x, v, b, c))
    r["ours layer step (matmul + step), eager"] = bench(one_layer)
    r[f"ours {STACK_LAYERS}-layer stack step, eager"] = bench(stack_step)
    if DEVICE.type == "cuda":
        r["ours layer step (matmul + step), CUDA graph"] = bench(capture(one_layer).replay)
        r[f"ours {STACK_LAYERS}-layer stack step, CUDA graph"] = bench(capture(stack_step).replay)
    lstm = torch.nn.LSTMCell(d, d).to(DEVICE, dtype)
    hc = (torch.zeros(B, d, device=DEVICE, dtype=dtype), torch.zeros(B, d, device=DEVICE, dtype=dtype))
    r["nn.LSTMCell step, eager"] = _no_grad_bench(lambda: lstm(x, hc))
    if official.ready():
        cell = official.sru.SRUCell(d, d).to(DEVICE)
        xf, c0 = x.float(), torch.zeros(B, d, device=DEVICE)
        r["official sru layer step (fp32), eager"] = _no_grad_bench(lambda: cell(xf, c0))
    return r


def capture(fn) -> torch.cuda.CUDAGraph:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        for _ in range(3):  # compile and warm up outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        fn()
    return graph


# ------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------

ROWS = [
    "floor fwd", "ours fwd (heuristic)", "ours fwd (best)", "official kernel fwd",
    "floor fwd+bwd", "ours fwd+bwd (heuristic)", "ours fwd+bwd (best)",
    "projection fwd", "projection fwd+bwd", "our layer fwd", "our layer fwd+bwd",
    "official layer fwd (fp32)", "official layer fwd+bwd (fp32)",
    "official layer fwd (amp fp16)", "official layer fwd+bwd (amp fp16)",
    "cuDNN LSTM fwd", "cuDNN LSTM fwd+bwd",
]
FLOOR_OF = {
    "ours fwd (heuristic)": "floor fwd", "ours fwd (best)": "floor fwd", "official kernel fwd": "floor fwd",
    "ours fwd+bwd (heuristic)": "floor fwd+bwd", "ours fwd+bwd (best)": "floor fwd+bwd",
}


def render(results: dict, checks: dict, decode: dict, sweep_lines: list, official: Official) -> str:
    cols = [(s, dt) for s in SIZES_RUN for dt in DTYPES]
    head = "| what (ms, median) | " + " | ".join(f"L={s[0]} B={s[1]} d={s[2]} {dt}" for s, dt in cols) + " |"
    out = [head, "|" + "---|" * (len(cols) + 1)]
    for row in ROWS:
        cells = []
        for key in cols:
            r = results.get(key, {})
            floor = r.get(FLOOR_OF.get(row, ""))
            cells.append(fmt(r.get(row), floor))
        if any(c != "-" for c in cells):
            out.append(f"| {row} | " + " | ".join(cells) + " |")
    out.append("| correctness vs reference (max scaled error) | "
               + " | ".join(checks.get(k, "-") for k in cols) + " |")

    out += ["", "Goals (ratios in this run):", ""]
    for key in cols:
        r = results.get(key, {})
        name = f"L={key[0][0]} B={key[0][1]} d={key[0][2]} {key[1]}"
        fwd = _best(r, "ours fwd")
        parts = []
        if fwd and r.get("floor fwd"):
            parts.append(f"recurrence fwd {fwd / r['floor fwd']:.2f}x floor (goal <= 1.5x)")
        if fwd and r.get("official kernel fwd"):
            parts.append(f"{r['official kernel fwd'] / fwd:.1f}x faster than the official kernel (goal >= 4x)")
        lay = r.get("our layer fwd+bwd")
        if lay and r.get("projection fwd+bwd") and r.get("floor fwd+bwd"):
            parts.append(f"layer fwd+bwd {lay / (r['projection fwd+bwd'] + r['floor fwd+bwd']):.2f}x "
                         "(matmuls + recurrence floor) (goal <= 1.2x in bf16)")
        if lay and r.get("official layer fwd+bwd (amp fp16)"):
            parts.append(f"{r['official layer fwd+bwd (amp fp16)'] / lay:.1f}x faster than official amp fp16 "
                         "(goal >= 1.7x)")
        if lay and r.get("cuDNN LSTM fwd+bwd"):
            parts.append(f"{r['cuDNN LSTM fwd+bwd'] / lay:.1f}x faster than cuDNN LSTM (goal >= 20x in bf16)")
        if "official vs ours max |dh|" in r:
            parts.append(f"official vs ours max |h diff| {r['official vs ours max |dh|']:.1e}")
        out.append(f"- {name}: " + ("; ".join(parts) if parts else "-"))
    if decode:
        out += ["", f"Decode, one token, d={DECODE_D}, bf16 (ms, median):", "",
                "| what | " + " | ".join(f"B={B}" for B in DECODE_BATCHES) + " |",
                "|" + "---|" * (len(DECODE_BATCHES) + 1)]
        for name in dict.fromkeys(k[0] for k in decode):
            out.append(f"| {name} | " + " | ".join(fmt(decode.get((name, B))) for B in DECODE_BATCHES) + " |")
    if sweep_lines:
        out += ["", "Block-size sweep (ms):", "", *sweep_lines]
    if official.error:
        out += ["", f"Official sru: {official.error}"]
    return "\n".join(out)


def _best(r, prefix):
    vals = [v for k, v in r.items() if k.startswith(prefix + " (") and v]
    return min(vals) if vals else None


def main() -> int:
    global SIZES_RUN, DECODE_D, DECODE_BATCHES, STACK_LAYERS
    t_start = time.time()
    SIZES_RUN = DRY_SIZES if args.dry_run else [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    unknown = set(args.dtypes.split(",")) - set(DTYPES)
    if unknown or any(len(s) != 3 for s in SIZES_RUN):
        raise SystemExit(f"--sizes must be LxBxd,... and --dtypes a subset of {sorted(DTYPES)}; got "
                         f"{args.sizes!r}, {args.dtypes!r}")
    for name in set(DTYPES) - set(args.dtypes.split(",")):
        del DTYPES[name]
    if args.dry_run:
        DECODE_D, DECODE_BATCHES, STACK_LAYERS = 40, (1, 3), 2
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: run with --dry-run (under TRITON_INTERPRET=1) to check the logic on CPU")
        return 2
    official = Official(enabled=not (args.no_official or args.dry_run))
    torch.manual_seed(0)

    checks, all_ok = {}, True
    for L, B, d in SIZES_RUN:
        for dt, dtype in DTYPES.items():
            ok, err = check_correctness(L, B, d, dtype)
            all_ok &= ok
            checks[((L, B, d), dt)] = ("ok " if ok else "FAIL ") + err
            print(f"check L={L} B={B} d={d} {dt}: {checks[((L, B, d), dt)]}", flush=True)

    results, sweep_lines = {}, []
    for L, B, d in SIZES_RUN:
        for dt, dtype in DTYPES.items():
            cfgs = ({}, {}) if args.quick else sweep(L, B, d, dtype, sweep_lines)
            results[((L, B, d), dt)] = time_size(L, B, d, dtype, cfgs, official)
            print(f"timed L={L} B={B} d={d} {dt} ({time.time() - t_start:.0f} s)", flush=True)
    decode = {} if args.no_decode else time_decode(official)

    table = render(results, checks, decode, sweep_lines, official)
    print(table)
    if args.out:
        device = torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU (Triton interpreter)"
        header = (f"# SRU recurrence on the GPU\n\nDate: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} "
                  f"UTC. Device: {device}. torch {torch.__version__}, triton {triton.__version__}.\n"
                  f"Command: `{' '.join(['python', *sys.argv])}` ({time.time() - t_start:.0f} s).\n\n")
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(header + table + "\n")
    return 0 if all_ok else 1


SIZES_RUN = SIZES

if __name__ == "__main__":
    sys.exit(main())
