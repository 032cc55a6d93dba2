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

import atexit
import contextlib
import dataclasses
import json
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
    if not (torch.cuda.is_available() or _interpreting() or _recorder is not None):
        return "no CUDA device (TRITON_INTERPRET=1 runs the kernels on CPU tensors, slowly)"
    return ""


def available() -> bool:
    """True when Triton imports and there is a CUDA device or the interpreter is on."""
    return not why_unavailable()


# ----------------------------------------------------------------------------------------------------
# Block sizes
# ----------------------------------------------------------------------------------------------------


SCHEDULES = ("tile", "step")


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """How a scan is cut into programs and walked in time.

    sched: ``"tile"`` (chunks of T steps loaded as tiles, prefetched by hand) or ``"step"`` (one step per
        iteration of a ``tl.range`` loop pipelined ``stages`` deep by Triton; the backward then reads c
        saved at every step). See :mod:`sru_lm.ops.triton_kernels`.
    block_h: hidden units per program (a power of 2); the launcher uses ``block_h // (32 * vec)`` warps.
    vec: adjacent units per thread (vector width of every load and store).
    t_fwd, t_bwd: time steps per prefetched chunk in the forward and backward ``"tile"`` kernels.
    recompute: ``"tile"`` backward rebuilds c from one checkpoint per ``t_bwd`` steps (True) or reads c
        saved at every step (False). Ignored by ``"step"``, which always reads it.
    stages: ``num_stages`` of the ``"step"`` loops (1 = no pipelining).
    """

    block_h: int = 64
    vec: int = 1
    t_fwd: int = 8
    t_bwd: int = 8
    recompute: bool = True
    sched: str = "tile"
    stages: int = 3

    @property
    def num_warps(self) -> int:
        return max(1, self.block_h // (32 * self.vec))

    def __post_init__(self):
        for name in ("block_h", "vec", "t_fwd", "t_bwd"):
            val = getattr(self, name)
            if val < 1 or val & (val - 1):
                raise ValueError(f"KernelConfig.{name} must be a power of 2, got {val}")
        if self.sched not in SCHEDULES:
            raise ValueError(f"KernelConfig.sched must be one of {SCHEDULES}, got {self.sched!r}")
        if self.stages < 1:
            raise ValueError(f"KernelConfig.stages must be >= 1, got {self.stages}")


# ----------------------------------------------------------------------------------------------------
# Defaults by size class: the one table the launchers read (no autotuning at run time)
# ----------------------------------------------------------------------------------------------------

# A scan's size class is set by its columns N = B * D * H (independent programs' worth of work): the
# scan is latency-bound, and what fills an H200's 132 SMs is the number of programs, N / block_h.
SIZE_CLASSES = (  # (name, largest N in the class); the benchmark sizes sit in the middle two
    ("narrow", 4096),  # decoding batches, small models
    ("medium", 16384),  # L=128 B=32 d=512
    ("wide", 32768),  # L=1024 B=16 d=2048
    ("huge", None),
)

# NOT YET MEASURED: placeholders equal to the heuristic used until now on an H200 (the widest block
# that gives every SM two programs, one unit per thread, tile schedule, chunks of 8). To be replaced by
# the table `scripts/bench_gpu.py --sweep` prints (benchmarks/triton_sweep_h200.md) after a device run.
DEFAULTS_MEASURED = False
DEFAULTS: dict[str, KernelConfig] = {
    "narrow": KernelConfig(block_h=32),
    "medium": KernelConfig(block_h=32),
    "wide": KernelConfig(block_h=64),
    "huge": KernelConfig(block_h=128),
}
# Under the interpreter the cost is per operation, not per element: wide blocks.
INTERPRETER_DEFAULT = KernelConfig(block_h=64)


def size_class(B: int, D: int, H: int) -> str:
    """The :data:`DEFAULTS` key for a scan of B rows, D directions and H units."""
    n = B * D * H
    return next(name for name, top in SIZE_CLASSES if top is None or n <= top)


_overrides: dict = {}


def set_kernel_config(**kw) -> None:
    """Override fields of the default :class:`KernelConfig` for every later call (none to reset)."""
    KernelConfig(**kw)  # validate names and values
    _overrides.clear()
    _overrides.update(kw)


def _env_overrides() -> dict:
    spec = os.environ.get("SRU_LM_TRITON_CONFIG", "")
    out: dict = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, _, val = item.partition("=")
        key = key.strip()
        out[key] = bool(int(val)) if key == "recompute" else val.strip() if key == "sched" else int(val)
    return out


def kernel_config(B: int, D: int, H: int, device: torch.device) -> KernelConfig:
    """The config for a scan of B rows, D directions, H units: :data:`DEFAULTS` by size class on a GPU
    (:data:`INTERPRETER_DEFAULT`, narrowed to H, elsewhere), then ``SRU_LM_TRITON_CONFIG``, then
    :func:`set_kernel_config`. Pure Python on shapes: no device query, cheap to trace."""
    if device.type == "cuda" or _recorder is not None:
        cfg = DEFAULTS[size_class(B, D, H)]
    else:
        cfg = dataclasses.replace(INTERPRETER_DEFAULT,
                                  block_h=min(INTERPRETER_DEFAULT.block_h, triton.next_power_of_2(max(H, 1))))
    kw = {**_env_overrides(), **_overrides}
    return dataclasses.replace(cfg, **kw) if kw else cfg


def _save_every(cfg: KernelConfig) -> int:
    """How often the training forward saves c: every ``t_bwd`` steps when the tile backward recomputes,
    else every step (the step backward always reads c per step)."""
    return cfg.t_bwd if cfg.recompute and cfg.sched == "tile" else 1


# ----------------------------------------------------------------------------------------------------
# One launch point, and a recorder of launches (what scripts/triton_aot.py compiles ahead of time)
# ----------------------------------------------------------------------------------------------------

_recorder: list | None = None
if os.environ.get("SRU_LM_TRITON_RECORD"):  # record a whole process's launches (scripts/triton_aot.py, tests)
    _recorder = []

    @atexit.register
    def _dump_records(path=os.environ["SRU_LM_TRITON_RECORD"]):
        with open(path, "w") as f:
            json.dump(_recorder, f)


def _describe(a) -> list:
    """What Triton specializes a kernel argument on: a tensor's dtype and 16-byte alignment, an int's value
    (== 1, divisible by 16), a float's type. Enough to rebuild the launch with mock arguments."""
    if isinstance(a, Tensor):
        return ["tensor", str(a.dtype), a.data_ptr() % 16]
    if isinstance(a, bool):
        return ["bool", a]
    if isinstance(a, int):
        return ["int", a]
    if isinstance(a, float):
        return ["float", a]
    raise TypeError(f"unexpected kernel argument {type(a).__name__}")


def _launch(kernel, grid, args: tuple, meta: dict) -> None:
    if _recorder is not None:
        _recorder.append({"kernel": kernel.__name__, "args": [_describe(a) for a in args], "meta": dict(meta)})
        return
    kernel[grid](*args, **meta)


@contextlib.contextmanager
def recording():
    """Within the block, kernel launches are recorded (as :func:`_describe` lists) instead of run, on any
    device, and the configs are the GPU's (:data:`DEFAULTS`): run a workload on small CPU tensors of the
    real widths H to list the kernel variants it would compile on a GPU. Outputs stay unwritten."""
    global _recorder
    outer, _recorder = _recorder, []
    try:
        yield _recorder
    finally:
        _recorder = outer


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


def _inputs(U: Tensor, x: Tensor | None, v: Tensor, b: Tensor, mask_pad: Tensor | None,
            dropout_mask: Tensor | None, K: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """x, v, b, the padding flags (as bytes) and the dropout mask as every kernel reads them: contiguous,
    with U standing in for an absent one (x when K = 4; the kernel's K and HAS_* keep it unread)."""
    return (
        x.contiguous() if K == 3 else U, v.contiguous(), b.contiguous(),
        _pad_bytes(mask_pad) if mask_pad is not None else U,
        dropout_mask.contiguous() if dropout_mask is not None else U,
    )


def _flags(cfg: KernelConfig, D: int, K: int, mask_pad: Tensor | None, dropout_mask: Tensor | None,
           **has) -> dict:
    """The scan kernels' shared constexprs and launch options; ``has`` is the carried start's flag."""
    return dict(D=D, K=K, **has, HAS_PAD=mask_pad is not None, HAS_M=dropout_mask is not None,
                BLOCK_H=cfg.block_h, VEC=cfg.vec, num_warps=cfg.num_warps)


def _fwd_into(
    U: Tensor, x: Tensor | None, v: Tensor, b: Tensor, initial_state: Tensor | None,
    mask_pad: Tensor | None, dropout_mask: Tensor | None, bidirectional: bool, scale_x: float,
    h: Tensor, c_last: Tensor, c_saved: Tensor | None, save_every: int, cfg: KernelConfig | None = None,
) -> None:
    """Forward scan into ``h`` (L, B, D*H), ``c_last`` (B, D*H) fp32 and, when ``save_every`` > 0,
    ``c_saved`` (ceil(L / save_every), B, D*H) fp32 = c_{t-1} at steps 0, save_every, 2*save_every, ...

    The ``"step"`` schedule saves every step only; with ``save_every`` > 1 the tile kernel runs."""
    from .triton_kernels import _sru_fwd_kernel, _sru_fwd_step_kernel

    L, B, D, H, K = _dims(U, v, bidirectional)
    if B == 0 or H == 0:
        return
    cfg = cfg or kernel_config(B, D, H, U.device)
    U = U.contiguous()
    grid = (triton.cdiv(H, cfg.block_h), B, D)
    x, v, b, pad, m = _inputs(U, x, v, b, mask_pad, dropout_mask, K)
    c0 = initial_state.contiguous() if initial_state is not None else c_last
    args = (U, x, v, b, c0, pad, m, h, c_last, c_saved if save_every > 0 else c_last, L, B, H, float(scale_x))
    flags = _flags(cfg, D, K, mask_pad, dropout_mask, HAS_C0=initial_state is not None)
    with _on_device(U):
        if cfg.sched == "step" and save_every <= 1:
            _launch(_sru_fwd_step_kernel, grid, args, dict(SAVE=save_every == 1, STAGES=cfg.stages, **flags))
        else:
            _launch(_sru_fwd_kernel, grid, args, dict(SAVE_EVERY=save_every, T=cfg.t_fwd, **flags))


def _bwd_into(
    dh: Tensor, dc_last: Tensor | None, U: Tensor, x: Tensor | None, v: Tensor, b: Tensor,
    mask_pad: Tensor | None, dropout_mask: Tensor | None, c_saved: Tensor, bidirectional: bool,
    scale_x: float, save_every: int,
    dU: Tensor, dx: Tensor | None, dvb_partial: Tensor, dc0: Tensor, cfg: KernelConfig | None = None,
) -> None:
    """Backward scan into ``dU`` (like U), ``dx`` (like x, k=3), ``dc0`` (B, D*H) fp32 and the per-row
    partial sums ``dvb_partial`` (B, D, 4, H) fp32 = [dv_f, dv_r, db_f, db_r] (sum over B for dv, db).

    ``c_saved`` must come from :func:`_fwd_into` with the same ``save_every`` (1: c at every step; > 1:
    checkpoints, and the tile backward's chunk is ``save_every`` steps)."""
    from .triton_kernels import _sru_bwd_kernel, _sru_bwd_step_kernel

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
    U = U.contiguous()
    grid = (triton.cdiv(H, cfg.block_h), B, D)
    x, v, b, pad, m = _inputs(U, x, v, b, mask_pad, dropout_mask, K)
    dc_L = dc_last.contiguous() if dc_last is not None else dc0
    args = (dh.contiguous(), dc_L, U, x, v, b, pad, m, c_saved, dU, dx if K == 3 else dU, dvb_partial, dc0,
            L, B, H, float(scale_x))
    flags = _flags(cfg, D, K, mask_pad, dropout_mask, HAS_DC=dc_last is not None)
    with _on_device(U):
        if cfg.sched == "step" and not recompute:
            _launch(_sru_bwd_step_kernel, grid, args, dict(STAGES=cfg.stages, **flags))
        else:
            T = save_every if recompute else cfg.t_bwd
            _launch(_sru_bwd_kernel, grid, args, dict(RECOMPUTE=recompute, T=T, **flags))


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
    # fresh (D, 2, H) tensors, not clones of the slices: with D = 1 a clone keeps the slice's strides
    # (4H, H, 1), which DDP then finds unlike the parameter's (2H, H, 1)
    dv, db = (torch.empty(D, 2, H, dtype=torch.float32, device=U.device).copy_(dvb[:, i:i + 2]) for i in (0, 2))
    return dU, dx, dv, db, dc0


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
        _laid_like(dv, v),
        _laid_like(db, b),
        _laid_like(dc0, initial_state) if initial_state is not None else None,
        None, None, None, None, None,
    )


def _laid_like(g: Tensor, p: Tensor) -> Tensor:
    """``g`` in ``p``'s dtype and strides: DDP copies a gradient laid out unlike its parameter."""
    if g.dtype == p.dtype and g.stride() == p.stride():
        return g
    return torch.empty_like(p).copy_(g)  # empty_like keeps p's strides when p is dense


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
    save_every = _save_every(kernel_config(B, D, H, U.device)) if needs_grad else 0
    h, c_last, _ = torch.ops.sru_lm.sru_scan_fwd(
        U, x if K == 3 else None, v, b, initial_state, mask_pad, dropout_mask, bidirectional,
        float(scale_x), save_every,
    )
    return h, c_last


def _step_block(H: int, device: torch.device) -> int:
    if device.type == "cuda" or _recorder is not None:
        return min(256, max(32, triton.next_power_of_2(H)))
    return min(64, triton.next_power_of_2(max(H, 1)))


def _launch_step(U, x, v, b, c, c_out, h, mask_pad, dropout_mask, scale_x) -> None:
    from .triton_kernels import _sru_step_kernel

    B, H = h.shape
    if B * H == 0:
        return
    K = U.shape[-1] // H
    block = _step_block(H, U.device)
    x, v, b, pad, m = _inputs(U, x, v, b, mask_pad, dropout_mask, K)
    args = (U, x, v, b, c, pad, m, h, c_out, H, float(scale_x))
    meta = dict(K=K, HAS_PAD=mask_pad is not None, HAS_M=dropout_mask is not None, BLOCK_H=block,
                num_warps=max(1, block // 128))
    with _on_device(U):
        _launch(_sru_step_kernel, (triton.cdiv(H, block), B), args, meta)


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
