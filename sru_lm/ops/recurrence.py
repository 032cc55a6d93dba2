"""The dispatcher behind :func:`sru_recurrence` and :func:`sru_step`: argument checks and the one function
that picks a backend (:func:`select_backend`), for sequences and single steps alike.

The public functions themselves (signature, docstring) live with the spec in
:mod:`sru_lm.models.sru_backend`, which calls :func:`run_recurrence` / :func:`run_step` here.
"""

from __future__ import annotations

import logging
import os

import torch

from ..models.sru_backend import sru_recurrence_ref, sru_step_ref
from . import cpu, scripted

logger = logging.getLogger(__name__)

BACKENDS = ("reference", "cpu", "torch", "triton")
# Read once: select_backend runs on every decode step, and an environment lookup is not free.
ENV_BACKEND = os.environ.get("SRU_LM_BACKEND") or None
_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg)


def _shape(t: torch.Tensor | None) -> str:
    return "None" if t is None else str(tuple(t.shape))


def check_recurrence_inputs(U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional) -> int:
    """Validate the arguments of :func:`sru_recurrence` (shapes, dtypes, devices); return k (3 or 4)."""
    for name, t in (("U", U), ("v", v), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if U.dim() != 3:
        raise ValueError(f"U must have shape (L, B, D*k*H) (3 dims), got {_shape(U)}")
    if U.dtype not in _FLOATS:
        raise TypeError(f"U must be a floating tensor (fp16/bf16/fp32/fp64), got {U.dtype}")
    D = 2 if bidirectional else 1
    if v.dim() != 3 or v.shape[0] != D or v.shape[1] != 2:
        raise ValueError(f"v must have shape ({D}, 2, H) for bidirectional={bidirectional}, got {_shape(v)}")
    H = v.shape[2]
    if b.shape != v.shape:
        raise ValueError(f"b must have the shape of v {_shape(v)}, got {_shape(b)}")
    L, B, width = U.shape
    if width not in (3 * D * H, 4 * D * H):
        raise ValueError(
            f"U's last dim must be 3*D*H={3 * D * H} or 4*D*H={4 * D * H} (D={D}, H={H}), got {width}"
        )
    k = width // (D * H)
    if k == 3:
        if x is None:
            raise ValueError("x is required when U has 3 projections per unit (k=3): it is the highway input")
        if x.shape != (L, B, D * H):
            raise ValueError(f"x must have shape (L, B, D*H)={(L, B, D * H)}, got {_shape(x)}")
    _check_common(U, x if k == 3 else None, v, b, ("initial_state", initial_state), mask_pad, dropout_mask)
    if initial_state is not None and initial_state.shape != (B, D * H):
        raise ValueError(f"initial_state must have shape (B, D*H)={(B, D * H)}, got {_shape(initial_state)}")
    if mask_pad is not None and mask_pad.shape != (L, B):
        raise ValueError(f"mask_pad must have shape (L, B)={(L, B)} (True = padding), got {_shape(mask_pad)}")
    if dropout_mask is not None and dropout_mask.shape != (B, D * H):
        raise ValueError(f"dropout_mask must have shape (B, D*H)={(B, D * H)}, got {_shape(dropout_mask)}")
    return k


def check_step_inputs(U, x, v, b, c, mask_pad, dropout_mask) -> int:
    """Validate the arguments of :func:`sru_step`; return k (3 or 4). Runs once per token and layer in
    decoding, so it reads each attribute once."""
    for name, t in (("U", U), ("v", v), ("b", b), ("c", c)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    U_shape, c_shape = U.shape, c.shape
    if len(U_shape) != 2:
        raise ValueError(f"U must have shape (B, k*H) for one step, got {_shape(U)}")
    if len(c_shape) != 2 or c_shape[0] != U_shape[0]:
        raise ValueError(f"c must have shape (B, H) with B={U_shape[0]}, got {_shape(c)}")
    B, H = c_shape
    if v.shape != (1, 2, H) or b.shape != (1, 2, H):
        raise ValueError(f"v and b must have shape (1, 2, H)={(1, 2, H)}, got {_shape(v)} and {_shape(b)}")
    if U_shape[1] != 3 * H and U_shape[1] != 4 * H:
        raise ValueError(f"U's last dim must be 3*H={3 * H} or 4*H={4 * H}, got {U_shape[1]}")
    k = U_shape[1] // H
    if k == 3 and (x is None or x.shape != c_shape):
        raise ValueError(f"x must have shape (B, H)={(B, H)} when k=3, got {_shape(x)}")
    if mask_pad is not None and mask_pad.shape != (B,):
        raise ValueError(f"mask_pad must have shape (B,)={(B,)} (True = padding), got {_shape(mask_pad)}")
    if dropout_mask is not None and dropout_mask.shape != c_shape:
        raise ValueError(f"dropout_mask must have shape (B, H)={(B, H)}, got {_shape(dropout_mask)}")
    _check_common(U, x if k == 3 else None, v, b, ("c", c), mask_pad, dropout_mask)
    return k


def _check_common(U, x, v, b, state: tuple[str, torch.Tensor | None], mask_pad, dropout_mask) -> None:
    """dtypes and devices, the same for sequences and steps; ``state`` is (its argument name, the tensor)."""
    dtype, device = U.dtype, U.device
    if dtype not in _FLOATS:
        raise TypeError(f"U must be a floating tensor (fp16/bf16/fp32/fp64), got {dtype}")
    for name, t in (("x", x), state, ("v", v), ("b", b), ("mask_pad", mask_pad), ("dropout_mask", dropout_mask)):
        if t is None:
            continue
        if t.device != device:
            raise ValueError(f"all tensors must be on one device: U is on {device}, {name} on {t.device}")
        if name == "mask_pad":
            if t.dtype != torch.bool:
                raise TypeError(f"mask_pad must be a bool tensor (True = padding), got {t.dtype}")
        elif t.dtype not in _FLOATS:
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if x is not None and x.dtype != dtype:
        raise TypeError(f"x must have U's dtype {dtype}, got {x.dtype}")


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def select_backend(U: torch.Tensor, backend: str | None = None) -> str:
    """The backend that runs a recurrence or a step on tensors like ``U``; the one place this is decided.

    ``backend`` (else env ``SRU_LM_BACKEND``, read at import) names a preference among :data:`BACKENDS`:

    - ``"reference"``: the spec (:func:`sru_lm.models.sru_backend.sru_recurrence_ref`), always honoured;
    - ``"torch"``: TorchScript loops with an analytic backward (:mod:`sru_lm.ops.scripted`), any device;
    - ``"cpu"``: the C++ kernel (:mod:`sru_lm.ops.cpu`), the default on CPU;
    - ``"triton"``: the Triton kernels, the default on CUDA (CPU tensors under ``TRITON_INTERPRET=1``).

    When the preferred fast backend cannot run here, the device's best one runs and a warning says why,
    once: the C++ kernel needs CPU tensors, a C++ compiler and ninja at first use (else ``"torch"``); the
    Triton kernels need triton and CUDA (else the C++ kernel on CPU, ``"torch"`` elsewhere) and compute in
    fp32, so fp64 on CUDA runs ``"torch"``. Dtype rules otherwise: every backend
    carries the state in fp32 (fp64 for fp64 inputs); the C++ kernel reads fp16 through its fp32 path.
    Under torch.compile the choice is made once, while tracing, and kept in the graph.

    Example:
        >>> select_backend(torch.zeros(1)) in ("cpu", "torch")
        True
        >>> select_backend(torch.zeros(1), "reference")
        'reference'
    """
    return _choose(U.device.type, U.dtype, backend or ENV_BACKEND)


@torch.compiler.assume_constant_result
def _choose(device: str, dtype: torch.dtype, want: str | None) -> str:
    if want is not None and want not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {want!r}")
    if want in ("reference", "torch"):
        return want
    if want == "triton" or (want is None and device == "cuda"):
        from . import triton_backend

        why = triton_backend.why_unavailable()
        if dtype == torch.float64:
            why = "they compute in fp32, and the input is fp64"
        elif device not in ("cuda", "cpu"):
            why = f"they run on CUDA, not {device}"
        if not why:
            return "triton"
        fallback = _choose(device, dtype, "cpu") if device == "cpu" else "torch"
        _warn_once(f"triton-{device}-{dtype}", f"the Triton kernels cannot run here ({why}); the SRU recurrence "
                   f"runs backend {fallback!r} instead")
        return fallback
    if device != "cpu":  # "cpu" asked for tensors elsewhere (a config saved on another machine)
        fallback = _choose(device, dtype, None) if device == "cuda" else "torch"
        _warn_once(f"cpu-{device}", f"backend 'cpu' needs CPU tensors, not {device}; running backend {fallback!r}")
        return fallback
    if cpu.available():
        return "cpu"
    _warn_once("cpu", f"the C++ CPU kernel of the SRU recurrence is not usable ({cpu.why_unavailable()}); "
               "running the scripted PyTorch loops (backend 'torch', several times slower in training). "
               f"For the fast path, {cpu.HOW_TO_GET_IT}")
    return "torch"


def _triton_recurrence(*args):
    from .triton_backend import sru_recurrence_triton

    return sru_recurrence_triton(*args)


def _triton_step(*args):
    from .triton_backend import sru_step_triton

    return sru_step_triton(*args)


_RECURRENCE = {
    "reference": sru_recurrence_ref,
    "cpu": cpu.sru_recurrence_cpu,
    "torch": scripted.sru_recurrence_torch,
    "triton": _triton_recurrence,
}
_STEP_NO_GRAD = {"cpu": cpu.sru_step_cpu, "triton": _triton_step}  # one-token kernels without autograd


def run_recurrence(args: tuple, backend: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sru_recurrence` on ``args`` (its first nine arguments, in order)."""
    check_recurrence_inputs(*args[:8])
    return _RECURRENCE[select_backend(args[0], backend)](*args[:8], float(args[8]))


def run_recurrence_states(args: tuple, backend: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`run_recurrence` plus the state after every position, (L, B, H), where the chosen backend writes
    them in the same pass (the C++ CPU kernel, unidirectional, no autograd); None elsewhere."""
    check_recurrence_inputs(*args[:8])
    which = select_backend(args[0], backend)
    U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x = args
    if which == "cpu" and not bidirectional and not (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:5])
    ) and not torch.compiler.is_compiling():
        return cpu.sru_recurrence_states_cpu(U, x, v, b, c0, mask_pad, dropout_mask, float(scale_x))
    h, c_last = _RECURRENCE[which](*args[:8], float(scale_x))
    return h, c_last, None


def run_step(args: tuple, backend: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sru_step` on ``args`` (its first eight arguments, in order)."""
    U, x, v, b, c, mask_pad, dropout_mask, scale_x = args
    check_step_inputs(U, x, v, b, c, mask_pad, dropout_mask)
    which = select_backend(U, backend)
    if which == "reference":
        return sru_step_ref(*args)
    if which in _STEP_NO_GRAD and not (
        torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:5])
    ):
        return _STEP_NO_GRAD[which](U, x, v, b, c, mask_pad, dropout_mask, float(scale_x))
    h, c_new = _RECURRENCE[which](  # a length-1 sequence, differentiable
        U[None], None if x is None else x[None], v, b, c, None if mask_pad is None else mask_pad[None],
        dropout_mask, False, float(scale_x),
    )
    return h[0], c_new
