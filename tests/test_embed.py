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


USER_MODULE = '''
import numpy as np
from numba import njit
from fastbilevel import kernels as K


@njit(cache=True)
def user_grad_norm(train, W):
    """A cached user function calling the one-thread pass."""
    G = np.empty_like(W)
    val = K.oracle_pass_serial(train, np.empty(0), K.LOGISTIC, W, W, True, False, G, G,
                               np.empty(0), 3)
    return val, G
'''

USER_SCRIPT = '''
import json, sys, numpy as np, fastbilevel as fb
sys.path.insert(0, {folder!r})
from user_mod import user_grad_norm
ds = fb.datasets.text(n=60, m=20, d=300, row_nnz=8, seed=0)
p = ds.problem()
W = np.full((1, p.d), 0.01)
val, G = user_grad_norm(p.train, W)
print(json.dumps([val, G.tolist(), len(user_grad_norm.stats.cache_hits)]))
'''


def test_a_cached_user_function_can_call_the_serial_pass(tmp_path):
    """oracle_pass_serial has no parallel loop, so a user's cache=True caller
    works when loaded from its cache in a new process, with the result of the
    parallel pass for the same chunk count."""
    import json
    import os
    import subprocess
    import sys
    (tmp_path / "user_mod.py").write_text(USER_MODULE)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", USER_SCRIPT.format(folder=str(tmp_path))],
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0][2] == 0 and runs[1][2] == 1          # compiled, then loaded from the cache
    assert runs[0][:2] == runs[1][:2]
    p = fb.datasets.text(n=60, m=20, d=300, row_nnz=8, seed=0).problem()
    W = np.full((1, p.d), 0.01)
    G = np.empty_like(W)
    val = K.oracle_pass(p.train, np.empty(0), K.LOGISTIC, W, W, True, False, G, G,
                        np.empty(0), 3)
    assert runs[0][0] == val and np.array_equal(np.array(runs[0][1]), G)
