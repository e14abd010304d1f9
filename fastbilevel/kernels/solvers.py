"""The stochastic bilevel solver family in one compiled loop: SOBA, SABA
(Dagréou et al. 2022), AmIGO (Arbel & Mairal 2022), MRBO, VRBO (Yang, Ji &
Liang 2021), TTSA (Hong et al. 2020), BSA (Ghadimi & Wang 2018), F2SA (Kwon
et al. 2023) and BOME (Liu et al. 2022).

Every quantity is a minibatch estimate from the counter-based sampler
(:mod:`.sampling`): a batch is a pure function of (seed, stream, step), so a
seed fixes every draw, an algorithm that needs the same batch at two points
(MRBO's and VRBO's corrections) draws it twice, and results do not depend
on the thread count (the batch passes are serial: a batch of 64 rows is too
little work to split). The passes are the package's minibatch row kernels
(``rows_dense_idx`` / ``rows_csr_idx``: ∇_w g, H v and the per-row J v
term fused in one read of each row); SABA's SAGA tables hold the per-row
scalars those passes produce (``csr_row_coefs`` / ``dense_row_coefs``).

Convention: v ≈ H⁻¹∇_w f solves the linear system, and the hypergradient
estimate is h = −J v (∂_λ f = 0 for every map here: the outer loss does not
read λ). λ is held in kernel order (``lam``) with its kernel parameters
``a, da, rdiag, prior`` kept in step (:func:`.stochastic.set_hyper_params`).
"""
import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._arrays import assign
from ._rowmath import BIASED_L2, FEATURE_L2, L2, SAMPLE_WEIGHTS
from .csr import csr_row_coefs, csr_scatter_cols, rows_csr_idx
from .dense import dense_row_coefs, dense_scatter_rows, rows_dense_idx
from .oracles import (_cross_add_rows, _zero_outputs, cross_add, reg_grad_add, reg_hvp_add,
                      reg_value)
from .sampling import (STREAM_CORR, STREAM_F, STREAM_G, STREAM_HESS, STREAM_INNER,
                       STREAM_LIN, STREAM_TRUNC, draw_rows, key, randint)
from .stochastic import _all_finite, set_hyper_params, step_lam

# method codes
SOBA, SABA, AMIGO, MRBO, VRBO, TTSA, BSA, F2SA, BOME = range(9)
# float settings (fp): inner step ρ₀, outer step γ₀, Neumann step η, STORM
# weight a₀ (MRBO), F2SA's penalty ν₀ and its growth per iteration, BOME's
# control η, AmIGO's linear-system step
RHO, GAMMA, ETA_H, MOM, NU0, DNU, BOME_ETA, RHO_V = range(8)
N_FP = 8
# integer settings (ip): batch, validation batch, inner steps, linear-system
# steps (AmIGO), Neumann terms Q, VRBO's period, decaying steps (0/1)
BATCH, VBATCH, INNER, LINEAR, NQ, PERIOD, DECAY = range(7)
N_IP = 7


# ------------------------------------------------------------ batch passes
def _bpass(rows, D, a, model, W, V, want_grad, want_hvp, G, HV, cross):
    """One serial minibatch pass over the rows ``rows`` of D (weights 1/|B|):
    returns the batch's data loss and overwrites G = ∇ (data part), HV =
    H V (data part) as requested, cross[k] = ℓ'(z)·u/|B| (if of length ≥ |B|)."""
    raise NotImplementedError("only callable from compiled code")


@overload(_bpass, inline="always")
def _ol_bpass(rows, D, a, model, W, V, want_grad, want_hvp, G, HV, cross):
    if isinstance(D.types[1], types.NoneType):
        def dense_impl(rows, D, a, model, W, V, want_grad, want_hvp, G, HV, cross):
            _zero_outputs(want_grad, want_hvp, G, HV)
            b = rows.shape[0]
            return rows_dense_idx(D[0], rows, 0, b, D[4], a, model, W, V, want_grad,
                                  want_hvp, 1.0 / b, G, HV, cross)
        return dense_impl

    def csr_impl(rows, D, a, model, W, V, want_grad, want_hvp, G, HV, cross):
        _zero_outputs(want_grad, want_hvp, G, HV)
        b = rows.shape[0]
        return rows_csr_idx(D[1], D[2], D[3], rows, 0, b, D[4], a, model, W, V, want_grad,
                            want_hvp, 1.0 / b, G, HV, cross)
    return csr_impl


