"""method='implicit': against the ridge closed form, against reverse at large
T, CG against Neumann, warm starts and divergence."""
import numpy as np
import pytest
import scipy.sparse as sp

import fastbilevel as fb
import naive
from conftest import make_problem, same_output_on_1_and_2_threads

LINEAR_SOLVERS = ["cg", "neumann", "heavy_ball"]


def _ridge(d=6, seed=3, n=60, m=40, scale=None):
    ds = fb.datasets.ridge(n=n, m=m, d=d, seed=seed)
    lam = np.log(np.linspace(0.05, 0.5, d)) if scale is None else np.full(d, np.log(scale))
    H = ds.X.T @ ds.X / n + np.diag(np.exp(lam))
    w = np.linalg.solve(H, ds.X.T @ ds.y / n)
    gf = ds.X_val.T @ (ds.X_val @ w - ds.y_val) / m
    return ds, lam, -np.exp(lam) * w * np.linalg.solve(H, gf), H


@pytest.mark.parametrize("linear_solver", LINEAR_SOLVERS)
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_converges_to_ridge_closed_form_as_K_grows(linear_solver, fmt):
    ds, lam, g_star, _ = _ridge()
    X, Xv = (ds.X, ds.X_val) if fmt == "dense" else (sp.csr_matrix(ds.X), sp.csr_matrix(ds.X_val))
    prob = fb.BilevelProblem("linear", "feature_l2", X, ds.y, Xv, ds.y_val)
    errs = [naive.rel_err(fb.hypergradient(prob, lam, "implicit", steps=3000, K=K, tol=0.0,
                                           linear_solver=linear_solver).grad, g_star)
            for K in (1, 4, 16, 2000)]
    assert errs[-1] < 1e-8
    assert errs[0] > errs[1] > errs[2] >= errs[3]  # CG is exact after d = 6 steps


def test_cg_needs_fewer_steps_than_neumann():
    """The FSLA Sec. 3 claim on an ill-conditioned ridge problem."""
    ds, lam, g_star, H = _ridge(d=30, seed=1, n=200, m=50, scale=1e-3)
    assert np.linalg.cond(H) > 100
    prob = ds.problem()
    steps = {}
    for ls in ("cg", "neumann"):
        r = fb.hypergradient(prob, lam, "implicit", steps=20000, K=20000, tol=1e-9, linear_solver=ls)
        assert r.stats["converged"]
        assert naive.rel_err(r.grad, g_star) < 1e-6
        steps[ls] = r.stats["linear_steps"]
    assert steps["cg"] * 10 < steps["neumann"]


@pytest.mark.parametrize("model,hyper", [("logistic", "feature_l2"), ("logistic", "l2"),
                                         ("multinomial", "sample_weights"),
                                         ("multinomial", "biased_l2"), ("linear", "sample_weights")])
@pytest.mark.parametrize("fmt", ["dense64", "csr32"])
def test_agrees_with_reverse_at_large_T(model, hyper, fmt):
    prob, _ = make_problem(model, hyper, fmt, reg=0.5)
    rng = np.random.default_rng(4)
    lam = {"feature_l2": np.full(prob.d, np.log(0.5)), "l2": np.log(0.5)}.get(
        hyper, rng.standard_normal(prob.lam_shape))
    T = 1500
    rev = fb.hypergradient(prob, lam, "reverse", steps=T)
    imp = fb.hypergradient(prob, lam, "implicit", steps=T, K=500, tol=1e-14)
    assert naive.rel_err(imp.grad, rev.grad) < 1e-6


def test_init_map_has_zero_implicit_hypergradient():
    """w* does not depend on w_0 = λ: implicit gives 0, reverse tends to it."""
    prob, _ = make_problem("logistic", "init", "dense64", reg=0.5)
    lam = np.ones(prob.d)
    imp = fb.hypergradient(prob, lam, "implicit", steps=800)
    assert np.all(imp.grad == 0)
    rev = fb.hypergradient(prob, lam, "reverse", steps=800)
    assert np.linalg.norm(rev.grad) < 1e-10


def test_warm_start_and_stats():
    ds, lam, g_star, _ = _ridge()
    prob = ds.problem()
    r = fb.hypergradient(prob, lam, "implicit", steps=3000, tol=1e-12)
    assert r.stats["converged"] and r.stats["v"].shape == prob.w_shape
    assert r.stats["hvp_passes"] == r.stats["linear_steps"] + 1
    warm = fb.hypergradient(prob, lam, "implicit", steps=3000, tol=1e-9, v0=r.stats["v"])
    assert warm.stats["linear_steps"] == 0 and warm.stats["converged"]
    assert naive.rel_err(warm.grad, g_star) < 1e-8
    cut = fb.hypergradient(prob, lam, "implicit", steps=3000, K=2, tol=1e-14, linear_solver="neumann")
    assert not cut.stats["converged"] and cut.stats["linear_steps"] == 2 and cut.stats["residual"] > 0


