"""ANIL (``feature_map``): a shared embedding P and the head's start w_0 are
learned; each task adapts the head on P x. Oracles and meta-gradients against
finite differences of an independent NumPy transcription, reverse = recompute,
FO-BLO = the direct term, UFO's unbiasedness, learning the shared subspace,
refusals."""
import numpy as np
import pytest

import fastbilevel as fb
import naive
from conftest import same_output_on_1_and_2_threads

REG = 0.1


def anil_problem(model, n_tasks=5, k=3, seed=1):
    ds = fb.datasets.few_shot(n_tasks=n_tasks, shots=6, test_shots=7, d=5, model=model,
                              n_classes=3, seed=seed, rank=2)
    return ds, ds.problem(reg=REG, hyper="feature_map", k=k)


def np_head_loss(model, X, y, P, W, reg):
    """Mean row loss of the head W (k, c) on the rows X Pᵀ, plus (reg/2)‖W‖²."""
    return float(np.mean(naive.row_losses(model, X @ P.T @ W, y)) + 0.5 * reg * np.sum(W * W))


def np_adapt(model, X, y, P, W0, r, alpha):
    """r GD steps on the head from W0 (NumPy)."""
    E, W = X @ P.T, W0.copy()
    for _ in range(r):
        W = W - alpha * (E.T @ naive.row_dlosses(model, E @ W, y) / len(y) + REG * W)
    return W


def np_meta_value(prob, theta, r, alpha):
    d = prob.d
    P, W0 = theta[:, :d], theta[:, d:]
    return float(np.mean([np_head_loss(prob.model, prob.X_test[i],
                                       prob.y_test[i], P,
                                       np_adapt(prob.model, prob.X[i], prob.y[i], P, W0, r,
                                                alpha), 0.0)
                          for i in range(prob.n_tasks)]))


def np_first_order(prob, theta, r, alpha):
    """FO-BLO for ANIL: ∇_{w}L_D and ∇_P L_D at (w_r, P), w_r held fixed."""
    d = prob.d
    P, W0 = theta[:, :d], theta[:, d:]
    out = []
    for i in range(prob.n_tasks):
        W = np_adapt(prob.model, prob.X[i], prob.y[i], P, W0, r, alpha)
        Xt = prob.X_test[i]
        R = naive.row_dlosses(prob.model, Xt @ P.T @ W, prob.y_test[i]) / Xt.shape[0]
        out.append(np.hstack([W @ R.T @ Xt, (Xt @ P.T).T @ R]))
    return np.mean(out, 0)


@pytest.mark.parametrize("model", ["linear", "logistic", "multinomial"])
def test_task_oracles_match_finite_differences(model):
    ds, prob = anil_problem(model)
    rng = np.random.default_rng(3)
    theta = rng.standard_normal(prob.lam_shape) * 0.5
    w = rng.standard_normal(prob.w_shape) * 0.5
    v = rng.standard_normal(prob.w_shape)
    P = theta[:, :prob.d]
    Wk = w.reshape(prob.k, prob.c)
    i = 2
    # values against the NumPy transcription
    assert prob.inner_value(i, w, theta) == pytest.approx(
        np_head_loss(model, prob.X[i], prob.y[i], P, Wk, REG), rel=1e-12)
    assert prob.outer_value(i, w, theta) == pytest.approx(
        np_head_loss(model, prob.X_test[i], prob.y_test[i], P, Wk, 0.0), rel=1e-12)
    g = prob.inner_grad(i, w, theta)
    assert naive.rel_err(g, naive.central_diff(lambda u: prob.inner_value(i, u, theta), w)) < 1e-7
    h = 1e-6
    fd_hv = (prob.inner_grad(i, w + h * v, theta) - prob.inner_grad(i, w - h * v, theta)) / (2 * h)
    assert naive.rel_err(prob.hvp(i, w, theta, v), fd_hv) < 1e-7
    cr = prob.cross(i, w, theta, v)
    fd_cr = naive.central_diff(lambda t: float(np.sum(prob.inner_grad(i, w, t) * v)), theta)
    assert naive.rel_err(cr, fd_cr) < 1e-7
    assert np.all(cr[:, prob.d:] == 0) and np.linalg.norm(cr) > 1e-3
    assert naive.rel_err(prob.outer_grad(i, w, theta), naive.central_diff(
        lambda u: prob.outer_value(i, u, theta), w)) < 1e-7
    assert naive.rel_err(prob.outer_grad_lam(i, w, theta), naive.central_diff(
        lambda t: prob.outer_value(i, w, t), theta)) < 1e-7


