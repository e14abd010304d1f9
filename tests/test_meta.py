"""Multi-task init problems (MAML): reverse/recompute/FO-BLO/UFO-BLO against a
NumPy meta objective, UFO's unbiasedness, FO-BLO's bias and the FO-BLO
counterexample."""
import numpy as np
import pytest

import fastbilevel as fb
import naive
from conftest import same_output_on_1_and_2_threads


def np_meta_value(ds, theta, r, alpha, reg, tasks=None):
    """M(θ) = mean_i L_i^out(φ_r), plain NumPy."""
    c = ds.info["n_classes"]
    tasks = range(ds.X.shape[0]) if tasks is None else tasks
    vals = []
    for i in tasks:
        X, y = np.asarray(ds.X[i], float), ds.y[i]
        W = np.array(theta, float).reshape(-1, c)
        for _ in range(r):
            W = W - alpha * (X.T @ naive.row_dlosses(ds.model, X @ W, y) / len(y) + reg * W)
        vals.append(np.mean(naive.row_losses(ds.model, np.asarray(ds.X_test[i], float) @ W,
                                             ds.y_test[i])))
    return float(np.mean(vals))


def np_first_order(ds, theta, r, alpha, reg):
    c = ds.info["n_classes"]
    out = []
    for i in range(ds.X.shape[0]):
        X, y = ds.X[i], ds.y[i]
        W = np.array(theta, float).reshape(-1, c)
        for _ in range(r):
            W = W - alpha * (X.T @ naive.row_dlosses(ds.model, X @ W, y) / len(y) + reg * W)
        Xt = ds.X_test[i]
        out.append(Xt.T @ naive.row_dlosses(ds.model, Xt @ W, ds.y_test[i]) / Xt.shape[0])
    return np.mean(out, 0).reshape(np.shape(theta))


@pytest.mark.parametrize("model", ["linear", "logistic", "multinomial"])
def test_meta_gradients_match_numpy(model):
    ds = fb.datasets.few_shot(n_tasks=7, shots=6, test_shots=9, d=4, model=model, n_classes=3,
                              seed=1)
    prob = ds.problem(reg=0.2)
    theta = np.random.default_rng(0).standard_normal(prob.w_shape) * 0.3
    r, alpha = 6, 0.3
    g = fb.hypergradient(prob, theta, "reverse", steps=r, step_size=alpha)
    fd = naive.central_diff(lambda t: np_meta_value(ds, t, r, alpha, 0.2), theta)
    assert naive.rel_err(g.grad, fd) < 1e-7
    assert g.value == pytest.approx(np_meta_value(ds, theta, r, alpha, 0.2), rel=1e-12)
    for method, kw in (("recompute", {}), ("ufo", {"q": 1.0})):
        other = fb.hypergradient(prob, theta, method, steps=r, step_size=alpha, **kw)
        assert naive.rel_err(other.grad, g.grad) < 1e-12, method
    fo = fb.hypergradient(prob, theta, "first_order", steps=r, step_size=alpha)
    assert naive.rel_err(fo.grad, np_first_order(ds, theta, r, alpha, 0.2)) < 1e-12
    assert naive.rel_err(fo.grad, g.grad) > 1e-3        # FO-BLO is a different quantity


def test_meta_batches_are_task_subsets():
    ds = fb.datasets.few_shot(n_tasks=12, shots=4, test_shots=5, d=3, seed=2)
    prob = ds.problem()
    theta = np.zeros(3)
    r = fb.hypergradient(prob, theta, "reverse", steps=3, step_size=0.2, meta_batch=5, seed=9)
    tasks = r.stats["tasks"]
    assert len(set(tasks.tolist())) == 5
    sub = fb.datasets.TaskDataset("sub", ds.X[tasks], ds.y[tasks], ds.X_test[tasks],
                                  ds.y_test[tasks], "logistic", n_classes=1).problem()
    full = fb.hypergradient(sub, theta, "reverse", steps=3, step_size=0.2)
    assert naive.rel_err(r.grad, full.grad) < 1e-12
    again = fb.hypergradient(prob, theta, "reverse", steps=3, step_size=0.2, meta_batch=5, seed=9)
    assert np.array_equal(again.grad, r.grad)