def _coefs(rows, D, a, model, W, V, want_grad, want_hvp, inv_n, CG, CH, losses, cross):
    """Per-row coefficients of the rows ``rows`` (see ``csr_row_coefs``)."""
    raise NotImplementedError("only callable from compiled code")


@overload(_coefs, inline="always")
def _ol_coefs(rows, D, a, model, W, V, want_grad, want_hvp, inv_n, CG, CH, losses, cross):
    if isinstance(D.types[1], types.NoneType):
        def dense_impl(rows, D, a, model, W, V, want_grad, want_hvp, inv_n, CG, CH, losses,
                       cross):
            dense_row_coefs(D[0], rows, D[4], a, model, W, V, want_grad, want_hvp, inv_n,
                            CG, CH, losses, cross)
        return dense_impl

    def csr_impl(rows, D, a, model, W, V, want_grad, want_hvp, inv_n, CG, CH, losses, cross):
        csr_row_coefs(D[1], D[2], D[3], rows, 0, rows.shape[0], D[4], a, model, W, V,
                      want_grad, want_hvp, inv_n, CG, CH, losses, cross)
    return csr_impl


def _scatter(rows, D, C, A):
    """A[k] += Σ_q C[q, k] x_{rows[q]}."""
    raise NotImplementedError("only callable from compiled code")


@overload(_scatter, inline="always")
def _ol_scatter(rows, D, C, A):
    if isinstance(D.types[1], types.NoneType):
        def dense_impl(rows, D, C, A):
            dense_scatter_rows(D[0], rows, C, A)
        return dense_impl

    def csr_impl(rows, D, C, A):
        csr_scatter_cols(D[1], D[2], D[3], rows, C, C, True, False, 0, A.shape[1], A, A)
    return csr_impl


# ------------------------------------------------------------ oracles
@njit(cache=True)
def _draw(ctx, stream, step, b, second):
    """A training batch of b rows for (stream, step) (``second``: into the
    second buffer, so that two batches can be held at once)."""
    train, val, model, hyper, a, da, rdiag, prior, seed, replace, perm, rb1, rb2, permv, \
        rbv, cb, scratch = ctx
    return draw_rows(seed, stream, step, train[4].shape[0], b, replace, perm,
                     rb2 if second else rb1)


@njit(cache=True)
def _drawv(ctx, stream, step, b):
    train, val, model, hyper, a, da, rdiag, prior, seed, replace, perm, rb1, rb2, permv, \
        rbv, cb, scratch = ctx
    return draw_rows(seed, stream, step, val[4].shape[0], b, replace, permv, rbv)


@njit(cache=True)
def _grad_g(ctx, rows, W, G, hp):
    """G = ∇_w g on the batch at W, with the parameters hp = (a, rdiag,
    prior); returns the batch value of g."""
    train = ctx[0]
    a, rdiag, prior = hp
    v = _bpass(rows, train, a, ctx[2], W, W, True, False, G, G, ctx[16])
    reg_grad_add(rdiag, prior, W, G)
    return v + reg_value(rdiag, prior, W)


@njit(cache=True)
def _hvp_g(ctx, rows, W, V, HV, hp):
    """HV = ∇²_w g V on the batch at W."""
    a, rdiag, prior = hp
    _bpass(rows, ctx[0], a, ctx[2], W, V, False, True, HV, HV, ctx[16])
    reg_hvp_add(rdiag, V, HV)


@njit(cache=True)
def _grad_f(ctx, rows, W, P):
    """P = ∇_w f on the validation batch at W; returns its loss."""
    return _bpass(rows, ctx[1], ctx[16], ctx[2], W, W, True, False, P, P, ctx[16])


