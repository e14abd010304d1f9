"""The stochastic solver family (SOBA, SABA, AmIGO, MRBO, VRBO, TTSA, BSA,
F2SA, BOME): each against a NumPy transcription of its paper's updates on
the same draws (per-sample gradients, finite-difference Hessian and cross
products: no code shared with the kernels but the sampler), convergence to
the closed-form stationary point of a ridge problem, SABA's variance
reduction, progress on hyper-cleaning and the text problem, reproducibility
and refusals."""
import numpy as np
import pytest

import fastbilevel as fb
import naive
from conftest import make_problem, random_lam
from fastbilevel._params import ParameterError
from fastbilevel.kernels.sampling import (STREAM_CORR, STREAM_F, STREAM_G, STREAM_HESS,
                                          STREAM_INNER, STREAM_LIN,
                                          STREAM_TRUNC, key, randint)
from fastbilevel.kernels.sampling import batch as draw
from fastbilevel.solvers import METHODS, run_solver

B, BV, SEED = 9, 4, 5


class Ref:
    """The oracles of a NumPy transcription on the batches of ``seed``."""

    def __init__(self, s, seed=SEED):
        self.s, self.seed = s, seed

    def rows(self, stream, step, b=B):
        return draw(self.seed, stream, step, self.s.n, b)

    def vrows(self, stream, step, b=BV):
        return draw(self.seed, stream, step, len(self.s.yv), b)

    def grad(self, w, lam, rows):
        return naive.batch_grad(self.s, w, lam, rows)

    def hvp(self, w, lam, rows, v):
        return naive.batch_hvp(self.s, w, lam, rows, v)

    def fgrad(self, w, rows):
        return naive.batch_outer_grad(self.s, w, rows)

    def mjv(self, w, lam, rows, v):
        """−J_B v."""
        return -naive.batch_cross(self.s, w, lam, rows, v)

    def dlam(self, w, lam, rows):
        """∂_λ of the batch inner value (1/|B|)Σ a_iℓ_i + r."""
        s = self.s

        def val(lm):
            W = s.W(w)
            a = naive.weights(s, lm)[rows]
            return np.mean(a * naive.row_losses(s.model, s.X[rows] @ W, s.y[rows])) + \
                naive.reg_value(s, W, lm)
        return naive.central_diff(val, lam)

    def zero(self):
        s = self.s
        return np.zeros((s.d,) if s.c == 1 else (s.d, s.c))


def neumann(R, w, lam, P, eta, Q, step):
    r, v = P.copy(), P.copy()
    for q in range(1, Q + 1):
        r = r - eta * R.hvp(w, lam, R.rows(STREAM_HESS, step * (Q + 1) + q), r)
        v = v + r
    return eta * v


def ref_soba(R, lam, K, rho0, g0, **_):
    w, v = R.zero(), R.zero()
    for k in range(K):
        rho, gamma = rho0 * (k + 1) ** -0.4, g0 * (k + 1) ** -0.6
        rows, rv = R.rows(STREAM_INNER, k), R.vrows(STREAM_F, k)
        G, HV, P = R.grad(w, lam, rows), R.hvp(w, lam, rows, v), R.fgrad(w, rv)
        h = R.mjv(w, lam, rows, v)
        w, v, lam = w - rho * G, v - rho * (HV - P), lam - gamma * h
    return lam, w


