"""CPU fast path for the SRU recurrence: a C++ kernel compiled at first use, with an analytic backward.

Why a C++ kernel. The recurrence is elementwise but serial in time, so anything that dispatches
torch ops per step pays their overhead L times. One layer at L=128 B=16 H=256, one thread, ms:

    one elementwise pass over U (torch.sigmoid(U), the floor's unit)     0.70-0.79
    this kernel, forward                                                 0.57
    TorchScript-compiled loop of fused torch ops, forward                3.8
    the reference loop (naive.py), forward                               11.6
    this kernel, forward + backward                                      2.8
    the reference, forward + autograd backward                           576

so the kernel costs about one elementwise pass: the recurrence is no longer visible next to the
projection matmul (see benchmarks/bench_sru.md for whole models). How it gets there (csrc/sru_cpu.cpp):
state in L1, units vectorized with `omp simd` (a branch-free exp, so the sigmoids vectorize), columns
of (batch, direction, units) split over torch's threads, and time as the outer loop within a thread
(against time-innermost: forward 0.65 vs 0.83 ms at the size above, backward 2.0 vs 5.1 ms at
L=256 B=8 H=512).
Backward is a reverse-time loop that recomputes f and r from the saved states c_t (one fp32 tensor
of h's size) rather than storing them.

When the build fails (no compiler, no ninja), :func:`available` is False, :func:`why_unavailable` says
why, and :func:`sru_lm.ops.select_backend` falls back to the reference, logging it once.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import ModuleType

import torch
from torch.autograd.function import once_differentiable

from .naive import state_dtype

_SOURCE = Path(__file__).with_name("csrc") / "sru_cpu.cpp"
_lock = threading.Lock()
_ext: ModuleType | None = None
_error: str | None = None
# Tests set this so the kernel pre-fills its outputs with NaN: an element it forgets to write fails.
poison_outputs = False
# SRU_LM_NO_CPU_EXT=1 keeps the kernel off (the reference runs instead); read once, at import.
_disabled = bool(os.environ.get("SRU_LM_NO_CPU_EXT"))


def _isa_flags() -> tuple[str, list[str]]:
    """Compiler flags for the vector ISA torch itself runs with on this CPU; the tag goes into the
    extension's name so a cache shared between different machines never loads a wrong binary."""
    cap = torch.backends.cpu.get_cpu_capability()
    if cap.startswith("AVX512"):
        return "avx512", ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                          "-mprefer-vector-width=512"]
    if cap.startswith("AVX2"):
        return "avx2", ["-mavx2", "-mfma", "-mf16c"]
    return "generic", []


def _build_dir(tag: str) -> str:
    root = os.environ.get("SRU_LM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sru_lm"
    )
    path = os.path.join(root, f"cpu_ext_torch{torch.__version__.split('+')[0]}_{tag}")
    os.makedirs(path, exist_ok=True)
    return path


def _load() -> ModuleType | None:
    global _ext, _error
    if _ext is not None or _error is not None or _disabled:
        return _ext
    with _lock:
        if _ext is None and _error is None:
            try:
                from torch.utils.cpp_extension import load

                tag, isa = _isa_flags()
                _ext = load(
                    name=f"sru_lm_cpu_{tag}",
                    sources=[str(_SOURCE)],
                    extra_cflags=["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", *isa],
                    extra_ldflags=["-fopenmp"],
                    build_directory=_build_dir(tag),
                    verbose=False,
                )
            except Exception as e:  # no compiler, no ninja, no headers: fall back, say why
                lines = str(e).strip().splitlines() or [""]
                compiler_error = next((ln.strip() for ln in lines if "error:" in ln), "")
                _error = f"{type(e).__name__}: {lines[0].split(': [')[0][:200]}" + (
                    f" ({compiler_error[:300]})" if compiler_error else "")
    return _ext


def available() -> bool:
    """True when the C++ kernel is built (compiling it on the first call, ~30 s, then cached).
    Called on every decode step, so it costs a global lookup once the kernel is loaded."""
    if _ext is not None:
        return True
    return not _disabled and _load() is not None


