"""The SRU recurrence in plain PyTorch: the specification every fast path is tested against.

Readable over fast: a Python loop over time, the state carried in fp32, autograd for gradients.
Shapes and semantics are documented on :func:`sru_lm.ops.sru_recurrence`.
"""

from __future__ import annotations

import torch


def sru_recurrence_ref(
    U: torch.Tensor,
    x: torch.Tensor | None,
    v: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mask_pad: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None,
    bidirectional: bool = False,
    scale_x: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    L, B = U.shape[0], U.shape[1]
    D = 2 if bidirectional else 1
    H = v.shape[-1]
    k = U.shape[-1] // (D * H)
    acc = state_dtype(U.dtype)
    Uv = U.to(acc).view(L, B, D, k, H)
    if k == 3:
        xp = x.to(acc).view(L, B, D, H) * scale_x  # highway input x'
    else:
        xp = Uv[:, :, :, 3]
    vf, vr = v.to(acc)[:, 0], v.to(acc)[:, 1]  # (D, H)
    bf, br = b.to(acc)[:, 0], b.to(acc)[:, 1]
    m = None if dropout_mask is None else dropout_mask.to(acc).view(B, D, H)
    if initial_state is None:
        c0 = U.new_zeros(B, D, H, dtype=acc)
    else:
        c0 = initial_state.to(acc).view(B, D, H)
    pad = None if mask_pad is None else mask_pad.view(L, B, 1).bool()

    # Slice per step from lists (unbind), not by indexing the big tensors inside the loop: autograd
    # would otherwise fill a zero tensor the size of U for every step's gradient (quadratic in L).
    u0s, ufs, urs = (Uv[:, :, :, g].unbind(0) for g in range(3))  # L x (B, D, H)
    xps = xp.unbind(0)
    pads = None if pad is None else pad.unbind(0)
    h_dirs, c_dirs = [], []
    for d in range(D):
        c = c0[:, d]  # (B, H)
        hs: list[torch.Tensor] = [None] * L  # type: ignore[list-item]
        steps = range(L - 1, -1, -1) if d == 1 else range(L)
        for t in steps:
            u0, uf, ur = u0s[t][:, d], ufs[t][:, d], urs[t][:, d]
            f = torch.sigmoid(uf + vf[d] * c + bf[d])
            r = torch.sigmoid(ur + vr[d] * c + br[d])
            c_new = f * c + (1 - f) * u0
            xt = xps[t][:, d]
            gated = r * (c_new - xt)
            if m is not None:
                gated = gated * m[:, d]
            h = gated + xt
            if pads is not None:
                c_new = torch.where(pads[t], c, c_new)
                h = torch.where(pads[t], torch.zeros_like(h), h)
            c = c_new
            hs[t] = h
        h_dirs.append(torch.stack(hs))  # (L, B, H)
        c_dirs.append(c)
    h = torch.stack(h_dirs, dim=2).view(L, B, D * H).to(U.dtype)  # (L, B, D*H)
    c_last = torch.stack(c_dirs, dim=1).view(B, D * H)  # fp32 (fp64 for fp64 input)
    return h, c_last


def sru_step_ref(
    U: torch.Tensor,
    x: torch.Tensor | None,
    v: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    dropout_mask: torch.Tensor | None = None,
    scale_x: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One unidirectional time step: U ``(B, k*H)``, x ``(B, H)`` (k=3), c ``(B, H)`` -> (h, c_new)."""
    h, c_new = sru_recurrence_ref(
        U.unsqueeze(0), None if x is None else x.unsqueeze(0), v, b, c, None, dropout_mask, False, scale_x
    )
    return h[0], c_new


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrent state is carried in: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32
