"""Stochastic hypergradient kernels: stocBiO (thesis Alg. 4-5) and FSLA
(Li, Gu & Huang 2022, Alg. 1). Every pass reads only its minibatch's rows;
batches come from :mod:`.sampling`, so a seed fixes every draw.
"""
import math

import numpy as np
from numba import njit

from .. import config
from ._arrays import add_scaled, assign, prange_only, scale_into
from ._rowmath import FEATURE_L2, L2, SAMPLE_WEIGHTS, sigmoid, sigmoid_prime
from .oracles import (_cross_add_rows, _pass_rows, cross_add, reg_grad_add, reg_hvp_add,
                      reg_value)
from .sampling import STREAM_F, STREAM_G, STREAM_HESS, STREAM_INNER, draw_rows

_GROWTH = config.DIVERGENCE_GROWTH_MINIBATCH
_FM = set(config.FASTMATH)


@njit(cache=True, parallel=prange_only())
def stocbio_run(train, a, da, model, hyper, rdiag, prior, val, W0, D, gamma, S, eta, hsizes,
                df, dg, replace, seed, h, nchunks):
    """One stocBiO hypergradient estimate (thesis Alg. 4 lines 3-12, Alg. 5).

    D SGD steps from W0 on batches S_t (|S_t| = S); v_0 = ∇_w F(ŵ; D_F)
    (|D_F| = df validation rows); r_Q = v_0, r_{i−1} = r_i − η H_{B_i} r_i
    for i = Q..1 with |B_i| = hsizes[i−1]; v_Q = η Σ_{i=0}^{Q} r_i; and
    h −= J_{D_G}(ŵ) v_Q (|D_G| = dg rows; only ``sample_weights`` reads data
    for J, the other maps' J is exact and needs no batch).

    Returns (ŵ, F(ŵ; D_F), status, counts): status −1, or the step at which
    the SGD loop diverged; counts = [training rows read, validation rows read].
    All training passes share one call site (and compile once)."""
    X, indptr, indices, data, y = train
    Xv, ipv, ixv, dv, yv = val
    n = y.shape[0]
    m = yv.shape[0]
    c, d = W0.shape
    Q = hsizes.shape[0]
    W = W0.copy()
    G = np.empty((c, d))
    R = np.zeros((c, d))
    acc = np.zeros((c, d))
    VQ = np.zeros((c, d))
    bmax = max(S, dg)
    for j in range(Q):
        bmax = max(bmax, hsizes[j])
    perm = np.arange(n, dtype=np.int64)
    rbuf = np.empty(bmax, dtype=np.int64)
    permv = np.arange(m, dtype=np.int64)
    rbufv = np.empty(df, dtype=np.int64)
    sw = hyper == SAMPLE_WEIGHTS
    cross = np.zeros(dg if sw else 0)
    no_cross = np.empty(0)
    counts = np.zeros(2, dtype=np.int64)
    fval = np.nan
    g0 = 0.0
    for st in range(D + Q + 2):
        if st == D:                 # v_0 = r_Q on D_F
            rows = draw_rows(seed, STREAM_F, 0, m, df, replace, permv, rbufv)
            fval = _pass_rows(rows, Xv, ipv, ixv, dv, yv, np.empty(0), model, W, W, True,
                              False, R, R, no_cross, nchunks)
            counts[1] += df
            assign(acc, R)
            continue
        # what this training pass is: an SGD step, a Neumann step or J on D_G
        i = 0
        if st < D:
            stream, step, b, V, grad = STREAM_INNER, st, S, W, True
        elif st <= D + Q:
            i = Q - (st - D - 1)
            stream, step, b, V, grad = STREAM_HESS, i, hsizes[i - 1], R, False
        else:
            scale_into(VQ, eta, acc)
            if not sw:
                _cross_add_rows(None, hyper, rdiag, da, W, VQ, cross, -1.0, h)
                break
            stream, step, b, V, grad = STREAM_G, 0, dg, VQ, False
        rows = draw_rows(seed, stream, step, n, b, replace, perm, rbuf)
        v = _pass_rows(rows, X, indptr, indices, data, y, a, model, W, V, grad, not grad,
                       G, G, cross if st > D + Q else no_cross, nchunks)
        counts[0] += b
        if st < D:
            v += reg_value(rdiag, prior, W)
            if st == 0:
                g0 = v
            if not math.isfinite(v) or v - g0 > _GROWTH * (abs(g0) + 1.0):
                return W, fval, st, counts
            reg_grad_add(rdiag, prior, W, G)
            add_scaled(W, -gamma, G)
        elif st <= D + Q:
            reg_hvp_add(rdiag, R, G)
            add_scaled(R, -eta, G)
            acc += R
        else:
            _cross_add_rows(rows, hyper, rdiag, da, W, VQ, cross, -1.0, h)
    return W, fval, -1, counts