def ref_saba(R, lam, K, rho, gamma, **_):
    s = R.s
    n, m = s.n, len(s.yv)
    w, v = R.zero(), R.zero()
    reg = lambda W, lm: naive.reg_grad(s, s.W(W), lm).reshape(np.shape(W))  # noqa: E731
    dg = lambda i, W, lm: R.grad(W, lm, [i]) - reg(W, lm)                 # noqa: E731
    dh = lambda i, W, lm, V: R.hvp(W, lm, [i], V) - (reg(V, lm) - reg(0 * V, lm))  # noqa
    df = lambda j, W: R.fgrad(W, [j])                                    # noqa: E731
    sw = s.hyper == "sample_weights"
    sp = lambda lm: naive.expit(lm) * naive.expit(-lm) if sw else None  # noqa: E731
    mg = [dg(i, w, lam) for i in range(n)]
    mh = [0 * w for _ in range(n)]
    mf = [df(j, w) for j in range(m)]
    mj = np.zeros(n)               # ℓ'(z_i)·u_i: J_i v without its σ'(λ_i) factor
    for k in range(K):
        rows, rv = R.rows(STREAM_INNER, k), R.vrows(STREAM_F, k)
        ng = {i: dg(i, w, lam) for i in rows}
        nh = {i: dh(i, w, lam, v) for i in rows}
        nf = {j: df(j, w) for j in rv}
        G = np.mean(mg, 0) + sum(ng[i] - mg[i] for i in rows) / B + reg(w, lam)
        HV = np.mean(mh, 0) + sum(nh[i] - mh[i] for i in rows) / B + reg(v, lam) - reg(0 * v, lam)
        P = np.mean(mf, 0) + sum(nf[j] - mf[j] for j in rv) / BV
        if sw:
            d = sp(lam)
            nj = {i: -R.mjv(w, lam, [i], v)[i] / d[i] for i in rows}
            h = -d * mj / n
            for i in rows:
                h[i] -= d[i] * (nj[i] - mj[i]) / B
        else:
            h = R.mjv(w, lam, rows, v)
        for i in rows:
            mg[i], mh[i] = ng[i], nh[i]
            if sw:
                mj[i] = nj[i]
        for j in rv:
            mf[j] = nf[j]
        w, v, lam = w - rho * G, v - rho * (HV - P), lam - gamma * h
    return lam, w


naive.expit = __import__("scipy.special", fromlist=["expit"]).expit


def ref_amigo(R, lam, K, rho, gamma, T=2, M=3, **_):
    w, v = R.zero(), R.zero()
    for k in range(K):
        for t in range(T):
            w = w - rho * R.grad(w, lam, R.rows(STREAM_INNER, k * T + t))
        P = R.fgrad(w, R.vrows(STREAM_F, k))
        for t in range(M):
            v = v - rho * (R.hvp(w, lam, R.rows(STREAM_LIN, k * M + t), v) - P)
        lam = lam - gamma * R.mjv(w, lam, R.rows(STREAM_G, k), v)
    return lam, w


def ref_trunc(R, lam, K, rho0, g0, eta, Q, T, ttsa):
    w = R.zero()
    for k in range(K):
        rho = rho0 * (k + 1) ** -0.4 if ttsa else rho0
        gamma = g0 * (k + 1) ** -0.6 if ttsa else g0 / np.sqrt(k + 1)
        for t in range(T):
            w = w - rho * R.grad(w, lam, R.rows(STREAM_INNER, k * T + t))
        v = R.fgrad(w, R.vrows(STREAM_F, k))
        p = randint(np.uint64(key(R.seed, STREAM_TRUNC, k)), 0, Q)
        for i in range(p):
            v = v - eta * R.hvp(w, lam, R.rows(STREAM_HESS, k * Q + i), v)
        lam = lam - gamma * R.mjv(w, lam, R.rows(STREAM_G, k), Q * eta * v)
    return lam, w


def ref_ttsa(R, lam, K, rho, gamma, eta, Q=3, **_):
    return ref_trunc(R, lam, K, rho, gamma, eta, Q, 1, True)


def ref_bsa(R, lam, K, rho, gamma, eta, Q=3, T=2, **_):
    return ref_trunc(R, lam, K, rho, gamma, eta, Q, T, False)