def why_unavailable() -> str:
    if _ext is not None:
        return ""
    if _disabled:
        return "disabled by SRU_LM_NO_CPU_EXT"
    _load()
    return _error or ""


def step_available() -> bool:
    return available()


class SRURecurrenceCPU(torch.autograd.Function):
    """The recurrence with an analytic backward. v, b, c0, dropout_mask arrive in the state dtype."""

    @staticmethod
    def forward(ctx, U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x):
        save = any(ctx.needs_input_grad[:5])
        h, c_last, c_all = _load().forward(U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x,
                                        save, poison_outputs)
        if save:
            ctx.save_for_backward(U, x, v, b, c0, mask_pad, dropout_mask, c_all)
        ctx.bidirectional, ctx.scale_x = bidirectional, scale_x
        return h, c_last

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_h, grad_c_last):
        U, x, v, b, c0, mask_pad, dropout_mask, c_all = ctx.saved_tensors
        grad_h = torch.zeros_like(U[..., : c_all.shape[-1]]) if grad_h is None else grad_h.contiguous()
        if grad_c_last is not None:
            grad_c_last = grad_c_last.contiguous()
        gU, gx, gvb, gc0 = _load().backward(U, x, v, b, c0, mask_pad, dropout_mask, ctx.bidirectional, ctx.scale_x,
                                         c_all, grad_h.to(U.dtype), grad_c_last, poison_outputs)
        gvb = gvb.sum(0)  # (D, 4, H): [v_f, v_r, b_f, b_r]
        return (gU, gx if x is not None else None, gvb[:, :2], gvb[:, 2:], gc0 if c0 is not None else None,
                None, None, None, None)


def sru_recurrence_cpu(
    U: torch.Tensor,
    x: torch.Tensor | None,
    v: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None,
    mask_pad: torch.Tensor | None,
    dropout_mask: torch.Tensor | None,
    bidirectional: bool,
    scale_x: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sru_lm.ops.sru_recurrence` on the C++ kernel; arguments already checked there."""
    if U.dtype == torch.float16:  # no vectorized fp16 in the kernel (see csrc): run it in fp32
        h, c_last = sru_recurrence_cpu(
            U.float(), None if x is None else x.float(), v, b, initial_state, mask_pad, dropout_mask,
            bidirectional, scale_x,
        )
        return h.half(), c_last
    acc = state_dtype(U.dtype)
    D = 2 if bidirectional else 1
    k = U.shape[-1] // (D * v.shape[-1])
    # Casts happen outside the Function so autograd routes the gradients back through them.
    args = (
        U.contiguous(),
        x.contiguous() if k == 3 else None,
        v.to(acc).contiguous(),
        b.to(acc).contiguous(),
        None if initial_state is None else initial_state.to(acc).contiguous(),
        None if mask_pad is None else mask_pad.contiguous(),
        None if dropout_mask is None else dropout_mask.to(acc).contiguous(),
        bidirectional,
        scale_x,
    )
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:5]):
        return SRURecurrenceCPU.apply(*args)
    h, c_last, _ = _load().forward(*args, False, poison_outputs)  # inference: no graph, no saved states
    return h, c_last


def sru_step_cpu(
    U: torch.Tensor,
    x: torch.Tensor | None,
    v: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    mask_pad: torch.Tensor | None,
    dropout_mask: torch.Tensor | None,
    scale_x: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step (:func:`sru_lm.ops.sru_step`) in one C++ call; through the autograd Function
    when gradients are needed."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (U, x, v, b, c)):
        h, c_new = sru_recurrence_cpu(
            U.unsqueeze(0), None if x is None else x.unsqueeze(0), v, b, c,
            None if mask_pad is None else mask_pad.unsqueeze(0), dropout_mask, False, scale_x,
        )
        return h[0], c_new
    return _load().step(U, x if U.shape[-1] == 3 * v.shape[-1] else None, v, b, c, mask_pad, dropout_mask, scale_x)
