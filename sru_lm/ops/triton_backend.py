"""Triton backend of the SRU recurrence: launchers, block-size choice, and the autograd custom op.

The kernels are in :mod:`sru_lm.ops.triton_kernels`. Forward and backward are ``torch.library``
custom ops (``sru_lm::sru_scan_fwd`` / ``sru_lm::sru_scan_bwd``) with fake implementations and a
registered autograd formula, so ``torch.compile`` keeps them in one graph as opaque calls.

Backward memory: the forward saves c_{t-1} either at every step (``recompute=False``: the backward
reads it back, 4 bytes per element each way) or once per chunk of ``t_bwd`` steps (``recompute=True``,
the default: the backward rebuilds the chunk's states in registers from U, which it reads anyway).
Recomputing moves about a fifth fewer bytes in bf16 training at the price of a second forward chain of
arithmetic per chunk; ``scripts/bench_gpu.py`` times both. Set ``SRU_LM_TRITON_CONFIG`` (e.g.
``"block_h=64,t_fwd=8,recompute=0"``) or call :func:`set_kernel_config` to override the heuristic.

Decoding: :func:`sru_step_triton_` updates the state in place and writes ``h`` into a given buffer, with
no allocation or host synchronisation, so a whole model's decode step (every layer's projection and
step) can be captured in one CUDA graph and replayed per token. One kernel for all layers at once is
not possible for a stack: layer l+1's U is a matmul of layer l's h.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os

import torch
from torch import Tensor

try:
    import triton

    _IMPORT_ERROR = ""
except Exception as e:  # pragma: no cover - depends on the install
    triton = None
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def why_unavailable() -> str:
    """Why the Triton kernels cannot run here ("" when they can)."""
    if _IMPORT_ERROR:
        return f"triton does not import ({_IMPORT_ERROR})"
    if not (torch.cuda.is_available() or _interpreting()):
        return "no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU tensors, slowly)"
    return ""


def available() -> bool:
    """True when Triton imports and there is a CUDA device or the interpreter is on."""
    return not why_unavailable()


# ----------------------------------------------------------------------------------------------------
# Block sizes
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """How a scan is cut into programs.

    block_h: hidden units per program (a power of 2); the launcher uses ``block_h // (32 * vec)`` warps.
    vec: adjacent units per thread (vector width of every load and store).
    t_fwd, t_bwd: time steps per prefetched chunk in the forward and backward kernels.
    recompute: the backward rebuilds c from one checkpoint per ``t_bwd`` steps (True) or reads c saved
        at every step (False).
    """

    block_h: int = 64
    vec: int = 1
    t_fwd: int = 8
    t_bwd: int = 8
    recompute: bool = True

    @property
    def num_warps(self) -> int:
        return max(1, self.block_h // (32 * self.vec))

    def __post_init__(self):
        for name in ("block_h", "vec", "t_fwd", "t_bwd"):
            val = getattr(self, name)
            if val < 1 or val & (val - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of 2, got {val}")


_overrides: dict = {}


def set_kernel_config(**kw) -> None:
    """Override fields of the heuristic :class:`KernelConfig` for every later call (none to reset)."""
    KernelConfig(**kw)  # validate names and values
    _overrides.clear()
    _overrides.update(kw)


def _env_overrides() -> dict:
    spec = os.environ.get("SRU_LM_TRITON_CONFIG", "")
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, val = item.partition("=")
        out[key.strip()] = bool(int(val)) if key.strip() == "recompute" else int(val)
    return out


@functools.lru_cache(maxsize=8)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def kernel_config(B: int, D: int, H: int, device: torch.device) -> KernelConfig:
    """The block sizes for a scan of B rows, D directions, H units: heuristic, then overrides.

    On a GPU: the widest block (one unit per thread) that still gives every SM at least two programs,
    since the scan is latency-bound when the columns B*D*H are few. Under the interpreter: wide blocks,
    because its cost is per operation, not per element.
    """
    if device.type == "cuda":
        n_sm = _num_sms(device.index if device.index is not None else torch.cuda.current_device())
        block = 32
        for cand in (256, 128, 64):
            if B * D * math.ceil(H / cand) >= 2 * n_sm:
                block = cand
                break
        cfg = KernelConfig(block_h=block)
    else:
        cfg = KernelConfig(block_h=min(64, triton.next_power_of_2(max(H, 1))))
    kw = {**_env_overrides(), **_overrides}
    return dataclasses.replace(cfg, **kw) if kw else cfg


def _save_every(cfg: KernelConfig | None = None) -> int:
    """How often the training forward saves c: every ``t_bwd`` steps when recomputing, else every step.

    Without ``cfg`` it reads only the overrides (no device query), so torch.compile traces it cheaply."""
    if cfg is None:
        kw = {**_env_overrides(), **_overrides}
        recompute, t_bwd = kw.get("recompute", KernelConfig.recompute), kw.get("t_bwd", KernelConfig.t_bwd)
        return t_bwd if recompute else 1
    return cfg.t_bwd if cfg.recompute else 1


# ----------------------------------------------------------------------------------------------------
# Launchers (internal entry points: they write into preallocated outputs, so tests can poison them)
# ----------------------------------------------------------------------------------------------------


def _dims(U: Tensor, v: Tensor, bidirectional: bool) -> tuple[int, int, int, int, int]:
    L, B = U.shape[0], U.shape[1]
    D = 2 if bidirectional else 1
    H = v.shape[-1]
    return L, B, D, H, U.shape[-1] // (D * H)


def _on_device(t: Tensor):
    """Triton launches on the current CUDA device, not the tensors' one."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _pad_bytes(mask_pad: Tensor | None) -> Tensor | None:
    return None if mask_pad is None else mask_pad.contiguous().view(torch.uint8)