def ref_mrbo(R, lam, K, rho0, g0, eta, Q=3, a0=1.0, **_):
    w = R.zero()
    wm = lm_old = Dw = U = None          # the previous point and directions (k ≥ 1)

    def est(w, lam, k):
        v = neumann(R, w, lam, R.fgrad(w, R.vrows(STREAM_F, k)), eta, Q, k)
        return R.mjv(w, lam, R.rows(STREAM_G, k), v)
    for k in range(K):
        a = 1.0 if k == 0 else min(1.0, a0 * (k + 1) ** (-2 / 3))
        rho, gamma = rho0 * (k + 1) ** (-1 / 3), g0 * (k + 1) ** (-1 / 3)
        rows = R.rows(STREAM_INNER, k)
        G, h = R.grad(w, lam, rows), est(w, lam, k)
        if k == 0:
            Dw, U = G, h
        else:
            Dw = G + (1 - a) * (Dw - R.grad(wm, lm_old, rows))
            U = h + (1 - a) * (U - est(wm, lm_old, k))
        wm, lm_old = w.copy(), lam.copy()
        w, lam = w - rho * Dw, lam - gamma * U
    return lam, w


def ref_vrbo(R, lam, K, rho, gamma, eta, Q=3, T=2, period=2, **_):
    s = R.s
    allr, allv = np.arange(s.n), np.arange(len(s.yv))
    w = R.zero()

    def est(w, lam, step):
        v = neumann(R, w, lam, R.fgrad(w, R.vrows(STREAM_F, step)), eta, Q, step)
        return R.mjv(w, lam, R.rows(STREAM_G, step), v)
    for k in range(K):
        if k % period == 0:
            Dw = R.grad(w, lam, allr)
            r = v = R.fgrad(w, allv)
            for _ in range(Q):
                r = r - eta * R.hvp(w, lam, allr, r)
                v = v + r
            U = R.mjv(w, lam, allr, eta * v)
        for t in range(T + 1):
            step = k * (T + 1) + t
            wm, lm_old = w.copy(), lam.copy()
            if t == 0:
                lam = lam - gamma * U
            else:
                w = w - rho * Dw
            rows = R.rows(STREAM_CORR, step)
            Dw = Dw + R.grad(w, lam, rows) - R.grad(wm, lm_old, rows)
            U = U + est(w, lam, step) - est(wm, lm_old, step)
    return lam, w


def ref_f2sa(R, lam, K, rho, g0, T=2, nu0=1.5, dnu=0.5, **_):
    y, z = R.zero(), R.zero()
    for k in range(K):
        nu = nu0 + dnu * k
        for t in range(T):
            rows = R.rows(STREAM_INNER, k * T + t)
            z = z - rho * R.grad(z, lam, rows)
            gy = R.grad(y, lam, rows)
            y = y - rho * (R.fgrad(y, R.vrows(STREAM_F, k * T + t)) / nu + gy)
        rows = R.rows(STREAM_G, k)
        lam = lam - g0 / np.sqrt(k + 1) * nu * (R.dlam(y, lam, rows) - R.dlam(z, lam, rows))
    return lam, y


def ref_bome(R, lam, K, rho, gamma, T=2, eta_b=0.5, **_):
    w = R.zero()
    for k in range(K):
        wh = w.copy()
        for t in range(T):
            wh = wh - rho * R.grad(wh, lam, R.rows(STREAM_INNER, k * T + t))
        rows = R.rows(STREAM_G, k)
        gq_w = R.grad(w, lam, rows)
        gq_l = R.dlam(w, lam, rows) - R.dlam(wh, lam, rows)
        P = R.fgrad(w, R.vrows(STREAM_F, k))
        nq = np.sum(gq_w ** 2) + np.sum(gq_l ** 2)
        phi = max(eta_b - np.sum(P * gq_w) / nq, 0.0)
        w, lam = w - rho * (P + phi * gq_w), lam - gamma * phi * gq_l
    return lam, w


