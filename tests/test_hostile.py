"""Bad input and hostile environments: each gets a named error that says what
to change, never a silent wrong answer, a hang or a crash."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import fastbilevel as fb
from conftest import sigint_subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _logistic(n=60, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = np.where(X @ rng.standard_normal(d) + 0.3 * rng.standard_normal(n) > 0, 1.0, -1.0)
    return X, y


def _linear_l2(n=60, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w = rng.standard_normal(d)
    Xv = rng.standard_normal((20, d))
    return fb.BilevelProblem("linear", "l2", X, X @ w + 0.5 * rng.standard_normal(n),
                             Xv, Xv @ w)


# ---------------------------------------------------------------- divergence
def test_step_size_beyond_the_stability_bound_is_refused_before_running():
    ds = fb.datasets.hypercleaning(n=300, m=60, d=40, c=4, seed=0)
    p = ds.problem()
    L = p.lipschitz(np.zeros(p.n))
    with pytest.raises(ValueError, match=r"step_size=20 .*check_step=False"):
        fb.hypergradient(p, np.zeros(p.n), step_size=20.0, steps=10)
    # momentum solvers have their own bounds: 2(1+β)/L for heavy_ball
    with pytest.raises(ValueError, match="momentum=0.5"):
        fb.hypergradient(p, np.zeros(p.n), solver="heavy_ball", momentum=0.5,
                         step_size=3.0 / L + 1e-9, steps=3)
    fb.hypergradient(p, np.zeros(p.n), solver="heavy_ball", momentum=0.5,
                     step_size=2.9 / L, steps=3)
    lin = _linear_l2()
    L = lin.lipschitz(np.array(0.0))
    for method in ("reverse", "forward", "implicit", "checkpointed"):
        with pytest.raises(ValueError, match="step_size"):
            fb.hypergradient(lin, np.array(0.0), method, step_size=3 / L, steps=5)
    with pytest.raises(ValueError, match="step_size"):
        fb.solve(lin, np.array(0.0), step_size=3 / L, steps=5)


@pytest.mark.parametrize("solver", ["gd", "heavy_ball", "agd"])
def test_divergence_is_detected_while_running(solver):
    """With the up-front check off, a diverging loop is still an error: a
    growth of g, not only a 10^6-fold jump (g grew 1.15 -> 54 on
    hyper-cleaning with step_size=20, steps=10, and was returned)."""
    ds = fb.datasets.hypercleaning(n=300, m=60, d=40, c=4, seed=0)
    p = ds.problem()
    kw = dict(step_size=20.0, steps=10, check_step=False, solver=solver)
    if solver != "gd":
        kw["momentum"] = 0.5
    with pytest.raises(ValueError, match="diverge"):
        fb.hypergradient(p, np.zeros(p.n), **kw)
    lin = _linear_l2()
    L = lin.lipschitz(np.array(0.0))
    with pytest.raises(ValueError, match="diverge"):
        fb.hypergradient(lin, np.array(0.0), step_size=3 / L, steps=5, check_step=False)


def test_multitask_memory_guard_and_divergence():
    mt = fb.datasets.few_shot(n_tasks=10, shots=5, test_shots=5, d=4, seed=0).problem(reg=0.1)
    with pytest.raises(ValueError, match="MAX_TRAJECTORY_BYTES"):
        fb.hypergradient(mt, np.zeros(4), method="reverse", steps=10**9)
    with pytest.raises(ValueError, match="MAX_TRAJECTORY_BYTES"):
        fb.hypergradient(mt, np.zeros(4), method="reverse", steps=10**10)
    with pytest.raises(ValueError, match=r"step_size=1000 .*2/L"):
        fb.hypergradient(mt, np.zeros(4), steps=10, step_size=1e3)
    with pytest.raises(ValueError, match="diverged"):
        fb.hypergradient(mt, np.zeros(4), steps=10, step_size=1e3, check_step=False)
    with pytest.raises(ValueError, match="diverged"):
        fb.minimize(mt, np.zeros(4), method="reverse", iters=2, steps=10, step_size=1e3,
                    check_step=False)


# -------------------------------------------------- bounded and interruptible
def test_hoag_refuses_zero_inner_steps():
    with pytest.raises(ValueError, match="steps >= 1"):
        fb.minimize(_linear_l2(), np.array(0.0), outer="hoag", steps=0, iters=2)


def test_inner_values_are_bounded(monkeypatch):
    lin = _linear_l2()
    monkeypatch.setattr(fb.config, "MAX_INNER_VALUES", 100)
    T = 1050
    r = fb.solve(lin, np.array(0.0), steps=T)
    full = fb.solve(lin, np.array(-1.0), steps=40)
    stride = r.stats["inner_values_stride"]
    assert stride == 11 and r.stats["inner_values"].shape == (96,)
    monkeypatch.setattr(fb.config, "MAX_INNER_VALUES", 10**6)
    ref = fb.solve(lin, np.array(0.0), steps=T).stats["inner_values"]
    assert ref.shape == (T,)
    assert np.array_equal(r.stats["inner_values"], ref[::stride])
    assert full.stats["inner_values_stride"] == 1


LONG_SOLVE = """
import sys, time, numpy as np, fastbilevel as fb
rng = np.random.default_rng(0)
X = rng.standard_normal((2000, 50))
p = fb.BilevelProblem("linear", "l2", X, X[:, 0], X[:100], X[:100, 0])
fb.{call}(p, np.array(0.0), {method}steps=3)           # compiled before the clock starts
print("running", flush=True)
t0 = time.perf_counter()
try:
    fb.{call}(p, np.array(0.0), {method}steps=10**9)
