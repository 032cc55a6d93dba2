"""The SRU recurrence as the model family calls it: :mod:`sru_lm.ops` when importable, else a pure-torch loop.

The model files are also loaded with ``trust_remote_code=True`` in processes without ``sru_lm``: transformers
copies a modeling file and the sibling modules it imports (``from .x import``) and nothing else, so the
recurrence must be reachable from this folder. When ``sru_lm`` is installed its dispatcher (Triton on GPU,
the CPU fast path, the reference) is used. Otherwise the fallback below runs (logged once): the semantics of
``sru_lm/ops/naive.py`` (the spec, documented on :func:`sru_lm.ops.sru_recurrence`) restated in a few lines,
because that file lives outside this folder and cannot travel with the weights. It is tested against
``sru_recurrence_ref`` in ``tests/models/test_sru_backend.py``.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def sru_recurrence_torch(
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
    """Pure-torch ``sru_lm.ops.sru_recurrence`` (same arguments; ``backend`` is ignored)."""
    L, B = U.shape[:2]
    D, H = v.shape[0], v.shape[2]
    k = U.shape[-1] // (D * H)
    Uv = U.float().view(L, B, D, k, H)
    xp = x.float().view(L, B, D, H) * scale_x if k == 3 else Uv[:, :, :, 3]
    c0 = U.new_zeros(B, D, H, dtype=torch.float32) if initial_state is None else initial_state.float().view(B, D, H)
    m = None if dropout_mask is None else dropout_mask.float().view(B, D, H)
    h = torch.zeros(L, B, D, H, device=U.device)
    c_last = []
    for d in range(D):
        c = c0[:, d]  # (B, H)
        for t in range(L - 1, -1, -1) if d else range(L):
            u0, uf, ur = Uv[t, :, d, 0], Uv[t, :, d, 1], Uv[t, :, d, 2]
            f = torch.sigmoid(uf + v[d, 0] * c + b[d, 0])
            r = torch.sigmoid(ur + v[d, 1] * c + b[d, 1])
            c_new = f * c + (1 - f) * u0
            gated = r * (c_new - xp[t, :, d])
            h_t = xp[t, :, d] + (gated if m is None else gated * m[:, d])
            if mask_pad is not None:
                keep = ~mask_pad[t].view(B, 1)
                c_new, h_t = torch.where(keep, c_new, c), h_t * keep
            c = c_new
            h[t, :, d] = h_t
        c_last.append(c)
    return h.view(L, B, D * H).to(U.dtype), torch.stack(c_last, dim=1).view(B, D * H)

def sru_step_torch(
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
    """Pure-torch ``sru_lm.ops.sru_step``: one unidirectional step, ``(B, k*H)`` in, ``(h, c)`` out."""
    h, c = sru_recurrence_torch(
        U[None], None if x is None else x[None], v, b, c, None if mask_pad is None else mask_pad[None],
        dropout_mask, False, scale_x,
    )
    return h[0], c


try:
    from sru_lm.ops import sru_recurrence, sru_step

    FAST_PATH = True
except ImportError as err:  # loaded as remote code without sru_lm
    logger.warning(f"sru_lm.ops is not importable ({err}): the SRU recurrence runs as a slow pure-torch loop")
    sru_recurrence, sru_step = sru_recurrence_torch, sru_step_torch
    FAST_PATH = False


__all__ = ["FAST_PATH", "sru_recurrence", "sru_recurrence_torch", "sru_step", "sru_step_torch"]
