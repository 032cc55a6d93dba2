"""The ``"torch"`` backend: the recurrence in pure PyTorch, fast enough to train with, no compiler needed.

It runs where the C++ kernel cannot be built (no C++ compiler or no ninja; torch.compile's CPU backend
needs a compiler too) and on devices without Triton. Only what is truly serial stays in a time loop, and
that loop is compiled by TorchScript (no compiler involved):

- forward: per step ``f = sigmoid(U_f + b_f + v_f c)`` and ``c = U_x + f (c - U_x)`` (3 ops); then, for all
  steps at once from the saved states, ``r`` and ``h``;
- backward: with f and r recomputed for all steps at once from the saved states, the state's gradient is
  a linear recurrence, ``g_{t-1} = (g_t + a_t) P_t + Q_t`` (2 ops per step); every other gradient is one
  vectorized pass.

Both directions share one loop: the backward direction is stored time-reversed ("scan order").
The math is :func:`sru_lm.models.sru_backend.sru_recurrence_ref`'s, tested against it in tests/ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.sru_backend import state_dtype
from .layout import grads_like


def _scan_fwd(ufb: Tensor, u0: Tensor, vf: Tensor, c0: Tensor, keep: Tensor | None) -> Tensor:
    """c after every step (L, B, D, H), in scan order; ``ufb`` = U_f + b_f."""
    cs = []
    c = c0
    for s in range(ufb.shape[0]):
        f = torch.sigmoid(torch.addcmul(ufb[s], vf, c))
        c_new = torch.lerp(u0[s], c, f)  # U_x + f (c - U_x)
        c = c_new if keep is None else torch.where(keep[s], c_new, c)
        cs.append(c)
    return torch.stack(cs) if len(cs) > 0 else torch.empty_like(ufb)


def _scan_bwd(a: Tensor, P: Tensor, Q: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    """The state's gradient walked back in time: returns (g + a at every step, the gradient of c0)."""
    gcs = []
    for s in range(a.shape[0] - 1, -1, -1):
        gc = g + a[s]
        gcs.append(gc)
        g = torch.addcmul(Q[s], gc, P[s])
    gcs.reverse()
    return (torch.stack(gcs) if gcs else a), g


_compiled: dict[str, object] = {}


def _script(fn):
    """TorchScript ``fn`` once (on first use, not at import); plain Python when scripting is unavailable
    or while torch.compile / torch.export trace (they trace the Python loop instead)."""
    if torch.compiler.is_compiling():
        return fn
    if fn.__name__ not in _compiled:
        try:
            _compiled[fn.__name__] = torch.jit.script(fn)
        except Exception:  # TorchScript removed or broken in this torch: the same loop, in Python
            _compiled[fn.__name__] = fn
    return _compiled[fn.__name__]


def _scan_order(t: Tensor, D: int) -> Tensor:
    """(L, B, D, ...) in time order <-> scan order (direction 1 time-reversed); its own inverse."""
    return t if D == 1 else torch.stack((t[:, :, 0], t[:, :, 1].flip(0)), dim=2)


def _unpack(U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x):
    """The inputs in the state dtype and scan order: (u0, uf, ur, x', v, b, c0, keep, m), each (L, B, D, H)
    or (D, H) / (B, D, H) / (L, B, D, 1) for keep."""
    L, B = U.shape[:2]
    D = 2 if bidirectional else 1
    H = v.shape[-1]
    k = U.shape[-1] // (D * H)
    acc = state_dtype(U.dtype)
    Uo = _scan_order(U.view(L, B, D, k, H).to(acc), D)  # (L, B, D, k, H)
    xp = Uo[:, :, :, 3] if k == 4 else _scan_order(x.view(L, B, D, H).to(acc), D)
    if k == 3 and scale_x != 1.0:
        xp = xp * scale_x
    c0 = U.new_zeros(B, D, H, dtype=acc) if c0 is None else c0.to(acc).view(B, D, H)
    keep = None
    if mask_pad is not None:
        keep = _scan_order((~mask_pad).view(L, B, 1, 1).expand(L, B, D, 1), D)
    m = None if dropout_mask is None else dropout_mask.to(acc).view(B, D, H)
    return Uo[:, :, :, 0], Uo[:, :, :, 1], Uo[:, :, :, 2], xp, v.to(acc), b.to(acc), c0, keep, m, k


def _reset_gate(ur: Tensor, v: Tensor, b: Tensor, c_prev: Tensor) -> Tensor:
    return torch.sigmoid(torch.addcmul(ur + b[:, 1], v[:, 1], c_prev))


def _forward(u0, uf, ur, xp, v, b, c0, keep, m) -> tuple[Tensor, Tensor]:
    """(h, c after every step), both (L, B, D, H) in scan order."""
    scan = _script(_scan_fwd) if u0.shape[0] > 1 else _scan_fwd  # one step: nothing to compile
    c_all = scan(uf + b[:, 0], u0, v[:, 0], c0, keep)
    r = _reset_gate(ur, v, b, torch.cat((c0[None], c_all[:-1])))  # from c_{t-1}
    h = torch.addcmul(xp, r if m is None else r * m, c_all - xp)
    return (h if keep is None else torch.where(keep, h, 0.0)), c_all