except KeyboardInterrupt:
    print("interrupted after", time.perf_counter() - t0, flush=True)
    sys.exit(3)
print("finished", flush=True)
"""


@pytest.mark.parametrize("call,method", [("solve", ""), ("hypergradient", "'forward', "),
                                         ("sweep", "'solve', ")])
def test_ctrl_c_stops_a_long_run(call, method):
    """SIGINT reaches a compiled loop of 10^9 steps (hours of work) and
    stops it with a KeyboardInterrupt. The wait is a guard against a hang,
    not a timing assertion: the measured delay is printed."""
    script = LONG_SOLVE.format(call=call, method=method)
    rc, out, err, delay = sigint_subprocess([sys.executable, "-c", script],
                                            lambda line: line.strip() == "running", wait=1.0)
    print(f"{call}: exited {delay:.3f} s after SIGINT; {out.strip()}")
    assert rc == 3, err[-2000:]
    assert "interrupted after" in out


# ----------------------------------------------------- errors that say what to do
def test_no_curvature_is_a_named_error_not_a_zero_division():
    X, y = _logistic()
    p = fb.BilevelProblem("logistic", "sample_weights", X, y, X[:10], y[:10], reg=0.0)
    with pytest.raises(ValueError, match="no curvature.*reg > 0"):
        fb.hypergradient(p, np.full(p.n, -800.0), steps=5)
    z = fb.BilevelProblem("linear", "sample_weights", np.zeros((20, 3)), np.ones(20),
                          np.zeros((5, 3)), np.ones(5), reg=0.0)
    for call in (lambda: fb.hypergradient(z, np.zeros(20), steps=5),
                 lambda: fb.hypergradient(z, np.zeros(20), "stocbio", steps=5, batch_size=4),
                 lambda: fb.minimize(z, np.zeros(20), "fsla", iters=2)):
        with pytest.raises(ValueError, match="no curvature"):
            call()


def test_overflowing_data_is_refused():
    X, y = _logistic()
    with pytest.raises(ValueError, match="X has entries up to .*scale the features"):
        fb.BilevelProblem("logistic", "l2", X * 1e200, y, X, y)
    with pytest.raises(ValueError, match="X_val has entries"):
        fb.BilevelProblem("logistic", "l2", sp.csr_matrix(X), y, sp.csr_matrix(X * 1e200), y)


def test_a_dataset_is_not_a_problem():
    ds = fb.datasets.hypercleaning(n=100, m=20, d=10, c=3)
    for call in (lambda: fb.hypergradient(ds, np.zeros(100)),
                 lambda: fb.solve(ds, np.zeros(100)),
                 lambda: fb.minimize(ds, np.zeros(100)),
                 lambda: fb.stocbio(ds, np.zeros(100))):
        with pytest.raises(TypeError, match=r"ds\.problem\(\)"):
            call()


def test_bounds_of_the_wrong_shape():
    lin = _linear_l2()
    with pytest.raises(ValueError, match=r"bounds: low has shape \(3,\)"):
        fb.minimize(lin, np.array(0.0), bounds=(np.zeros(3), 1.0), iters=2)


def test_outer_step_that_overflows_names_lr():
    """n < d with noisy labels: more regularization helps, the hypergradient
    of λ is negative, and lr=1e6 sends e^λ past float64."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((10, 40))
    Xv = rng.standard_normal((40, 40))
    p = fb.BilevelProblem("linear", "l2", X, 3 * rng.standard_normal(10), Xv,
                          np.zeros(40))
    g = fb.hypergradient(p, np.array(-3.0), steps=20).grad
    assert g < 0
    with pytest.raises(ValueError, match=r"e\^lam overflows at outer iteration 0: lower lr=1e\+06"):
        fb.minimize(p, np.array(-3.0), method="reverse", outer="sgd", lr=1e6, iters=3,
                    steps=20)
    # the other way: clean labels, where less regularization helps, and the
    # same step sends λ far down, where e^λ is 0 (no regularization left)
    w = rng.standard_normal(5)
    X, Xv = rng.standard_normal((50, 5)), rng.standard_normal((30, 5))
    clean = fb.BilevelProblem("linear", "l2", X, X @ w, Xv, Xv @ w)
    assert fb.hypergradient(clean, np.array(1.0), steps=20).grad > 0
    with pytest.raises(ValueError, match=r"took lam to -.*e\^lam is 0 .* lower lr=1e\+06"):
        fb.minimize(clean, np.array(1.0), method="reverse", outer="sgd", lr=1e6, iters=3,
                    steps=20)