@njit(cache=True)
def _minus_jv(ctx, rows, W, V, h, hp, da):
    """h += −J V on the batch (only ``sample_weights`` reads rows for J:
    the other maps' J is exact)."""
    hyper = ctx[3]
    a, rdiag, prior = hp
    if hyper == SAMPLE_WEIGHTS:
        cb = ctx[15][:rows.shape[0]]
        _bpass(rows, ctx[0], a, ctx[2], W, V, False, False, ctx[16].reshape(0, 0),
               ctx[16].reshape(0, 0), cb)
        _cross_add_rows(rows, hyper, rdiag, da, W, V, cb, -1.0, h)
    else:
        cross_add(hyper, rdiag, da, W, V, ctx[16], -1.0, h)


@njit(cache=True)
def _dlam_g(ctx, rows, W, h, scale, hp, da, losses):
    """h += scale · ∂_λ g on the batch at W: sample_weights σ'(λ_i)ℓ_i/|B|
    at the batch's rows; feature_l2 ½e^{λ_j}‖W[:, j]‖²; l2 ½e^λ‖W‖²;
    biased_l2 −μ_j(W[k, j] − λ_kj)."""
    hyper = ctx[3]
    a, rdiag, prior = hp
    c, d = W.shape
    if hyper == SAMPLE_WEIGHTS:
        b = rows.shape[0]
        _coefs(rows, ctx[0], ctx[16], ctx[2], W, W, False, False, 1.0 / b,
               np.empty((b, c)), np.empty((b, c)), losses, ctx[16])
        for k in range(b):
            h[rows[k]] += scale * da[rows[k]] * losses[k]
    elif hyper == FEATURE_L2 or hyper == L2:    # ½e^λ‖w‖² = ½ J(w) w
        cross_add(hyper, rdiag, da, W, W, ctx[16], 0.5 * scale, h)
    elif hyper == BIASED_L2:
        for q in range(c):
            for j in range(d):
                h[q * d + j] -= scale * rdiag[j] * (W[q, j] - prior[q, j])


@njit(cache=True)
def _neumann(ctx, W, P, V, R, HV, hp, eta, Q, stream, step0, full_rows):
    """stocBiO's v = η Σ_{q=0}^{Q} r_q, r_0 = P, r_q = r_{q−1} − η H_{B_q} r_{q−1},
    B_q drawn for (stream, step0 + q), or all rows if ``full_rows`` is not
    empty; V gets v."""
    b = ctx[12].shape[0]
    assign(R, P)
    assign(V, P)
    for q in range(1, Q + 1):
        rows = full_rows if full_rows.shape[0] > 0 else _draw(ctx, stream, step0 + q, b, True)
        _hvp_g(ctx, rows, W, R, HV, hp)
        R -= eta * HV
        V += R
    V *= eta


@njit(cache=True)
def _hyper_estimate(ctx, W, V, R, HV, P, h, hp, da, eta, Q, step, rows_f, full_rows):
    """The Neumann hypergradient estimate h = −J_{B_G}(W) v, v = η Σ r_q
    on P = ∇_w f(W; D_F) (MRBO, VRBO). ``rows_f``: the validation batch;
    ``full_rows`` (non-empty): every batch is all training rows."""
    _grad_f(ctx, rows_f, W, P)
    _neumann(ctx, W, P, V, R, HV, hp, eta, Q, STREAM_HESS, step * (Q + 1), full_rows)
    h[:] = 0.0
    rows = full_rows if full_rows.shape[0] > 0 else \
        _draw(ctx, STREAM_G, step, ctx[11].shape[0], False)
    _minus_jv(ctx, rows, W, V, h, hp, da)


@njit(cache=True)
def _lam_step(ctx, lam, h, gamma, lo, hi, changed):
    """λ ← clip(λ − γh) and its kernel parameters; returns whether λ is finite."""
    hyper = ctx[3]
    ok = step_lam(lam, h, gamma, lo, hi, changed)
    if ok:
        set_hyper_params(hyper, lam, 0.0, ctx[4], ctx[5], ctx[6], ctx[7], changed)
    return ok


