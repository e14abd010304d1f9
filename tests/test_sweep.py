"""fb.sweep: every setting equals its own single-setting call (the batched
kernels to rounding, the settings strategy bit for bit), divergence is
flagged per setting, and the Dask path equals the local one."""
import subprocess
import sys

import numpy as np
import pytest

import fastbilevel as fb
import naive
from conftest import HYPERS, MODELS, make_problem, random_lam
from fastbilevel.kernels import oracle_pass, oracle_pass_multi

SIZES = (1, 3, 8)
BATCHED = [("reverse", {}), ("checkpointed", {"snapshots": 3}), ("recompute", {}),
           ("truncated", {"K": 4}), ("implicit", {"tol": 1e-12}), ("solve", {})]


def _lams(prob, B, seed=0):
    return np.stack([random_lam(prob, seed=seed + b) * (1 + 0.1 * b) for b in range(B)])


def _single(prob, lam, method, **kw):
    if method == "solve":
        return fb.solve(prob, lam, **kw)
    return fb.hypergradient(prob, lam, method=method, **kw)


def _assert_matches(sw, singles, tol):
    for b, r in enumerate(singles):
        assert not sw.stats["diverged"][b]
        assert naive.rel_err(sw.value[b], r.value) <= tol
        assert naive.rel_err(sw.w[b], r.w) <= tol
        if r.grad is not None:
            assert sw.grad[b].shape == r.grad.shape
            assert naive.rel_err(sw.grad[b], r.grad) <= tol


@pytest.mark.parametrize("fmt", ["dense64", "csr32"])
@pytest.mark.parametrize("hyper", HYPERS)
@pytest.mark.parametrize("model", MODELS)
def test_batched_sweep_equals_single_calls(model, hyper, fmt):
    prob, _ = make_problem(model, hyper, fmt)
    for k, (method, kw) in enumerate(BATCHED):
        B = SIZES[k % 3]
        lams = _lams(prob, B, seed=k)
        sw = fb.sweep(prob, lams, method=method, steps=9, strategy="rows", **kw)
        assert sw.stats["strategy"] == "rows"
        assert sw.value.shape == (B,) and sw.w.shape == (B,) + prob.w_shape
        assert (sw.grad is None) == (method == "solve")
        singles = [_single(prob, lams[b], method, steps=9, **kw) for b in range(B)]
        _assert_matches(sw, singles, 1e-12)
        if method == "reverse":     # B·T·dim w floats held, and the same pass count
            assert sw.stats["bytes_held"] == B * 9 * prob.dim_w * 8
            assert sw.stats["passes"] == singles[0].stats["passes"]


@pytest.mark.parametrize("model,hyper", [("logistic", "feature_l2"),
                                         ("multinomial", "sample_weights")])
def test_wide_sparse_sweep_computes_dots_by_columns(model, hyper):
    """d > n: the batched CSR pass takes its row dots column by column over
    Xᵀ (per-chunk (n, 2·B·c) buffers); every setting still equals its single
    call, for gradient passes and H·v/cross passes alike."""
    from fastbilevel.kernels import batched
    from numba import njit

    @njit
    def dot_buffers(indptr, n, B, c, d, nch):     # chunks of row dots the pass allocates
        return batched._scratch_multi(indptr, n, B, c, d, nch)[0].shape[0]

    prob, _ = make_problem(model, hyper, "csr32", n=12, d=40)
    ip = prob.train.indptr
    assert dot_buffers(ip, prob.n, 8, prob.c, prob.d, 2) == 2
    assert dot_buffers(ip, prob.n, 8, prob.c, prob.n - 1, 2) == 0    # d < n: gathered
    for k, (method, kw) in enumerate(BATCHED[:1] + BATCHED[4:5]):
        lams = _lams(prob, 8, seed=k)
        sw = fb.sweep(prob, lams, method=method, steps=9, strategy="rows", **kw)
        _assert_matches(sw, [_single(prob, lams[b], method, steps=9, **kw) for b in range(8)],
                        1e-12)


