"""method='reverse' against finite differences of the naive λ ↦ f(w_T(λ)),
against closed forms (ridge, Shaban's toy), across chunk/thread counts and
float32 vs float64."""
import numpy as np
import pytest
import scipy.sparse as sp

import fastbilevel as fb
import naive
from conftest import make_problem, random_lam, tol


@pytest.mark.combo_formats("dense32")       # float32 tiles through the whole unroll
def test_reverse_matches_fd(combo):
    prob, s = make_problem(*combo)
    lam = random_lam(prob)
    T = 15
    gamma = 0.5 / prob.lipschitz(lam)
    r = fb.hypergradient(prob, lam, steps=T, step_size=gamma)
    fd = naive.central_diff(lambda l: naive.phi(s, l, T, gamma), lam, eps=1e-5)
    assert r.grad.shape == np.shape(lam)
    assert naive.rel_err(r.grad, fd) < tol(prob, 1e-6)
    assert naive.rel_err(r.w, naive.gd(s, lam, T, gamma)) < tol(prob, 1e-12)
    assert naive.rel_err(r.value, naive.phi(s, lam, T, gamma)) < tol(prob, 1e-12)
    assert r.stats["passes"] == 2 * T
    assert r.stats["trajectory_bytes"] == T * prob.dim_w * 8


def test_reverse_with_w0_and_default_step():
    prob, s = make_problem("logistic", "feature_l2", "csr64")
    lam = random_lam(prob)
    w0 = np.linspace(-1, 1, prob.d)
    r = fb.hypergradient(prob, lam, steps=12, w0=w0)
    gamma = r.stats["step_size"]
    assert gamma == pytest.approx(1.0 / prob.lipschitz(lam))
    fd = naive.central_diff(lambda l: naive.outer_value(s, naive.gd(s, l, 12, gamma, w0)), lam)
    assert naive.rel_err(r.grad, fd) < 1e-6


def _ridge_closed_form(X, y, Xv, yv, lam):
    """w*(λ) = (XᵀX/n + diag e^λ)⁻¹ Xᵀy/n and d/dλ f(w*(λ)) by implicit
    differentiation: −e^λ ⊙ w* ⊙ (H⁻¹∇f)."""
    n, m = X.shape[0], Xv.shape[0]
    H = X.T @ X / n + np.diag(np.exp(lam))
    w = np.linalg.solve(H, X.T @ y / n)
    gf = Xv.T @ (Xv @ w - yv) / m
    return w, -np.exp(lam) * w * np.linalg.solve(H, gf)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_reverse_converges_to_ridge_closed_form(fmt):
    ds = fb.datasets.ridge(n=60, m=40, d=6, seed=3)
    X, Xv = ds.X, ds.X_val
    if fmt == "csr":
        X, Xv = sp.csr_matrix(X), sp.csr_matrix(Xv)
    prob = fb.BilevelProblem("linear", "feature_l2", X, ds.y, Xv, ds.y_val)
    lam = np.log(np.linspace(0.05, 0.5, 6))
    w_star, g_star = _ridge_closed_form(ds.X, ds.y, ds.X_val, ds.y_val, lam)
    r = fb.hypergradient(prob, lam, steps=3000)
    assert naive.rel_err(r.w, w_star) < 1e-10
    assert naive.rel_err(r.grad, g_star) < 1e-8


def test_shaban_toy_closed_form():
    """w_T = Aᵀw₀ + ½γ Σ_{t<T} A^t λ with A = I − γG, G = diag(1, ½), so
    d_λ f = ½ G⁻¹(I − A^T) · ½ w_T for f = ¼‖w‖²."""
    ds = fb.datasets.shaban_toy()
    prob = ds.problem()
    info = ds.info
    lam, gamma, T = info["lam"], info["step_size"], info["steps"]
    r = fb.hypergradient(prob, lam, steps=T, step_size=gamma, w0=info["w0"])
    Gd = np.array([1.0, 0.5])
    A = 1 - gamma * Gd
    wT = A ** T * info["w0"] + 0.5 * (1 - A ** T) / Gd * lam
    dw = 0.5 * (1 - A ** T) / Gd
    assert naive.rel_err(r.w, wT) < 1e-13
    assert naive.rel_err(r.grad, dw * 0.5 * wT) < 1e-12


