"""Compiled inner solvers: the whole loop runs in one call, no Python per step."""
import math

import numpy as np
from numba import njit

from .. import config
from .oracles import _pass, reg_grad_add, reg_value

_GROWTH = config.DIVERGENCE_GROWTH


@njit(cache=True, parallel=True)
def gd_loop(X, indptr, indices, data, y, a, model, rdiag, prior, W0, gamma,
            T, traj, gvals, nchunks):
    """T steps of w_{t+1} = w_t − γ ∇_w g(w_t, λ) from W0, one pass per step.

    If ``traj`` has T rows, w_t is stored in traj[t] (t = 0..T−1) for the
    reverse sweep. gvals[t] receives g(w_t, λ). Returns (w_T, diverged_at),
    diverged_at = −1 unless g became non-finite or grew past
    DIVERGENCE_GROWTH·(|g(w_0)|+1) above g(w_0), in which case the loop stops
    at that step.
    """
    W = W0.copy()
    G = np.empty_like(W)
    no_cross = np.empty(0)
    store = traj.shape[0] > 0
    g0 = 0.0
    for t in range(T):
        if store:
            traj[t] = W
        v = _pass(X, indptr, indices, data, y, a, model, W, W, True, False, G,
                  G, no_cross, nchunks)
        v += reg_value(rdiag, prior, W)
        gvals[t] = v
        if t == 0:
            g0 = v
        if not math.isfinite(v) or v - g0 > _GROWTH * (abs(g0) + 1.0):
            return W, t
        reg_grad_add(rdiag, prior, W, G)
        W -= gamma * G
    return W, -1