@njit(cache=True)
def _sgd_steps(ctx, W, G, rho, T, stream, step0):
    """T minibatch SGD steps on g from W (batches (stream, step0 + t));
    returns whether W stayed finite."""
    hp = (ctx[4], ctx[6], ctx[7])
    b = ctx[11].shape[0]
    for t in range(T):
        rows = _draw(ctx, stream, step0 + t, b, False)
        _grad_g(ctx, rows, W, G, hp)
        W -= rho * G
    return _all_finite(W)


# ------------------------------------------------------------ the loop
@njit(cache=True)
def solver_run(method, train, val, model, hyper, lam, a, da, rdiag, prior, W, V, Z, Wm, Dw,
               U, old_a, old_da, old_rdiag, old_prior, Mg, Mh, Mf, Mj, Ag, Ah, Af,
               fp, ip, k0, iters, replace, seed, lo, hi):
    """Run ``iters`` iterations k = k0, k0+1, ... of ``method``, updating the
    state in place: λ (``lam``, kernel order, with ``a, da, rdiag, prior``),
    W (the inner iterate), V (the linear-system iterate), Z (F2SA's z, or
    BOME's inner run), Wm / old_* (the previous point and λ's parameters there: MRBO,
    VRBO), Dw (the direction of W: MRBO, VRBO), U (the direction of λ),
    SABA's tables Mg, Mh (n, c), Mf (m, c), Mj (n) and their means Ag, Ah,
    Af (c, d). Settings: ``fp``, ``ip`` (see the module's index names).

    Returns (status, counts): status −1, or the iteration at which the
    state stopped being finite; counts = [training rows, validation rows]
    read."""
    n = train[4].shape[0]
    m = val[4].shape[0]
    c, d = W.shape
    b = ip[BATCH]
    bv = ip[VBATCH]
    T = ip[INNER]
    M = ip[LINEAR]
    Q = ip[NQ]
    decay = ip[DECAY] != 0
    rho0 = fp[RHO]
    gamma0 = fp[GAMMA]
    eta = fp[ETA_H]
    dim = lam.shape[0]
    sw = hyper == SAMPLE_WEIGHTS
    empty = np.empty(0)
    ctx = (train, val, model, hyper, a, da, rdiag, prior, seed, replace,
           np.arange(n, dtype=np.int64), np.empty(b, dtype=np.int64),
           np.empty(b, dtype=np.int64), np.arange(m, dtype=np.int64),
           np.empty(max(bv, 1), dtype=np.int64), np.zeros(max(b, n if sw else 0)), empty)
    hp = (a, rdiag, prior)
    hp_old = (old_a, old_rdiag, old_prior)
    G = np.empty((c, d))
    G2 = np.empty((c, d))
    HV = np.empty((c, d))
    P = np.empty((c, d))
    P2 = np.empty((c, d))
    R = np.empty((c, d))
    V2 = np.empty((c, d))
    h = np.zeros(dim)
    h2 = np.zeros(dim)
    losses = np.empty(max(b, bv))
    changed = np.zeros(dim, dtype=np.bool_)
    counts = np.zeros(2, dtype=np.int64)
    full_rows = np.arange(n if method == VRBO else 0, dtype=np.int64)
    empty_rows = np.empty(0, dtype=np.int64)
    for k in range(k0, k0 + iters):
        kk = k + 1.0
        rho = rho0
        gamma = gamma0
        ok = True
        if method == SOBA or method == TTSA:        # Dagréou Thm 1; Hong Thm 1
            if decay:
                rho = rho0 * kk ** -0.4
                gamma = gamma0 * kk ** -0.6
        elif method == MRBO:                        # Yang et al. Thm 1: k^{-1/3}
            if decay:
                rho = rho0 * kk ** (-1.0 / 3.0)
                gamma = gamma0 * kk ** (-1.0 / 3.0)
        elif decay:                                 # BSA, F2SA (and any on request)
            gamma = gamma0 / math.sqrt(kk)
        if method == SOBA:
            # Dagréou et al. 2022 Alg. 1: the three directions at (λ, W, V)
            # from one batch (one fused pass: ∇g, H V and J V) and one
            # validation batch, then all three variables move
            rows = _draw(ctx, STREAM_INNER, k, b, False)
            cb = ctx[15][:b] if sw else empty
            _bpass(rows, train, a, model, W, V, True, True, G, HV, cb)
            reg_grad_add(rdiag, prior, W, G)
            reg_hvp_add(rdiag, V, HV)
            rv = _drawv(ctx, STREAM_F, k, bv)
            _grad_f(ctx, rv, W, P)
            h[:] = 0.0
            _cross_add_rows(rows, hyper, rdiag, da, W, V, cb, -1.0, h)
            counts[0] += b
            counts[1] += bv
            W -= rho * G
            HV -= P
            V -= rho * HV
            ok = _all_finite(W) and _all_finite(V) and _lam_step(ctx, lam, h, gamma, lo, hi, changed)
        elif method == SABA:
            if k == 0:
                _saba_init(ctx, W, V, Mg, Mh, Mf, Mj, Ag, Ah, Af)
                counts[0] += n
                counts[1] += m
            ok = _saba_step(ctx, k, W, V, lam, Mg, Mh, Mf, Mj, Ag, Ah, Af, G, HV, P, h, rho,
                            gamma, lo, hi, changed)
            counts[0] += b
            counts[1] += bv
        elif method == AMIGO:
            # Arbel & Mairal 2022 Alg. 1: T warm-started SGD steps on W, M
            # warm-started SGD steps on ½vᵀHv − vᵀ∇f, then the λ step
            ok = _sgd_steps(ctx, W, G, rho, T, STREAM_INNER, k * T)
            rv = _drawv(ctx, STREAM_F, k, bv)
            _grad_f(ctx, rv, W, P)
            for t in range(M):
                rows = _draw(ctx, STREAM_LIN, k * M + t, b, False)
                _hvp_g(ctx, rows, W, V, HV, hp)
                HV -= P
                V -= fp[RHO_V] * HV
            h[:] = 0.0
            rows = _draw(ctx, STREAM_G, k, b, False)
            _minus_jv(ctx, rows, W, V, h, hp, da)
            counts[0] += b * (T + M + 1)
            counts[1] += bv
            ok = ok and _all_finite(V) and _lam_step(ctx, lam, h, gamma, lo, hi, changed)
        elif method == TTSA or method == BSA:
            # Hong et al. 2020 Alg. 1 (one SGD step per iteration) / Ghadimi &
            # Wang 2018 Alg. 2 (T steps); the hypergradient with Ghadimi &
            # Wang's randomly truncated Neumann series (their eq. (2.8)):
            # p ~ U{0..Q−1}, v = (Q η) Π_{i≤p} (I − η H_{B_i}) ∇f
            ok = _sgd_steps(ctx, W, G, rho, T, STREAM_INNER, k * T)
            rv = _drawv(ctx, STREAM_F, k, bv)
            _grad_f(ctx, rv, W, P)
            p = randint(key(seed, STREAM_TRUNC, k), 0, Q)
            assign(V, P)
            for i in range(p):
                rows = _draw(ctx, STREAM_HESS, k * Q + i, b, False)
                _hvp_g(ctx, rows, W, V, HV, hp)
                V -= eta * HV
            V *= Q * eta
            h[:] = 0.0
            rows = _draw(ctx, STREAM_G, k, b, False)
            _minus_jv(ctx, rows, W, V, h, hp, da)
            counts[0] += b * (T + p + 1)
            counts[1] += bv
            ok = ok and _lam_step(ctx, lam, h, gamma, lo, hi, changed)
        elif method == MRBO:
            # Yang, Ji & Liang 2021 Alg. 1: STORM directions of W and λ, each
            # corrected by its estimate at the previous point on the same batches
            wk = 1.0 if k == 0 else min(1.0, fp[MOM] * kk ** (-2.0 / 3.0))
            rows = _draw(ctx, STREAM_INNER, k, b, False)
            _grad_g(ctx, rows, W, G, hp)
            rv = _drawv(ctx, STREAM_F, k, bv)
            _hyper_estimate(ctx, W, V, R, HV, P, h, hp, da, eta, Q, k, rv, empty_rows)
            if k == 0:
                assign(Dw, G)
                assign(U, h)
            else:
                rows = _draw(ctx, STREAM_INNER, k, b, False)
                _grad_g(ctx, rows, Wm, G2, hp_old)
                rv = _drawv(ctx, STREAM_F, k, bv)
                _hyper_estimate(ctx, Wm, V2, R, HV, P2, h2, hp_old, old_da, eta, Q, k, rv,
                                empty_rows)
                Dw -= G2
                Dw *= 1.0 - wk
                Dw += G
                for j in range(dim):
                    U[j] = h[j] + (1.0 - wk) * (U[j] - h2[j])
            counts[0] += (b * (Q + 2)) * (1 if k == 0 else 2)
            counts[1] += bv * (1 if k == 0 else 2)
            _save_point(W, Wm, a, da, rdiag, prior, old_a, old_da, old_rdiag, old_prior)
            W -= rho * Dw
            ok = _all_finite(W) and _all_finite(Dw) and _lam_step(ctx, lam, U, gamma, lo, hi, changed)
        elif method == VRBO:
            ok = _vrbo_step(ctx, k, W, V, V2, R, HV, P, P2, G, G2, h, h2, Wm, Dw, U, lam,
                            hp, hp_old, old_da, rho, gamma, eta, Q, T, ip[PERIOD],
                            full_rows, lo, hi, changed, counts)
        elif method == F2SA:
            # Kwon et al. 2023 Alg. 1: z ≈ argmin g, y (= W) ≈ argmin f/ν + g,
            # and λ moves along ν(∂_λg(y) − ∂_λg(z)) (∂_λ f = 0)
            nu = fp[NU0] + fp[DNU] * k
            for t in range(T):
                rows = _draw(ctx, STREAM_INNER, k * T + t, b, False)
                _grad_g(ctx, rows, Z, G, hp)
                Z -= rho * G
                _grad_g(ctx, rows, W, G, hp)      # the same batch: y − z keeps
                #                                   little of the batches' noise
                rv = _drawv(ctx, STREAM_F, k * T + t, bv)
                _grad_f(ctx, rv, W, P)
                P *= 1.0 / nu
                G += P
                W -= rho * G
            h[:] = 0.0
            rows = _draw(ctx, STREAM_G, k, b, False)
            _dlam_g(ctx, rows, W, h, nu, hp, da, losses)
            _dlam_g(ctx, rows, Z, h, -nu, hp, da, losses)
            counts[0] += b * (2 * T + 2)
            counts[1] += bv * T
            ok = _all_finite(W) and _all_finite(Z) and _lam_step(ctx, lam, h, gamma, lo, hi, changed)
        else:
            # BOME (Liu et al. 2022 Alg. 1): ŵ = T SGD steps from W; q(λ, w) =
            # g(λ, w) − g(λ, ŵ); (λ, W) moves along ∇f + φ∇q with
            # φ = max(η − ⟨∇f, ∇q⟩/‖∇q‖², 0) (their φ = η‖∇q‖²)
            assign(Z, W)
            ok = _sgd_steps(ctx, Z, G, rho, T, STREAM_INNER, k * T)
            rows = _draw(ctx, STREAM_G, k, b, False)
            _grad_g(ctx, rows, W, G, hp)
            h[:] = 0.0
            _dlam_g(ctx, rows, W, h, 1.0, hp, da, losses)
            _dlam_g(ctx, rows, Z, h, -1.0, hp, da, losses)
            rv = _drawv(ctx, STREAM_F, k, bv)
            _grad_f(ctx, rv, W, P)
            nq = 0.0
            dot = 0.0
            g = G.ravel()
            pf = P.ravel()
            for j in range(g.shape[0]):
                nq += g[j] * g[j]
                dot += pf[j] * g[j]
            for j in range(dim):
                nq += h[j] * h[j]
            phi = max(fp[BOME_ETA] - dot / nq, 0.0) if nq > 0.0 else 0.0
            G *= phi
            G += P
            h *= phi
            W -= rho * G
            counts[0] += b * (T + 1)
            counts[1] += bv
            ok = ok and _all_finite(W) and _lam_step(ctx, lam, h, gamma, lo, hi, changed)
        if method != MRBO and method != VRBO:
            assign(U, h)                    # the last λ direction, for the caller
        if not ok:
            return k, counts
    return -1, counts


