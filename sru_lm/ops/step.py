"""The in-place decode step, for caches allocated once: ``sru_step_`` updates the state where it lies and
writes ``h`` into a given buffer, so a compiled (or CUDA-graph captured) decode step allocates nothing.

It is a ``torch.library`` custom op (``sru_lm::sru_step_``, mutating ``c`` and ``h_out``) so torch.compile
and torch.export keep it in the graph. It runs the C++ kernel on CPU, ``sru_step_triton_`` on CUDA, and
otherwise (or when ``backend`` asks for another) the backend :func:`sru_lm.ops.select_backend` picks, copying
its result into place.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.sru_backend import state_dtype
from . import cpu
from .recurrence import _shape, check_step_inputs, run_step, select_backend


def _step_into(
    U: Tensor, x: Tensor | None, v: Tensor, b: Tensor, c: Tensor, h_out: Tensor, mask_pad: Tensor | None,
    dropout_mask: Tensor | None, scale_x: float, backend: str | None = None,
) -> None:
    which = select_backend(U, backend)
    if which == "cpu":
        cpu.sru_step_cpu_(U, x, v, b, c, h_out, mask_pad, dropout_mask, scale_x)
    elif which == "triton":
        from .triton_backend import sru_step_triton_

        sru_step_triton_(U, x.contiguous() if x is not None else None, v.contiguous(), b.contiguous(), c, h_out,
                         mask_pad, None if dropout_mask is None else dropout_mask.contiguous(), scale_x)
    else:
        h, c_new = run_step((U, x, v, b, c, mask_pad, dropout_mask, scale_x), which)
        c.copy_(c_new)
        h_out.copy_(h)


_step_op = torch.library.custom_op("sru_lm::sru_step_", _step_into, mutates_args=("c", "h_out"))


@_step_op.register_fake
def _(U, x, v, b, c, h_out, mask_pad, dropout_mask, scale_x, backend=None) -> None:
    return None


def sru_step_(
    U: Tensor, x: Tensor | None, v: Tensor, b: Tensor, c: Tensor, h_out: Tensor,
    mask_pad: Tensor | None = None, dropout_mask: Tensor | None = None, scale_x: float = 1.0,
    backend: str | None = None,
) -> None:
    """:func:`sru_lm.ops.sru_step` in place: ``c`` (B, H) becomes the new state, ``h_out`` (B, H) gets ``h``.

    ``c`` must be contiguous in the state dtype (fp32, fp64 for fp64 inputs) and ``h_out`` contiguous in
    U's dtype; other arguments, ``backend`` included, as in :func:`sru_lm.ops.sru_step` (the C++ kernel and the
    Triton kernel write in place, the other backends run their step and copy). Not differentiable (decoding only).

    Example:
        >>> B, H = 2, 4
        >>> v, b = torch.randn(1, 2, H), torch.zeros(1, 2, H)
        >>> c, h = torch.zeros(B, H), torch.empty(B, H)
        >>> sru_step_(torch.randn(B, 3 * H), torch.randn(B, H), v, b, c, h)  # c and h now hold the step
    """
    check_step_inputs(U, x, v, b, c, mask_pad, dropout_mask)
    if c.dtype != state_dtype(U.dtype) or not c.is_contiguous():
        raise TypeError(f"c must be a contiguous {state_dtype(U.dtype)} tensor to be updated in place, got "
                        f"{c.dtype}{'' if c.is_contiguous() else ' (not contiguous)'}")
    if h_out.shape != c.shape or h_out.dtype != U.dtype or not h_out.is_contiguous():
        raise ValueError(f"h_out must be a contiguous {U.dtype} tensor of shape {tuple(c.shape)}, got "
                         f"{h_out.dtype} {_shape(h_out)}")
    if torch.compiler.is_compiling():
        torch.ops.sru_lm.sru_step_(U, x, v, b, c, h_out, mask_pad, dropout_mask, float(scale_x), backend)
    else:  # eager: skip the op layer's ~40 us of Python dispatch
        _step_into(U, x, v, b, c, h_out, mask_pad, dropout_mask, float(scale_x), backend)