def test_init_task_oracles_have_no_cross_term():
    """The same oracles on a MAML problem: θ enters only as the start."""
    ds = fb.datasets.few_shot(n_tasks=3, shots=6, test_shots=7, d=4, model="logistic", seed=0)
    prob = ds.problem(reg=REG)
    rng = np.random.default_rng(0)
    w, v, theta = (rng.standard_normal(4) for _ in range(3))
    assert naive.rel_err(prob.inner_grad(1, w, theta), naive.central_diff(
        lambda u: prob.inner_value(1, u, theta), w)) < 1e-7
    fd_hv = (prob.inner_grad(1, w + 1e-6 * v, theta) - prob.inner_grad(1, w - 1e-6 * v, theta)) / 2e-6
    assert naive.rel_err(prob.hvp(1, w, theta, v), fd_hv) < 1e-7
    assert np.all(prob.cross(1, w, theta, v) == 0) and np.all(prob.outer_grad_lam(1, w, theta) == 0)


@pytest.mark.parametrize("model", ["linear", "logistic", "multinomial"])
def test_anil_meta_gradients_match_finite_differences(model):
    ds, prob = anil_problem(model)
    theta = np.random.default_rng(0).standard_normal(prob.lam_shape) * 0.4
    r, alpha = 5, 0.3
    g = fb.hypergradient(prob, theta, "reverse", steps=r, step_size=alpha)
    assert g.grad.shape == (3, 5 + prob.c)
    fd = naive.central_diff(lambda t: np_meta_value(prob, t, r, alpha), theta)
    assert naive.rel_err(g.grad, fd) < 1e-7
    assert g.value == pytest.approx(np_meta_value(prob, theta, r, alpha), rel=1e-12)
    for method, kw in (("recompute", {}), ("ufo", {"q": 1.0})):
        other = fb.hypergradient(prob, theta, method, steps=r, step_size=alpha, **kw)
        assert naive.rel_err(other.grad, g.grad) < 1e-10, method
    fo = fb.hypergradient(prob, theta, "first_order", steps=r, step_size=alpha)
    assert naive.rel_err(fo.grad, np_first_order(prob, theta, r, alpha)) < 1e-12
    assert naive.rel_err(fo.grad, g.grad) > 1e-2       # FO-BLO drops the second-order terms
    # r = 0: no adaptation, the meta-gradient is the test loss's gradient at (w_0, P)
    g0 = fb.hypergradient(prob, theta, "reverse", steps=0, step_size=alpha)
    assert naive.rel_err(g0.grad, np_first_order(prob, theta, 0, alpha)) < 1e-12


@pytest.mark.parametrize("hyper,k", [("feature_map", 3), ("init", None)])
def test_meta_reverse_equals_the_numpy_recursion(hyper, k):
    """The reference the meta-learning bench times (NumPy, stored iterates,
    Prop. 10 written out) gives the kernel's meta-gradient to rounding."""
    from fastbilevel.reference import numpy_meta_reverse
    ds = fb.datasets.few_shot(n_tasks=6, shots=6, test_shots=7, d=5, model="multinomial",
                              n_classes=3, seed=2, rank=2)
    prob = ds.problem(reg=REG, hyper=hyper, k=k)
    theta = np.random.default_rng(4).standard_normal(prob.lam_shape) * 0.4
    g = fb.hypergradient(prob, theta, "reverse", steps=5, step_size=0.3)
    grad, value = numpy_meta_reverse(prob, theta, 5, 0.3)
    assert naive.rel_err(g.grad, grad) < 1e-12
    assert g.value == pytest.approx(value, rel=1e-12)


def test_anil_ufo_is_unbiased():
    ds, prob = anil_problem("logistic", n_tasks=12)
    theta = np.random.default_rng(1).standard_normal(prob.lam_shape) * 0.4
    kw = dict(steps=4, step_size=0.3, meta_batch=3)
    exact = fb.hypergradient(prob, theta, "reverse", steps=4, step_size=0.3).grad
    ufo = np.array([fb.hypergradient(prob, theta, "ufo", q=0.3, seed=k, **kw).grad
                    for k in range(1500)])
    se = ufo.std(0, ddof=1) / np.sqrt(ufo.shape[0])
    assert np.all(np.abs(ufo.mean(0) - exact) < 4 * se + 1e-12)


