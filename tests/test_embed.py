"""The README's example: fastbilevel kernels called from user @njit code."""
import numpy as np
from numba import njit

import fastbilevel as fb
from fastbilevel import kernels as K


# --- README example (keep in sync) -----------------------------------------
@njit
def l2_sweep(X, indptr, indices, data, y, Xv, ipv, ixv, dv, yv, d, lams,
             gamma, T, nchunks):
    """d/dλ f(w_T(λ)) for a logistic model with r = ½e^λ‖w‖², for many λ."""
    out = np.empty(lams.shape[0])
    traj = np.empty((T, 1, d))           # w_0..w_{T-1}, reused across λ
    gvals = np.empty(T)
    no_w = np.empty(0)                    # no sample weights
    for k in range(lams.shape[0]):
        rdiag = np.full(d, np.exp(lams[k]))
        W, diverged = K.gd_loop(X, indptr, indices, data, y, no_w, K.LOGISTIC,
                                rdiag, np.empty((0, 0)), np.zeros((1, d)),
                                gamma, T, traj, gvals, nchunks)
        alpha = np.empty_like(W)
        K.oracle_pass(Xv, ipv, ixv, dv, yv, no_w, K.LOGISTIC, W, W, True,  # α = ∇_w f
                      False, alpha, alpha, no_w, nchunks)
        h = np.zeros(1)
        K.reverse_sweep(X, indptr, indices, data, y, no_w, no_w, K.LOGISTIC,
                        K.L2, rdiag, gamma, traj, alpha, h, nchunks)
        out[k] = h[0]
    return out
# ---------------------------------------------------------------------------


def test_njit_embedding_matches_api():
    rng = np.random.default_rng(0)
    X, Xv = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    y, yv = np.sign(X[:, 0] + 0.1), np.sign(Xv[:, 0] + 0.1)
    prob = fb.BilevelProblem("logistic", "l2", X, y, Xv, yv)
    lams = np.linspace(-3, 1, 5)
    got = l2_sweep(*prob.train, prob.y, *prob.val, prob.y_val, prob.d, lams, 0.5, 30, 2)
    want = [fb.hypergradient(prob, lam, steps=30, step_size=0.5).grad for lam in lams]
    np.testing.assert_allclose(got, want, rtol=1e-12)
