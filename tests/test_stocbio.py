"""stocBiO (thesis Alg. 4-5, Prop. 3) and FSLA (Alg. 1 of Li, Gu & Huang):
against a NumPy transcription on the same draws, against the exact implicit
hypergradient, unbiasedness and the bias/MSE behaviour of Prop. 3, and
reproducibility."""
import numpy as np
import pytest

import fastbilevel as fb
import naive
from conftest import make_problem, random_lam, same_output_on_1_and_2_threads
from fastbilevel.kernels.sampling import STREAM_F, STREAM_G, STREAM_HESS, STREAM_INNER
from fastbilevel.kernels.sampling import batch as draw
from fastbilevel.stochastic import hessian_batch_sizes


def dense_hessian(prob, w, lam):
    eye = np.eye(prob.dim_w)
    return np.stack([prob.hvp(w, lam, e.reshape(prob.w_shape)).ravel() for e in eye], 1)


@pytest.mark.parametrize("hyper", ["sample_weights", "feature_l2", "l2", "biased_l2"])
@pytest.mark.parametrize("fmt", ["dense64", "csr32"])
def test_stocbio_matches_numpy_transcription(hyper, fmt):
    prob, s = make_problem("logistic", hyper, fmt)
    lam = random_lam(prob)
    D, Q, S, eta, gamma, seed = 4, 5, 9, 0.3, 0.4, 11
    sizes = hessian_batch_sizes(2.0, Q, eta, prob.strong_convexity(lam), "decay", prob.n)
    r = fb.hypergradient(prob, lam, "stocbio", steps=D, step_size=gamma, Q=Q, eta=eta,
                         batch_size=S, hessian_batch=2.0, outer_batch=4, cross_batch=6,
                         seed=seed)
    w = np.zeros(prob.w_shape)
    for t in range(D):
        w = w - gamma * naive.batch_grad(s, w, lam, draw(seed, STREAM_INNER, t, prob.n, S))
    rr = naive.batch_outer_grad(s, w, draw(seed, STREAM_F, 0, prob.m, 4))
    acc = rr.copy()
    for i in range(Q, 0, -1):
        rr = rr - eta * naive.batch_hvp(s, w, lam, draw(seed, STREAM_HESS, i, prob.n,
                                                        sizes[i - 1]), rr)
        acc += rr
    vq = eta * acc
    if hyper == "sample_weights":
        g = -naive.batch_cross(s, w, lam, draw(seed, STREAM_G, 0, prob.n, 6), vq)
    else:
        g = -prob.cross(w, lam, vq)
    tol = 1e-5 if fmt.endswith("32") else 1e-6
    assert naive.rel_err(r.w, w) < tol
    assert naive.rel_err(r.grad, g) < tol
    sw = hyper == "sample_weights"
    assert r.stats["rows_sampled"] == D * S + sizes.sum() + 6 * sw
    assert r.stats["val_rows"] == 4


@pytest.mark.parametrize("hyper", ["sample_weights", "feature_l2", "biased_l2"])
@pytest.mark.parametrize("model", ["linear", "multinomial"])
def test_stocbio_with_full_batches_is_the_implicit_hypergradient(model, hyper):
    prob, _ = make_problem(model, hyper, "csr32")
    lam = random_lam(prob)
    ex = fb.hypergradient(prob, lam, "implicit", steps=4000, K=300, tol=1e-14)
    Q = 600
    r = fb.hypergradient(prob, lam, "stocbio", steps=0, w0=ex.w, Q=Q, batch_size=prob.n,
                         hessian_sizes=np.full(Q, prob.n), outer_batch=prob.m, seed=1)
    assert naive.rel_err(r.grad, ex.grad) < 1e-8