class ScriptedRecurrence(torch.autograd.Function):
    """Forward saves the states c_t; backward recomputes f and r from them."""

    @staticmethod
    def forward(ctx, U, x, v, b, c0, mask_pad, dropout_mask, bidirectional, scale_x):
        u0, uf, ur, xp, va, ba, c0a, keep, m, k = _unpack(U, x, v, b, c0, mask_pad, dropout_mask, bidirectional,
                                                        scale_x)
        h, c_all = _forward(u0, uf, ur, xp, va, ba, c0a, keep, m)
        ctx.save_for_backward(U, x, v, b, c0, mask_pad, dropout_mask, c_all)
        ctx.bidirectional, ctx.scale_x = bidirectional, scale_x
        return _finish(h, U), _last(c_all, c0a, U.shape[1])

    @staticmethod
    def backward(ctx, grad_h, grad_c_last):
        U, x, v, b, c0, mask_pad, dropout_mask, c_all = ctx.saved_tensors
        scale_x = ctx.scale_x
        u0, uf, ur, xp, va, ba, c0a, keep, m, k = _unpack(U, x, v, b, c0, mask_pad, dropout_mask, ctx.bidirectional,
                                                        scale_x)
        L, B, D, H = c_all.shape
        c_prev = torch.cat((c0a[None], c_all[:-1]))  # c_{t-1}
        f = torch.sigmoid(torch.addcmul(uf + ba[:, 0], va[:, 0], c_prev))
        r = _reset_gate(ur, va, ba, c_prev)
        gh = c_all.new_zeros(c_all.shape) if grad_h is None else _scan_order(grad_h.view(L, B, D, H).to(c_all.dtype), D)
        if keep is not None:  # a padded step: f = 1 and no output, so the state's gradient passes through
            f, gh = torch.where(keep, f, 1.0), torch.where(keep, gh, 0.0)
        mr = r if m is None else r * m
        A = (c_prev - u0) * torch.addcmul(f, f, f, value=-1)  # dc_t/dz_f = (c_{t-1} - U_x) f (1 - f)
        gzr = (gh if m is None else gh * m) * (c_all - xp) * torch.addcmul(r, r, r, value=-1)  # dL/dz_r
        # g_{t-1} = (g_t + gh mr) (f + A v_f) + gzr v_r
        g = c0a.new_zeros(c0a.shape) if grad_c_last is None else grad_c_last.to(c0a.dtype).view(c0a.shape)
        scan = _script(_scan_bwd) if L > 1 else _scan_bwd
        gc, gc0 = scan(gh * mr, torch.addcmul(f, A, va[:, 0]), gzr * va[:, 1], g)
        gzf = gc * A
        dv = torch.stack(((gzf * c_prev).sum((0, 1)), (gzr * c_prev).sum((0, 1))), dim=1)  # (D, 2, H)
        db = torch.stack((gzf.sum((0, 1)), gzr.sum((0, 1))), dim=1)
        gxp = torch.addcmul(gh, gh, mr, value=-1)  # gh (1 - m r)
        gates = (torch.addcmul(gc, gc, f, value=-1), gzf, gzr) + ((gxp,) if k == 4 else ())  # dU_x = gc (1 - f)
        gU = _scan_order(torch.stack(gates, dim=3), D).reshape(U.shape)
        gx = None
        if k == 3 and x is not None:
            gx = _scan_order(gxp if scale_x == 1.0 else gxp * scale_x, D).reshape(L, B, D * H)
        grads = (gU, gx, dv, db, None if c0 is None else gc0.reshape(c0.shape))
        return (*grads_like(grads, (U, x, v, b, c0)), None, None, None, None)


def _finish(h: Tensor, U: Tensor) -> Tensor:
    """h from scan order (L, B, D, H) to (L, B, D*H) in U's dtype."""
    L, B, D, H = h.shape
    return _scan_order(h, D).reshape(L, B, D * H).to(U.dtype)


def _last(c_all: Tensor, c0: Tensor, B: int) -> Tensor:
    """The final state (B, D*H): the last step in scan order is each direction's last."""
    return (c_all[-1] if c_all.shape[0] else c0).reshape(B, -1)


def sru_recurrence_torch(U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, scale_x):
    """:func:`sru_lm.ops.sru_recurrence` (arguments checked there) on the scripted loops."""
    args = (U, x, v, b, initial_state, mask_pad, dropout_mask, bidirectional, float(scale_x))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in args[:5]):
        return ScriptedRecurrence.apply(*args)
    u0, uf, ur, xp, va, ba, c0a, keep, m, k = _unpack(*args)
    h, c_all = _forward(u0, uf, ur, xp, va, ba, c0a, keep, m)
    return _finish(h, U), _last(c_all, c0a, U.shape[1])
