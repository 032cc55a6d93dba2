"""The public SRU recurrence: argument checks and the one place that picks a backend."""

from __future__ import annotations

import logging
import os

import torch

from .naive import sru_recurrence_ref

logger = logging.getLogger(__name__)

BACKENDS = ("reference", "cpu", "triton")
# Read once: select_backend runs on every decode step, and an environment lookup is not free.
ENV_BACKEND = os.environ.get("SRU_LM_BACKEND") or None
_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(msg)


def _shape(t: torch.Tensor | None) -> str:
    return "None" if t is None else str(tuple(t.shape))


def check_recurrence_inputs(
    U: torch.Tensor,
    x: torch.Tensor | None,
    v: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None,
    mask_pad: torch.Tensor | None,
    dropout_mask: torch.Tensor | None,
    bidirectional: bool,
) -> int:
    """Validate shapes, dtypes and devices; return k (3 or 4)."""
    for name, t in (("U", U), ("v", v), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if U.dim() != 3:
        raise ValueError(f"U must have shape (L, B, D*k*H) (3 dims), got {_shape(U)}")
    if U.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
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
    devices = {t.device for t in (U, x, v, b, initial_state, mask_pad, dropout_mask) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device, got {sorted(map(str, devices))}")
    floats = {"U": U, "x": x if k == 3 else None, "initial_state": initial_state, "dropout_mask": dropout_mask}
    for name, t in floats.items():
        if t is not None and not t.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if k == 3 and x is not None and x.dtype != U.dtype:
        raise TypeError(f"x must have U's dtype {U.dtype}, got {x.dtype}")
    if initial_state is not None and initial_state.shape != (B, D * H):
        raise ValueError(f"initial_state must have shape (B, D*H)={(B, D * H)}, got {_shape(initial_state)}")
    if mask_pad is not None:
        if mask_pad.shape != (L, B):
            raise ValueError(f"mask_pad must have shape (L, B)={(L, B)} (True = padding), got {_shape(mask_pad)}")
        if mask_pad.dtype != torch.bool:
            raise TypeError(f"mask_pad must be a bool tensor (True = padding), got {mask_pad.dtype}")
    if dropout_mask is not None and dropout_mask.shape != (B, D * H):
        raise ValueError(f"dropout_mask must have shape (B, D*H)={(B, D * H)}, got {_shape(dropout_mask)}")
    return k


def select_backend(U: torch.Tensor, backend: str | None = None) -> str:
    """Pick the backend: an explicit ``backend`` (or env ``SRU_LM_BACKEND``, read at import) wins; else triton on CUDA
    when importable, the CPU fast path on CPU, the reference otherwise. A fallback is logged once."""
    backend = backend or ENV_BACKEND
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        return backend
    if U.is_cuda:
        from . import triton_backend

        if triton_backend.available():
            return "triton"
        _warn_once("triton", f"Triton is not usable ({triton_backend.why_unavailable()}); "
                   "the SRU recurrence falls back to the slow reference loop on CUDA")
        return "reference"
    if U.device.type == "cpu":
        from . import cpu

        if cpu.available():
            return "cpu"
        _warn_once("cpu", f"the CPU fast path is not usable ({cpu.why_unavailable()}); "
                   "the SRU recurrence falls back to the slow reference loop")
        return "reference"
    return "reference"


def sru_recurrence(
    U: torch.Tensor,
    x: torch.Tensor | None,
    v: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mask_pad: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None,
    bidirectional: bool = False,
    scale_x: float = 1.0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Run the SRU recurrence over a whole sequence.

    For each direction ``d`` and time step ``t`` (the backward direction walks time in reverse)::

        f_t = sigmoid(U_f + v_f * c_{t-1} + b_f)
        r_t = sigmoid(U_r + v_r * c_{t-1} + b_r)
        c_t = f_t * c_{t-1} + (1 - f_t) * U_x
        h_t = x'_t + m * r_t * (c_t - x'_t)          # = r c + (1 - r) x' when m = 1

    where ``x'_t = scale_x * x_t`` when ``k == 3`` and ``x'_t = U_h`` (the 4th projection) when ``k == 4``,
    and ``m`` is the variational dropout mask (the same at every step). At a padded step (``mask_pad``
    True) ``c`` is carried unchanged and ``h`` is zero, so the final state is the state after each
    sequence's last real token, in both directions. The state is carried in fp32 for every input dtype.

    Args:
        U: ``(L, B, D*k*H)`` projections, viewed as ``(L, B, D, k, H)`` with the k blocks in the order
            ``[U_x, U_f, U_r, (U_h)]``; D = 2 if ``bidirectional`` else 1. fp16, bf16, fp32 or fp64.
        x: ``(L, B, D*H)`` highway input when k == 3 (same dtype as U); ignored (may be None) when k == 4.
        v: ``(D, 2, H)`` the state weights ``[v_f, v_r]`` per direction.
        b: ``(D, 2, H)`` the biases ``[b_f, b_r]`` per direction.
        initial_state: ``(B, D*H)`` c_0 (zeros when None).
        mask_pad: ``(L, B)`` bool, True at padding.
        dropout_mask: ``(B, D*H)`` multiplier on the gated term (already scaled by 1/(1-p)).
        bidirectional: run a second, reversed-time direction on its own half of U, v, b, x, c.
        scale_x: the highway scale alpha for k == 3.
        backend: ``"reference"``, ``"cpu"`` or ``"triton"``; None chooses by device (see
            :func:`select_backend`).

    Returns:
        ``h``: ``(L, B, D*H)`` in U's dtype, and ``c_last``: ``(B, D*H)`` in fp32 (fp64 for fp64 input).

    Example:
        >>> L, B, H = 5, 2, 4
        >>> U, x = torch.randn(L, B, 3 * H), torch.randn(L, B, H)
        >>> v, b = torch.randn(1, 2, H), torch.zeros(1, 2, H)
        >>> h, c = sru_recurrence(U, x, v, b)
        >>> h.shape, c.shape
        (torch.Size([5, 2, 4]), torch.Size([2, 4]))
    """
    check_recurrence_inputs(U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional)
    args = (U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, float(scale_x))
    which = select_backend(U, backend)
    if which == "reference" or U.dtype == torch.float64 and which == "triton":
        return sru_recurrence_ref(*args)
    if which == "cpu":
        from .cpu import sru_recurrence_cpu

        return sru_recurrence_cpu(*args)
    from .triton_backend import sru_recurrence_triton

    return sru_recurrence_triton(*args)