def test_anil_learns_the_shared_subspace():
    """Tasks whose parameters share a 3-dimensional subspace of R^20, 5 shots
    each: meta-training P and w_0 on 300 tasks lowers the meta-objective on
    100 unseen tasks and aligns P's row space with the true one."""
    ds = fb.datasets.few_shot(n_tasks=400, shots=5, test_shots=15, d=20, model="linear",
                              rank=3, seed=0)

    def tasks(lo, hi):
        return fb.MultiTaskProblem("linear", ds.X[lo:hi], ds.y[lo:hi], ds.X_test[lo:hi],
                                   ds.y_test[lo:hi], reg=REG, hyper="feature_map", k=3)

    train, unseen = tasks(0, 300), tasks(300, 400)
    theta0 = train.join(np.random.default_rng(0).standard_normal((3, 20)) / np.sqrt(20))
    kw = dict(steps=5, step_size=0.1)
    res = fb.minimize(train, theta0, "reverse", iters=300, lr=0.01, meta_batch=32, seed=0,
                      bounds=(-0.4, 0.4), **kw)
    before, after = unseen.meta_value(theta0, **kw), unseen.meta_value(res.lam, **kw)
    assert after < 0.35 * before, (before, after)
    P, w0 = train.split(res.lam)
    assert w0.shape == (3,)
    cosines = np.linalg.svd(ds.info["basis"] @ np.linalg.qr(P.T)[0], compute_uv=False)
    assert cosines.min() > 0.7, cosines
    start = np.linalg.svd(ds.info["basis"] @ np.linalg.qr(theta0[:, :20].T)[0],
                          compute_uv=False)
    assert start.min() < 0.5, start


_SCRIPT = r"""
import numpy as np, fastbilevel as fb
ds = fb.datasets.few_shot(n_tasks=64, shots=5, test_shots=10, d=8, seed=0, rank=2)
prob = ds.problem(reg=0.1, hyper="feature_map", k=2)
th = prob.join(np.random.default_rng(0).standard_normal((2, 8)) * 0.3)
r = fb.minimize(prob, th, "ufo", outer="sgd", iters=10, lr=0.05, steps=5, q=0.3,
                step_size=0.2, meta_batch=16, seed=3)
print(r.lam.sum().hex())
"""


def test_anil_is_bit_identical_across_thread_counts_and_runs():
    same_output_on_1_and_2_threads(_SCRIPT)
    ds, prob = anil_problem("logistic", n_tasks=9)
    theta = np.full(prob.lam_shape, 0.2)
    a, b = (fb.hypergradient(prob, theta, "reverse", steps=3, step_size=0.3, meta_batch=4,
                             seed=5) for _ in range(2))
    assert np.array_equal(a.grad, b.grad)
    sub = fb.MultiTaskProblem("logistic", prob.X[a.stats["tasks"]], prob.y[a.stats["tasks"]],
                              prob.X_test[a.stats["tasks"]], prob.y_test[a.stats["tasks"]],
                              reg=REG, hyper="feature_map", k=3)
    full = fb.hypergradient(sub, theta, "reverse", steps=3, step_size=0.3)
    assert naive.rel_err(a.grad, full.grad) < 1e-12


def test_feature_map_refusals():
    ds, prob = anil_problem("logistic")
    X, y, Xt, yt = prob.X, prob.y, prob.X_test, prob.y_test
    with pytest.raises(ValueError, match="needs k"):
        fb.MultiTaskProblem("logistic", X, y, Xt, yt, hyper="feature_map")
    with pytest.raises(ValueError, match="k=2 applies to hyper='feature_map'"):
        fb.MultiTaskProblem("logistic", X, y, Xt, yt, k=2)
    with pytest.raises(ValueError, match="k=0 must be"):
        fb.MultiTaskProblem("logistic", X, y, Xt, yt, hyper="feature_map", k=0)
    with pytest.raises(ValueError, match="hyper="):
        fb.MultiTaskProblem("logistic", X, y, Xt, yt, hyper="feature_l2")
    theta = np.zeros(prob.lam_shape)
    with pytest.raises(ValueError, match="needs step_size"):
        fb.hypergradient(prob, theta, steps=2)
    with pytest.raises(ValueError, match=r"theta has shape \(5, 6\), expected \(3, 6\)"):
        fb.hypergradient(prob, np.zeros((5, 6)), steps=2, step_size=0.1)
    with pytest.raises(ValueError, match="give theta"):
        prob.lipschitz()
    with pytest.raises(ValueError, match="task=5 is not below"):
        prob.inner_grad(5, np.zeros(3), theta)
    with pytest.raises(ValueError, match="split applies to hyper='feature_map'"):
        fb.datasets.few_shot(n_tasks=2, d=3).problem().split(np.zeros(3))
    big = prob.join(np.full((3, 5), 3.0))
    L = prob.lipschitz(big)
    with pytest.raises(ValueError, match="makes the tasks' inner GD diverge"):
        fb.hypergradient(prob, big, steps=50, step_size=3.0 / L)
    with pytest.raises(ValueError, match="diverged: step_size="):
        fb.hypergradient(prob, big, steps=50, step_size=3.0 / L, check_step=False)
    assert np.array_equal(prob.split(prob.join(np.ones((3, 5)), np.arange(3.0)))[1], np.arange(3.0))
