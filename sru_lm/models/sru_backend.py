"""The SRU recurrence: its specification in plain PyTorch, and the two entry points every caller uses.

- :func:`sru_recurrence_ref` and :func:`sru_step_ref` are the spec: one readable body of the math, a
  Python loop over time with the state in fp32 and autograd for gradients. Every fast path (the C++ CPU
  kernel, the scripted CPU loop, the Triton kernels) is tested against them.
- :func:`sru_recurrence`, :func:`sru_step` and the in-place :func:`sru_step_` run :mod:`sru_lm.ops`
  (argument checks, then the one backend decision, :func:`sru_lm.ops.select_backend`) when ``sru_lm`` is
  importable, and the spec otherwise (logged once).
- :func:`linear` (the model's projections) is :func:`sru_lm.ops.cpu.linear` with ``sru_lm`` (decoding's
  few-row CPU matmuls on a weight-streaming kernel) and ``F.linear`` without.

The file lives in ``models/`` because ``save_pretrained`` ships it next to the weights: a process that
loads a model with ``trust_remote_code=True`` gets the modeling file and the sibling modules it imports
(``from .x import``), nothing else. So it imports only torch, and binds :mod:`sru_lm.ops` at the first call,
not at import: importing ``sru_lm.ops`` runs this file (the spec lives here), and this file runs as part of
``sru_lm.models``.
"""

from __future__ import annotations

import logging
from types import ModuleType

import torch