def _fwd_into(
    U: Tensor, x: Tensor | None, v: Tensor, b: Tensor, initial_state: Tensor | None,
    mask_pad: Tensor | None, dropout_mask: Tensor | None, bidirectional: bool, scale_x: float,
    h: Tensor, c_last: Tensor, c_saved: Tensor | None, save_every: int, cfg: KernelConfig | None = None,
) -> None:
    """Forward scan into ``h`` (L, B, D*H), ``c_last`` (B, D*H) fp32 and, when ``save_every`` > 0,
    ``c_saved`` (ceil(L / save_every), B, D*H) fp32 = c_{t-1} at steps 0, save_every, 2*save_every, ..."""
    from .triton_kernels import _sru_fwd_kernel

    L, B, D, H, K = _dims(U, v, bidirectional)
    if B == 0 or H == 0:
        return
    cfg = cfg or kernel_config(B, D, H, U.device)
    U = U.contiguous()
    grid = (triton.cdiv(H, cfg.block_h), B, D)
    with _on_device(U):
        _sru_fwd_kernel[grid](
            U, x.contiguous() if K == 3 else U, v.contiguous(), b.contiguous(),
            initial_state.contiguous() if initial_state is not None else c_last,
            _pad_bytes(mask_pad) if mask_pad is not None else U,
            dropout_mask.contiguous() if dropout_mask is not None else U,
            h, c_last, c_saved if save_every > 0 else c_last,
            L, B, H, float(scale_x),
            D=D, K=K, HAS_C0=initial_state is not None, HAS_PAD=mask_pad is not None,
            HAS_M=dropout_mask is not None, SAVE_EVERY=save_every, T=cfg.t_fwd, BLOCK_H=cfg.block_h,
            VEC=cfg.vec, num_warps=cfg.num_warps,
        )


