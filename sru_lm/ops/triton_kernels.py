"""Triton kernels for the SRU recurrence: forward scan, backward scan, one-token step.

One program owns one (hidden-unit block, batch row, direction) and walks time inside. The math is
:mod:`sru_lm.ops.naive`; the launchers, the autograd op and the choice of block sizes live in
:mod:`sru_lm.ops.triton_backend`.

Schedule. Time is cut into chunks of ``T`` steps. A chunk's inputs are loaded as ``(BLOCK_H, T)``
tiles, one load per gate, and the tiles of chunk j+1 are issued before the math of chunk j runs, so a
thread keeps about ``4*T`` loads in flight instead of stalling on memory once per step. Loads are
contiguous across hidden units (U is laid out ``(L, B, D, k, H)``). The launcher sets
``BLOCK_H = 32 * num_warps * VEC`` so every thread owns VEC adjacent units and all T rows of them:
``_row`` (picking step i out of a tile) then never leaves the thread's registers, and after unrolling
its compare-and-select folds to register moves.

Step order. Direction 0 walks time forward, direction 1 backward: step s of direction d is at time
``t = s`` or ``t = L - 1 - s``. Rows past the end (the last chunk may be partial) behave as padding.

Two schedules, chosen per launch by ``KernelConfig.sched`` in :mod:`sru_lm.ops.triton_backend`:

- ``"tile"`` (above): :func:`_sru_fwd_kernel` / :func:`_sru_bwd_kernel` prefetch by hand, a chunk of
  T steps at a time; the backward rebuilds c from one checkpoint per chunk, or reads it per step.
- ``"step"``: :func:`_sru_fwd_step_kernel` / :func:`_sru_bwd_step_kernel` run one step per iteration of
  ``tl.range(0, L, num_stages=STAGES)`` and leave the prefetch to Triton's software pipeliner (each
  step's addresses depend on the step index only, never on the carried state); the backward reads
  c_{t-1} saved at every step.

What the compiler makes of each for sm_90 (registers, instructions per step, where loads land) is in
``sru_lm/ops/TRITON_NOTES.md``.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

# The interpreter re-patches triton.language on every call of a jit function, which doubles the run
# time of these small helpers; as plain functions they run inline (the compiled kernels are unchanged).
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_helper = (lambda fn: fn) if _INTERPRET else triton.jit


@_helper
def _row(tile, rows, i: tl.constexpr):
    """Step i of a (BLOCK_H, T) tile as a (BLOCK_H,) vector, without leaving the thread."""
    return tl.sum(tl.where(rows[None, :] == i, tile, 0.0), axis=1)


@_helper
def _time_of(s, L, i_d):
    # step index -> time index: forward in direction 0, reversed in direction 1
    return tl.where(i_d == 0, s, L - 1 - s)


@_helper
def _load_chunk(
    p_U, p_x, p_pad, p_dh, j, L, B, H, i_b, i_d, offs_h, mask_h, rows, scale_x,
    D: tl.constexpr, K: tl.constexpr, HAS_PAD: tl.constexpr, HAS_DH: tl.constexpr,
    T: tl.constexpr,
):
    """The (BLOCK_H, T) input tiles of chunk j: U_x, U_f, U_r, x', keep (1 = real step), dh.

    Without padding ``keep`` and without HAS_DH ``dh`` are scalar placeholders (no registers)."""
    s = j * T + rows  # (T,) step indices
    valid = (s >= 0) & (s < L)
    t = _time_of(s, L, i_d)
    t = tl.where(valid, t, 0).to(tl.int64)
    row_u = ((t * B + i_b) * D + i_d) * (K * H)  # (T,) offset of (t, b, d, gate 0, unit 0)
    m2 = mask_h[:, None] & valid[None, :]
    p = p_U + offs_h[:, None] + row_u[None, :]
    u0 = tl.load(p, mask=m2, other=0.0).to(tl.float32)
    uf = tl.load(p + H, mask=m2, other=0.0).to(tl.float32)
    ur = tl.load(p + 2 * H, mask=m2, other=0.0).to(tl.float32)
    if K == 4:
        xp = tl.load(p + 3 * H, mask=m2, other=0.0).to(tl.float32)
    else:
        row_x = ((t * B + i_b) * D + i_d) * H
        xp = tl.load(p_x + offs_h[:, None] + row_x[None, :], mask=m2, other=0.0).to(tl.float32) * scale_x
    if HAS_PAD:
        # a (BLOCK_H, T) broadcast load keeps the flag in the same registers as the other tiles
        pad = tl.load(p_pad + offs_h[:, None] * 0 + (t * B + i_b)[None, :], mask=m2, other=1)
        keep = tl.where(valid[None, :] & (pad == 0), 1.0, 0.0)
    else:
        keep = 1.0  # the kernels test s < L instead
    if HAS_DH:
        row_h = ((t * B + i_b) * D + i_d) * H
        dh = tl.load(p_dh + offs_h[:, None] + row_h[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        dh = 0.0
    return u0, uf, ur, xp, keep, dh


@_helper
def _cell(c, u0, uf, ur, vf, vr, bf, br):
    """One SRU update from c_{t-1}: returns f, r, c_t. ``u0 + f (c - u0)`` = ``f c + (1 - f) u0``."""
    f = tl.sigmoid(vf * c + (uf + bf))
    r = tl.sigmoid(vr * c + (ur + br))
    c_new = u0 + f * (c - u0)
    return f, r, c_new


@_helper
def _cell_fwd(c, u0, uf, ur, xt, m, real, vf, vr, bf, br, HAS_M: tl.constexpr, MASK: tl.constexpr):
    """One forward step: returns c_t and h_t; with MASK, a padded step (``real`` False) keeps c and gives
    h = 0. Without HAS_M, ``m`` is a placeholder."""
    f, r, c_new = _cell(c, u0, uf, ur, vf, vr, bf, br)
    g = r * (c_new - xt)
    if HAS_M:
        g = g * m
    h = g + xt
    if MASK:
        c_new = tl.where(real, c_new, c)
        h = tl.where(real, h, 0.0)
    return c_new, h


@_helper
def _cell_bwd(
    c, u0, uf, ur, xt, dh, dc, m, real, vf, vr, bf, br, dvf, dvr, dbf, dbr,
    HAS_M: tl.constexpr, MASK: tl.constexpr,
):
    """One backward step from c = c_{t-1} and dc = dLoss/dc_t (through c_{t+1}): returns dLoss/dc_{t-1},
    the gradients of U_0, U_f, U_r and x' at this step, and the v/b gradient sums with this step added.
    With MASK, a padded step (``real`` False) passes dc through and has zero gradients."""
    f, r, c_new = _cell(c, u0, uf, ur, vf, vr, bf, br)
    if HAS_M:
        mr = m * r
        dr = dh * m * (c_new - xt)
    else:
        mr = r
        dr = dh * (c_new - xt)
    dcn = dc + dh * mr  # dL/dc_t, through h_t and through c_{t+1}
    daf = dcn * (c - u0) * f * (1.0 - f)  # dL/d(pre-activation of f) = dL/dU_f
    dar = dr * r * (1.0 - r)
    dc_new = dcn * f + daf * vf + dar * vr
    if MASK:
        dc_new = tl.where(real, dc_new, dc)
        daf = tl.where(real, daf, 0.0)
        dar = tl.where(real, dar, 0.0)
    du0 = dcn * (1.0 - f)
    dxp = dh * (1.0 - mr)
    if MASK:
        du0 = tl.where(real, du0, 0.0)
        dxp = tl.where(real, dxp, 0.0)
    return dc_new, du0, daf, dar, dxp, dvf + daf * c, dvr + dar * c, dbf + daf, dbr + dar


@_helper
def _prologue(p_v, p_b, p_carry, p_m, H, D: tl.constexpr, HAS_CARRY: tl.constexpr, HAS_M: tl.constexpr,
              BLOCK_H: tl.constexpr, VEC: tl.constexpr):
    """What a scan program loads once: its units, v and b, the carried value's start (c_0 forward,
    dc_L backward; zeros without HAS_CARRY) and the dropout mask (a placeholder without HAS_M)."""
    i_h, i_b, i_d = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_h = tl.max_contiguous(tl.multiple_of(offs_h, VEC), VEC)  # VEC units per thread
    mask_h = offs_h < H
    col = (i_b * D + i_d) * H + offs_h  # offset into (B, D*H) tensors
    vf = tl.load(p_v + i_d * 2 * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    vr = tl.load(p_v + i_d * 2 * H + H + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    bf = tl.load(p_b + i_d * 2 * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    br = tl.load(p_b + i_d * 2 * H + H + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    if HAS_CARRY:
        carry = tl.load(p_carry + col, mask=mask_h, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros([BLOCK_H], dtype=tl.float32)
    if HAS_M:
        m = tl.load(p_m + col, mask=mask_h, other=0.0).to(tl.float32)
    else:
        m = 1.0
    return i_b, i_d, offs_h, mask_h, col, vf, vr, bf, br, carry, m


@_helper
def _load_step(p_U, p_x, row, offs_h, mask, H, scale_x, K: tl.constexpr):
    """U_0, U_f, U_r and x' of one (t, b, d) row, as (BLOCK_H,) fp32 vectors."""
    p = p_U + row * (K * H) + offs_h
    u0 = tl.load(p, mask=mask, other=0.0).to(tl.float32)
    uf = tl.load(p + H, mask=mask, other=0.0).to(tl.float32)
    ur = tl.load(p + 2 * H, mask=mask, other=0.0).to(tl.float32)
    if K == 4:
        xt = tl.load(p + 3 * H, mask=mask, other=0.0).to(tl.float32)
    else:
        xt = tl.load(p_x + row * H + offs_h, mask=mask, other=0.0).to(tl.float32) * scale_x
    return u0, uf, ur, xt