@njit(cache=True)
def set_hyper_params(hyper, lam, reg, a, da, rdiag, prior, changed):
    """Write the kernel-side parameters of λ (kernel order) in place: the
    compiled twin of ``BilevelProblem._lam_in`` for the maps FSLA moves
    (sample_weights: a = σ(λ), da = σ'(λ); feature_l2 / l2: rdiag = e^λ;
    biased_l2: prior = λ as (c, d)). Only entries with ``changed[j]`` are
    recomputed (an exp per feature is most of an FSLA step at d = 10⁵)."""
    if hyper == SAMPLE_WEIGHTS:
        for i in range(lam.shape[0]):
            if changed[i]:
                a[i] = sigmoid(lam[i])
                da[i] = sigmoid_prime(lam[i])
    elif hyper == FEATURE_L2:
        for j in range(lam.shape[0]):
            if changed[j]:
                rdiag[j] = math.exp(lam[j])
    elif hyper == L2:
        rdiag[:] = math.exp(lam[0])
    else:
        c, d = prior.shape
        for k in range(c):
            for j in range(d):
                prior[k, j] = lam[k * d + j]


@njit(cache=True)
def step_lam(lam, direction, step, lo, hi, changed):
    """λ ← λ − step·direction in place, clipped to [lo, hi] (empty: no
    bounds); changed[j] marks the entries that moved (their kernel
    parameters must be recomputed). Returns whether λ is finite."""
    bounded = lo.shape[0] > 0
    ok = True
    for j in range(lam.shape[0]):
        old = lam[j]
        lam[j] -= step * direction[j]
        if bounded:
            lam[j] = min(max(lam[j], lo[j]), hi[j])
        changed[j] = lam[j] != old
        ok = ok and math.isfinite(lam[j])
    return ok


@njit(cache=True, fastmath=_FM)
def _fsla_state_step(W, V, G, P, HV, tau, beta):
    """ω ← ω − τG;  v ← v + β(P − HV), in one sweep; returns whether all of
    the new ω and v are finite."""
    w = W.ravel()
    v = V.ravel()
    g = G.ravel()
    p = P.ravel()
    hv = HV.ravel()
    s = 0.0
    for j in range(w.shape[0]):
        w[j] -= tau * g[j]
        v[j] += beta * (p[j] - hv[j])
        s += 0.0 * (w[j] + v[j])        # NaN iff some entry is not finite
    return s == 0.0


@njit(cache=True)
def _storm(dmom, e_new, e_old, eta):
    """d ← e_new + (1 − η)(d − e_old); returns whether d is finite."""
    ok = True
    for j in range(dmom.shape[0]):
        dmom[j] = e_new[j] + (1.0 - eta) * (dmom[j] - e_old[j])
        ok = ok and math.isfinite(dmom[j])
    return ok


@njit(cache=True)
def _all_finite(A):
    a = A.ravel()
    for j in range(a.shape[0]):
        if not math.isfinite(a[j]):
            return False
    return True