def _bwd_into(
    dh: Tensor, dc_last: Tensor | None, U: Tensor, x: Tensor | None, v: Tensor, b: Tensor,
    mask_pad: Tensor | None, dropout_mask: Tensor | None, c_saved: Tensor, bidirectional: bool,
    scale_x: float, save_every: int,
    dU: Tensor, dx: Tensor | None, dvb_partial: Tensor, dc0: Tensor, cfg: KernelConfig | None = None,
) -> None:
    """Backward scan into ``dU`` (like U), ``dx`` (like x, k=3), ``dc0`` (B, D*H) fp32 and the per-row
    partial sums ``dvb_partial`` (B, D, 4, H) fp32 = [dv_f, dv_r, db_f, db_r] (sum over B for dv, db).

    ``c_saved`` must come from :func:`_fwd_into` with the same ``save_every`` (1: c at every step; > 1:
    checkpoints, and the backward chunk is ``save_every`` steps)."""
    from .triton_kernels import _sru_bwd_kernel

    L, B, D, H, K = _dims(U, v, bidirectional)
    if B == 0 or H == 0:
        return
    if save_every < 1:
        raise ValueError(f"save_every must be >= 1 for the backward, got {save_every}")
    if L == 0:  # nothing to walk: the state's gradient passes straight through
        dvb_partial.zero_()
        if dc_last is None:
            dc0.zero_()
        else:
            dc0.copy_(dc_last)
        return
    cfg = cfg or kernel_config(B, D, H, U.device)
    recompute = save_every > 1
    T = save_every if recompute else cfg.t_bwd
    U = U.contiguous()
    grid = (triton.cdiv(H, cfg.block_h), B, D)
    with _on_device(U):
        _sru_bwd_kernel[grid](
            dh.contiguous(), dc_last.contiguous() if dc_last is not None else dc0, U,
            x.contiguous() if K == 3 else U, v.contiguous(), b.contiguous(),
            _pad_bytes(mask_pad) if mask_pad is not None else U,
            dropout_mask.contiguous() if dropout_mask is not None else U,
            c_saved, dU, dx if K == 3 else dU, dvb_partial, dc0,
            L, B, H, float(scale_x),
            D=D, K=K, HAS_DC=dc_last is not None, HAS_PAD=mask_pad is not None,
            HAS_M=dropout_mask is not None, RECOMPUTE=recompute, T=T, BLOCK_H=cfg.block_h, VEC=cfg.vec,
            num_warps=cfg.num_warps,
        )


# ----------------------------------------------------------------------------------------------------
# Custom ops and autograd
# ----------------------------------------------------------------------------------------------------


