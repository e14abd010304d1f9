"""Batched kernels: B hyperparameter settings per pass over X.

The B weight matrices W[b] (c, d) of a sweep are stacked as W (B, c, d); one
pass over the data serves all of them, so a memory-bound single-setting pass
(a sparse model, a binary logistic one) becomes a compute-bound multi-column
pass. Per-setting hyperparameters enter the row math: sample weights
A (B, n) (or (0, 0): all one), ridge diagonals RD (B, d), priors (B, c, d)
(or (0, 0, 0)), step sizes and momenta (B,).

Dense data: each 8-row block of X is read once into the register tile of
``dense.py`` and multiplied by the (B·c)-row panel of W. CSR data: the rows
are gathered once against the transposed panel (d, B·c), whose B·c entries
of a feature are contiguous, into per-row coefficients (n, B·c); the
accumulation Xᵀ·coef then runs over the columns of X (its CSC form, given as
``XT`` = (indptr, indices, data) of Xᵀ), so each column of G is owned by one
thread and no (d, B·c) buffer per thread is needed. Every sum follows the
order of the single-setting pass with the same chunk count (rows of a chunk
in order, chunks merged in order), so a setting's result equals its own
single-setting run to rounding of fused multiply-adds.
"""
import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .. import config
from ._arrays import add_scaled, assign, momentum_step, prange_only, sub_into
from ._rowmath import (INIT, MULTINOMIAL, SAMPLE_WEIGHTS, derivs1, row_coefs,
                       softmax_block, softmax_scratch)
from .control import STOPPED, report_progress, stop_requested
from .implicit import _GROWTH as _LS_GROWTH
from .implicit import _dot, _norm
from .dense import RB, _axpy_block, _axpy_dense, _dots_dense, _dots_zu
from .oracles import (_nnz_bounds, _row_bounds, _sum_buffers, cross_add, reg_grad_add,
                      reg_hvp_add, reg_value)
from .unroll import value_stride

from .._codes import (ADV, ADV_STORE, AGD, CG, CONVERGED, DIVERGED, FINISH,  # noqa: F401
                      GD, HEAVY_BALL, INIT_ADJ, MAX_STEPS, NEUMANN, NO_CURVATURE, RESTORE,
                      REV_BUF, REV_STATE, SNAP)

_FM = set(config.FASTMATH)
# a batched CSR pass computes its dots column by column (random accesses into
# per-chunk (n, 2·B·c) row dots instead of the (d, 2·B·c) panel) when d > n
# and those buffers take at most this many bytes
SCATTER_BYTES = 256 * 2**20
_GROWTH = config.DIVERGENCE_GROWTH
_GROWTH_GD = config.DIVERGENCE_GROWTH_GD


@njit(cache=True, inline="always")
def _weight(A, b, i, inv_n):
    """a_{b,i} / n, where an empty ``A`` means all weights are one."""
    if A.shape[0] == 0:
        return inv_n
    return A[b, i] * inv_n


@njit(cache=True, inline="always")
def _row_settings(model, yi, i, c, Z, U, A, inv_n, want_grad, want_hvp, CG, CH, cross,
                  empty, dl, hu, vals):
    """row_coefs of one row for every setting b: the logits of setting b are
    Z[b·c:(b+1)·c]; vals[b] += its weighted loss. Single-output models take
    a scalar path (no array views per setting: each costs atomic refcounts)
    with the same arithmetic."""
    B = vals.shape[0]
    if c == 1:
        has_cross = cross.shape[0] > 0
        for b in range(B):
            wi = _weight(A, b, i, inv_n)
            li, d1, h1 = derivs1(model, yi, Z[b], U[b], want_hvp)
            if want_grad:
                CG[b] = wi * d1
            if want_hvp:
                CH[b] = wi * h1
            if has_cross:
                cross[b, i] = (0.0 + d1 * U[b]) * inv_n
            vals[b] += wi * li
        return
    for b in range(B):
        lo = b * c
        crow = cross[b] if cross.shape[0] > 0 else empty
        vals[b] += row_coefs(model, yi, Z[lo:lo + c], U[lo:lo + c], _weight(A, b, i, inv_n),
                             inv_n, want_grad, want_hvp, CG[lo:lo + c], CH[lo:lo + c], crow,
                             i, dl, hu)