@_helper
def _store_step_grads(p_du, p_dxt, mask, du0, daf, dar, dxp, H, scale_x, K: tl.constexpr):
    """One (t, b, d) row's gradients of U at ``p_du`` (and of x at ``p_dxt`` when K = 3)."""
    tl.store(p_du, du0.to(p_du.dtype.element_ty), mask=mask)
    tl.store(p_du + H, daf.to(p_du.dtype.element_ty), mask=mask)
    tl.store(p_du + 2 * H, dar.to(p_du.dtype.element_ty), mask=mask)
    if K == 4:
        tl.store(p_du + 3 * H, dxp.to(p_du.dtype.element_ty), mask=mask)
    else:
        tl.store(p_dxt, (dxp * scale_x).to(p_dxt.dtype.element_ty), mask=mask)


@_helper
def _bwd_epilogue(p_dc0, p_dvb, col, i_b, i_d, offs_h, mask_h, dc, dvf, dvr, dbf, dbr, H, D: tl.constexpr):
    tl.store(p_dc0 + col, dc, mask=mask_h)
    p_part = p_dvb + (i_b * D + i_d) * (4 * H) + offs_h
    tl.store(p_part, dvf, mask=mask_h)
    tl.store(p_part + H, dvr, mask=mask_h)
    tl.store(p_part + 2 * H, dbf, mask=mask_h)
    tl.store(p_part + 3 * H, dbr, mask=mask_h)