REFS = {
    "soba": (ref_soba, {}), "saba": (ref_saba, {}),
    "amigo": (ref_amigo, dict(inner_steps=2, linear_steps=3)),
    "ttsa": (ref_ttsa, dict(Q=3)), "bsa": (ref_bsa, dict(Q=3, inner_steps=2)),
    "mrbo": (ref_mrbo, dict(Q=3)), "vrbo": (ref_vrbo, dict(Q=3, inner_steps=2, period=2)),
    "f2sa": (ref_f2sa, dict(inner_steps=2, nu0=1.5, nu_growth=0.5)),
    "bome": (ref_bome, dict(inner_steps=2)),
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model,hyper,fmt", [
    ("logistic", "sample_weights", "dense64"), ("multinomial", "feature_l2", "csr32"),
    ("linear", "biased_l2", "dense64"), ("logistic", "l2", "csr32")])
def test_matches_numpy_transcription(method, model, hyper, fmt):
    """Three iterations (four for VRBO: a refresh, then corrections) of each
    method equal the NumPy transcription of its updates on the same draws."""
    prob, s = make_problem(model, hyper, fmt)
    lam = random_lam(prob)
    K = 4 if method == "vrbo" else 3
    rho, gamma, eta = 0.05, 0.7 if hyper != "sample_weights" else 3.0, 0.04
    ref, kw = REFS[method]
    extra = {} if method in ("soba", "saba", "amigo", "f2sa", "bome") else {"eta": eta}
    if method == "amigo":
        extra["linear_step"] = rho
    r = run_solver(prob, lam, method, iters=K, lr=gamma, step_size=rho, batch_size=B,
                   outer_batch=BV, seed=SEED, **kw, **extra)
    lam_ref, w_ref = ref(Ref(s), np.array(lam, float), K, rho, gamma, eta=eta, a0=1.0)
    tol = 2e-5 if fmt.endswith("32") else 1e-6
    assert naive.rel_err(r.w, w_ref) < tol
    assert naive.rel_err(np.asarray(r.lam) - lam, lam_ref - lam) < tol * 10
    assert np.any(np.asarray(r.lam) != lam)


# ------------------------------------------------------------ convergence
def _ridge():
    """Least squares with one ridge strength per feature whose validation
    loss has an interior stationary point (λ* ≈ (−0.7, −1.3, −2.5, 0.5),
    positive-definite Hessian), so that "approach λ*" is well posed."""
    rng = np.random.default_rng(11)
    d, n, m = 4, 60, 40
    w_true = 0.3 * rng.standard_normal(d)
    X, Xv = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    y = X @ w_true + rng.standard_normal(n)
    yv = Xv @ w_true + rng.standard_normal(m)
    return fb.BilevelProblem("linear", "feature_l2", X, y, Xv, yv), None


def _exact_grad(prob, lam):
    """The closed-form hypergradient of ridge with feature_l2: w*(λ) =
    (XᵀX/n + diag e^λ)⁻¹Xᵀy/n, ∇Φ = −e^λ ⊙ w* ⊙ H⁻¹∇f(w*)."""
    X, y = prob.train.X.astype(float), prob.train.y
    Xv, yv = prob.val.X.astype(float), prob.val.y
    n, m = X.shape[0], Xv.shape[0]
    H = X.T @ X / n + np.diag(np.exp(lam))
    w = np.linalg.solve(H, X.T @ y / n)
    v = np.linalg.solve(H, Xv.T @ (Xv @ w - yv) / m)
    return -np.exp(lam) * w * v


def _stationary(prob, lam0):
    """λ* with ∇Φ(λ*) = 0 to 1e-12, by Newton's method on the closed form
    (finite-difference Jacobian)."""
    lam = np.array(lam0, float)
    for _ in range(60):
        g = _exact_grad(prob, lam)
        if np.linalg.norm(g) < 1e-13:
            break
        J = np.stack([(_exact_grad(prob, lam + 1e-6 * e) - _exact_grad(prob, lam - 1e-6 * e))
                      / 2e-6 for e in np.eye(lam.size)], 1)
        lam = lam - np.linalg.solve(J, g)
    assert np.linalg.norm(_exact_grad(prob, lam)) < 1e-11
    return lam


