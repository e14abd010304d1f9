import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

import fastbilevel as fb
from naive import Spec

def pytest_addoption(parser):
    parser.addoption(
        "--all-formats", action="store_true", default=False,
        help="run the format-parametrized tests on all four data formats (dense and "
             "CSR, float64 and float32; each compiles every kernel once more); by "
             f"default they run on {', '.join(DEFAULT_FORMATS)} and, where a test asks "
             "for it, dense float32 (its tiles' own arithmetic). The environment "
             f"variable {ALL_FORMATS_ENV}=1 does the same.")


def pytest_configure(config):
    config.addinivalue_line("markers", "combo_formats(*formats): formats the combo "
                            "fixture adds to the default tier for this test")
    if config.getoption("--all-formats"):
        # read by the test modules and by the scripts they run in subprocesses
        os.environ[ALL_FORMATS_ENV] = "1"
    # with -n, tests marked xdist_group (test_cuda.py: its simulator run is
    # shared by its tests) run on one worker, the rest balanced as usual: the
    # controller schedules by group, the workers tag the marked tests' ids
    if getattr(config.option, "numprocesses", None) and config.option.dist == "load":
        config.option.dist = "loadgroup"
    if hasattr(config, "workerinput"):
        config.option.loadgroup = True


MODELS = ["linear", "logistic", "multinomial"]
HYPERS = ["sample_weights", "feature_l2", "l2", "biased_l2", "init"]
# Every kernel compiles once per data format and dtype, and compiling is most
# of a cold run's time. The default tier runs the format-parametrized tests
# on both layouts and both dtypes, dense float64 and CSR float32, plus dense
# float32 where a test asks for it (its tiles multiply in float32: their own
# code); --all-formats (or the variable) adds the other two everywhere.
FORMATS = ["dense64", "dense32", "csr64", "csr32"]
DEFAULT_FORMATS = ["dense64", "csr32"]
ALL_FORMATS_ENV = "FASTBILEVEL_TEST_ALL_FORMATS"


def all_formats():
    return os.environ.get(ALL_FORMATS_ENV) == "1"


def tier_formats(*extra):
    """The formats of this run's tier, in FORMATS's order: all four with
    --all-formats, else DEFAULT_FORMATS and ``extra``."""
    return [f for f in FORMATS if all_formats() or f in DEFAULT_FORMATS or f in extra]


def make_data(model, fmt, n=37, m=6, d=5, c=3, seed=0, density=0.6):
    """Small random data in the requested format; float32 data is rounded
    before it reaches both the kernels and the naive reference."""
    rng = np.random.default_rng(seed)
    dt = np.float32 if fmt.endswith("32") else np.float64
    X = rng.standard_normal((n, d)) * (rng.random((n, d)) < density)
    Xv = rng.standard_normal((m, d)) * (rng.random((m, d)) < density)
    X, Xv = X.astype(dt).astype(float), Xv.astype(dt).astype(float)
    if model == "linear":
        y, yv = rng.standard_normal(n), rng.standard_normal(m)
    elif model == "logistic":
        y, yv = rng.choice([-1.0, 1.0], n), rng.choice([0.0, 1.0], m)
    else:
        y, yv = rng.integers(0, c, n).astype(float), rng.integers(0, c, m).astype(float)
    if fmt.startswith("csr"):
        X, Xv = sp.csr_matrix(X.astype(dt)), sp.csr_matrix(Xv.astype(dt))
    else:
        X, Xv = X.astype(dt), Xv.astype(dt)
    return X, y, Xv, yv


# dense float32 rows are multiplied in float32 (their tiles' arithmetic),
# so results on them agree with float64 arithmetic to float32 rounding only;
# measured up to 3.5e-7 relative on the test problems
DENSE32_TOL = 2e-6


def tol(prob, exact):
    """The tolerance of a comparison that holds to ``exact`` in float64
    arithmetic (float64 data, and CSR data, multiplied in float64)."""
    dense = not getattr(prob, "sparse", False)        # a MultiTaskProblem is dense
    return max(exact, DENSE32_TOL) if prob.dtype == np.float32 and dense else exact


def make_problem(model, hyper, fmt, seed=0, reg=0.3, **kw):
    X, y, Xv, yv = make_data(model, fmt, seed=seed, **kw)
    c = kw.get("c", 3) if model == "multinomial" else 1
    r = None if hyper in ("feature_l2", "l2") else reg
    prob = fb.BilevelProblem(model, hyper, X, y, Xv, yv, reg=r,
                             n_classes=c if model == "multinomial" else None)
    return prob, Spec(model, hyper, X, y, Xv, yv, reg=r, c=c)


def random_lam(prob, seed=1):
    rng = np.random.default_rng(seed)
    h = prob.hyper
    if h == "sample_weights":
        return rng.standard_normal(prob.n)
    if h == "feature_l2":
        return rng.normal(-1.0, 0.5, prob.d)
    if h == "l2":
        return np.array(-1.0)
    return rng.standard_normal(prob.w_shape)


# Modules whose format-parametrized tests each compile a large kernel family
# per format (the batched sweep kernels, the solver family's driver): with
# -n, one worker runs all of a module's tests on one format, so that two
# workers never compile the same kernels at the same time (each worker
# compiles on its own, and the cache only helps once one has finished).
FORMAT_GROUPED = ("test_sweep.py", "test_solvers.py")


@pytest.hookimpl(tryfirst=True)      # before xdist's worker reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        fmt = getattr(item, "callspec", None) and item.callspec.params.get("fmt")
        if fmt and item.path.name in FORMAT_GROUPED:
            item.add_marker(pytest.mark.xdist_group(f"{item.path.stem}-{fmt}"))


def pytest_generate_tests(metafunc):
    """``combo``: every model × map × format of the tier; a test marked
    ``combo_formats(*formats)`` runs those formats in the default tier too."""
    if "combo" in metafunc.fixturenames:
        mark = metafunc.definition.get_closest_marker("combo_formats")
        fmts = tier_formats(*(mark.args if mark else ()))
        metafunc.parametrize("combo", [(m, h, f) for m in MODELS for h in HYPERS for f in fmts],
                             ids="-".join)


def same_output_on_1_and_2_threads(script):
    """Run ``script`` in fresh processes with 1 and 2 Numba threads and
    assert both print the same non-empty text."""
    outs = []
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        outs.append(subprocess.run([sys.executable, "-c", script], env=env, check=True,
                                   capture_output=True, text=True).stdout)
    assert outs[0] == outs[1] and outs[0].strip()


def sigint_subprocess(args, ready, wait=0.0):
    """Run ``args`` (a command list), wait for its first stdout line (checked
    by ``ready(line)``) and ``wait`` seconds more, send SIGINT and collect
    it: (returncode, stdout, stderr, seconds from SIGINT to exit). The
    120 s limit guards against a hang; the delay is for printing, never
    for asserting."""
    import signal
    import time
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert ready(line), (line, proc.stderr.read()[-2000:] if proc.poll() is not None else "")
        time.sleep(wait)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, out, err, time.perf_counter() - t0
