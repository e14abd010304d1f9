"""solver='sgd': the in-kernel sampler, minibatch passes, and every ITD
method through the sampled trajectory against finite differences of a NumPy
SGD loop over the same batches."""
import numpy as np
import pytest

import fastbilevel as fb
import naive
from conftest import (HYPERS, MODELS, make_problem, random_lam,
                      same_output_on_1_and_2_threads)
from fastbilevel.kernels import oracle_pass
from fastbilevel.kernels.oracles import oracle_pass_rows
from fastbilevel.kernels.sampling import STREAM_INNER, batch, draw_rows


def batches(seed, n, b, T, replace):
    return [batch(seed, STREAM_INNER, t, n, b, replace) for t in range(T)]


@pytest.mark.parametrize("replace", [False, True])
def test_sampler_is_reproducible_sorted_and_uniform(replace):
    n, b, draws = 40, 10, 4000
    perm = np.arange(n, dtype=np.int64)
    out = np.empty(b, dtype=np.int64)
    counts = np.zeros(n)
    first = None
    for t in range(draws):
        rows = draw_rows(123, 1, t, n, b, replace, perm, out)
        assert np.all(np.diff(rows) >= 0)
        assert rows.min() >= 0 and rows.max() < n
        if not replace:
            assert len(np.unique(rows)) == b
        np.add.at(counts, rows, 1)
        if t == 0:
            first = rows.copy()
    assert np.array_equal(perm, np.arange(n))          # scratch restored
    assert np.array_equal(draw_rows(123, 1, 0, n, b, replace, perm, out), first)
    assert not np.array_equal(draw_rows(124, 1, 0, n, b, replace, perm, out), first)
    assert not np.array_equal(draw_rows(123, 2, 0, n, b, replace, perm, out), first)
    # each row is drawn b/n of the time; chi-square with n−1 dof (mean 39, sd 8.8)
    expect = draws * b / n
    chi2 = np.sum((counts - expect) ** 2 / expect)
    if not replace:
        chi2 /= 1 - b / n              # finite-population variance is (1 − b/n) smaller
    assert chi2 < 39 + 5 * 8.8


def test_sampler_without_replacement_at_full_size_is_a_permutation():
    rows = draw_rows(5, 1, 0, 17, 17, False, np.arange(17, dtype=np.int64),
                     np.empty(17, dtype=np.int64))
    assert np.array_equal(rows, np.arange(17))


@pytest.mark.parametrize("fmt", ["dense64", "csr32"])
@pytest.mark.parametrize("model", ["linear", "logistic", "multinomial"])
def test_minibatch_pass_equals_full_pass_on_gathered_rows(model, fmt):
    prob, s = make_problem(model, "sample_weights", fmt)
    lam = random_lam(prob)
    hp = prob._lam_in(lam)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.integers(0, prob.n, 21)).astype(np.int64)   # with repeats
    W, V = rng.standard_normal((2, prob.c, prob.d))
    G, HV, cr = np.empty_like(W), np.empty_like(W), np.zeros(prob.n)
    val = oracle_pass_rows(rows, prob.train, hp.a, prob._model, W, V, True, True,
                           G, HV, cr, 3)
    sub = fb.BilevelProblem(model, "sample_weights", s.X[rows], s.y[rows], s.Xv, s.yv,
                            reg=prob.reg, n_classes=prob.c if model == "multinomial" else None)
    G2, HV2, cr2 = np.empty_like(W), np.empty_like(W), np.zeros(len(rows))
    val2 = oracle_pass(sub.train, hp.a[rows], prob._model, W, V, True, True, G2, HV2,
                       cr2, 1)
    tol = 1e-12 if fmt.endswith("64") else 1e-6
    assert val == pytest.approx(val2, rel=tol)
    assert naive.rel_err(G, G2) < tol and naive.rel_err(HV, HV2) < tol
    assert naive.rel_err(cr[:len(rows)], cr2) < tol