def _saved_shape(L: int, B: int, DH: int, save_every: int) -> tuple[int, int, int]:
    return (0, 0, 0) if save_every <= 0 else (-(-L // save_every), B, DH)


@torch.library.custom_op("sru_lm::sru_scan_fwd", mutates_args=())
def _scan_fwd(
    U: Tensor, x: Tensor | None, v: Tensor, b: Tensor, initial_state: Tensor | None,
    mask_pad: Tensor | None, dropout_mask: Tensor | None, bidirectional: bool, scale_x: float,
    save_every: int,
) -> tuple[Tensor, Tensor, Tensor]:
    L, B, D, H, K = _dims(U, v, bidirectional)
    h = torch.empty(L, B, D * H, dtype=U.dtype, device=U.device)
    c_last = torch.empty(B, D * H, dtype=torch.float32, device=U.device)
    c_saved = torch.empty(_saved_shape(L, B, D * H, save_every), dtype=torch.float32, device=U.device)
    if B * H == 0 and initial_state is not None:
        c_last.copy_(initial_state)
    _fwd_into(U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, scale_x,
              h, c_last, c_saved, save_every)
    return h, c_last, c_saved


@_scan_fwd.register_fake
def _(U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, scale_x, save_every):
    L, B, D, H, K = _dims(U, v, bidirectional)
    return (
        U.new_empty(L, B, D * H),
        U.new_empty(B, D * H, dtype=torch.float32),
        U.new_empty(_saved_shape(L, B, D * H, save_every), dtype=torch.float32),
    )


@torch.library.custom_op("sru_lm::sru_scan_bwd", mutates_args=())
def _scan_bwd(
    dh: Tensor, dc_last: Tensor | None, U: Tensor, x: Tensor | None, v: Tensor, b: Tensor,
    initial_state: Tensor | None, mask_pad: Tensor | None, dropout_mask: Tensor | None,
    c_saved: Tensor, bidirectional: bool, scale_x: float, save_every: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    L, B, D, H, K = _dims(U, v, bidirectional)
    if save_every <= 0:  # the forward saved nothing: checkpoint it now
        save_every = _save_every(dataclasses.replace(kernel_config(B, D, H, U.device), recompute=True))
        c_saved = torch.empty(_saved_shape(L, B, D * H, save_every), dtype=torch.float32, device=U.device)
        _fwd_into(U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, scale_x,
                  torch.empty(L, B, D * H, dtype=U.dtype, device=U.device),
                  torch.empty(B, D * H, dtype=torch.float32, device=U.device), c_saved, save_every)
    dU = torch.empty_like(U, memory_format=torch.contiguous_format)
    dx = torch.empty(L, B, D * H, dtype=U.dtype, device=U.device) if K == 3 else U.new_empty(0)
    partial = torch.empty(B, D, 4, H, dtype=torch.float32, device=U.device)
    dc0 = torch.empty(B, D * H, dtype=torch.float32, device=U.device)
    if B * H == 0:
        partial.zero_()
        dc0.copy_(dc_last if dc_last is not None else torch.zeros_like(dc0))
    _bwd_into(dh, dc_last, U, x, v, b, mask_pad, dropout_mask, c_saved, bidirectional, scale_x,
              save_every, dU, dx, partial, dc0)
    dvb = partial.sum(0)  # (D, 4, H)
    return dU, dx, dvb[:, 0:2].clone(), dvb[:, 2:4].clone(), dc0


@_scan_bwd.register_fake
def _(dh, dc_last, U, x, v, b, initial_state, mask_pad, dropout_mask, c_saved, bidirectional, scale_x,
      save_every):
    L, B, D, H, K = _dims(U, v, bidirectional)
    return (
        torch.empty_like(U, memory_format=torch.contiguous_format),
        U.new_empty(L, B, D * H) if K == 3 else U.new_empty(0),
        v.new_empty(D, 2, H, dtype=torch.float32),
        v.new_empty(D, 2, H, dtype=torch.float32),
        U.new_empty(B, D * H, dtype=torch.float32),
    )


def _setup_context(ctx, inputs, output):
    U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, scale_x, save_every = inputs
    ctx.save_for_backward(U, x, v, b, initial_state, mask_pad, dropout_mask, output[2])
    ctx.bidirectional, ctx.scale_x, ctx.save_every = bidirectional, scale_x, save_every
    ctx.mark_non_differentiable(output[2])


def _backward(ctx, dh, dc_last, _dc_saved):
    U, x, v, b, initial_state, mask_pad, dropout_mask, c_saved = ctx.saved_tensors
    if dh is None:  # only c_last was used
        L, B, D, H, _ = _dims(U, v, ctx.bidirectional)
        dh = U.new_zeros(L, B, D * H)
    dU, dx, dv, db, dc0 = torch.ops.sru_lm.sru_scan_bwd(
        dh, dc_last, U, x, v, b, initial_state, mask_pad, dropout_mask, c_saved,
        ctx.bidirectional, ctx.scale_x, ctx.save_every,
    )
    return (
        dU,
        dx if x is not None else None,
        dv.to(v.dtype),
        db.to(b.dtype),
        dc0.to(initial_state.dtype) if initial_state is not None else None,
        None, None, None, None, None,
    )


torch.library.register_autograd("sru_lm::sru_scan_fwd", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------
# Public entry points (called by sru_lm.ops.recurrence / sru_lm.ops.step)
# ----------------------------------------------------------------------------------------------------


def sru_recurrence_triton(
    U: Tensor,
    x: Tensor | None,
    v: Tensor,
    b: Tensor,
    initial_state: Tensor | None = None,
    mask_pad: Tensor | None = None,
    dropout_mask: Tensor | None = None,
    bidirectional: bool = False,
    scale_x: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """:func:`sru_lm.ops.sru_recurrence` on the Triton kernels (inputs already checked there).

    Differentiable in U, x, v, b and initial_state; c is saved for the backward only when one of them
    requires grad."""
    if U.dtype == torch.float64:
        raise TypeError("the Triton kernels run fp16/bf16/fp32; fp64 goes to the reference")
    L, B, D, H, K = _dims(U, v, bidirectional)
    tensors = (U, x, v, b, initial_state)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    save_every = _save_every() if needs_grad else 0
    h, c_last, _ = torch.ops.sru_lm.sru_scan_fwd(
        U, x if K == 3 else None, v, b, initial_state, mask_pad, dropout_mask, bidirectional,
        float(scale_x), save_every,
    )
    return h, c_last


def _step_block(H: int, device: torch.device) -> int:
    if device.type == "cuda":
        return min(256, max(32, triton.next_power_of_2(H)))
    return min(64, triton.next_power_of_2(max(H, 1)))


def _launch_step(U, x, v, b, c, c_out, h, mask_pad, dropout_mask, scale_x) -> None:
    from .triton_kernels import _sru_step_kernel

    B, H = h.shape
    if B * H == 0:
        return
    K = U.shape[-1] // H
    block = _step_block(H, U.device)
    with _on_device(U):
        _sru_step_kernel[(triton.cdiv(H, block), B)](
            U, x if K == 3 else U, v, b, c,
            mask_pad.view(torch.uint8) if mask_pad is not None else U,
            dropout_mask if dropout_mask is not None else U,
            h, c_out, H, float(scale_x),
            K=K, HAS_PAD=mask_pad is not None, HAS_M=dropout_mask is not None, BLOCK_H=block,
            num_warps=max(1, block // 128),
        )


def sru_step_triton(
    U: Tensor,
    x: Tensor | None,
    v: Tensor,
    b: Tensor,
    c: Tensor,
    mask_pad: Tensor | None = None,
    dropout_mask: Tensor | None = None,
    scale_x: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """One decode step (see :func:`sru_lm.ops.sru_step`): returns ``h`` (B, H) in U's dtype and a new
    fp32 state. When an input requires grad it runs as a length-1 scan, which is differentiable; the
    decode kernel itself is not. For CUDA graphs use :func:`sru_step_triton_`."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (U, x, v, b, c)):
        h, c_new = sru_recurrence_triton(
            U[None], None if x is None else x[None], v, b, c, None if mask_pad is None else mask_pad[None],
            dropout_mask, False, scale_x,
        )
        return h[0], c_new
    B, H = c.shape
    h = torch.empty(B, H, dtype=U.dtype, device=U.device)
    c_out = torch.empty(B, H, dtype=torch.float32, device=U.device)
    _launch_step(U.contiguous(), None if x is None else x.contiguous(), v.contiguous(), b.contiguous(),
                 c.contiguous(), c_out, h, mask_pad, None if dropout_mask is None else dropout_mask.contiguous(),
                 scale_x)
    return h, c_out


def sru_step_triton_(
    U: Tensor,
    x: Tensor | None,
    v: Tensor,
    b: Tensor,
    c: Tensor,
    h_out: Tensor,
    mask_pad: Tensor | None = None,
    dropout_mask: Tensor | None = None,
    scale_x: float = 1.0,
) -> None:
    """In-place decode step: updates ``c`` (B, H) fp32 in place and writes ``h_out`` (B, H).

    No allocation and no host synchronisation, so a whole model's decode step that calls this can be
    captured in a CUDA graph. All tensors must be contiguous; shapes as in :func:`sru_lm.ops.sru_step`.
    """
    if c.dtype != torch.float32 or not c.is_contiguous():
        raise TypeError(f"c must be a contiguous fp32 tensor to be updated in place, got {c.dtype}")
    if h_out.shape != c.shape or not h_out.is_contiguous():
        raise ValueError(f"h_out must be contiguous with c's shape {tuple(c.shape)}, got {tuple(h_out.shape)}")
    for name, t in (("U", U), ("x", x), ("v", v), ("b", b), ("dropout_mask", dropout_mask)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous for the in-place step")
    _launch_step(U, x, v, b, c, c, h_out, mask_pad, dropout_mask, scale_x)
