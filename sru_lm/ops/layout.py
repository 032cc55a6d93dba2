"""Gradients laid out like the tensors they belong to.

DDP copies every parameter gradient whose strides differ from the parameter's ("grad strides do not
match bucket view"), and a slice such as ``gvb[:, :2]`` keeps its base's strides even when it counts as
contiguous. So every backward here hands its gradients through :func:`grads_like`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def grad_like(g: torch.Tensor | None, t: torch.Tensor | None) -> torch.Tensor | None:
    """``g`` with ``t``'s dtype and strides (a copy only when they differ); None where ``t`` is None."""
    if g is None or t is None:
        return None
    if g.dtype != t.dtype:
        g = g.to(t.dtype)
    if g.stride() != t.stride():
        out = torch.empty_like(t)  # t's strides when t is dense, else the contiguous ones
        out.copy_(g)
        return out
    return g


def grads_like(grads: Sequence[torch.Tensor | None], inputs: Sequence[torch.Tensor | None]) -> tuple:
    return tuple(grad_like(g, t) for g, t in zip(grads, inputs, strict=True))
