"""Implicit (AID) hypergradients: solve H(ŵ) v = ∇_w f(ŵ), H = ∇²_ww g (the
regularizer included), then d_λ f ≈ ∇_λ f − J(ŵ) v (thesis Alg. 1; FSLA
Lemma 2). One fused H·v pass per solver step.

Linear solvers: CG; Neumann / Richardson v ← v + η(b − Hv) (from v = 0 this is
the truncated Neumann series η Σ_i (I − ηH)^i b); heavy ball (AccBiO Alg. 3)
v ← v + α(b − Hv) + β(v − v_prev).
"""
import math

import numpy as np
from numba import njit

from ._arrays import add_scaled, assign, momentum_step, prange_only, sub_into
from .control import STOPPED, report_progress, stop_requested
from .oracles import _pass, reg_hvp_add

from .._codes import (CG, CONVERGED, DIVERGED, HEAVY_BALL_LS, MAX_STEPS,  # noqa: F401
                      NEUMANN, NO_CURVATURE)

# a solve whose residual grows past this factor of its first residual diverges
_GROWTH = 1e6


@njit(cache=True)
def _dot(A, B):
    """Σ A⊙B in a fixed order. A separate serial function: written inline in
    a parallel kernel, the sum would become a parallel reduction whose order
    follows the threads (and, under TBB, their scheduling)."""
    return np.sum(A * B)


@njit(cache=True)
def _norm(A):
    return math.sqrt(_dot(A, A))


@njit(cache=True, parallel=prange_only(), nogil=True)
def implicit_solve(train, a, model, rdiag, W, b, v0, solver, K, tol, eta, alpha, beta,
                   nchunks, ctrl=None):
    """Solve H(W) v = b from v0 with at most K solver steps (K + 1 passes).

    Returns (v, residual ‖b − Hv‖, steps, status): status CONVERGED when
    ‖b − Hv‖ ≤ tol·‖b‖, MAX_STEPS when K steps ran first, DIVERGED when the
    residual became non-finite or grew past 1e6 times its first value,
    NO_CURVATURE when CG met a direction of non-positive curvature, or ``STOPPED`` when the
    host set ``ctrl[0]`` (``kernels.control``)."""
    X, indptr, indices, data, y = train
    c, d = W.shape
    v = v0.copy()
    vprev = v0.copy()
    Hx = np.empty((c, d))
    r = np.zeros((c, d))
    p = np.zeros((c, d))
    no_cross = np.empty(0)
    thresh = tol * _norm(b)
    r0 = 0.0
    rr = 0.0
    it = 0
    while True:
        if stop_requested(ctrl):
            return v, math.nan, it, STOPPED
        report_progress(ctrl, it)
        x = p if (solver == CG and it > 0) else v
        _pass(X, indptr, indices, data, y, a, model, W, x, False, True, Hx, Hx,
              no_cross, nchunks)
        reg_hvp_add(rdiag, x, Hx)
        if solver == CG and it > 0:
            pHp = _dot(p, Hx)
            if not pHp > 0.0:
                return v, math.sqrt(rr), it, NO_CURVATURE
            step = rr / pHp
            add_scaled(v, step, p)
            add_scaled(r, -step, Hx)
            rn = _norm(r)
        else:
            sub_into(r, b, Hx)
            rn = _norm(r)
            if it == 0:
                r0 = rn
                if solver == CG:
                    assign(p, r)
        if not math.isfinite(rn) or rn > _GROWTH * r0:
            return v, rn, it, DIVERGED
        if rn <= thresh:
            return v, rn, it, CONVERGED
        if it == K:
            return v, rn, it, MAX_STEPS
        if solver == CG:
            if it > 0:
                p *= rn * rn / rr
                p += r
            rr = rn * rn
        elif solver == NEUMANN:
            add_scaled(v, eta, r)
        else:
            momentum_step(v, vprev, r, alpha, beta)
        it += 1