@pytest.mark.parametrize("solver", ["heavy_ball", "agd"])
@pytest.mark.parametrize("fmt", ["dense64", "csr32"])
def test_momentum_solvers_with_per_setting_steps(solver, fmt):
    prob, _ = make_problem("multinomial", "feature_l2", fmt)
    B = 3
    lams = _lams(prob, B)
    L = max(prob.lipschitz(lam) for lam in lams)
    steps = np.array([0.3, 0.5, 0.7]) / L
    moms = np.array([0.2, 0.5, 0.0])
    w0 = np.random.default_rng(3).standard_normal((B,) + prob.w_shape) * 0.1
    for method in ("reverse", "checkpointed"):
        sw = fb.sweep(prob, lams, method=method, solver=solver, steps=8, step_size=steps,
                      momentum=moms, w0=w0, strategy="rows")
        singles = [fb.hypergradient(prob, lams[b], method=method, solver=solver, steps=8,
                                    step_size=steps[b], momentum=moms[b], w0=w0[b])
                   for b in range(B)]
        _assert_matches(sw, singles, 1e-12)
        np.testing.assert_array_equal(sw.stats["step_size"], steps)


@pytest.mark.parametrize("fmt", ["dense64", "csr32"])
def test_settings_strategy_is_bit_identical(fmt):
    prob, _ = make_problem("logistic", "l2", fmt)
    lams = np.array([-1.5, -0.5, 0.5])
    cases = [("forward", "gd", {}), ("reverse", "sgd", {"batch_size": 8, "seed": [1, 2, 3]}),
             ("stocbio", "gd", {"batch_size": 8, "seed": 4, "Q": 3}),
             ("reverse", "gd", {})]
    for method, solver, kw in cases:
        sw = fb.sweep(prob, lams, method=method, solver=solver, steps=6, strategy="settings",
                      **kw)
        assert sw.stats["strategy"] == "settings"
        for b in range(3):
            one = dict(kw)
            if isinstance(one.get("seed"), list):
                one["seed"] = one["seed"][b]
            r = fb.hypergradient(prob, lams[b], method=method, solver=solver, steps=6, **one)
            assert sw.grad[b] == r.grad and sw.value[b] == r.value
            np.testing.assert_array_equal(sw.w[b], r.w)


def test_auto_strategy_and_refusals():
    prob, _ = make_problem("logistic", "l2", "dense64")       # 37 rows: few per thread
    lams = np.array([-1.0, 0.0])
    assert fb.sweep(prob, lams, method="forward", steps=3).stats["strategy"] == "settings"
    # CSR: the batched pass pays from CSR_ROWS_MIN_SETTINGS settings on; dense: always
    big, _ = make_problem("logistic", "l2", "csr32", n=300)
    few, many = np.linspace(-2, 0, 3), np.linspace(-2, 0, 8)
    assert fb.sweep(big, few, steps=3).stats["strategy"] == "settings"
    assert fb.sweep(big, many, steps=3).stats["strategy"] == "rows"
    dense, _ = make_problem("logistic", "l2", "dense64", n=300)
    assert fb.sweep(dense, few, steps=3).stats["strategy"] == "rows"
    with pytest.raises(ValueError, match="strategy='rows'.*forward"):
        fb.sweep(prob, lams, method="forward", steps=3, strategy="rows")
    with pytest.raises(ValueError, match=r"lams has shape \(2, 1\).*\(B,\) \+ \(\)"):
        fb.sweep(prob, lams[:, None], steps=3)
    with pytest.raises(ValueError, match="step_size has shape \\(3,\\)"):
        fb.sweep(prob, lams, steps=3, step_size=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="lams\\[1\\] has a NaN"):
        fb.sweep(prob, [0.0, np.nan], steps=3)
    with pytest.raises(ValueError, match="no setting"):
        fb.sweep(prob, np.empty(0), steps=3)
    with pytest.raises(fb._params.ParameterError, match="tol=.*does not apply"):
        fb.sweep(prob, lams, method="reverse", steps=3, tol=1e-3)
    with pytest.raises(ValueError, match="setting 1.*step_size"):
        fb.sweep(prob, lams, steps=3, step_size=[0.1, 100.0])
    tasks = fb.datasets.few_shot(n_tasks=4, shots=3, test_shots=3, d=4)
    with pytest.raises(TypeError, match="problem"):
        fb.sweep(tasks.problem(), np.zeros((2, 4)), steps=3)