def _setup_prop3():
    """A strongly convex logistic problem, ŵ solved to machine precision, and
    the exact implicit hypergradient, H and ∇f there."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((400, 4))
    y = np.sign(X @ np.array([1.0, -1.0, 0.5, 0.0]) + 0.5 * rng.standard_normal(400))
    Xv = rng.standard_normal((300, 4))
    yv = np.sign(Xv @ np.array([1.0, -1.0, 0.5, 0.0]))
    prob = fb.BilevelProblem("logistic", "feature_l2", X, y, Xv, yv)
    lam = np.log(np.array([0.05, 0.1, 0.2, 0.4]))
    w = fb.solve(prob, lam, steps=3000).w
    H = dense_hessian(prob, w, lam)
    gf = prob.outer_grad(w)
    exact = -prob.cross(w, lam, np.linalg.solve(H, gf))
    return prob, lam, w, H, gf, exact


def test_stocbio_is_unbiased_for_the_truncated_neumann_series():
    prob, lam, w, H, gf, _ = _setup_prop3()
    Q, eta = 6, 0.5
    ref_v = eta * sum(np.linalg.matrix_power(np.eye(4) - eta * H, i) @ gf for i in range(Q + 1))
    ref = -prob.cross(w, lam, ref_v)
    draws = np.array([fb.hypergradient(prob, lam, "stocbio", steps=0, w0=w, Q=Q, eta=eta,
                                       batch_size=8, hessian_batch=1.0, outer_batch=5,
                                       seed=k).grad for k in range(2000)])
    se = draws.std(0, ddof=1) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(0) - ref) < 3.5 * se)
    assert np.all(se > 0)


def test_stocbio_bias_and_mse_fall_as_prop3_says():
    prob, lam, w, H, gf, exact = _setup_prop3()
    eta = 0.5
    mu = float(np.linalg.eigvalsh(H).min())
    Jn = np.max(np.exp(lam) * np.abs(w))     # J v = e^λ ⊙ w ⊙ v: ‖J‖ = max_j e^λ_j |w_j|
    mse, bias = {}, {}
    for Q in (1, 4, 16, 64):
        for B in (0.5, 8.0):
            g = np.array([fb.hypergradient(prob, lam, "stocbio", steps=0, w0=w, Q=Q, eta=eta,
                                           batch_size=64, hessian_batch=B, outer_batch=300,
                                           seed=k).grad for k in range(300)])
            mse[Q, B] = np.mean(np.sum((g - exact) ** 2, 1))
            se = np.sqrt(np.sum(g.var(0, ddof=1)) / len(g))
            bias[Q, B] = np.linalg.norm(g.mean(0) - exact)
            # Prop. 3 (5.3), through J: ‖E ĝ − ∇Φ‖ ≤ ‖J‖ μ⁻¹ (1 − ημ)^{Q+1} ‖∇f‖
            bound = Jn / mu * (1 - eta * mu) ** (Q + 1) * np.linalg.norm(gf)
            assert bias[Q, B] <= bound + 4 * se, (Q, B)
    for B in (0.5, 8.0):        # more Neumann terms: smaller error (bias dominates at Q = 1)
        assert mse[1, B] > mse[4, B] > mse[16, B]
    # D_F is the whole validation set here, so at Q = 64 (bias ≈ 0) the error
    # is the Hessian batches' variance, O(1/B) by (5.4)
    assert mse[64, 8.0] < 0.25 * mse[64, 0.5]


def test_decaying_batches_sample_fewer_rows_than_uniform():
    sizes_d = hessian_batch_sizes(4.0, 20, 0.5, 0.2, "decay")
    sizes_u = hessian_batch_sizes(4.0, 20, 0.5, 0.2, "uniform")
    assert sizes_d[-1] == 80 and np.all(np.diff(sizes_d) >= 0)   # |B_Q| = BQ is the largest
    assert sizes_d[0] == np.ceil(80 * 0.9 ** 19 - 1e-9)
    assert np.all(sizes_u == 80) and sizes_d.sum() < sizes_u.sum()


def test_stocbio_bad_arguments():
    prob, _ = make_problem("logistic", "l2", "dense64")
    with pytest.raises(ValueError, match="does not apply to hyper='init'"):
        p2, _ = make_problem("logistic", "init", "dense64")
        fb.hypergradient(p2, np.zeros(5), "stocbio")
    with pytest.raises(ValueError, match="hessian_sizes must be Q=3"):
        fb.hypergradient(prob, -1.0, "stocbio", Q=3, hessian_sizes=[1, 2])
    with pytest.raises(ValueError, match="outer_batch=7 exceeds the 6 rows"):
        fb.hypergradient(prob, -1.0, "stocbio", outer_batch=7)
    with pytest.raises(ValueError, match="K=3 does not apply to method='stocbio'"):
        fb.hypergradient(prob, -1.0, "stocbio", K=3)
    with pytest.raises(ValueError, match="diverge"):
        fb.hypergradient(prob, -1.0, "stocbio", steps=60, step_size=500.0, batch_size=4)
    with pytest.raises(TypeError, match="Q=3 does not apply to method='reverse'"):
        fb.hypergradient(prob, -1.0, "reverse", Q=3)


def test_fsla_matches_numpy_transcription():
    prob, s = make_problem("logistic", "sample_weights", "dense64", n=30)
    lam0 = random_lam(prob)
    delta, ct, cb, ce, S, bv, bc, seed, iters = 0.7, 0.5, 0.4, 0.9, 7, 3, 5, 2, 4
    r = fb.minimize(prob, lam0, "fsla", iters=iters, lr=delta, c_tau=ct, c_beta=cb, c_eta=ce,
                    batch_size=S, outer_batch=bv, cross_batch=bc, seed=seed, eval_every=1)
    n, m = prob.n, prob.m
    lam, w, v = lam0.copy(), np.zeros(prob.d), np.zeros(prob.d)
    v = delta * cb * naive.batch_outer_grad(s, w, draw(seed, STREAM_F, 0, m, bv))
    est = lambda l, ww, vv, st: -naive.batch_cross(s, ww, l, draw(seed, STREAM_G, st, n, bc), vv)
    dm = est(lam, w, v, 0)
    for k in range(iters):
        a = delta / np.sqrt(k + 1)
        lam_new = lam - a * dm
        tau, beta, eta = ct * a, cb * a, min(1.0, ce * a)
        st = k + 1
        w_new = w - tau * naive.batch_grad(s, w, lam_new, draw(seed, STREAM_INNER, st, n, S))
        v_new = beta * naive.batch_outer_grad(s, w, draw(seed, STREAM_F, st, m, bv)) + v \
            - beta * naive.batch_hvp(s, w, lam_new, draw(seed, STREAM_HESS, st, n, S), v)
        dm = est(lam_new, w_new, v_new, st) + (1 - eta) * (dm - est(lam, w, v, st))
        lam, w, v = lam_new, w_new, v_new
        assert naive.rel_err(r.history.outer_value[k], prob.outer_value(w)) < 1e-9
    assert naive.rel_err(r.lam, lam) < 1e-7
    assert naive.rel_err(r.w, w) < 1e-7
    assert naive.rel_err(r.v, v) < 1e-6


def test_fsla_with_full_batches_approaches_the_ridge_optimum():
    ds = fb.datasets.ridge(n=80, m=60, d=5, seed=2)
    prob = fb.BilevelProblem("linear", "l2", ds.X, ds.y, ds.X_val, ds.y_val)
    n, m = prob.n, prob.m
    # Φ(λ) exactly, and its minimizer on a fine grid
    def phi(l):
        w = np.linalg.solve(ds.X.T @ ds.X / n + np.exp(l) * np.eye(5), ds.X.T @ ds.y / n)
        return 0.5 * np.mean((ds.X_val @ w - ds.y_val) ** 2)
    grid = np.linspace(-6, 3, 9001)
    best = grid[np.argmin([phi(l) for l in grid])]
    assert -5.5 < best < 2.5
    r = fb.minimize(prob, np.array(0.0), "fsla", iters=4000, lr=1.0, c_tau=0.5, c_beta=0.5,
                    c_eta=0.5, batch_size=n, outer_batch=m, eval_every=1000)
    lam = float(r.lam)
    slope = lambda l: (phi(l + 1e-5) - phi(l - 1e-5)) / 2e-5
    # Φ is flat around its minimum: FSLA's O(1/√k) steps reach a point whose
    # true hypergradient is < 2% of the start's and Φ within 1% of the optimum
    assert abs(slope(lam)) < 0.02 * abs(slope(0.0))
    assert phi(lam) - phi(best) < 0.01 * (phi(0.0) - phi(best))
    assert abs(r.history.outer_value[-1] - phi(lam)) < 1e-3


@pytest.mark.parametrize("hyper,fmt", [("sample_weights", "dense64"), ("feature_l2", "csr32")])
def test_stochastic_drivers_lower_the_validation_loss(hyper, fmt):
    prob, _ = make_problem("logistic", hyper, fmt, n=200, m=100, d=8)
    lam0 = np.zeros(prob.lam_shape)
    start = prob.outer_value(fb.solve(prob, lam0, steps=500).w)
    r = fb.minimize(prob, lam0, "stocbio", outer="adam", iters=60, lr=0.1, steps=30,
                    batch_size=32, Q=10, seed=3)
    assert prob.outer_value(fb.solve(prob, r.lam, steps=500).w) < start
    f = fb.minimize(prob, lam0, "fsla", iters=3000, lr=0.5, batch_size=32, eval_every=500,
                    seed=3)
    assert prob.outer_value(fb.solve(prob, f.lam, steps=500).w) < start


def test_same_seed_same_lambda_trajectory():
    prob, _ = make_problem("logistic", "sample_weights", "csr32")
    lam0 = np.zeros(prob.n)
    runs = []
    for _ in range(2):
        lams = []
        fb.minimize(prob, lam0, "stocbio", outer="sgd", iters=5, lr=1.0, steps=5,
                    batch_size=8, seed=7, callback=lambda k, l, r: lams.append(l) and False)
        runs.append(np.array(lams))
    assert np.array_equal(runs[0], runs[1])
    lams2 = []
    fb.minimize(prob, lam0, "stocbio", outer="sgd", iters=5, lr=1.0, steps=5, batch_size=8,
                seed=8, callback=lambda k, l, r: lams2.append(l) and False)
    assert not np.array_equal(runs[0], np.array(lams2))
    f1 = fb.minimize(prob, lam0, "fsla", iters=50, batch_size=8, seed=7, eval_every=10)
    f2 = fb.minimize(prob, lam0, "fsla", iters=50, batch_size=8, seed=7, eval_every=25)
    assert np.array_equal(f1.lam, f2.lam)       # chunking of the run changes nothing


_SCRIPT = r"""
import numpy as np, fastbilevel as fb
ds = fb.datasets.text(n=600, m=200, d=3000, row_nnz=30, seed=1)
prob = ds.problem("feature_l2", dtype=np.float32)
r = fb.hypergradient(prob, np.full(prob.d, -2.0), "stocbio", steps=20, Q=8, batch_size=300,
                     seed=5)