@pytest.mark.parametrize("fmt", ["dense64", "csr32"])   # both layouts and dtypes; each
@pytest.mark.parametrize("hyper", HYPERS)                # format is a compiled specialization
@pytest.mark.parametrize("model", MODELS)
def test_sgd_reverse_matches_fd_of_numpy_sgd(model, hyper, fmt):
    combo = (model, hyper, fmt)
    prob, s = make_problem(*combo)
    lam = random_lam(prob)
    T, b = 9, 11
    replace = (MODELS.index(model) + HYPERS.index(hyper)) % 2 == 1  # both kinds of draw
    gamma = 0.5 / prob.lipschitz(lam, per_sample=True)
    r = fb.hypergradient(prob, lam, "reverse", "sgd", steps=T, step_size=gamma,
                         batch_size=b, replace=replace, seed=42)
    B = batches(42, prob.n, b, T, replace)
    fd = naive.central_diff(lambda l: naive.outer_value(s, naive.sgd(s, l, B, gamma)), lam,
                            eps=1e-5)
    assert naive.rel_err(r.w, naive.sgd(s, lam, B, gamma)) < 1e-10
    assert naive.rel_err(r.grad, fd) < 1e-6
    assert r.stats["rows_sampled"] == 2 * T * b


@pytest.mark.parametrize("hyper", ["sample_weights", "l2", "init"])
@pytest.mark.parametrize("fmt", ["dense64", "csr32"])
def test_every_itd_method_agrees_through_the_sampled_trajectory(hyper, fmt):
    prob, _ = make_problem("logistic", hyper, fmt)
    lam = random_lam(prob)
    kw = dict(solver="sgd", steps=13, batch_size=7, seed=3, replace=True)
    ref = fb.hypergradient(prob, lam, "reverse", **kw).grad
    for method, extra in (("checkpointed", {"snapshots": 3}), ("recompute", {}),
                          ("truncated", {"K": 13}),
                          ("checkpointed", {"snapshots": 4, "schedule": "uniform"})):
        g = fb.hypergradient(prob, lam, method, **kw, **extra).grad
        assert naive.rel_err(g, ref) < 1e-12, method
    if hyper != "init":     # forward mode holds dim λ tangents; fine at this size
        assert naive.rel_err(fb.hypergradient(prob, lam, "forward", **kw).grad, ref) < 1e-10


def test_full_batch_without_replacement_is_gd():
    prob, _ = make_problem("multinomial", "feature_l2", "dense64")
    lam = random_lam(prob)
    g1 = fb.hypergradient(prob, lam, steps=10, step_size=0.3)
    g2 = fb.hypergradient(prob, lam, solver="sgd", steps=10, step_size=0.3,
                          batch_size=prob.n, seed=9)
    assert naive.rel_err(g2.grad, g1.grad) < 1e-12


def test_sgd_bad_arguments():
    prob, _ = make_problem("logistic", "l2", "dense64")
    with pytest.raises(ValueError, match="batch_size=38 exceeds the 37 rows"):
        fb.hypergradient(prob, -1.0, solver="sgd", batch_size=38)
    with pytest.raises(ValueError, match="batch_size=0 must be >= 1"):
        fb.hypergradient(prob, -1.0, solver="sgd", batch_size=0)
    with pytest.raises(ValueError, match="seed=-1"):
        fb.hypergradient(prob, -1.0, solver="sgd", seed=-1)
    with pytest.raises(ValueError, match="batch_size=5 does not apply to method='reverse' "
                                         "with solver='gd'"):
        fb.hypergradient(prob, -1.0, batch_size=5)
    with pytest.raises(ValueError, match="step_size=400 makes solver='sgd' diverge"):
        fb.hypergradient(prob, -1.0, solver="sgd", batch_size=4, step_size=400.0, steps=50)
    with pytest.raises(ValueError, match="step_size=.*diverge.*minibatch"):
        fb.hypergradient(prob, -1.0, solver="sgd", batch_size=4, step_size=400.0, steps=50,
                         check_step=False)
    # with replacement a batch may exceed n: 50 rows of 37, some drawn twice
    r = fb.solve(prob, -1.0, solver="sgd", batch_size=50, replace=True, steps=2)
    assert r.stats["batch_size"] == 50 and r.stats["rows_sampled"] == 2 * 50


_SCRIPT = r"""
import numpy as np, fastbilevel as fb
rng = np.random.default_rng(0)
X = rng.standard_normal((300, 20)); y = np.sign(X[:, 0] + 0.3 * rng.standard_normal(300))
prob = fb.BilevelProblem("logistic", "sample_weights", X, y, X[:50], y[:50])
r = fb.hypergradient(prob, np.zeros(300), solver="sgd", steps=20, batch_size=100, seed=7)
print(r.grad.tobytes().hex()[:64], r.grad.sum().hex(), r.w.sum().hex())
"""


def test_sgd_is_bit_identical_across_thread_counts():
    same_output_on_1_and_2_threads(_SCRIPT)