def test_closed_form_gradient_is_the_implicit_hypergradient():
    prob, _ = _ridge()
    lam = np.full(prob.d, -1.0)
    ex = fb.hypergradient(prob, lam, "implicit", steps=20000, K=200, tol=1e-14)
    assert naive.rel_err(ex.grad, _exact_grad(prob, lam)) < 1e-8


SETTINGS = {   # outer steps and iterations for this problem (λ kept in [−5, 2])
    "soba": dict(iters=1000, lr=30.0), "saba": dict(iters=3000, lr=10.0),
    "amigo": dict(iters=3000, lr=10.0), "mrbo": dict(iters=1000, lr=30.0),
    "vrbo": dict(iters=300, lr=30.0), "ttsa": dict(iters=1000, lr=30.0),
    "bsa": dict(iters=1000, lr=30.0), "f2sa": dict(iters=3000, lr=30.0),
    "bome": dict(iters=3000, lr=10.0),
}


@pytest.mark.parametrize("method", METHODS)
def test_iterates_approach_the_stationary_point(method):
    prob, _ = _ridge()
    lam0 = np.zeros(prob.d)
    star = _stationary(prob, lam0)
    r = run_solver(prob, lam0, method, batch_size=16, outer_batch=16, seed=1,
                   eval_every=1000, bounds=(-5.0, 2.0), **SETTINGS[method])
    d0 = np.linalg.norm(lam0 - star)
    d1 = np.linalg.norm(r.lam - star)
    assert d1 < 0.35 * d0, (d1, d0)
    exact = np.linalg.norm(_exact_grad(prob, r.lam))
    assert exact < 0.2 * np.linalg.norm(_exact_grad(prob, lam0))


def test_saba_reaches_the_stationary_point_where_soba_plateaus():
    prob, _ = _ridge()
    lam0 = np.zeros(prob.d)
    kw = dict(iters=5000, lr=10.0, batch_size=16, outer_batch=16, seed=1, eval_every=5000,
              bounds=(-5.0, 2.0))
    saba = run_solver(prob, lam0, "saba", **kw)
    soba = run_solver(prob, lam0, "soba", decay=False, **kw)
    g_saba = np.linalg.norm(_exact_grad(prob, saba.lam))
    g_soba = np.linalg.norm(_exact_grad(prob, soba.lam))
    assert g_saba <= 1e-6, g_saba
    assert g_soba > 1e-4, g_soba          # SOBA's constant-step noise floor


# ------------------------------------------------------------ real problems
@pytest.mark.parametrize("method", METHODS)
def test_progress_on_hypercleaning_and_reproducible(method):
    ds = fb.datasets.hypercleaning(n=600, m=300, d=20, c=4, seed=0)
    prob = ds.problem(reg=1e-2)
    lam0 = np.zeros(prob.lam_shape)
    before = prob.outer_value(fb.solve(prob, lam0, steps=500).w)
    r = fb.minimize(prob, lam0, method=method, iters=300, batch_size=64, seed=0)
    after = prob.outer_value(fb.solve(prob, r.lam, steps=500).w)
    assert after < 0.9 * before, (before, after)
    again = fb.minimize(prob, lam0, method=method, iters=300, batch_size=64, seed=0)
    assert np.array_equal(again.lam, r.lam) and np.array_equal(again.w, r.w)
    other = fb.minimize(prob, lam0, method=method, iters=300, batch_size=64, seed=1)
    assert not np.array_equal(other.lam, r.lam)