@njit(cache=True)
def _save_point(W, Wm, a, da, rdiag, prior, old_a, old_da, old_rdiag, old_prior):
    """The previous point (W and λ's parameters) ← the current one."""
    assign(Wm, W)
    assign(old_a, a)
    assign(old_da, da)
    assign(old_rdiag, rdiag)
    assign(old_prior, prior)


@njit(cache=True)
def _vrbo_step(ctx, k, W, V, V2, R, HV, P, P2, G, G2, h, h2, Wm, Dw, U, lam, hp,
               hp_old, old_da, rho, gamma, eta, Q, T, period, full_rows, lo, hi, changed,
               counts):
    """One outer iteration of VRBO (Yang, Ji & Liang 2021 Alg. 2): every
    ``period`` iterations the directions (Dw of W, U of λ) are recomputed on
    all rows (``full_rows``); λ moves, then T steps of W; after each move of the point both
    directions get the SARAH correction (estimate at the new point minus at
    the old, on one fresh batch)."""
    train, val, model, hyper, a, da, rdiag, prior, seed, replace, perm, rb1, rb2, permv, \
        rbv, cb, scratch = ctx
    n = train[4].shape[0]
    m = val[4].shape[0]
    b = rb1.shape[0]
    bv = rbv.shape[0]
    if k % period == 0:       # the paper's large batch S₁: all rows
        _grad_g(ctx, full_rows, W, Dw, hp)
        _hyper_estimate(ctx, W, V, R, HV, P, U, hp, da, eta, Q, 0,
                        np.arange(m, dtype=np.int64), full_rows)
        counts[0] += n * (Q + 2)
        counts[1] += m
    # the point moves T + 1 times: λ first, then W, T times
    for t in range(T + 1):
        step = k * (T + 1) + t
        if t == 0:
            _save_point(W, Wm, a, da, rdiag, prior, hp_old[0], old_da, hp_old[1], hp_old[2])
            if not _lam_step(ctx, lam, U, gamma, lo, hi, changed):
                return False
        else:
            assign(Wm, W)
            W -= rho * Dw
            if not _all_finite(W):
                return False
        hq = hp_old if t == 0 else hp
        dq = old_da if t == 0 else da
        rows = _draw(ctx, STREAM_CORR, step, b, False)
        _grad_g(ctx, rows, W, G, hp)
        _grad_g(ctx, rows, Wm, G2, hq)
        Dw += G
        Dw -= G2
        rv = _drawv(ctx, STREAM_F, step, bv)
        none = np.empty(0, dtype=np.int64)
        _hyper_estimate(ctx, W, V, R, HV, P, h, hp, da, eta, Q, step, rv, none)
        _hyper_estimate(ctx, Wm, V2, R, HV, P2, h2, hq, dq, eta, Q, step, rv, none)
        for j in range(U.shape[0]):
            U[j] += h[j] - h2[j]
        counts[0] += 2 * b * (Q + 2)
        counts[1] += 2 * bv
    return _all_finite(Dw)