@njit(cache=True)
def rows_dense_multi(X, lo, hi, y, A, model, c, W2, V2, want_grad, want_hvp, inv_n, G2,
                     HV2, cross, vals):
    """``dense.rows_dense`` for B settings: W2, V2, G2, HV2 are (B·c, d),
    cross (B, n) or (0, 0), vals (B,) accumulated into."""
    Bc = W2.shape[0]
    Z = np.empty((RB, Bc))
    U = np.zeros((RB, Bc))
    CG = np.zeros((RB, Bc))
    CH = np.zeros((RB, Bc))
    dl = np.empty(c)
    hu = np.empty(c)
    empty = np.empty(0)
    wb = np.empty(RB)
    T = softmax_scratch(c)
    need_u = want_hvp or cross.shape[0] > 0
    i = lo
    while i + RB <= hi:
        _dots_zu(X, i, W2, V2, need_u, Z, U)
        if model == MULTINOMIAL:
            for b in range(vals.shape[0]):
                for r in range(RB):
                    wb[r] = _weight(A, b, i + r, inv_n)
                q = b * c
                vals[b] = softmax_block(y[i:i + RB], wb, RB, Z[:, q:q + c], U[:, q:q + c],
                                        inv_n, want_grad, want_hvp,
                                        cross[b] if cross.shape[0] > 0 else empty, i,
                                        CG[:, q:q + c], CH[:, q:q + c], T, vals[b])
        else:
            for r in range(RB):
                _row_settings(model, y[i + r], i + r, c, Z[r], U[r], A, inv_n, want_grad,
                              want_hvp, CG[r], CH[r], cross, empty, dl, hu, vals)
        if want_grad:
            _axpy_block(X, i, CG, G2)
        if want_hvp:
            _axpy_block(X, i, CH, HV2)
        i += RB
    for i in range(i, hi):
        _dots_dense(X, i, W2, Z[0])
        if need_u:
            _dots_dense(X, i, V2, U[0])
        _row_settings(model, y[i], i, c, Z[0], U[0], A, inv_n, want_grad, want_hvp, CG[0],
                      CH[0], cross, empty, dl, hu, vals)
        if want_grad:
            _axpy_dense(X, i, CG[0], G2)
        if want_hvp:
            _axpy_dense(X, i, CH[0], HV2)


@njit(cache=True, fastmath=_FM)
def _transpose_into(W2, Wt):
    """Wt[j, k] = W2[k, j]: the panel with a feature's B·c weights contiguous."""
    Bc, d = W2.shape
    for j in range(d):
        for k in range(Bc):
            Wt[j, k] = W2[k, j]


@njit(cache=True)
def _panel_cols(W, V, need_u, j0, j1, Pn):
    """Columns j0..j1 of the panel Pn (d, B·c or 2·B·c): Pn[j, k] = W[k, j]
    and, with ``need_u``, Pn[j, B·c + k] = V[k, j] (W, V as (B·c, d))."""
    Bc = W.shape[0] * W.shape[1]
    d = W.shape[2]
    _transpose_into(W.reshape((Bc, d))[:, j0:j1], Pn[j0:j1, :Bc])
    if need_u:
        _transpose_into(V.reshape((Bc, d))[:, j0:j1], Pn[j0:j1, Bc:])


@njit(cache=True, fastmath=_FM)
def _gather_row(indptr, indices, data, i, Pn, z):
    """z[k] = Σ_q x_iq Pn[j_q, k]: row i against every column of the panel."""
    z[:] = 0.0
    K = z.shape[0]
    for q in range(indptr[i], indptr[i + 1]):
        x = data[q]
        j = indices[q]
        for k in range(K):              # no row view: a view costs two atomic refcounts
            z[k] += x * Pn[j, k]