@njit(cache=True, parallel=prange_only())
def fsla_run(train, model, hyper, reg, val, lam, W, V, dmom, a, da, rdiag, prior, k0, iters,
             delta, c_tau, c_beta, c_eta, b_inner, b_val, b_cross, replace, seed, lo, hi,
             nchunks):
    """Run FSLA (Li, Gu & Huang 2022, Alg. 1) from iteration k0 for ``iters``
    iterations, updating the state (λ, ω = W, v = V, d = dmom) in place.
    ``a, da, rdiag, prior`` must hold the parameters of λ on entry (they
    are kept in step with λ). With k0 = 0 the state is first initialized
    from ω_0 = W: v_0 = β_0 ∇_ωF(ω_0; ξ_2) (from v = 0), d_0 = the estimate
    at (λ_0, ω_0, v_0). Then, for k = k0, k0+1, ... with α_k = δ/√(k+1):

        λ_{k+1} = clip(λ_k − α_k d_k);  τ, β, η = c_τα_k, c_βα_k, min(1, c_ηα_k)
        ω_{k+1} = ω_k − τ ∂_ωG(λ_{k+1}, ω_k; ξ_1)
        v_{k+1} = β ∂_ωF(ω_k; ξ_2) + v_k − β ∂²_ωG(λ_{k+1}, ω_k; ξ_3) v_k
        e(λ, ω, v; ξ_5) = ∂_λF − ∂_λ∂_ωG(λ, ω; ξ_5) v        (∂_λF = 0 here)
        d_{k+1} = e(λ_{k+1}, ω_{k+1}, v_{k+1}) + (1 − η)(d_k − e(λ_k, ω_k, v_k))

    the STORM correction re-evaluating the previous state on the new ξ_5.
    ξ_1, ξ_3, ξ_5 are training batches (b_inner, b_inner, b_cross rows),
    ξ_2 a validation batch (b_val rows), all drawn for step k+1 (step 0 for
    the initialization). ``lo``/``hi``: bounds on λ (empty: none).

    Everything at the old state (e on ξ_5, ξ_2, ξ_1, ξ_3) is evaluated before
    the state moves, so the update runs in place with no copies.

    Returns (status, counts): status −1, or the iteration at which the state
    stopped being finite; counts = [training rows, validation rows]."""
    X, indptr, indices, data, y = train
    Xv, ipv, ixv, dv, yv = val
    n = y.shape[0]
    m = yv.shape[0]
    c, d = W.shape
    sw = hyper == SAMPLE_WEIGHTS
    G1 = np.empty((c, d))
    HV = np.empty((c, d))
    P = np.empty((c, d))
    e_new = np.zeros(dmom.shape[0])
    e_old = np.zeros(dmom.shape[0])
    perm = np.arange(n, dtype=np.int64)
    rbuf = np.empty(max(b_inner, b_cross), dtype=np.int64)
    permv = np.arange(m, dtype=np.int64)
    rbufv = np.empty(b_val, dtype=np.int64)
    cross = np.zeros(b_cross if sw else 0)
    no_cross = np.empty(0)
    counts = np.zeros(2, dtype=np.int64)
    changed = np.zeros(lam.shape[0], dtype=np.bool_)
    finite = True
    start = -1 if k0 == 0 else k0          # −1: the initialization
    for k in range(start, k0 + iters):
        init = k == -1
        step = 0 if init else k + 1
        alpha = delta / math.sqrt(max(k, 0) + 1.0)
        tau = c_tau * alpha
        beta = c_beta * alpha
        etak = min(1.0, c_eta * alpha)
        # ξ_2: ∂_ωF(ω_k) on a validation batch
        rows = draw_rows(seed, STREAM_F, step, m, b_val, replace, permv, rbufv)
        _pass_rows(rows, Xv, ipv, ixv, dv, yv, np.empty(0), model, W, W, True, False,
                   P, P, no_cross, nchunks)
        counts[1] += b_val
        # training passes, one call site: sp 0 = ξ_5 at the old state,
        # 1 = ξ_1 (∇G at ω_k), 2 = ξ_3 (H v_k at ω_k), 3 = ξ_5 at the new state
        for sp in range(4):
            if init and sp < 3:
                if sp == 0:
                    scale_into(V, beta, P)     # v_0 = β_0 ∂_ωF + (I − β_0 H) 0
                continue
            if sp == 0 and not sw:         # J needs no data for the other maps
                e_old[:] = 0.0
                cross_add(hyper, rdiag, da, W, V, no_cross, -1.0, e_old)
                continue
            if sp == 1:                    # λ_{k+1}, once e(λ_k, ...) is taken
                step_lam(lam, dmom, alpha, lo, hi, changed)
                set_hyper_params(hyper, lam, reg, a, da, rdiag, prior, changed)
            if sp == 3 and not sw:
                e_new[:] = 0.0
                cross_add(hyper, rdiag, da, W, V, no_cross, -1.0, e_new)
                break
            if sp == 0 or sp == 3:
                stream, b, grad, out = STREAM_G, b_cross, False, HV
            elif sp == 1:
                stream, b, grad, out = STREAM_INNER, b_inner, True, G1
            else:
                stream, b, grad, out = STREAM_HESS, b_inner, False, HV
            rows = draw_rows(seed, stream, step, n, b, replace, perm, rbuf)
            _pass_rows(rows, X, indptr, indices, data, y, a, model, W, W if grad else V,
                       grad, not grad, out, out, cross if (sp == 0 or sp == 3) else no_cross,
                       nchunks)
            counts[0] += b
            if sp == 0:
                e_old[:] = 0.0
                _cross_add_rows(rows, hyper, rdiag, da, W, V, cross, -1.0, e_old)
            elif sp == 1:
                reg_grad_add(rdiag, prior, W, G1)
            elif sp == 2:
                reg_hvp_add(rdiag, V, HV)
                finite = _fsla_state_step(W, V, G1, P, HV, tau, beta)
            else:
                e_new[:] = 0.0
                _cross_add_rows(rows, hyper, rdiag, da, W, V, cross, -1.0, e_new)
        if init:
            assign(dmom, e_new)
            finite = _all_finite(V) and _all_finite(dmom)
        else:
            finite = _storm(dmom, e_new, e_old, etak) and finite
        if not finite:
            return k, counts
    return -1, counts