def test_divergent_setting_is_flagged_and_the_others_unaffected():
    prob, _ = make_problem("linear", "feature_l2", "csr32")
    lams = _lams(prob, 3)
    L = prob.lipschitz(lams[1])
    steps = np.array([0.5 / prob.lipschitz(lams[0]), 3.0 / L, 0.5 / prob.lipschitz(lams[2])])
    sw = fb.sweep(prob, lams, steps=20, step_size=steps, check_step=False)
    assert sw.stats["diverged"].tolist() == [False, True, False]
    assert 0 < sw.stats["diverged_at"][1] < 20 and sw.stats["diverged_at"][0] == -1
    assert np.isnan(sw.grad[1]).all() and np.isnan(sw.value[1]) and np.isnan(sw.w[1]).all()
    for b in (0, 2):
        r = fb.hypergradient(prob, lams[b], steps=20, step_size=steps[b])
        assert naive.rel_err(sw.grad[b], r.grad) <= 1e-12
    assert sw.best in (0, 2)
    with pytest.raises(fb.DivergenceError) as err:
        fb.hypergradient(prob, lams[1], steps=20, step_size=steps[1], check_step=False)
    # both strategies keep the diverged setting's inner values up to its divergence
    t = sw.stats["diverged_at"][1]
    other = fb.sweep(prob, lams, steps=20, step_size=steps, check_step=False,
                     strategy="rows" if sw.stats["strategy"] == "settings" else "settings")
    for r in (sw, other):
        iv = r.stats["inner_values"][1]
        assert np.isfinite(iv[:t + 1]).all() and np.isnan(iv[t + 1:]).all()
        assert naive.rel_err(iv[:t + 1], err.value.inner_values[:t + 1]) <= 1e-12


def test_trajectory_memory_is_refused_with_a_pointer_to_checkpointed():
    prob, _ = make_problem("multinomial", "l2", "dense64")
    lams = np.zeros(4)
    with pytest.raises(ValueError, match="B × T × dim w.*checkpointed"):
        fb.sweep(prob, lams, steps=10**8, strategy="rows")


def test_chunks_and_grid_search():
    prob, _ = make_problem("logistic", "l2", "dense64", n=300)
    lams = np.linspace(-3, 1, 7)
    one = fb.sweep(prob, lams, steps=10, strategy="rows")
    parts = fb.sweep(prob, lams, steps=10, strategy="rows", chunk_size=3)
    assert parts.stats["chunks"] == 3 and one.stats["chunks"] == 1
    assert naive.rel_err(parts.grad, one.grad) <= 1e-14
    grid = fb.sweep(prob, lams, method="solve", steps=10)
    assert grid.grad is None
    np.testing.assert_allclose(grid.value, one.value, rtol=1e-14)
    assert grid.best == int(np.argmin(one.value))


@pytest.mark.parametrize("fmt", ["dense64", "csr32"])
def test_oracle_pass_multi_equals_oracle_pass(fmt):
    prob, _ = make_problem("multinomial", "sample_weights", fmt)
    rng = np.random.default_rng(0)
    B, c, d, n = 3, prob.c, prob.d, prob.n
    W = rng.standard_normal((B, c, d))
    V = rng.standard_normal((B, c, d))
    A = rng.random((B, n))
    G, HV, cross, vals = (np.empty((B, c, d)), np.empty((B, c, d)), np.empty((B, n)),
                          np.empty(B))
    XT = None
    if prob.sparse:
        import scipy.sparse as sp
        t = sp.csr_matrix((prob.train.data, prob.train.indices, prob.train.indptr),
                          shape=(n, d)).T.tocsr()
        t.sort_indices()
        XT = (t.indptr.astype(np.int64), t.indices, t.data)
    oracle_pass_multi(prob.train, XT, A, prob._model, W, V, True, True, G, HV, cross, vals, 2)
    for b in range(B):
        g, hv, cr = np.empty((c, d)), np.empty((c, d)), np.empty(n)
        v = oracle_pass(prob.train, A[b], prob._model, W[b], V[b], True, True, g, hv, cr, 2)
        assert naive.rel_err(vals[b], v) < 1e-14
        for got, want in ((G[b], g), (HV[b], hv), (cross[b], cr)):
            assert naive.rel_err(got, want) < 1e-14


def test_client_needs_the_distributed_extra(monkeypatch):
    prob, _ = make_problem("logistic", "l2", "dense64")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"fastbilevel\[distributed\]"):
        fb.sweep(prob, [0.0, 1.0], steps=3, client=object())


_DASK = """
import numpy as np, fastbilevel as fb
from dask.distributed import Client, LocalCluster
from conftest import make_problem, random_lam
prob, _ = make_problem("logistic", "feature_l2", "csr32", n=200)
lams = np.stack([random_lam(prob, seed=b) for b in range(5)])
local = fb.sweep(prob, lams, steps=8)
grid = fb.sweep(prob, lams, method="solve", steps=8)
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                  dashboard_address=None) as cluster, Client(cluster) as client:
    scatters = []
    plain = client.scatter
    def counting(*args, **kw):
        scatters.append(kw.get("broadcast"))
        return plain(*args, **kw)
    client.scatter = counting
    remote = fb.sweep(prob, lams, steps=8, client=client)
    rgrid = fb.sweep(prob, lams, method="solve", steps=8, client=client, chunk_size=2)
print(remote.stats["chunks"], rgrid.stats["chunks"], scatters)
print(np.abs(remote.grad - local.grad).max() / np.abs(local.grad).max())
print(np.abs(rgrid.value - grid.value).max())
"""


