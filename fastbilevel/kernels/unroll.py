"""Differentiating through the unrolled inner loop: one compiled interpreter
runs every exact (and truncated) reverse-mode method from a list of actions.

Solvers (docs/math.md §5), with the state S of shape (nstate, c, d):
  gd          S = [w_t]             w_{t+1} = w_t − γ∇g(w_t)
  heavy_ball  S = [w_t, w_{t−1}]    w_{t+1} = w_t − γ∇g(w_t) + β(w_t − w_{t−1}),  w_{−1} = w_0
  agd         S = [y_t, s_t]        y_{t+1} = s_t − γ∇g(s_t);  s_{t+1} = y_{t+1} + β(y_{t+1} − y_t)
The gradient is taken at the point p(S) (w_t, or s_t for agd); the output is S[0].

Reverse sweep with adjoints (P, Q), one fused pass (H(p_t)v and J(p_t)v) per step:
  gd          h −= γJ P;  P ← P − γH P
  heavy_ball  (P, Q) = (ā_{t+1}, ā_{t+2}):  h −= γJ P;  (P, Q) ← ((1+β)P − γH P − βQ, P)
  agd         (P, Q) = (partial ȳ_{t+1}, s̄_{t+1}):  P += (1+β)Q;  y' = −βQ;
              h −= γJ P;  Q ← P − γH P;  P ← y'
and the adjoint of w_0 is P (gd), P − βQ (heavy_ball), P + Q (agd).

Actions (rows of an int64 array (n, 2): opcode, argument):
  ADV n        advance n steps
  ADV_STORE n  advance n steps, storing the points p_t in buf[t − base] (base = t at the op)
  SNAP k       snapshot slot k ← S (and its time)
  RESTORE k    S ← snapshot slot k
  INIT a       α = ∇f at the output: of S (a = 0, t must be T) or of one step
               past S (a = 1, t = T − 1, S unchanged); sets P = α, Q = 0
  REV_STATE    one reverse step at time t using p(S)
  REV_BUF n    n reverse steps using the stored points
  FINISH       h += B₀ᵀ(adjoint of w_0) for ``init`` if the sweep reached t = 0

Minibatch SGD (``sampler`` = int64 [batch, replace, seed] instead of None):
step t takes its gradient on the batch drawn for (seed, STREAM_INNER, t), and
the reverse step through t (and any recomputation of t) redraws the same
batch, so every schedule differentiates the same sampled trajectory.
"""
import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .. import config
from ._arrays import add_scaled, assign, lower_bound, prange_only, upper_bound
from ._rowmath import BIASED_L2, FEATURE_L2, INIT, L2, SAMPLE_WEIGHTS, row_derivs
from .control import STOPPED, report_progress, stop_requested
from .csr import _axpy_csr, _dots_csr
from .dense import _axpy_dense, _dots_dense
from .oracles import (_cross_add_rows, _pass, _pass_or_full, _pass_rows, reg_grad_add,
                      reg_hvp_add, reg_value)
from .sampling import STREAM_INNER, draw_rows

from .._codes import (ADV, ADV_STORE, AGD, FINISH, GD, HEAVY_BALL, INIT_ADJ,  # noqa: F401
                      RESTORE, REV_BUF, REV_STATE, SNAP)

_GROWTH = config.DIVERGENCE_GROWTH
_GROWTH_GD = config.DIVERGENCE_GROWTH_GD
_GROWTH_MB = config.DIVERGENCE_GROWTH_MINIBATCH


def _diverged(sampler, solver, v, g0):
    """Whether g_t = v shows divergence, g0 = g(w_0) (see ``config``)."""
    raise NotImplementedError("only callable from compiled code")


@overload(_diverged, inline="always")
def _ol_diverged(sampler, solver, v, g0):
    if isinstance(sampler, types.NoneType):
        # full batch: gd with a stable step never raises g, agd at most doubles it
        def full_impl(sampler, solver, v, g0):
            lim = _GROWTH_GD if solver == GD else _GROWTH
            return not math.isfinite(v) or v - g0 > lim * abs(g0)
        return full_impl
    # minibatch: g_t is the loss of step t's batch, which varies by itself
    return lambda sampler, solver, v, g0: (not math.isfinite(v)
                                           or v - g0 > _GROWTH_MB * (abs(g0) + 1.0))