# L and B vary from batch to batch (bucketed text): specializing on them (divisibility by 16) would
# compile every kernel again the first time a new kind of length arrives, seconds each on a GPU.
@triton.jit(do_not_specialize=["L", "B"])
def _sru_fwd_kernel(
    p_U, p_x, p_v, p_b, p_c0, p_pad, p_m,
    p_h, p_c_last, p_c_saved,
    L, B, H, scale_x,
    D: tl.constexpr, K: tl.constexpr,
    HAS_C0: tl.constexpr, HAS_PAD: tl.constexpr, HAS_M: tl.constexpr,
    SAVE_EVERY: tl.constexpr, T: tl.constexpr, BLOCK_H: tl.constexpr, VEC: tl.constexpr,
):
    i_b, i_d, offs_h, mask_h, col, vf, vr, bf, br, c, m = _prologue(
        p_v, p_b, p_c0, p_m, H, D, HAS_C0, HAS_M, BLOCK_H, VEC
    )
    rows = tl.arange(0, T)

    n_chunks = tl.cdiv(L, T)
    u0, uf, ur, xp, keep, _ = _load_chunk(
        p_U, p_x, p_pad, p_U, 0, L, B, H, i_b, i_d, offs_h, mask_h, rows, scale_x, D, K, HAS_PAD, False, T
    )
    for j in range(0, n_chunks):
        # software pipelining: chunk j+1's loads go out before chunk j's math
        nu0, nuf, nur, nxp, nkeep, _ = _load_chunk(
            p_U, p_x, p_pad, p_U, j + 1, L, B, H, i_b, i_d, offs_h, mask_h, rows, scale_x,
            D, K, HAS_PAD, False, T,
        )
        for i in tl.static_range(T):
            s = j * T + i
            t = _time_of(s, L, i_d).to(tl.int64)
            if SAVE_EVERY > 0:  # c_{t-1} for the backward: every step, or one checkpoint per chunk
                ok = (s < L) & (s % SAVE_EVERY == 0)
                p_s = p_c_saved + (s // SAVE_EVERY).to(tl.int64) * (B * D * H) + col
                tl.store(p_s, c, mask=tl.where(ok, mask_h, False))
            xt = _row(xp, rows, i)
            if HAS_PAD:
                real = _row(keep, rows, i) > 0.5
            else:
                real = s < L
            c, h = _cell_fwd(c, _row(u0, rows, i), _row(uf, rows, i), _row(ur, rows, i), xt, m, real,
                             vf, vr, bf, br, HAS_M, True)
            tl.store(p_h + (t * B + i_b) * (D * H) + i_d * H + offs_h, h.to(p_h.dtype.element_ty),
                     mask=tl.where(s < L, mask_h, False))
        u0, uf, ur, xp, keep = nu0, nuf, nur, nxp, nkeep
    tl.store(p_c_last + col, c, mask=mask_h)


@triton.jit(do_not_specialize=["L", "B"])
def _sru_bwd_kernel(
    p_dh, p_dc_last, p_U, p_x, p_v, p_b, p_pad, p_m, p_c_saved,
    p_dU, p_dx, p_dvb, p_dc0,
    L, B, H, scale_x,
    D: tl.constexpr, K: tl.constexpr,
    HAS_DC: tl.constexpr, HAS_PAD: tl.constexpr, HAS_M: tl.constexpr,
    RECOMPUTE: tl.constexpr, T: tl.constexpr, BLOCK_H: tl.constexpr, VEC: tl.constexpr,
):
    """Walks steps from last to first carrying dc = dLoss/dc_t.

    ``p_c_saved`` holds c_{t-1} in step order: for every step (RECOMPUTE False), or once per chunk of
    T steps (RECOMPUTE True), in which case the chunk's c_{t-1} are rebuilt forward in registers before
    its backward runs. The v and b gradients are summed over time in registers and written once per
    program to ``p_dvb`` (B, D, 4, H) = [dv_f, dv_r, db_f, db_r]; the launcher sums over B.
    """
    i_b, i_d, offs_h, mask_h, col, vf, vr, bf, br, dc, m = _prologue(
        p_v, p_b, p_dc_last, p_m, H, D, HAS_DC, HAS_M, BLOCK_H, VEC
    )
    rows = tl.arange(0, T)
    zero = tl.zeros([BLOCK_H], dtype=tl.float32)
    dvf, dvr, dbf, dbr = zero, zero, zero, zero
    stride_saved = B * D * H

    n_chunks = tl.cdiv(L, T)
    j = n_chunks - 1
    u0, uf, ur, xp, keep, dh = _load_chunk(
        p_U, p_x, p_pad, p_dh, j, L, B, H, i_b, i_d, offs_h, mask_h, rows, scale_x, D, K, HAS_PAD, True, T
    )
    if RECOMPUTE:
        c_ck = tl.load(p_c_saved + j.to(tl.int64) * stride_saved + col, mask=mask_h, other=0.0)
    else:
        s_rows = j * T + rows
        ms = mask_h[:, None] & (s_rows < L)[None, :]
        cp = tl.load(p_c_saved + col[:, None] + s_rows.to(tl.int64)[None, :] * stride_saved, mask=ms, other=0.0)
    for jj in range(0, n_chunks):
        j = n_chunks - 1 - jj
        # prefetch chunk j-1 (masked off when j == 0)
        nu0, nuf, nur, nxp, nkeep, ndh = _load_chunk(
            p_U, p_x, p_pad, p_dh, j - 1, L, B, H, i_b, i_d, offs_h, mask_h, rows, scale_x,
            D, K, HAS_PAD, True, T,
        )
        if RECOMPUTE:
            p_ck = p_c_saved + tl.maximum(j - 1, 0).to(tl.int64) * stride_saved + col
            nc_ck = tl.load(p_ck, mask=tl.where(j > 0, mask_h, False), other=0.0)
            # rebuild c_{t-1} for the chunk's T steps, forward, in registers
            c = c_ck
            cp = tl.zeros([BLOCK_H, T], dtype=tl.float32)
            for i in tl.static_range(T):
                cp = tl.where(rows[None, :] == i, c[:, None], cp)
                _, _, c_new = _cell(c, _row(u0, rows, i), _row(uf, rows, i), _row(ur, rows, i), vf, vr, bf, br)
                if HAS_PAD:
                    c = tl.where(_row(keep, rows, i) > 0.5, c_new, c)
                else:
                    c = tl.where(j * T + i < L, c_new, c)
        else:
            s_rows = (j - 1) * T + rows
            ms = mask_h[:, None] & ((s_rows >= 0) & (s_rows < L))[None, :]
            p_cs = p_c_saved + tl.where(s_rows >= 0, s_rows, 0).to(tl.int64)[None, :] * stride_saved
            ncp = tl.load(p_cs + col[:, None], mask=ms, other=0.0)
        for i in tl.static_range(T - 1, -1, -1):
            s = j * T + i
            t = _time_of(s, L, i_d).to(tl.int64)
            c = _row(cp, rows, i)
            x_i = _row(xp, rows, i)
            dh_i = _row(dh, rows, i)
            u0_i = _row(u0, rows, i)
            if HAS_PAD:
                real = _row(keep, rows, i) > 0.5
            else:
                real = s < L
            dc, du0, daf, dar, dxp, dvf, dvr, dbf, dbr = _cell_bwd(
                c, u0_i, _row(uf, rows, i), _row(ur, rows, i), x_i, dh_i, dc, m, real, vf, vr, bf, br,
                dvf, dvr, dbf, dbr, HAS_M, True,
            )
            ok = tl.where(s < L, mask_h, False)  # (`&` with a scalar breaks the interpreter)
            p_du = p_dU + ((t * B + i_b) * D + i_d) * (K * H) + offs_h
            p_dxt = p_dx + (t * B + i_b) * (D * H) + i_d * H + offs_h
            _store_step_grads(p_du, p_dxt, ok, du0, daf, dar, dxp, H, scale_x, K)
        u0, uf, ur, xp, keep, dh = nu0, nuf, nur, nxp, nkeep, ndh
        if RECOMPUTE:
            c_ck = nc_ck
        else:
            cp = ncp
    _bwd_epilogue(p_dc0, p_dvb, col, i_b, i_d, offs_h, mask_h, dc, dvf, dvr, dbf, dbr, H, D)


@triton.jit
def _sru_step_kernel(
    p_U, p_x, p_v, p_b, p_c, p_pad, p_m, p_h, p_c_out,
    H, scale_x,
    K: tl.constexpr, HAS_PAD: tl.constexpr, HAS_M: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """One unidirectional step for decoding; ``p_c_out`` may equal ``p_c`` (in-place update)."""
    i_h, i_b = tl.program_id(0), tl.program_id(1)
    offs_h = i_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    col = i_b * H + offs_h
    u0, uf, ur, xt = _load_step(p_U, p_x, i_b, offs_h, mask_h, H, scale_x, K)
    vf = tl.load(p_v + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    vr = tl.load(p_v + H + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    bf = tl.load(p_b + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    br = tl.load(p_b + H + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    c = tl.load(p_c + col, mask=mask_h, other=0.0).to(tl.float32)
    m = 1.0
    if HAS_M:
        m = tl.load(p_m + col, mask=mask_h, other=0.0).to(tl.float32)
    real = True
    if HAS_PAD:
        real = tl.load(p_pad + i_b + offs_h * 0) == 0
    c_new, h = _cell_fwd(c, u0, uf, ur, xt, m, real, vf, vr, bf, br, HAS_M, HAS_PAD)
    tl.store(p_h + col, h.to(p_h.dtype.element_ty), mask=mask_h)
    tl.store(p_c_out + col, c_new.to(p_c_out.dtype.element_ty), mask=mask_h)


# ----------------------------------------------------------------------------------------------------
# "step" schedule: one time step per iteration, prefetch left to Triton's pipeliner (tl.range stages)
# ----------------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["L", "B"])
def _sru_fwd_step_kernel(
    p_U, p_x, p_v, p_b, p_c0, p_pad, p_m,
    p_h, p_c_last, p_c_saved,
    L, B, H, scale_x,
    D: tl.constexpr, K: tl.constexpr,
    HAS_C0: tl.constexpr, HAS_PAD: tl.constexpr, HAS_M: tl.constexpr,
    SAVE: tl.constexpr, BLOCK_H: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Forward scan, one step per iteration; with SAVE, c_{t-1} of step s goes to ``p_c_saved[s]``."""
    i_b, i_d, offs_h, mask_h, col, vf, vr, bf, br, c, m = _prologue(
        p_v, p_b, p_c0, p_m, H, D, HAS_C0, HAS_M, BLOCK_H, VEC
    )
    for s in tl.range(0, L, num_stages=STAGES):
        t = _time_of(s, L, i_d).to(tl.int64)
        row = (t * B + i_b) * D + i_d  # (t, b, d)
        u0, uf, ur, xt = _load_step(p_U, p_x, row, offs_h, mask_h, H, scale_x, K)
        if SAVE:
            tl.store(p_c_saved + tl.cast(s, tl.int64) * (B * D * H) + col, c, mask=mask_h)
        real = True
        if HAS_PAD:
            real = tl.load(p_pad + t * B + i_b) == 0
        c, h = _cell_fwd(c, u0, uf, ur, xt, m, real, vf, vr, bf, br, HAS_M, HAS_PAD)
        tl.store(p_h + row * H + offs_h, h.to(p_h.dtype.element_ty), mask=mask_h)
    tl.store(p_c_last + col, c, mask=mask_h)


@triton.jit(do_not_specialize=["L", "B"])
def _sru_bwd_step_kernel(
    p_dh, p_dc_last, p_U, p_x, p_v, p_b, p_pad, p_m, p_c_saved,
    p_dU, p_dx, p_dvb, p_dc0,
    L, B, H, scale_x,
    D: tl.constexpr, K: tl.constexpr,
    HAS_DC: tl.constexpr, HAS_PAD: tl.constexpr, HAS_M: tl.constexpr,
    BLOCK_H: tl.constexpr, VEC: tl.constexpr, STAGES: tl.constexpr,
):
    """Backward scan, last step first, one step per iteration; ``p_c_saved[s]`` = c_{t-1} of step s.
    Outputs as in :func:`_sru_bwd_kernel`."""
    i_b, i_d, offs_h, mask_h, col, vf, vr, bf, br, dc, m = _prologue(
        p_v, p_b, p_dc_last, p_m, H, D, HAS_DC, HAS_M, BLOCK_H, VEC
    )
    zero = tl.zeros([BLOCK_H], dtype=tl.float32)
    dvf, dvr, dbf, dbr = zero, zero, zero, zero
    for k in tl.range(0, L, num_stages=STAGES):
        s = L - 1 - k
        t = _time_of(s, L, i_d).to(tl.int64)
        row = (t * B + i_b) * D + i_d
        u0, uf, ur, xt = _load_step(p_U, p_x, row, offs_h, mask_h, H, scale_x, K)
        dh = tl.load(p_dh + row * H + offs_h, mask=mask_h, other=0.0).to(tl.float32)
        c = tl.load(p_c_saved + tl.cast(s, tl.int64) * (B * D * H) + col, mask=mask_h, other=0.0)
        real = True
        if HAS_PAD:
            real = tl.load(p_pad + t * B + i_b) == 0
        dc, du0, daf, dar, dxp, dvf, dvr, dbf, dbr = _cell_bwd(
            c, u0, uf, ur, xt, dh, dc, m, real, vf, vr, bf, br, dvf, dvr, dbf, dbr, HAS_M, HAS_PAD
        )
        _store_step_grads(p_dU + row * (K * H) + offs_h, p_dx + row * H + offs_h, mask_h, du0, daf, dar, dxp, H,
                          scale_x, K)
    _bwd_epilogue(p_dc0, p_dvb, col, i_b, i_d, offs_h, mask_h, dc, dvf, dvr, dbf, dbr, H, D)