@njit(cache=True)
def rows_csr_coefs_multi(indptr, indices, data, lo, hi, y, A, model, c, Pn, need_u,
                         want_grad, want_hvp, inv_n, CG, CH, cross, vals, Zb):
    """First phase of a batched CSR pass over rows lo..hi: the dots of each
    row with every setting's weights (and directions: the panel Pn = [W | V])
    and the per-row coefficients CG[i], CH[i] (B·c each); vals[b]
    accumulates the losses. The dots are gathered row by row from Pn, or,
    when ``Zb`` has chunks, read from Zb[0, i] (computed column by column
    by :func:`scatter_cols_multi` and summed by :func:`_sum_chunks_rows`)."""
    Bc = CG.shape[1]
    K = 2 * Bc if need_u else Bc
    zu = np.zeros(K)
    z = zu[:Bc]
    u = zu[Bc:] if need_u else np.zeros(Bc)
    dl = np.empty(c)
    hu = np.empty(c)
    empty = np.empty(0)
    from_cols = Zb.shape[0] > 0
    for i in range(lo, hi):
        if from_cols:
            for k in range(K):
                zu[k] = Zb[0, i, k]
        else:
            _gather_row(indptr, indices, data, i, Pn, zu)
        _row_settings(model, y[i], i, c, z, u, A, inv_n, want_grad, want_hvp,
                      CG[i if want_grad else 0], CH[i if want_hvp else 0], cross, empty, dl,
                      hu, vals)


@njit(cache=True, fastmath=_FM)
def scatter_cols_multi(tptr, tidx, tdata, j0, j1, Pn, K, Zt):
    """Zt[i, :K] = Σ_{j0 ≤ j < j1} x_ij Pn[j, :K]: the columns' share of every
    row's dots, from Xᵀ's CSR form. Pn is read in order and the random
    accesses go to Zt (n × K), far smaller than the panel when d ≫ n."""
    for i in range(Zt.shape[0]):
        for k in range(K):
            Zt[i, k] = 0.0
    for j in range(j0, j1):
        for q in range(tptr[j], tptr[j + 1]):
            x = tdata[q]
            i = tidx[q]
            for k in range(K):
                Zt[i, k] += x * Pn[j, k]


@njit(cache=True, fastmath=_FM)
def _sum_chunks_rows(Zb, lo, hi, K):
    """Zb[0, i, :K] += Zb[s, i, :K] for s = 1, 2, ... in order, rows lo..hi."""
    for s in range(1, Zb.shape[0]):
        for i in range(lo, hi):
            for k in range(K):
                Zb[0, i, k] += Zb[s, i, k]


@njit(cache=True, fastmath=_FM)
def cols_csr_multi(tptr, tidx, tdata, j0, j1, bounds, C, G2):
    """Second phase: G2[k, j] = Σ_i x_ij C[i, k] for the columns j0 ≤ j < j1,
    from Xᵀ's CSR form (the rows of column j in increasing order). The sum
    over each row chunk of ``bounds`` starts from zero and the chunks' sums
    are added in order: the order of the single-setting pass's per-chunk
    buffers and their merge."""
    Bc = C.shape[1]
    tot = np.empty(Bc)
    part = np.empty(Bc)
    for j in range(j0, j1):
        tot[:] = 0.0
        part[:] = 0.0
        t = 0
        first = True
        for q in range(tptr[j], tptr[j + 1]):
            i = tidx[q]
            if i >= bounds[t + 1]:          # the column's entries of chunk t are done
                if first:
                    assign(tot, part)
                    first = False
                else:
                    tot += part
                part[:] = 0.0
                while i >= bounds[t + 1]:
                    t += 1
            x = tdata[q]
            for k in range(Bc):
                part[k] += x * C[i, k]
        if first:
            assign(tot, part)
        else:
            tot += part
        for k in range(Bc):
            G2[k, j] = tot[k]


@njit(cache=True)
def _cols_both(tptr, tidx, tdata, j0, j1, bounds, want_grad, want_hvp, CG, CH, G2, HV2):
    if want_grad:
        cols_csr_multi(tptr, tidx, tdata, j0, j1, bounds, CG, G2)
    if want_hvp:
        cols_csr_multi(tptr, tidx, tdata, j0, j1, bounds, CH, HV2)


def _pass_multi(X, indptr, indices, data, y, XT, A, model, W, V, want_grad, want_hvp, G,
                HV, cross, vals, scratch, nchunks):
    """The batched fused pass (inlined into each parallel entry point, like
    ``oracles._pass``): vals[b] = (1/n) Σ a_{b,i} ℓ(z_{b,i}); G[b], HV[b],
    cross[b] as ``oracles.oracle_pass`` for each setting b. W, V, G, HV are
    (B, c, d), A (B, n) or (0, 0), cross (B, n) or (0, 0), vals (B,)
    (overwritten). ``XT`` is Xᵀ in CSR form for CSR data (None for dense).
    ``scratch`` from :func:`_scratch_multi` (allocated once per kernel call:
    a fresh panel per pass costs page faults)."""
    raise NotImplementedError("only callable from compiled code")


