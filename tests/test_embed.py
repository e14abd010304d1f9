"""The README's example: fastbilevel kernels called from user @njit code."""
import numpy as np
from numba import njit

import fastbilevel as fb
from fastbilevel import kernels as K


# --- README example (keep in sync) -----------------------------------------
@njit
def l2_sweep(train, val, d, lams, gamma, T, nchunks):
    """d/dλ f(w_T(λ)) for a logistic model with r = ½e^λ‖w‖², for many λ,
    by reverse mode through T gradient-descent steps."""
    # the reverse-mode action list: store the T points, seed α = ∇f(w_T),
    # T reverse steps, add B₀ᵀα (nothing for this map)
    actions = np.array([[K.ADV_STORE, T], [K.INIT_ADJ, 0], [K.REV_BUF, T],
                        [K.FINISH, 0]])
    out = np.empty(lams.shape[0])
    gvals = np.empty(T)
    none = np.empty(0)                    # no sample weights
    for k in range(lams.shape[0]):
        rdiag = np.full(d, np.exp(lams[k]))
        h = np.zeros(1)
        W, f, status, counts, grad_f = K.run_schedule(
            train, none, none, K.LOGISTIC, K.L2, rdiag, np.empty((0, 0)), val,
            K.GD, gamma, 0.0, np.zeros((1, d)), T, actions, 0, T, gvals, h,
            nchunks, None)
        out[k] = h[0]
    return out
# ---------------------------------------------------------------------------


def test_njit_embedding_matches_api():
    rng = np.random.default_rng(0)
    X, Xv = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    y, yv = np.sign(X[:, 0] + 0.1), np.sign(Xv[:, 0] + 0.1)
    prob = fb.BilevelProblem("logistic", "l2", X, y, Xv, yv)
    lams = np.linspace(-3, 1, 5)
    got = l2_sweep(prob.train, prob.val, prob.d, lams, 0.5, 30, 2)
    want = [fb.hypergradient(prob, lam, steps=30, step_size=0.5).grad for lam in lams]
    np.testing.assert_allclose(got, want, rtol=1e-12)
