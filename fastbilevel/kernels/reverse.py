"""Exact reverse-mode hypergradient through the GD inner loop (Shaban eq. 6;
UFO-BLO Alg. 4), one fused pass over X per reverse step (H v and J v share it).
"""
import numpy as np
from numba import njit

from ._rowmath import INIT, SAMPLE_WEIGHTS
from .oracles import _pass, cross_add, reg_hvp_add


@njit(cache=True, parallel=True)
def reverse_sweep(X, indptr, indices, data, y, a, da, model, hyper, rdiag,
                  gamma, traj, alpha, h, nchunks):
    """Reverse sweep from the adjoint α = ∇_w f(w_T) over the stored iterates:

        for t = T−1 … 0:  h ← h − γ J(w_t) α;  α ← α − γ H(w_t) α
        h ← h + α  (only for ``init``, where B₀ = I)

    ``alpha`` is updated in place (it ends as the adjoint of w_0); h is
    accumulated into (zero it first for the plain hypergradient).
    """
    T = traj.shape[0]
    HV = np.empty_like(alpha)
    cross = np.empty(y.shape[0] if hyper == SAMPLE_WEIGHTS else 0)
    for t in range(T - 1, -1, -1):
        Wt = traj[t]
        _pass(X, indptr, indices, data, y, a, model, Wt, alpha, False, True, HV,
              HV, cross, nchunks)
        cross_add(hyper, rdiag, da, Wt, alpha, cross, -gamma, h)
        reg_hvp_add(rdiag, alpha, HV)
        alpha -= gamma * HV
    if hyper == INIT:
        h += alpha.ravel()