def _scratch_multi(indptr, n, B, c, d, nchunks):
    """Work arrays of :func:`_pass_multi`: per-chunk accumulators (dense) or
    the gathered panel [W | V], per-row coefficients and, where they fit in
    ``SCATTER_BYTES``, per-chunk row dots (CSR)."""
    raise NotImplementedError("only callable from compiled code")


@overload(_scratch_multi, inline="always")
def _ol_scratch_multi(indptr, n, B, c, d, nchunks):
    if isinstance(indptr, types.NoneType):
        def dense_impl(indptr, n, B, c, d, nchunks):
            nch = max(1, min(nchunks, n))
            return (np.empty((nch, B * c, d)), np.empty((nch, B * c, d)),
                    np.empty((0, 0)), np.empty((0, 0)))
        return dense_impl

    def csr_impl(indptr, n, B, c, d, nchunks):
        nch = max(1, min(nchunks, n))
        # arithmetic, not a conditional (a phi node used in prange bodies
        # trips Numba's SSA check): no chunks of row dots unless they fit
        cols = (nch * n * 2 * B * c * 8 <= SCATTER_BYTES) & (d > n)
        Zb = np.empty((nch * cols, n, 2 * B * c))
        return (Zb, np.empty((0, 0, 0)), np.empty((d, 2 * B * c)), np.empty((2 * n, B * c)))
    return csr_impl