f = fb.minimize(prob, np.full(prob.d, -2.0), "fsla", iters=20, batch_size=300, seed=5,
                eval_every=20)
ds = fb.datasets.hypercleaning(n=600, m=200, d=64, c=4, seed=1)
p2 = ds.problem("sample_weights")
g = fb.minimize(p2, np.zeros(600), "fsla", iters=20, batch_size=300, seed=5, eval_every=20)
print(r.grad.sum().hex(), r.w.sum().hex(), f.lam.sum().hex(), g.lam.sum().hex(), g.w.sum().hex())
"""


def test_stochastic_methods_are_bit_identical_across_thread_counts():
    same_output_on_1_and_2_threads(_SCRIPT)


@pytest.mark.parametrize("model,hyper,fmt", [("multinomial", "sample_weights", "dense64"),
                                             ("logistic", "feature_l2", "dense64"),
                                             ("linear", "biased_l2", "csr32")])
def test_numpy_references_agree_with_the_kernels(model, hyper, fmt):
    """The NumPy/SciPy baselines of the benchmarks compute the same numbers."""
    from fastbilevel.reference import numpy_fsla, numpy_stocbio
    prob, _ = make_problem(model, hyper, fmt)
    lam = random_lam(prob)
    r = fb.hypergradient(prob, lam, "stocbio", steps=5, step_size=0.3, Q=4, eta=0.4,
                         batch_size=9, hessian_sizes=[3, 5, 7, 9], outer_batch=4,
                         cross_batch=8, seed=3)
    g, w = numpy_stocbio(prob, lam, 5, 0.3, 4, 0.4, 9, [3, 5, 7, 9], 4, 8, seed=3)
    tol = 1e-5 if fmt.endswith("32") else 1e-10
    assert naive.rel_err(r.grad, g) < tol and naive.rel_err(r.w, w) < tol
    f = fb.minimize(prob, lam, "fsla", iters=6, lr=0.3, c_tau=0.5, c_beta=0.6, c_eta=0.7,
                    batch_size=9, outer_batch=4, cross_batch=8, seed=3, eval_every=6)
    lam_np, w_np, v_np = numpy_fsla(prob, lam, 6, 0.3, 0.5, 0.6, 0.7, 9, 4, 8, seed=3)
    assert naive.rel_err(f.lam, lam_np) < tol
    assert naive.rel_err(f.w, w_np) < tol and naive.rel_err(f.v, v_np) < tol