def test_diverging_neumann_is_reported():
    ds, lam, _, _ = _ridge()
    prob = ds.problem()
    L = prob.lipschitz(lam)
    with pytest.raises(ValueError, match=r"eta=.* makes linear_solver='neumann' diverge"):
        fb.hypergradient(prob, lam, "implicit", steps=100, K=5000, linear_solver="neumann",
                         eta=5.0 / L)
    # the solve itself detects the growth of its residual
    with pytest.raises(ValueError, match=r"linear_solver='neumann' diverged.*eta=.* must be < 2/L"):
        fb.hypergradient(prob, lam, "implicit", steps=100, K=5000, linear_solver="neumann",
                         eta=5.0 / L, check_step=False)


@pytest.mark.parametrize("kw,msg", [
    (dict(linear_solver="gmres"), "linear_solver='gmres'"),
    (dict(eta=0.1), "eta applies to linear_solver='neumann'"),
    (dict(snapshots=3), "snapshots=3 does not apply to method='implicit'"),
    (dict(tol=-1.0), "tol=-1.0 must be >= 0"),
    (dict(K=-2), "K=-2 must be >= 0"),
])
def test_argument_errors(kw, msg):
    prob, _ = make_problem("linear", "l2", "dense64")
    with pytest.raises(ValueError, match=msg):
        fb.hypergradient(prob, 0.0, "implicit", steps=10, step_size=0.1, **kw)


def test_cg_exits_on_a_direction_without_curvature():
    """Feature 1 is zero in the training data and feature 0 in the validation
    data: H = diag(h, 0) and ∇_w f = (0, b), so CG's first direction has
    pᵀHp = 0 exactly."""
    rng = np.random.default_rng(0)
    X = np.c_[rng.standard_normal(30), np.zeros(30)]
    Xv = np.c_[np.zeros(10), rng.standard_normal(10)]
    prob = fb.BilevelProblem("linear", "l2", X, rng.standard_normal(30), Xv,
                             rng.standard_normal(10))
    lam = np.array(-800.0)          # e^λ = 0: no ridge
    with pytest.raises(ValueError, match="zero curvature at step 1"):
        fb.hypergradient(prob, lam, "implicit", steps=5)
    r = fb.hypergradient(prob, np.array(0.0), "implicit", steps=5)    # with a ridge: fine
    assert r.stats["converged"]


def test_fsla_divergence_is_reported():
    """An inner step τ = c_τ·δ far beyond 2/L on least squares blows the state up."""
    prob = fb.datasets.ridge(n=200, m=50, d=10, seed=0).problem("l2")
    with pytest.raises(ValueError, match="FSLA diverged at iteration 68: lower delta"):
        fb.minimize(prob, np.array(0.0), "fsla", iters=100, c_tau=1e4, batch_size=32,
                    eval_every=100)
    r = fb.minimize(prob, np.array(0.0), "fsla", iters=100, c_tau=1e2, batch_size=32,
                    eval_every=100)
    assert np.isfinite(r.lam) and np.all(np.isfinite(r.w))


_DET_SCRIPT = r"""
import numpy as np, fastbilevel as fb
fb.config.NCHUNKS = 2
rng = np.random.default_rng(0)
X = rng.standard_normal((400, 300)); y = np.sign(X[:, 0] + 0.3 * rng.standard_normal(400))
p = fb.BilevelProblem("logistic", "feature_l2", X, y, X[:50], y[:50])
outs = {fb.hypergradient(p, np.full(300, -1.0), "implicit", steps=20, K=30, tol=0).grad.tobytes()
        for _ in range(8)}
mt = fb.datasets.few_shot(n_tasks=40, shots=5, test_shots=5, d=6, seed=0).problem(reg=0.1)
vals = {fb.hypergradient(mt, np.zeros(6), "reverse", steps=5, meta_batch=37).value
        for _ in range(8)}
assert len(outs) == 1 and len(vals) == 1, (len(outs), len(vals))
print(outs.pop().hex()[:64], vals.pop().hex())
"""


def test_implicit_and_meta_are_bit_identical_across_runs_and_thread_counts():
    """CG's pᵀHp and the meta-batch mean were sums written inside parallel
    kernels, which Numba turned into reductions ordered by the threads: the
    result changed with the thread count, and from run to run under TBB."""
    same_output_on_1_and_2_threads(_DET_SCRIPT)