@njit(cache=True)
def _saba_init(ctx, W, V, Mg, Mh, Mf, Mj, Ag, Ah, Af):
    """SABA's tables at the start point, from one pass over all rows:
    Mg[i] = a_iℓ'(z_i), Mh[i] = a_iℓ''(z_i)u_i, Mj[i] = ℓ'(z_i)·u_i,
    Mf[j] = ℓ'(z_j) (validation), and their means Ag = (1/n)Σ Mg[i]⊗x_i,
    Ah, Af."""
    train, val = ctx[0], ctx[1]
    n = train[4].shape[0]
    m = val[4].shape[0]
    rows = np.arange(n, dtype=np.int64)
    rowsv = np.arange(m, dtype=np.int64)
    lossn = np.empty(n)
    _coefs(rows, train, ctx[4], ctx[2], W, V, True, True, 1.0, Mg, Mh, lossn, Mj)
    Ag[:] = 0.0
    Ah[:] = 0.0
    Af[:] = 0.0
    _scatter(rows, train, Mg / n, Ag)
    _scatter(rows, train, Mh / n, Ah)
    lossm = np.empty(m)
    _coefs(rowsv, val, ctx[16], ctx[2], W, W, True, False, 1.0, Mf, Mf, lossm, ctx[16])
    _scatter(rowsv, val, Mf / m, Af)