@pytest.mark.parametrize("method", METHODS)
def test_progress_on_sparse_text(method):
    ds = fb.datasets.text(n=800, m=400, d=2000, row_nnz=30, seed=0, dtype=np.float32)
    prob = ds.problem(hyper="feature_l2")
    lam0 = np.full(prob.lam_shape, np.log(1e-2))
    before = prob.outer_value(fb.solve(prob, lam0, steps=300).w)
    r = fb.minimize(prob, lam0, method=method, iters=300, batch_size=64, seed=0)
    after = prob.outer_value(fb.solve(prob, r.lam, steps=300).w)
    assert after < before, (before, after)


def test_same_result_on_one_and_two_threads():
    from conftest import same_output_on_1_and_2_threads
    same_output_on_1_and_2_threads(
        "import numpy as np, fastbilevel as fb\n"
        "from fastbilevel.solvers import run_solver, METHODS\n"
        "p = fb.datasets.hypercleaning(n=300, m=100, d=10, c=3).problem(reg=1e-2)\n"
        "for m in METHODS:\n"
        "    r = run_solver(p, np.zeros(p.n), m, iters=20, batch_size=40, seed=4)\n"
        "    print(m, r.lam.tobytes().hex()[:64], r.w.tobytes().hex()[:64])\n")


# ------------------------------------------------------------ refusals
def test_refusals():
    prob, _ = make_problem("logistic", "init", "dense64")
    with pytest.raises(ValueError, match="hyper='init'"):
        run_solver(prob, random_lam(prob), "soba")
    prob, _ = make_problem("logistic", "l2", "dense64")
    lam = random_lam(prob)
    with pytest.raises(ParameterError, match="Q=3 does not apply to method='soba'"):
        fb.minimize(prob, lam, method="soba", Q=3)
    with pytest.raises(ParameterError, match="tol"):
        fb.minimize(prob, lam, method="saba", tol=1e-3)
    with pytest.raises(ValueError, match="outer does not apply"):
        fb.minimize(prob, lam, method="amigo", outer="adam")
    with pytest.raises(ValueError, match="method"):
        run_solver(prob, lam, "sgd")
    with pytest.raises(ValueError, match="batch_size=99 exceeds"):
        run_solver(prob, lam, "soba", batch_size=99)
    with pytest.raises(ValueError, match="step_size"):
        run_solver(prob, lam, "bsa", step_size=1e3)
    prob, _ = make_problem("logistic", "feature_l2", "dense64")
    with pytest.raises(fb.DivergenceError, match="diverged at iteration .* lower lr=1e"):
        run_solver(prob, random_lam(prob), "soba", lr=1e6, iters=50)
    # a λ step far too large that stays finite: e^λ is 0, no regularization left
    prob, _ = make_problem("logistic", "l2", "dense64")
    with pytest.raises(fb.DivergenceError, match=r"method='soba' took lam to -.*e\^lam is 0 .*"
                                                 r"lower lr=1e\+12 or give bounds"):
        run_solver(prob, random_lam(prob), "soba", lr=1e12, iters=50, eval_every=10)
    mt = fb.datasets.few_shot(n_tasks=4).problem()
    with pytest.raises(ValueError, match="MultiTaskProblem"):
        fb.minimize(mt, np.zeros(mt.lam_shape), method="soba")


def test_inputs_not_modified_and_history():
    prob, _ = make_problem("multinomial", "feature_l2", "csr32")
    lam = random_lam(prob)
    lam_copy = lam.copy()
    w0 = np.ones(prob.w_shape)
    r = run_solver(prob, lam, "mrbo", iters=30, batch_size=8, outer_batch=4, w0=w0,
                   eval_every=10, bounds=(-2.0, 0.5))
    assert np.array_equal(lam, lam_copy) and np.all(w0 == 1.0)
    assert len(r.history) == 3 and np.all(np.diff(r.history.rows) > 0)
    assert np.all(r.lam >= -2.0) and np.all(r.lam <= 0.5)