def test_ufo_is_unbiased_and_fo_blo_is_not():
    ds = fb.datasets.few_shot(n_tasks=20, shots=5, test_shots=10, d=4, seed=0)
    prob = ds.problem(reg=0.1)
    theta = np.full(4, 0.2)
    kw = dict(steps=5, step_size=0.5, meta_batch=4)
    exact = fb.hypergradient(prob, theta, "reverse", steps=5, step_size=0.5).grad
    ufo = np.array([fb.hypergradient(prob, theta, "ufo", q=0.3, seed=k, **kw).grad
                    for k in range(2000)])
    fo = np.array([fb.hypergradient(prob, theta, "first_order", seed=k, **kw).grad
                   for k in range(2000)])
    se_u = ufo.std(0, ddof=1) / np.sqrt(2000)
    se_f = fo.std(0, ddof=1) / np.sqrt(2000)
    assert np.all(np.abs(ufo.mean(0) - exact) < 3 * se_u)
    assert np.max(np.abs(fo.mean(0) - exact) / se_f) > 10
    n_fired = sum(fb.hypergradient(prob, theta, "ufo", q=0.3, seed=k, **kw).stats["corrections"]
                  for k in range(200))
    assert abs(n_fired / (200 * 4) - 0.3) < 0.06


def test_fo_blo_settles_away_from_the_stationary_point():
    ds = fb.datasets.fo_blo_counterexample(gap=10.0)
    info = ds.info
    prob = ds.problem()
    kw = dict(steps=info["steps"], step_size=info["step_size"])
    # the exact meta-gradient vanishes at θ*, FO-BLO's (mean) at θ_FO, not at each other
    assert abs(fb.hypergradient(prob, np.array([info["theta_star"]]), **kw).grad[0]) < 1e-12
    assert abs(fb.hypergradient(prob, np.array([info["theta_fo"]]), "first_order",
                                **kw).grad[0]) < 1e-12
    g_fo = fb.hypergradient(prob, np.array([info["theta_fo"]]), **kw).grad[0]
    assert g_fo == pytest.approx(info["grad_at_fo"], rel=1e-12) and abs(g_fo) > 0.1
    # stochastic outer loop, one task per step (UFO-BLO Fig. 1)
    runs = {}
    for method, extra in (("first_order", {}), ("ufo", {"q": 0.5})):
        r = fb.minimize(prob, np.array([-3.0]), method, outer="sgd", iters=3000, lr=4.0,
                        decay="sqrt", meta_batch=1, seed=1, **kw, **extra)
        runs[method] = float(r.lam[0])
    assert abs(runs["first_order"] - info["theta_fo"]) < 0.5
    assert abs(runs["ufo"] - info["theta_star"]) < 0.5
    assert abs(info["theta_fo"] - info["theta_star"]) > 4
    assert fb.datasets.fo_blo_counterexample(gap=100.0).info["grad_at_fo"] == \
        pytest.approx(10 * info["grad_at_fo"])


def test_multitask_bad_input():
    ds = fb.datasets.few_shot(n_tasks=3, shots=4, test_shots=5, d=3, seed=2)
    with pytest.raises(ValueError, match="X must be 3-D"):
        fb.MultiTaskProblem("logistic", ds.X[0], ds.y, ds.X_test, ds.y_test)
    with pytest.raises(ValueError, match="y has shape"):
        fb.MultiTaskProblem("logistic", ds.X, ds.y[:, :2], ds.X_test, ds.y_test)
    X = ds.X.copy()
    X[1, 2, 0] = np.nan
    with pytest.raises(ValueError, match="X contains NaN"):
        fb.MultiTaskProblem("logistic", X, ds.y, ds.X_test, ds.y_test)
    prob = ds.problem()
    with pytest.raises(ValueError, match="q=1.5 must be in"):
        fb.hypergradient(prob, np.zeros(3), "ufo", q=1.5)
    with pytest.raises(ValueError, match="meta_batch=4 exceeds the 3 tasks"):
        fb.hypergradient(prob, np.zeros(3), meta_batch=4)
    with pytest.raises(ValueError, match="method="):
        fb.hypergradient(prob, np.zeros(3), "implicit")
    lin = fb.datasets.few_shot(n_tasks=3, shots=4, test_shots=5, d=3, model="linear").problem()
    with pytest.raises(ValueError, match="step_size=1000 makes the tasks' inner GD diverge"):
        fb.hypergradient(lin, np.full(3, 5.0), steps=400, step_size=1e3)
    with pytest.raises(ValueError, match="diverged: step_size=1000 must be < 2/L"):
        fb.hypergradient(lin, np.full(3, 5.0), steps=400, step_size=1e3, check_step=False)


_SCRIPT = r"""
import numpy as np, fastbilevel as fb
prob = fb.datasets.few_shot(n_tasks=64, shots=5, test_shots=10, d=8, seed=0).problem(reg=0.1)
r = fb.minimize(prob, np.zeros(8), "ufo", outer="sgd", iters=10, lr=0.5, steps=5, q=0.3,
                meta_batch=16, seed=3)
print(r.lam.sum().hex())
"""


def test_meta_learning_is_bit_identical_across_thread_counts():
    same_output_on_1_and_2_threads(_SCRIPT)