@njit(cache=True)
def value_stride(T, nvals):
    """Every how many steps g_t is recorded into an array of ``nvals`` values."""
    return max(1, (T + nvals - 1) // max(nvals, 1))


@njit(cache=True)
def n_state(solver):
    """Vectors in the solver state: 1 (gd) or 2 (heavy_ball, agd)."""
    return 1 if solver == GD else 2


@njit(cache=True)
def init_state(solver, W0):
    """S_0: [w_0], [w_0, w_{−1} = w_0] or [y_0, s_0] = [w_0, w_0]."""
    c, d = W0.shape
    S = np.empty((n_state(solver), c, d))
    for k in range(S.shape[0]):
        assign(S[k], W0)
    return S


@njit(cache=True)
def point(solver, S):
    """Where the solver takes its gradient: w_t, or s_t for agd."""
    return S[1] if solver == AGD else S[0]


@njit(cache=True)
def solver_step(solver, gamma, beta, S, G):
    """S_t → S_{t+1} given G = ∇g(p(S_t)). (Loops rather than array
    expressions: the same arithmetic per entry, a fraction of the compile.)"""
    A = S[0]
    c, d = A.shape
    if solver == GD:
        for k in range(c):
            for j in range(d):
                A[k, j] -= gamma * G[k, j]
    elif solver == HEAVY_BALL:
        B = S[1]
        for k in range(c):
            for j in range(d):
                a = A[k, j]
                A[k, j] = a - gamma * G[k, j] + beta * (a - B[k, j])
                B[k, j] = a
    else:
        B = S[1]
        for k in range(c):
            for j in range(d):
                ynew = B[k, j] - gamma * G[k, j]
                B[k, j] = ynew + beta * (ynew - A[k, j])
                A[k, j] = ynew


@njit(cache=True)
def adjoint_pre(solver, beta, P, Q):
    """agd: P += (1+β)Q before the pass; returns the part of ȳ_t, −βQ (else empty)."""
    if solver == AGD:
        c, d = P.shape
        yt = np.empty((c, d))
        for k in range(c):
            for j in range(d):
                yt[k, j] = -beta * Q[k, j]
                P[k, j] += (1.0 + beta) * Q[k, j]
        return yt
    return np.empty((0, 0))


@njit(cache=True)
def adjoint_post(solver, gamma, beta, P, Q, HP, yt):
    """The adjoint update after the pass, HP = ∇²g(p_t) P (regularizer included)."""
    c, d = P.shape
    if solver == GD:
        for k in range(c):
            for j in range(d):
                P[k, j] -= gamma * HP[k, j]
    elif solver == HEAVY_BALL:
        for k in range(c):
            for j in range(d):
                p = P[k, j]
                P[k, j] = (1.0 + beta) * p - gamma * HP[k, j] - beta * Q[k, j]
                Q[k, j] = p
    else:
        for k in range(c):
            for j in range(d):
                Q[k, j] = P[k, j] - gamma * HP[k, j]
                P[k, j] = yt[k, j]


@njit(cache=True)
def w0_adjoint(solver, beta, P, Q):
    """Total adjoint of w_0 at the end of a full sweep."""
    c, d = P.shape
    out = np.empty((c, d))
    for k in range(c):
        for j in range(d):
            if solver == GD:
                out[k, j] = P[k, j]
            elif solver == HEAVY_BALL:
                out[k, j] = P[k, j] - beta * Q[k, j]
            else:
                out[k, j] = P[k, j] + Q[k, j]
    return out


def _scratch(sampler, n):
    """(perm, rows) scratch for the sampler (empty when there is none)."""
    raise NotImplementedError("only callable from compiled code")


@overload(_scratch, inline="always")
def _ol_scratch(sampler, n):
    if isinstance(sampler, types.NoneType):
        return lambda sampler, n: (np.empty(0, np.int64), np.empty(0, np.int64))

    def impl(sampler, n):
        return np.arange(n, dtype=np.int64), np.empty(sampler[0], np.int64)
    return impl


def _rows_at(sampler, n, t, perm, out):
    """The minibatch of step t (None when there is no sampler: full batch)."""
    raise NotImplementedError("only callable from compiled code")


@overload(_rows_at, inline="always")
def _ol_rows_at(sampler, n, t, perm, out):
    if isinstance(sampler, types.NoneType):
        return lambda sampler, n, t, perm, out: None

    def impl(sampler, n, t, perm, out):
        return draw_rows(sampler[2], STREAM_INNER, t, n, sampler[0], sampler[1] != 0,
                         perm, out)
    return impl


@njit(cache=True, parallel=prange_only(), nogil=True)
def run_schedule(train, a, da, model, hyper, rdiag, prior, val, solver, gamma, beta, W0, T,
                 actions, nslots, buf_len, gvals, h, nchunks, sampler, ctrl=None):
    """Run an action list (see the module docstring) and return
    (w_T, f(w_T), status, counts, ∇_w f(w_T)) where status = −1; or the step at which the
    inner loop diverged (the run stops there, and the second value is g at
    that step); or ``STOPPED`` when the host set ``ctrl[0]``
    (``kernels.control``). counts = [gradient passes, HVP passes, validation
    passes, snapshot slots used]. h (length dim λ) is accumulated into: pass
    zeros for the hypergradient. ``gvals`` receives g_t at the gradient
    points: every step if it has T entries, else every
    ``value_stride(T, len(gvals))``-th. ``sampler`` is None (full-batch
    steps) or int64 [batch, replace, seed] (minibatch SGD).

    Every pass, the validation pass included, goes through one call site:
    each inlined pass is a parallel loop of its own to compile, so with
    full-batch steps there is one (minibatch steps add the full pass that
    validation needs). ``train`` and ``val`` are
    :class:`~fastbilevel.kernels.data.Data` of one layout and dtype."""
    y = train.y
    c, d = W0.shape
    ns = n_state(solver)
    S = init_state(solver, W0)
    Sn = np.empty_like(S)
    snaps = np.empty((nslots, ns, c, d))
    snap_t = np.zeros(nslots, dtype=np.int64)
    buf = np.empty((buf_len, c, d))
    base = 0
    t = 0
    tr = T - 1
    G = np.empty((c, d))
    HP = np.empty((c, d))
    P = np.zeros((c, d))
    Q = np.zeros((c, d))
    WT = W0.copy()
    GF = np.zeros((c, d))        # ∇_w f(w_T), kept from INIT_ADJ's validation pass
    fval = np.nan
    no_cross = np.empty(0)
    no_a = np.empty(0)          # the validation pass: no sample weights
    cross = np.empty(y.shape[0] if hyper == SAMPLE_WEIGHTS else 0)
    counts = np.zeros(4, dtype=np.int64)
    used = np.zeros(nslots, dtype=np.bool_)
    g0 = 0.0
    tlast = -1                  # last step whose g was recorded and checked
    stride = value_stride(T, gvals.shape[0])
    perm, rbuf = _scratch(sampler, y.shape[0])
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
            continue
        if op == FINISH:
            if tr == -1 and hyper == INIT:
                h += w0_adjoint(solver, beta, P, Q).ravel()
            continue
        rev = op == REV_STATE or op == REV_BUF
        if op == ADV_STORE:
            base = t
        if op == INIT_ADJ:
            assign(Sn, S)
        nrep = 1 if op == REV_STATE else arg  # INIT_ADJ: one step past S (arg 1) or none
        # INIT_ADJ's validation pass at w_T goes through the same pass call
        # as the training passes, as one more iteration: with full-batch
        # steps that is one parallel loop to compile instead of two
        for it in range(nrep + 1 if op == INIT_ADJ else nrep):
            if stop_requested(ctrl):
                return WT, fval, STOPPED, counts, GF
            report_progress(ctrl, counts[0] + counts[1])
            is_val = it == nrep
            rows = _no_rows(sampler, rbuf)
            # the point and direction of this pass
            if is_val:
                assign(WT, Sn[0] if arg == 1 else S[0])
                p = WT
                yt = np.empty((0, 0))
                V = WT
                out = P
                cr = no_cross
            elif rev:
                p = point(solver, S) if op == REV_STATE else buf[tr - base]
                yt = adjoint_pre(solver, beta, P, Q)
                V = P
                out = HP
                cr = cross
                rows = _rows_at(sampler, y.shape[0], tr, perm, rbuf)
            else:
                p = point(solver, Sn if op == INIT_ADJ else S)
                if op == ADV_STORE:
                    assign(buf[t - base], p)
                yt = np.empty((0, 0))
                V = p
                out = G
                cr = no_cross
                rows = _rows_at(sampler, y.shape[0], t, perm, rbuf)
            Dx, Dip, Dix, Dd, Dy = val if is_val else train
            if sampler is None:     # full-batch steps (the branch is pruned by type)
                v = _pass(Dx, Dip, Dix, Dd, Dy, no_a if is_val else a, model, p, V,
                          is_val or not rev, rev and not is_val, out, out, cr, nchunks)
            else:
                v = _pass_or_full(rows, is_val, Dx, Dip, Dix, Dd, Dy, no_a if is_val else a,
                                  model, p, V, is_val or not rev, rev and not is_val, out, out,
                                  cr, nchunks)
            if is_val:
                fval = v
                counts[2] += 1
                assign(GF, P)
                Q[:] = 0.0
                continue
            if rev:
                counts[1] += 1
                _cross_add_rows(rows, hyper, rdiag, da, p, P, cross, -gamma, h)
                reg_hvp_add(rdiag, P, HP)
                adjoint_post(solver, gamma, beta, P, Q, HP, yt)
                tr -= 1
                continue
            counts[0] += 1
            v += reg_value(rdiag, prior, p)
            if t > tlast:       # first visit of step t (a recomputation repeats it)
                tlast = t
                if t % stride == 0:
                    gvals[t // stride] = v
                if t == 0:
                    g0 = v
                if _diverged(sampler, solver, v, g0):
                    return WT, v, t, counts, GF
            reg_grad_add(rdiag, prior, p, G)
            if op == INIT_ADJ:
                solver_step(solver, gamma, beta, Sn, G)
            else:
                solver_step(solver, gamma, beta, S, G)
                t += 1
    return WT, fval, -1, counts, GF


def _no_rows(sampler, out):
    """A placeholder minibatch of the type :func:`_rows_at` returns (None,
    or the rows buffer), for a pass that does not use one."""
    raise NotImplementedError("only callable from compiled code")


@overload(_no_rows, inline="always")
def _ol_no_rows(sampler, out):
    if isinstance(sampler, types.NoneType):
        return lambda sampler, out: None
    return lambda sampler, out: out


def _row_dl_axpy(X, indptr, indices, data, i, yi, model, W, coef, out):
    """out += coef · ℓ'(W x_i; y_i) ⊗ x_i for the single row i."""
    raise NotImplementedError("only callable from compiled code")


@overload(_row_dl_axpy, inline="always")
def _ol_row_dl_axpy(X, indptr, indices, data, i, yi, model, W, coef, out):
    if isinstance(indptr, types.NoneType):
        def dense_impl(X, indptr, indices, data, i, yi, model, W, coef, out):
            c = W.shape[0]
            z = np.empty(c)
            dl = np.empty(c)
            _dots_dense(X, i, W, z)
            row_derivs(model, yi, z, z, False, dl, dl)
            for k in range(c):
                dl[k] *= coef
            _axpy_dense(X, i, dl, out)
        return dense_impl

    def csr_impl(X, indptr, indices, data, i, yi, model, W, coef, out):
        c = W.shape[0]
        z = np.empty(c)
        dl = np.empty(c)
        _dots_csr(indptr, indices, data, i, W, z)
        row_derivs(model, yi, z, z, False, dl, dl)
        for k in range(c):
            dl[k] *= coef
        _axpy_csr(indptr, indices, data, i, dl, out)
    return csr_impl


@njit(cache=True)
def init_tangents(solver, hyper, c, d, m):
    """Z_0 = B_0 = dw_0/dλ for each of the m hyperparameters: the identity
    for ``init`` (every state vector starts at λ), zero otherwise."""
    Z = np.zeros((m, n_state(solver), c, d))
    if hyper == INIT:
        for k in range(c):
            for j in range(d):
                for s in range(Z.shape[1]):
                    Z[k * d + j, s, k, j] = 1.0
    return Z


def _batch_weight(rows, j, inv_n):
    """The weight of row j in the step's loss: 1/n (full batch) or its
    multiplicity in the sorted minibatch over |B|."""
    raise NotImplementedError("only callable from compiled code")


@overload(_batch_weight, inline="always")
def _ol_batch_weight(rows, j, inv_n):
    if isinstance(rows, types.NoneType):
        return lambda rows, j, inv_n: inv_n

    def impl(rows, j, inv_n):
        lo = lower_bound(rows, j)
        hi = upper_bound(rows, j)
        return (hi - lo) / rows.shape[0]
    return impl


@njit(cache=True, parallel=prange_only(), nogil=True)
def forward_mode(train, a, da, model, hyper, rdiag, prior, val, solver, gamma, beta, W0, T,
                 gvals, h, nchunks, sampler, ctrl=None):
    """Forward-mode hypergradient (Shaban eq. 7): the tangents Z_t = dS_t/dλ_j,
    one per hyperparameter, follow the solver's own (linear) step with the
    gradient replaced by its directional derivative H(p_t)Ż + ∂_{λ_j}∇_w g(p_t);
    at the end h_j = ⟨∇_w f(w_T), Z_T[j]⟩. The first tangent shares the
    gradient's pass (one training-pass call site, as in run_schedule).
    ``sampler`` as in run_schedule (minibatch SGD: step t's batch for all
    tangents).
    Returns (w_T, f(w_T), status, counts, ∇_w f(w_T)) like run_schedule
    (``gvals`` and ``ctrl`` too)."""
    X, indptr, indices, data, y = train
    Xv, ipv, ixv, dv, yv = val
    c, d = W0.shape
    m = h.shape[0]
    S = init_state(solver, W0)
    Z = init_tangents(solver, hyper, c, d, max(m, 1))
    G = np.empty((c, d))
    HV = np.empty((c, d))
    no_cross = np.empty(0)
    counts = np.zeros(4, dtype=np.int64)
    inv_n = 1.0 / y.shape[0]
    g0 = 0.0
    stride = value_stride(T, gvals.shape[0])
    perm, rbuf = _scratch(sampler, y.shape[0])
    for t in range(T):
        if stop_requested(ctrl):
            return S[0].copy(), np.nan, STOPPED, counts, G
        report_progress(ctrl, t)
        p = point(solver, S)
        v = 0.0
        rows = _rows_at(sampler, y.shape[0], t, perm, rbuf)
        for j in range(max(m, 1)):
            Zp = point(solver, Z[j])
            if sampler is None:     # full-batch steps (the branch is pruned by type)
                vj = _pass(X, indptr, indices, data, y, a, model, p, Zp, j == 0, m > 0, G, HV,
                           no_cross, nchunks)
            else:
                vj = _pass_rows(rows, X, indptr, indices, data, y, a, model, p, Zp, j == 0,
                                m > 0, G, HV, no_cross, nchunks)
            if j == 0:
                v = vj
            if m == 0:
                break
            counts[1] += 1
            reg_hvp_add(rdiag, Zp, HV)
            if hyper == SAMPLE_WEIGHTS:
                wj = _batch_weight(rows, j, inv_n)
                if wj != 0.0:
                    _row_dl_axpy(X, indptr, indices, data, j, y[j], model, p,
                                 da[j] * wj, HV)
            elif hyper == FEATURE_L2:
                for k in range(c):
                    HV[k, j] += rdiag[j] * p[k, j]
            elif hyper == L2:
                add_scaled(HV, rdiag[0], p)
            elif hyper == BIASED_L2:
                HV[j // d, j % d] -= rdiag[j % d]
            solver_step(solver, gamma, beta, Z[j], HV)
        counts[0] += 1
        v += reg_value(rdiag, prior, p)
        if t % stride == 0:
            gvals[t // stride] = v
        if t == 0:
            g0 = v
        if _diverged(sampler, solver, v, g0):
            return S[0].copy(), v, t, counts, G
        reg_grad_add(rdiag, prior, p, G)
        solver_step(solver, gamma, beta, S, G)
    WT = S[0].copy()
    fval = _pass(Xv, ipv, ixv, dv, yv, np.empty(0), model, WT, WT, True, False,
                 G, G, no_cross, nchunks)
    counts[2] += 1
    for j in range(m):
        s = 0.0
        for k in range(c):
            for jj in range(d):
                s += G[k, jj] * Z[j, 0, k, jj]
        h[j] += s
    return WT, fval, -1, counts, G
