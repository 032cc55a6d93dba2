"""One SRU time step for decoding: state in, output and state out, no time loop."""

from __future__ import annotations

import torch

from . import cpu
from . import recurrence as _rec
from .naive import state_dtype
from .recurrence import _shape, select_backend


def _step_torch(U, x, v, b, c, mask_pad, dropout_mask, scale_x):
    acc = state_dtype(U.dtype)
    B, H = c.shape
    k = U.shape[-1] // H
    Uv = U.to(acc).view(B, k, H)
    xp = x.to(acc) * scale_x if k == 3 else Uv[:, 3]
    c_prev = c.to(acc)
    f = torch.sigmoid(torch.addcmul(Uv[:, 1] + b[0, 0], v[0, 0], c_prev))
    r = torch.sigmoid(torch.addcmul(Uv[:, 2] + b[0, 1], v[0, 1], c_prev))
    c_new = torch.lerp(Uv[:, 0], c_prev, f)  # f c + (1 - f) U_x
    gated = r * (c_new - xp)
    if dropout_mask is not None:
        gated = gated * dropout_mask
    h = gated + xp
    if mask_pad is not None:
        keep = ~mask_pad.view(B, 1)
        c_new = torch.where(keep, c_new, c_prev)
        h = h * keep
    return h.to(U.dtype), c_new


def sru_step(
    U: torch.Tensor,
    x: torch.Tensor | None,
    v: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    mask_pad: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None,
    scale_x: float = 1.0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One unidirectional SRU step, equal to :func:`sru_recurrence` on a length-1 sequence.

    Args:
        U: ``(B, k*H)`` this step's projections ``[U_x, U_f, U_r, (U_h)]``.
        x: ``(B, H)`` highway input when k == 3, else None.
        v, b: ``(1, 2, H)`` as in :func:`sru_recurrence`.
        c: ``(B, H)`` the previous state (fp32 is best: the state is carried in fp32).
        mask_pad: ``(B,)`` bool, True where this step is padding (state kept, output zero).
        dropout_mask: ``(B, H)``.

    Returns:
        ``h`` ``(B, H)`` in U's dtype and the new state ``c`` ``(B, H)`` in fp32.
    """
    if U.dim() != 2:
        raise ValueError(f"U must have shape (B, k*H) for one step, got {_shape(U)}")
    if c.dim() != 2 or c.shape[0] != U.shape[0]:
        raise ValueError(f"c must have shape (B, H) with B={U.shape[0]}, got {_shape(c)}")
    B, H = c.shape
    if v.shape != (1, 2, H) or b.shape != (1, 2, H):
        raise ValueError(f"v and b must have shape (1, 2, H)={(1, 2, H)}, got {_shape(v)} and {_shape(b)}")
    if U.shape[1] not in (3 * H, 4 * H):
        raise ValueError(f"U's last dim must be 3*H={3 * H} or 4*H={4 * H}, got {U.shape[1]}")
    if U.shape[1] == 3 * H and (x is None or x.shape != (B, H)):
        raise ValueError(f"x must have shape (B, H)={(B, H)} when k=3, got {_shape(x)}")
    if mask_pad is not None and (mask_pad.shape != (B,) or mask_pad.dtype != torch.bool):
        raise ValueError(
            f"mask_pad must be a bool tensor of shape (B,)={(B,)}, got {_shape(mask_pad)}, {mask_pad.dtype}"
        )
    if dropout_mask is not None and dropout_mask.shape != (B, H):
        raise ValueError(f"dropout_mask must have shape (B, H)={(B, H)}, got {_shape(dropout_mask)}")
    # The common decode case goes straight to the C++ step: per-call overhead dominates one token.
    if backend is None and _rec.ENV_BACKEND is None and U.device.type == "cpu" and cpu.step_available():
        which = "cpu"
    else:
        which = select_backend(U, backend)
    if which == "cpu" and U.dtype != torch.float64 and cpu.step_available():
        return cpu.sru_step_cpu(U, x, v, b, c, mask_pad, dropout_mask, float(scale_x))
    if which == "triton" and U.dtype != torch.float64:  # the kernel computes in fp32
        from .triton_backend import sru_step_triton

        return sru_step_triton(U, x, v, b, c, mask_pad, dropout_mask, float(scale_x))
    return _step_torch(U, x, v, b, c, mask_pad, dropout_mask, float(scale_x))