def test_adam_betas_are_checked_and_lam_is_never_returned_non_finite():
    lin = _linear_l2()
    for betas in ((1.0, 0.999), (0.9, 1.0), (-0.1, 0.9), (0.9,)):
        with pytest.raises(ValueError, match="betas"):
            fb.minimize(lin, np.array(0.0), betas=betas, iters=2)


def test_multinomial_labels_must_be_encoded():
    X, _ = _logistic(n=60)
    y = np.r_[np.zeros(20), np.ones(20), np.full(19, 2.0), 10.0**6]
    with pytest.raises(ValueError, match="0..c-1 with every class present.*n_classes"):
        fb.BilevelProblem("multinomial", "l2", X, y, X[:5], np.zeros(5))
    with pytest.raises(ValueError, match="every class present"):
        fb.BilevelProblem("multinomial", "l2", X, np.r_[np.zeros(30), np.full(30, 2.0)],
                          X[:5], np.zeros(5))
    # explicit n_classes: a class may be absent from the training labels
    p = fb.BilevelProblem("multinomial", "l2", X, np.r_[np.zeros(30), np.full(30, 2.0)],
                          X[:5], np.zeros(5), n_classes=3)
    assert p.c == 3


def test_validation_does_not_touch_the_callers_csr_matrix():
    A = sp.random(30, 8, density=0.3, format="csr", random_state=0)
    A.indptr = A.indptr.astype(np.int32)
    A.indices = A.indices.astype(np.int64)
    before = (A.indptr.copy(), A.indices.copy(), A.data.copy())
    fb.BilevelProblem("linear", "l2", A, np.ones(30), A, np.ones(30))
    assert A.indptr.dtype == np.int32 and A.indices.dtype == np.int64
    for got, want in zip((A.indptr, A.indices, A.data), before):
        assert np.array_equal(got, want)


# ---------------------------------------------------------------- processes
FORK_POOL = """
import multiprocessing as mp, numpy as np, fastbilevel as fb
ds = fb.datasets.hypercleaning(n=64, m=16, d=12, c=3, seed=0)
p = ds.problem()
def work(k):
    return p.inner_value(np.zeros(p.w_shape), np.full(p.n, float(k)))
if __name__ == "__main__":
    want = [work(k) for k in range(3)]           # a kernel call before the fork
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map_async(work, range(3)).get(timeout=60)
    assert got == want, (got, want)
    import numba
    print("ok", numba.threading_layer())
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_fork_pool_after_a_kernel_call(tmp_path):
    """With GNU OpenMP the forked workers abort and the pool hangs."""
    script = tmp_path / "forkpool.py"
    script.write_text(FORK_POOL)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok")


@pytest.mark.skipif(sys.platform != "linux", reason="venv layout and pip")
def test_readme_install_sequence_leaves_a_working_package(tmp_path):
    """The README's two commands in order: a wheel install that runs a
    kernel, then an editable install over it. Numba's cache used to land in
    site-packages/fastbilevel/__pycache__, survive the uninstall and leave an
    empty namespace package that shadowed the editable install."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    py = str(venv / "bin" / "python")
    pip = [py, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = dict(cwd=elsewhere, capture_output=True, text=True, timeout=600)
    out = subprocess.run(pip + [REPO], **run)
    assert out.returncode == 0, out.stderr[-2000:]
    code = textwrap.dedent("""
        import numpy as np, fastbilevel as fb
        assert "site-packages" in fb.__file__, fb.__file__
        ds = fb.datasets.hypercleaning(n=64, m=16, d=12, c=3, seed=0)
        p = ds.problem()
        print(p.inner_value(np.zeros(p.w_shape), np.zeros(p.n)))
    """)
    out = subprocess.run([py, "-c", code], **run)
    assert out.returncode == 0, out.stderr[-2000:]
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          **run).stdout.strip()
    pkg = os.path.join(site, "fastbilevel")
    cached = [f for _, _, fs in os.walk(pkg) for f in fs if f.endswith((".nbi", ".nbc"))]
    assert cached == []
    out = subprocess.run(pip + ["-e", REPO], **run)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not os.path.exists(pkg)
    out = subprocess.run([py, "-c", "import fastbilevel as fb; print(fb.__version__, fb.__file__)"],
                         **run)
    assert out.returncode == 0, out.stderr[-2000:]
    version, path = out.stdout.split()
    assert version == fb.__version__ and path.startswith(REPO)
    out = subprocess.run([str(venv / "bin" / "fastbilevel"), "info"], **run)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kernel cache:" in out.stdout and fb.__version__ in out.stdout