logger = logging.getLogger(__name__)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrent state is carried in: fp32, or fp64 for fp64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sru_recurrence_ref(
    U: torch.Tensor, x: torch.Tensor | None, v: torch.Tensor, b: torch.Tensor,
    initial_state: torch.Tensor | None = None, mask_pad: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None, bidirectional: bool = False, scale_x: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec of :func:`sru_recurrence` (same arguments but ``backend``, same results)."""
    L, B = U.shape[0], U.shape[1]
    D = 2 if bidirectional else 1
    H = v.shape[-1]
    k = U.shape[-1] // (D * H)
    acc = state_dtype(U.dtype)
    Uv = U.to(acc).view(L, B, D, k, H)
    xp = x.to(acc).view(L, B, D, H) * scale_x if k == 3 else Uv[:, :, :, 3]  # highway input x'
    vf, vr = v.to(acc)[:, 0], v.to(acc)[:, 1]  # (D, H)
    bf, br = b.to(acc)[:, 0], b.to(acc)[:, 1]
    m = None if dropout_mask is None else dropout_mask.to(acc).view(B, D, H)
    c0 = U.new_zeros(B, D, H, dtype=acc) if initial_state is None else initial_state.to(acc).view(B, D, H)
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
        for t in range(L - 1, -1, -1) if d == 1 else range(L):
            f = torch.sigmoid(ufs[t][:, d] + vf[d] * c + bf[d])
            r = torch.sigmoid(urs[t][:, d] + vr[d] * c + br[d])
            c_new = f * c + (1 - f) * u0s[t][:, d]
            xt = xps[t][:, d]
            gated = r * (c_new - xt)
            if m is not None:
                gated = gated * m[:, d]
            h = gated + xt
            if pads is not None:  # padding: c carried, h zero
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
    U: torch.Tensor, x: torch.Tensor | None, v: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
    mask_pad: torch.Tensor | None = None, dropout_mask: torch.Tensor | None = None, scale_x: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec of :func:`sru_step`: the recurrence on a length-1 sequence."""
    h, c_new = sru_recurrence_ref(
        U[None], None if x is None else x[None], v, b, c, None if mask_pad is None else mask_pad[None],
        dropout_mask, False, scale_x,
    )
    return h[0], c_new


_ops: ModuleType | None = None  # sru_lm.ops.recurrence once bound: run_recurrence, run_step
_step_ops: ModuleType | None = None  # sru_lm.ops.step, bound with _ops: sru_step_
_linear = torch.nn.functional.linear  # sru_lm.ops.cpu.linear once bound
_ops_missing = False  # True once `import sru_lm.ops` failed: the spec runs


def _dispatcher() -> ModuleType | None:
    global _ops, _step_ops, _linear, _ops_missing
    if _ops is None and not _ops_missing:
        try:
            from sru_lm.ops import cpu, recurrence, step

            _ops, _step_ops, _linear = recurrence, step, cpu.linear
        except ImportError as err:  # loaded as remote code where sru_lm is not installed
            _ops_missing = True
            logger.warning(
                f"sru_lm is not importable ({err}): the SRU recurrence runs the slow reference loop; "
                "`pip install sru_lm` for the fast CPU and GPU paths"
            )
    return _ops


def __getattr__(name: str):
    if name == "FAST_PATH":  # whether the calls above go to sru_lm.ops (binds it if needed)
        return _dispatcher() is not None
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    sequence's last real token, in both directions. The state is carried in fp32 (fp64 for fp64 inputs).

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
        backend: ``"reference"`` (this file's spec), ``"cpu"`` (C++ kernel), ``"torch"`` (scripted
            loops, no compiler needed) or ``"triton"``; None (or env ``SRU_LM_BACKEND``) chooses by device
            and dtype, see :func:`sru_lm.ops.select_backend`.

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
    args = (U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, scale_x)
    ops = _ops if _ops is not None else _dispatcher()
    if ops is None:
        return sru_recurrence_ref(*args)
    return ops.run_recurrence(args, backend)


def sru_recurrence_states(
    U: torch.Tensor,
    x: torch.Tensor | None,
    v: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    mask_pad: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None,
    scale_x: float = 1.0,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Unidirectional :func:`sru_recurrence` that also returns the state after every position, ``(L, B, H)``,
    where the backend writes them in the same pass (the C++ CPU kernel, without autograd), and None where it
    does not (the caller derives them, as :class:`SRULMLayer` does for a recording cache)."""
    args = (U, x, v, b, initial_state, mask_pad, dropout_mask, False, scale_x)
    ops = _ops if _ops is not None else _dispatcher()
    if ops is None:
        return (*sru_recurrence_ref(*args), None)
    return ops.run_recurrence_states(args, backend)


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
    """One unidirectional SRU step for decoding, equal to :func:`sru_recurrence` on a length-1 sequence.

    Args:
        U: ``(B, k*H)`` this step's projections ``[U_x, U_f, U_r, (U_h)]``.
        x: ``(B, H)`` highway input when k == 3, else None.
        v, b: ``(1, 2, H)`` as in :func:`sru_recurrence`.
        c: ``(B, H)`` the previous state (fp32 is best: the state is carried in fp32).
        mask_pad: ``(B,)`` bool, True where this step is padding (state kept, output zero).
        dropout_mask: ``(B, H)``.
        scale_x, backend: as in :func:`sru_recurrence`.

    Returns:
        ``h`` ``(B, H)`` in U's dtype and the new state ``c`` ``(B, H)`` in fp32 (fp64 for fp64 input).

    Example:
        >>> B, H = 2, 4
        >>> v, b, c = torch.randn(1, 2, H), torch.zeros(1, 2, H), torch.zeros(B, H)
        >>> h, c = sru_step(torch.randn(B, 3 * H), torch.randn(B, H), v, b, c)
        >>> h.shape, c.dtype
        (torch.Size([2, 4]), torch.float32)
    """
    args = (U, x, v, b, c, mask_pad, dropout_mask, scale_x)
    ops = _ops if _ops is not None else _dispatcher()
    if ops is None:
        return sru_step_ref(*args)
    return ops.run_step(args, backend)


def sru_step_(
    U: torch.Tensor,
    x: torch.Tensor | None,
    v: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor,
    h_out: torch.Tensor,
    mask_pad: torch.Tensor | None = None,
    dropout_mask: torch.Tensor | None = None,
    scale_x: float = 1.0,
    backend: str | None = None,
) -> None:
    """:func:`sru_step` in place, for a cache allocated once: ``c`` becomes the new state where it lies and
    ``h_out`` receives ``h``, so a compiled (or CUDA-graph captured) decode step allocates no state.

    With ``sru_lm`` this is :func:`sru_lm.ops.sru_step_` (a ``torch.library`` op that stays in a compiled
    graph; the C++ and Triton kernels write in place, other backends copy); without it, the spec and a copy.
    Not differentiable: decoding only.

    Args:
        U, x, v, b, mask_pad, dropout_mask, scale_x, backend: as in :func:`sru_step`.
        c: ``(B, H)`` the previous state, contiguous, in fp32 (fp64 for fp64 input); overwritten.
        h_out: ``(B, H)`` contiguous, in U's dtype; overwritten with ``h``.

    Example:
        >>> B, H = 2, 4
        >>> v, b = torch.randn(1, 2, H), torch.zeros(1, 2, H)
        >>> c, h = torch.zeros(B, H), torch.empty(B, H)
        >>> sru_step_(torch.randn(B, 3 * H), torch.randn(B, H), v, b, c, h)  # c and h now hold the step
    """
    ops = _ops if _ops is not None else _dispatcher()
    if ops is None:
        with torch.no_grad():
            h, c_new = sru_step_ref(U, x, v, b, c, mask_pad, dropout_mask, scale_x)
            c.copy_(c_new)
            h_out.copy_(h)
        return
    _step_ops.sru_step_(U, x, v, b, c, h_out, mask_pad, dropout_mask, scale_x, backend)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``; with ``sru_lm``, :func:`sru_lm.ops.cpu.linear`, which runs decoding's few-row CPU matmuls on
    a kernel that reads each weight once for all rows (and everything else on ``F.linear``)."""
    if _ops is None and not _ops_missing:
        _dispatcher()
    return _linear(x, weight, bias)


__all__ = [
    "linear", "sru_recurrence", "sru_recurrence_ref", "sru_recurrence_states", "sru_step", "sru_step_",
    "sru_step_ref", "state_dtype",
]