@pytest.mark.parametrize("fmt", ["dense64", "csr64"])
def test_chunk_counts_agree_and_threads_do_not_matter(fmt, monkeypatch):
    import numba
    prob, _ = make_problem("multinomial", "sample_weights", fmt, n=300, m=50, d=20, c=4)
    lam = random_lam(prob)
    res = {}
    for nch in (1, 2, 3, 7):
        monkeypatch.setattr(fb.config, "NCHUNKS", nch)
        res[nch] = fb.hypergradient(prob, lam, steps=10).grad
    for nch in (2, 3, 7):
        assert naive.rel_err(res[nch], res[1]) < 1e-12
    # a fixed chunk count gives the same bits on one thread and on several,
    # and in every repetition (with 3 or 7 chunks a thread runs several, and
    # which thread runs which chunk varies)
    old = numba.get_num_threads()
    for nch in (3, 7):
        monkeypatch.setattr(fb.config, "NCHUNKS", nch)
        numba.set_num_threads(1)
        try:
            one = fb.hypergradient(prob, lam, steps=10).grad
        finally:
            numba.set_num_threads(old)
        assert np.array_equal(one, res[nch])
        for _ in range(10):
            assert np.array_equal(fb.hypergradient(prob, lam, steps=10).grad, res[nch])


FLOAT32_RTOL = 1e-6  # measured up to 8e-8: rounded data, dense tiles multiplying in float32


@pytest.mark.parametrize("model,hyper", [("multinomial", "sample_weights"),
                                         ("logistic", "feature_l2"),
                                         ("linear", "l2")])
@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_float32_close_to_float64(model, hyper, fmt):
    """float32 storage of X (iterates stay float64): the hypergradient is
    within FLOAT32_RTOL of the float64 one on the same (unrounded) data.
    Against float64 arithmetic on the rounded data, dense float32 rows
    differ by float32 rounding (their tiles multiply in float32), CSR rows
    (multiplied in float64) by far less."""
    rng = np.random.default_rng(5)
    n, m, d = 200, 80, 30
    X = rng.standard_normal((n, d)) * (rng.random((n, d)) < 0.3)
    Xv = rng.standard_normal((m, d)) * (rng.random((m, d)) < 0.3)
    if model == "multinomial":
        y, yv = rng.integers(0, 4, n), rng.integers(0, 4, m)
    elif model == "logistic":
        y, yv = rng.choice([-1, 1], n), rng.choice([-1, 1], m)
    else:
        y, yv = rng.standard_normal(n), rng.standard_normal(m)
    if fmt == "csr":
        X, Xv = sp.csr_matrix(X), sp.csr_matrix(Xv)
    p64 = fb.BilevelProblem(model, hyper, X, y, Xv, yv)
    p32 = fb.BilevelProblem(model, hyper, X, y, Xv, yv, dtype=np.float32)
    assert p32.dtype == np.float32
    lam = random_lam(p64)
    g64 = fb.hypergradient(p64, lam, steps=50, step_size=0.5).grad
    g32 = fb.hypergradient(p32, lam, steps=50, step_size=0.5).grad
    assert naive.rel_err(g32, g64) < FLOAT32_RTOL
    r32 = (lambda A: A.astype(np.float32).astype(np.float64))
    p_round = fb.BilevelProblem(model, hyper, r32(X), y, r32(Xv), yv)
    err = naive.rel_err(g32, fb.hypergradient(p_round, lam, steps=50, step_size=0.5).grad)
    if fmt == "dense":
        assert 1e-12 < err < FLOAT32_RTOL
    else:
        assert err < 1e-12


def test_diverging_step_size_is_reported():
    prob, _ = make_problem("linear", "l2", "dense64")
    lam = np.array(0.0)
    L = prob.lipschitz(lam)
    with pytest.raises(ValueError, match="step_size=.*diverge"):
        fb.hypergradient(prob, lam, steps=500, step_size=10.0 / L)


def test_init_start_is_lambda_and_w0_refused():
    prob, s = make_problem("logistic", "init", "dense64")
    lam = random_lam(prob)
    r0 = fb.hypergradient(prob, lam, steps=0)
    assert np.array_equal(r0.w, lam)
    assert naive.rel_err(r0.grad, prob.outer_grad(lam)) < 1e-14
    with pytest.raises(ValueError, match="w0"):
        fb.hypergradient(prob, lam, steps=3, w0=np.zeros(prob.d))


def test_huge_margins_hypergradient_finite():
    """Margins of 1e4 saturate every sigmoid: the result is finite and still
    the derivative of Φ (finite differences of the NumPy loop from the same w0)."""
    prob, s = make_problem("logistic", "sample_weights", "dense64")
    w0 = 1e4 * np.ones(prob.d)
    lam = np.zeros(prob.n)
    r = fb.hypergradient(prob, lam, steps=5, step_size=0.1, w0=w0)
    assert np.all(np.isfinite(r.grad)) and np.isfinite(r.value)
    # Φ ≈ 4e3 with a gradient ≈ 1e-3: a wider difference step keeps the
    # rounding of Φ out of the quotient
    fd = naive.central_diff(lambda l: naive.outer_value(s, naive.gd(s, l, 5, 0.1, w0=w0)), lam,
                            eps=1e-3)
    assert naive.rel_err(r.value, naive.outer_value(s, naive.gd(s, lam, 5, 0.1, w0=w0))) < 1e-12
    assert naive.rel_err(r.grad, fd) < 1e-5