@njit(cache=True)
def _saba_step(ctx, k, W, V, lam, Mg, Mh, Mf, Mj, Ag, Ah, Af, G, HV, P, h, rho, gamma, lo, hi,
               changed):
    """One SABA iteration (Dagréou et al. 2022 Alg. 2 with SAGA, their
    eq. (8)): each direction is (1/|B|)Σ_{i∈B}(φ_i(now) − table_i) + mean of
    the table, then the rows' table entries and the means are refreshed."""
    train, val, model, hyper, a, da, rdiag, prior, seed, replace, perm, rb1, rb2, permv, \
        rbv, cb, scratch = ctx
    n = train[4].shape[0]
    m = val[4].shape[0]
    b = rb1.shape[0]
    bv = rbv.shape[0]
    c = W.shape[0]
    sw = hyper == SAMPLE_WEIGHTS
    rows = _draw(ctx, STREAM_INNER, k, b, False)
    CG = np.empty((b, c))
    CH = np.empty((b, c))
    loss = np.empty(b)
    cj = np.zeros(b if sw else 0)
    _coefs(rows, train, a, model, W, V, True, True, 1.0, CG, CH, loss, cj)
    DG = np.empty((b, c))
    DH = np.empty((b, c))
    UG = np.zeros((b, c))
    UH = np.zeros((b, c))
    for q in range(b):
        i = rows[q]
        fresh = q == 0 or rows[q - 1] != i       # a repeated row updates its entry once
        for kk in range(c):
            DG[q, kk] = (CG[q, kk] - Mg[i, kk]) / b
            DH[q, kk] = (CH[q, kk] - Mh[i, kk]) / b
            if fresh:
                UG[q, kk] = (CG[q, kk] - Mg[i, kk]) / n
                UH[q, kk] = (CH[q, kk] - Mh[i, kk]) / n
    assign(G, Ag)
    _scatter(rows, train, DG, G)
    reg_grad_add(rdiag, prior, W, G)
    assign(HV, Ah)
    _scatter(rows, train, DH, HV)
    reg_hvp_add(rdiag, V, HV)
    rv = _drawv(ctx, STREAM_F, k, bv)
    CF = np.empty((bv, c))
    lossv = np.empty(bv)
    _coefs(rv, val, scratch, model, W, W, True, False, 1.0, CF, CF, lossv, scratch)
    DF = np.empty((bv, c))
    UF = np.zeros((bv, c))
    for q in range(bv):
        j = rv[q]
        fresh = q == 0 or rv[q - 1] != j
        for kk in range(c):
            DF[q, kk] = (CF[q, kk] - Mf[j, kk]) / bv
            if fresh:
                UF[q, kk] = (CF[q, kk] - Mf[j, kk]) / m
    assign(P, Af)
    _scatter(rv, val, DF, P)
    # the λ direction −J v: per-sample for sample_weights, exact otherwise
    h[:] = 0.0
    if sw:
        for i in range(n):
            h[i] = -da[i] * Mj[i] / n
        for q in range(b):
            i = rows[q]
            h[i] -= da[i] * (cj[q] - Mj[i]) / b
    else:
        cross_add(hyper, rdiag, da, W, V, scratch, -1.0, h)
    # refresh the tables and their means (at the point just evaluated)
    _scatter(rows, train, UG, Ag)
    _scatter(rows, train, UH, Ah)
    _scatter(rv, val, UF, Af)
    for q in range(b):
        i = rows[q]
        for kk in range(c):
            Mg[i, kk] = CG[q, kk]
            Mh[i, kk] = CH[q, kk]
        if sw:
            Mj[i] = cj[q]
    for q in range(bv):
        for kk in range(c):
            Mf[rv[q], kk] = CF[q, kk]
    W -= rho * G
    HV -= P
    V -= rho * HV
    return _all_finite(W) and _all_finite(V) and _lam_step(ctx, lam, h, gamma, lo, hi, changed)