@overload(_pass_multi, inline="always")
def _ol_pass_multi(X, indptr, indices, data, y, XT, A, model, W, V, want_grad, want_hvp, G,
                   HV, cross, vals, scratch, nchunks):
    if isinstance(indptr, types.NoneType):
        def dense_impl(X, indptr, indices, data, y, XT, A, model, W, V, want_grad, want_hvp,
                       G, HV, cross, vals, scratch, nchunks):
            n = y.shape[0]
            B, c, d = W.shape
            Bc = B * c
            W2 = W.reshape((Bc, d))
            V2 = V.reshape((Bc, d))
            nch = max(1, min(nchunks, n))
            bounds = _row_bounds(n, nch)
            gb = scratch[0]
            hb = scratch[1]
            vb = np.zeros((nch, B))
            inv_n = 1.0 / n
            for t in prange(nch):
                _zero_if(want_grad, gb[t])
                _zero_if(want_hvp, hb[t])
                rows_dense_multi(X, bounds[t], bounds[t + 1], y, A, model, c, W2, V2,
                                 want_grad, want_hvp, inv_n, gb[t], hb[t], cross, vb[t])
            if want_grad:
                _sum_buffers(gb, G.reshape((Bc, d)))
            if want_hvp:
                _sum_buffers(hb, HV.reshape((Bc, d)))
            _merge_values(vb, vals)
        return dense_impl

    def csr_impl(X, indptr, indices, data, y, XT, A, model, W, V, want_grad, want_hvp, G, HV,
                 cross, vals, scratch, nchunks):
        tptr, tidx, tdata = XT
        n = y.shape[0]
        B, c, d = W.shape
        Bc = B * c
        # no short-circuit `or` here: its phi node, used inside the prange
        # bodies, tripped Numba's SSA check (NumbaIRAssumptionWarning)
        need_u = want_hvp | (cross.shape[0] > 0)
        Pn = scratch[2]
        nch = max(1, min(nchunks, n))
        for t in prange(nch):
            _panel_cols(W, V, need_u, (d * t) // nch, (d * (t + 1)) // nch, Pn)
        bounds = _nnz_bounds(indptr, n, nch)
        CG = scratch[3][:n]             # per-row coefficients: n·B·c each
        CH = scratch[3][n:]
        vb = np.zeros((nch, B))
        inv_n = 1.0 / n
        Zb = scratch[0]
        K = Bc * (1 + need_u)           # arithmetic, not a conditional: no phi node
        cb = _nnz_bounds(tptr, d, nch)
        if Zb.shape[0] > 0:             # the dots column by column, chunks summed in order
            for t in prange(nch):
                scatter_cols_multi(tptr, tidx, tdata, cb[t], cb[t + 1], Pn, K, Zb[t])
            for t in prange(nch):
                _sum_chunks_rows(Zb, (n * t) // nch, (n * (t + 1)) // nch, K)
        for t in prange(nch):
            rows_csr_coefs_multi(indptr, indices, data, bounds[t], bounds[t + 1], y, A,
                                 model, c, Pn, need_u, want_grad, want_hvp, inv_n, CG, CH,
                                 cross, vb[t], Zb)
        G2 = G.reshape((Bc, d))
        HV2 = HV.reshape((Bc, d))
        for s in prange(nch):
            _cols_both(tptr, tidx, tdata, (d * s) // nch, (d * (s + 1)) // nch, bounds,
                       want_grad, want_hvp, CG, CH, G2, HV2)
        _merge_values(vb, vals)
    return csr_impl


@njit(cache=True)
def _zero_if(flag, A):
    if flag:
        A[:] = 0.0


@njit(cache=True)
def _merge_values(vb, vals):
    """vals[b] = Σ_t vb[t, b], in chunk order."""
    for b in range(vals.shape[0]):
        s = 0.0
        for t in range(vb.shape[0]):
            s += vb[t, b]
        vals[b] = s


@njit(cache=True, parallel=prange_only())
def oracle_pass_multi(D, XT, A, model, W, V, want_grad, want_hvp, G, HV, cross, vals,
                      nchunks):
    """:func:`~fastbilevel.kernels.oracle_pass` for B settings in one pass
    over the data ``D``: W, V, G, HV of shape (B, c, d), A (B, n) per-setting
    sample weights or (0, 0), cross (B, n) or (0, 0), vals (B,) receives the
    data part of each setting's objective. ``XT`` is Xᵀ as a CSR triple
    (indptr, indices, data) for CSR data, None for dense."""
    X, indptr, indices, data, y = D
    B, c, d = W.shape
    scratch = _scratch_multi(indptr, y.shape[0], B, c, d, nchunks)
    _pass_multi(X, indptr, indices, data, y, XT, A, model, W, V, want_grad, want_hvp, G,
                HV, cross, vals, scratch, nchunks)


# ------------------------------------------------- per-setting O(dim w) parts
# Each takes one setting's (c, d) arrays; the kernels call them in parallel
# loops over the settings (one thread per setting: sums keep their order).
@njit(cache=True, fastmath=_FM)
def _step_one(solver, gamma, beta, A, Bp, G):
    """S_t → S_{t+1} of one setting: A = S[0], Bp = S[1] (A again for gd)."""
    c, d = A.shape
    for k in range(c):
        for j in range(d):
            g = G[k, j]
            a = A[k, j]
            if solver == GD:
                A[k, j] = a - gamma * g
            elif solver == HEAVY_BALL:
                A[k, j] = a - gamma * g + beta * (a - Bp[k, j])
                Bp[k, j] = a
            else:
                ynew = Bp[k, j] - gamma * g
                Bp[k, j] = ynew + beta * (ynew - a)
                A[k, j] = ynew


@njit(cache=True, fastmath=_FM)
def _adjoint_pre_one(solver, beta, P, Q, YT):
    """agd: YT = −βQ and P += (1+β)Q before the pass."""
    if solver == AGD:
        c, d = P.shape
        for k in range(c):
            for j in range(d):
                YT[k, j] = -beta * Q[k, j]
                P[k, j] += (1.0 + beta) * Q[k, j]


@njit(cache=True, fastmath=_FM)
def _adjoint_post_one(solver, gamma, beta, P, Q, HP, YT):
    """The adjoint update of one setting after the pass (HP = H·P)."""
    c, d = P.shape
    for k in range(c):
        for j in range(d):
            p = P[k, j]
            if solver == GD:
                P[k, j] = p - gamma * HP[k, j]
            elif solver == HEAVY_BALL:
                P[k, j] = (1.0 + beta) * p - gamma * HP[k, j] - beta * Q[k, j]
                Q[k, j] = p
            else:
                Q[k, j] = p - gamma * HP[k, j]
                P[k, j] = YT[k, j]


@njit(cache=True)
def _zero(A):
    A[:] = 0.0


@njit(cache=True)
def _w0_adjoint_add(solver, beta, P, Q, h):
    """h += adjoint of w_0 of one setting (``init``)."""
    c, d = P.shape
    for k in range(c):
        for j in range(d):
            if solver == GD:
                e = P[k, j]
            elif solver == HEAVY_BALL:
                e = P[k, j] - beta * Q[k, j]
            else:
                e = P[k, j] + Q[k, j]
            h[k * d + j] += e


@njit(cache=True)
def _forward_one(solver, gamma, beta, rdiag, prior, p, G, A, Bp):
    """After a gradient pass: G += ∇r(p), then the solver step of one setting."""
    reg_grad_add(rdiag, prior, p, G)
    _step_one(solver, gamma, beta, A, Bp, G)


@njit(cache=True)
def _reverse_one(solver, hyper, gamma, beta, rdiag, da, p, P, Q, HP, YT, cross, h):
    """After an H·v pass: h −= γJ(p)P, HP += ∇²r P, then the adjoint update."""
    cross_add(hyper, rdiag, da, p, P, cross, -gamma, h)
    reg_hvp_add(rdiag, P, HP)
    _adjoint_post_one(solver, gamma, beta, P, Q, HP, YT)


@njit(cache=True)
def _kill(S, b):
    """Zero a diverged setting's state, so that it computes harmless zeros."""
    for s in range(S.shape[0]):
        S[s, b] = 0.0


@njit(cache=True, parallel=prange_only(), nogil=True)
def run_schedule_multi(train, trainT, A, DA, model, hyper, RD, PRIOR, val, valT, solver,
                       gammas, betas, W0, T, actions, nslots, buf_len, gvals, H, nchunks,
                       ctrl=None):
    """``unroll.run_schedule`` (full-batch steps) for B settings in lockstep,
    every pass shared: W0 (B, c, d), gammas and betas (B,), gvals (B, nv),
    H (B, dim λ) accumulated into. Returns (W_T (B, c, d), f(W_T) (B,),
    status (B,), counts, ∇_w f(W_T) (B, c, d)): status[b] is −1, or the
    step at which setting b diverged (its outputs are then meaningless; the
    others are unaffected, and f holds g at that step), or ``STOPPED`` for
    all when the host set ``ctrl[0]``. counts are passes of the shared
    kernel (each serves all B settings)."""
    X, indptr, indices, data, y = train
    Xv, ipv, ixv, dv, yv = val
    B, c, d = W0.shape
    ns = 1 if solver == GD else 2
    S = np.empty((ns, B, c, d))
    for s in range(ns):
        assign(S[s], W0)
    Sn = np.empty_like(S)
    snaps = np.empty((nslots, ns, B, c, d))
    snap_t = np.zeros(nslots, dtype=np.int64)
    buf = np.empty((buf_len, B, c, d))
    base = 0
    t = 0
    tr = T - 1
    G = np.empty((B, c, d))
    HP = np.empty((B, c, d))
    P = np.zeros((B, c, d))
    Q = np.zeros((B, c, d))
    YT = np.zeros((B, c, d))
    WT = W0.copy()
    GF = np.zeros((B, c, d))
    fvals = np.full(B, np.nan)
    vals = np.zeros(B)
    no_cross = np.empty((0, 0))
    cross = np.empty((B, y.shape[0]) if hyper == SAMPLE_WEIGHTS else (0, 0))
    no_a = np.empty((0, 0))
    counts = np.zeros(4, dtype=np.int64)
    used = np.zeros(nslots, dtype=np.bool_)
    g0 = np.zeros(B)
    alive = np.ones(B, dtype=np.bool_)
    status = np.full(B, -1, dtype=np.int64)
    empty1 = np.empty(0)
    empty2 = np.empty((0, 0))
    scratch = _scratch_multi(indptr, y.shape[0], B, c, d, nchunks)
    tlast = -1
    stride = value_stride(T, gvals.shape[1])
    lim = _GROWTH_GD if solver == GD else _GROWTH
    for q in range(actions.shape[0]):
        op = actions[q, 0]
        arg = actions[q, 1]
        if op == SNAP:
            assign(snaps[arg], S)
            snap_t[arg] = t
            if not used[arg]:
                used[arg] = True
                counts[3] += 1
            continue
        if op == RESTORE:
            assign(S, snaps[arg])
            t = snap_t[arg]
            for b in range(B):
                if not alive[b]:
                    _kill(S, b)
            continue
        if op == FINISH:
            if tr == -1 and hyper == INIT:
                for b in prange(B):
                    if alive[b]:
                        _w0_adjoint_add(solver, betas[b], P[b], Q[b], H[b])
            continue
        rev = op == REV_STATE or op == REV_BUF
        if op == ADV_STORE:
            base = t
        if op == INIT_ADJ:
            assign(Sn, S)
        nrep = 1 if op == REV_STATE else arg
        # INIT_ADJ's validation pass at w_T goes through the training passes'
        # call, as one more iteration: one inlined pass (its parallel loops)
        # to compile instead of two
        for it in range(nrep + 1 if op == INIT_ADJ else nrep):
            if stop_requested(ctrl):
                status[:] = STOPPED
                return WT, fvals, status, counts, GF
            report_progress(ctrl, counts[0] + counts[1])
            is_val = it == nrep
            if is_val:
                assign(WT, Sn[0] if arg == 1 else S[0])
                p = WT
                V = WT
                out = P
                cr = no_cross
            elif rev:
                if op == REV_STATE:
                    p = S[1] if solver == AGD else S[0]
                else:
                    p = buf[tr - base]
                for b in prange(B):
                    _adjoint_pre_one(solver, betas[b], P[b], Q[b], YT[b])
                V = P
                out = HP
                cr = cross
            else:
                if op == INIT_ADJ:
                    p = Sn[1] if solver == AGD else Sn[0]
                else:
                    p = S[1] if solver == AGD else S[0]
                if op == ADV_STORE:
                    for b in prange(B):
                        assign(buf[t - base, b], p[b])
                V = p
                out = G
                cr = no_cross
            Dx, Dip, Dix, Dd, Dy = val if is_val else train
            _pass_multi(Dx, Dip, Dix, Dd, Dy, valT if is_val else trainT,
                        no_a if is_val else A, model, p, V, is_val or not rev,
                        rev and not is_val, out, out, cr, vals,
                        _scratch_multi(ipv, yv.shape[0], B, c, d, nchunks) if is_val
                        else scratch, nchunks)
            if is_val:
                counts[2] += 1
                for b in range(B):
                    if alive[b]:
                        fvals[b] = vals[b]
                assign(GF, P)
                Q[:] = 0.0
                continue
            if rev:
                counts[1] += 1
                for b in prange(B):
                    if alive[b]:
                        _reverse_one(solver, hyper, gammas[b], betas[b], RD[b],
                                     DA[b] if DA.shape[0] > 0 else empty1, p[b], P[b], Q[b],
                                     HP[b], YT[b], cross[b] if cross.shape[0] > 0 else empty1,
                                     H[b])
                    else:
                        _zero(P[b])
                        _zero(Q[b])
                tr -= 1
                continue
            counts[0] += 1
            for b in prange(B):
                if alive[b]:
                    vals[b] += reg_value(RD[b], PRIOR[b] if PRIOR.shape[0] > 0 else empty2,
                                         p[b])
            if t > tlast:
                tlast = t
                nlive = 0
                for b in range(B):
                    if not alive[b]:
                        continue
                    v = vals[b]
                    if t % stride == 0:
                        gvals[b, t // stride] = v
                    if t == 0:
                        g0[b] = v
                    if not math.isfinite(v) or v - g0[b] > lim * abs(g0[b]):
                        alive[b] = False
                        status[b] = t
                        fvals[b] = v
                        _kill(S, b)
                        if op == INIT_ADJ:
                            _kill(Sn, b)
                    else:
                        nlive += 1
                if nlive == 0:
                    return WT, fvals, status, counts, GF
            Sx = Sn if op == INIT_ADJ else S
            for b in prange(B):
                if alive[b]:
                    _forward_one(solver, gammas[b], betas[b], RD[b],
                                 PRIOR[b] if PRIOR.shape[0] > 0 else empty2, p[b], G[b],
                                 Sx[0, b], Sx[ns - 1, b])
            if op != INIT_ADJ:
                t += 1
    return WT, fvals, status, counts, GF


@njit(cache=True, parallel=prange_only(), nogil=True)
def implicit_solve_multi(train, trainT, A, DA, model, hyper, RD, W, Bv, V0, solver, K, tol,
                         etas, alphas, betas, H, nchunks, ctrl=None):
    """``implicit.implicit_solve`` for B settings in lockstep, one shared H·v
    pass per step: solves H_b(W[b]) v[b] = Bv[b], each setting stopping at its
    own tolerance (or K steps, divergence, zero curvature) with the single
    solver's arithmetic. etas, alphas, betas are (B,). Then H[b] −= J_b(W[b])v[b]
    (one more pass for ``sample_weights``): the implicit hypergradients.
    Returns (v (B, c, d), residuals (B,), steps (B,), status (B,)); status
    ``STOPPED`` for the settings still running when the host set ``ctrl[0]``
    (H is then left as it was)."""
    X, indptr, indices, data, y = train
    B, c, d = W.shape
    v = V0.copy()
    vprev = V0.copy()
    Hx = np.empty((B, c, d))
    r = np.zeros((B, c, d))
    p = np.zeros((B, c, d))
    no_cross = np.empty((0, 0))
    vals = np.empty(B)
    scratch = _scratch_multi(indptr, y.shape[0], B, c, d, nchunks)
    thresh = np.empty(B)
    for b in range(B):
        thresh[b] = tol * _norm(Bv[b])
    r0 = np.zeros(B)
    rr = np.zeros(B)
    resid = np.full(B, np.nan)
    steps = np.zeros(B, dtype=np.int64)
    status = np.full(B, -1, dtype=np.int64)
    active = np.ones(B, dtype=np.bool_)
    it = 0
    while True:
        if stop_requested(ctrl):
            for b in range(B):
                if active[b]:
                    status[b] = STOPPED
                    steps[b] = it
            return v, resid, steps, status
        report_progress(ctrl, it)
        x = p if (solver == CG and it > 0) else v
        _pass_multi(X, indptr, indices, data, y, trainT, A, model, W, x, False, True, Hx, Hx,
                    no_cross, vals, scratch, nchunks)
        for b in prange(B):
            if active[b]:
                reg_hvp_add(RD[b], x[b], Hx[b])
        nactive = 0
        for b in range(B):
            if not active[b]:
                continue
            done = -1
            if solver == CG and it > 0:
                pHp = _dot(p[b], Hx[b])
                if not pHp > 0.0:
                    status[b] = NO_CURVATURE
                    resid[b] = math.sqrt(rr[b])
                    steps[b] = it
                    active[b] = False
                    continue
                step = rr[b] / pHp
                vb = v[b]
                add_scaled(vb, step, p[b])
                rb = r[b]
                add_scaled(rb, -step, Hx[b])
                rn = _norm(r[b])
            else:
                sub_into(r[b], Bv[b], Hx[b])
                rn = _norm(r[b])
                if it == 0:
                    r0[b] = rn
                    if solver == CG:
                        assign(p[b], r[b])
            if not math.isfinite(rn) or rn > _LS_GROWTH * r0[b]:
                done = DIVERGED
            elif rn <= thresh[b]:
                done = CONVERGED
            elif it == K:
                done = MAX_STEPS
            if done >= 0:
                status[b] = done
                resid[b] = rn
                steps[b] = it
                active[b] = False
                continue
            nactive += 1
            if solver == CG:
                if it > 0:
                    pb = p[b]
                    pb *= rn * rn / rr[b]
                    pb += r[b]
                rr[b] = rn * rn
            elif solver == NEUMANN:
                add_scaled(v[b], etas[b], r[b])
            else:
                momentum_step(v[b], vprev[b], r[b], alphas[b], betas[b])
        if nactive == 0:
            break
        it += 1
    # h = −J(ŵ)v: the row term needs a pass over X only for sample weights
    cross = np.empty((B, y.shape[0]) if hyper == SAMPLE_WEIGHTS else (0, 0))
    if hyper == SAMPLE_WEIGHTS:
        _pass_multi(X, indptr, indices, data, y, trainT, A, model, W, v, False, False, Hx, Hx,
                    cross, vals, scratch, nchunks)
    empty1 = np.empty(0)
    for b in prange(B):
        cross_add(hyper, RD[b], DA[b] if DA.shape[0] > 0 else empty1, W[b], v[b],
                  cross[b] if cross.shape[0] > 0 else empty1, -1.0, H[b])
    return v, resid, steps, status