def test_dask_local_cluster_equals_local_sweep(tmp_path):
    pytest.importorskip("distributed")
    import os
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", _DASK], env=env, capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split("\n")
    chunks = lines[0].split(maxsplit=2)
    assert chunks[0] == "2" and chunks[1] == "3"       # one chunk per worker; chunk_size=2
    # the problem goes to every worker once per sweep (broadcast), not once per chunk
    assert chunks[2] == "[True, True]"
    assert float(lines[1]) <= 1e-12 and float(lines[2]) <= 1e-12


@pytest.mark.parametrize("model,hyper,fmt", [("logistic", "l2", "csr32"),
                                             ("multinomial", "sample_weights", "dense64"),
                                             ("linear", "feature_l2", "dense64")])
def test_numpy_batched_reference_agrees(model, hyper, fmt):
    from fastbilevel.reference import numpy_reverse_sweep
    prob, _ = make_problem(model, hyper, fmt)
    lams = _lams(prob, 4)
    gamma = 0.5 / max(prob.lipschitz(lam) for lam in lams)
    H, values = numpy_reverse_sweep(prob, lams, 7, gamma)
    sw = fb.sweep(prob, lams, steps=7, step_size=gamma)
    tol = 1e-5 if fmt.endswith("32") else 1e-12     # SciPy multiplies float32 X in float32
    assert naive.rel_err(sw.grad, H) < tol
    assert naive.rel_err(sw.value, values) < tol


@pytest.mark.parametrize("method,outer,fmt", [("reverse", "adam", "dense64"),
                                              ("implicit", "sgd", "csr32"),
                                              ("checkpointed", "nesterov", "csr32")])
def test_minimize_many_follows_each_minimize(method, outer, fmt):
    prob, _ = make_problem("logistic", "feature_l2", fmt)
    lam0 = _lams(prob, 3)
    kw = dict(method=method, outer=outer, iters=4, lr=0.2, steps=8,
              bounds=(-5.0, 3.0))
    many = fb.minimize_many(prob, lam0, strategy="rows", **kw)
    assert many.diverged.tolist() == [False] * 3 and len(many) == 3
    for b in range(3):
        one = fb.minimize(prob, lam0[b], **kw)
        assert naive.rel_err(many.lam[b], one.lam) < 1e-12
        np.testing.assert_allclose(many.histories[b].outer_value, one.history.outer_value,
                                   rtol=1e-12)
        assert many.value[b] == pytest.approx(one.history.outer_value[-1], rel=1e-12)
    assert many.best == int(np.argmin(many.value))
    # one batched pass serves all starts
    assert many.histories[0].passes[-1] == many.histories[2].passes[-1]


def test_minimize_many_flags_a_divergent_start_and_refuses_hoag():
    prob, _ = make_problem("linear", "l2", "dense64", n=200)
    lam0 = np.array([0.0, -1.0])
    L = prob.lipschitz(np.array(-1.0))
    many = fb.minimize_many(prob, lam0, iters=3, steps=15, step_size=[0.5 / L, 3.0 / L],
                            check_step=False, strategy="rows")
    assert many.diverged.tolist() == [False, True]
    assert np.isnan(many.value[1]) and len(many.histories[1]) == 0
    assert len(many.histories[0]) == 3 and many.best == 0
    with pytest.raises(ValueError, match="hoag.*minimize"):
        fb.minimize_many(prob, lam0, outer="hoag", method="implicit")
    with pytest.raises(ValueError, match="lam0|lams"):
        fb.minimize_many(prob, np.zeros((2, 3)))


def test_progress_bar_over_chunks(capsys):
    pytest.importorskip("tqdm")
    prob, _ = make_problem("logistic", "l2", "dense64", n=300)
    r = fb.sweep(prob, np.linspace(-2, 0, 5), steps=4, chunk_size=2, progress=True,
                 strategy="rows")
    err = capsys.readouterr().err
    assert "sweep of 5 settings" in err and "3/3" in err
    assert r.stats["chunks"] == 3
