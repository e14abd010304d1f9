"""Property-based test of the public API on generated input: every call
either raises a named error (ValueError or TypeError) or returns finite
results, and never modifies its inputs."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastbilevel as fb

SPECIAL = [0.0, 1.0, -1.0, 1e-300, 1e30, 1e200, np.nan, np.inf]


@st.composite
def matrices(draw, n, d):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((n, d)) * (rng.random((n, d)) < draw(st.sampled_from([0.0, 0.5, 1.0])))
    if draw(st.integers(0, 4)) == 0:            # sometimes a few odd entries
        k = draw(st.integers(1, 3))
        for _ in range(k):
            X[rng.integers(n), rng.integers(d)] = draw(st.sampled_from(SPECIAL))
    return X


@st.composite
def labels(draw, model, n):
    kind = draw(st.sampled_from(["good"] * 8 + ["ints", "floats", "nan", "short"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "short":
        return np.zeros(max(n - 1, 0))
    if kind == "nan":
        y = np.zeros(n)
        y[0] = np.nan
        return y
    if kind == "floats":
        return rng.standard_normal(n)
    if kind == "ints":
        return rng.integers(-1, 5, n).astype(float)
    if model == "linear":
        return rng.standard_normal(n)
    if model == "logistic":
        return rng.choice([-1.0, 1.0], n)
    return np.arange(n) % 3.0


@st.composite
def cases(draw):
    model = draw(st.sampled_from(["linear", "logistic", "multinomial"]))
    hyper = draw(st.sampled_from(["sample_weights", "feature_l2", "l2", "biased_l2", "init"]))
    fmt = draw(st.sampled_from(["dense64", "csr32"]))
    n, m, d = draw(st.integers(1, 12)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    if draw(st.integers(0, 3)):                  # mostly enough rows for every class
        n = max(n, 3)
    X, Xv = draw(matrices(n, d)), draw(matrices(m, d))
    if fmt == "csr32":
        with np.errstate(over="ignore"):         # 1e200 becomes inf in float32
            X, Xv = (sp.csr_matrix(A.astype(np.float32)) for A in (X, Xv))
    y, yv = draw(labels(model, n)), draw(labels(model, m))
    reg = draw(st.sampled_from([None, None, None, 1e-3, 1.0, 0.0, -1.0]))
    method = draw(st.sampled_from(["solve", "reverse", "truncated", "forward", "implicit"]))
    solver = draw(st.sampled_from(["gd", "heavy_ball", "agd", "sgd"]))
    steps = draw(st.integers(0, 4))
    step_size = draw(st.sampled_from([None] * 6 + [1e-3, 0.5, 50.0, 0.0, -1.0, np.nan]))
    lam_kind = draw(st.sampled_from(["zeros", "random", "random", "random", "random", "huge",
                                     "nan", "wrong_shape"]))
    return dict(model=model, hyper=hyper, X=X, y=y, Xv=Xv, yv=yv, reg=reg, method=method,
                solver=solver, steps=steps, step_size=step_size, lam_kind=lam_kind)


def _lam(prob, kind, rng):
    shape = prob.lam_shape
    if kind == "wrong_shape":
        return np.zeros((prob.d + 1,))
    lam = {"zeros": np.zeros(shape), "random": rng.standard_normal(shape),
           "huge": np.full(shape, 1e300)}.get(kind)
    if kind == "nan":
        lam = np.zeros(shape)
        lam.flat[0] = np.nan
    return lam


def _snapshot(obj):
    if sp.issparse(obj):
        return ("csr", obj.indptr.dtype, obj.indices.dtype, obj.data.dtype, obj.indptr.copy(),
                obj.indices.copy(), obj.data.copy())
    return ("arr", obj.dtype, np.array(obj, copy=True))


def _same(a, b):
    return len(a) == len(b) and all(
        np.array_equal(x, y, equal_nan=True) if isinstance(x, np.ndarray) else x == y
        for x, y in zip(a, b))


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(cases())
def test_public_api_raises_named_errors_or_returns_finite_results(case):
    rng = np.random.default_rng(0)
    inputs = [case[k] for k in ("X", "y", "Xv", "yv")]
    before = [_snapshot(a) for a in inputs]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)     # reg unused by this map
            prob = fb.BilevelProblem(case["model"], case["hyper"], *inputs, reg=case["reg"])
    except (ValueError, TypeError):
        prob = None
    if prob is not None:
        lam = _lam(prob, case["lam_kind"], rng)
        lam_before = _snapshot(lam)
        kw = dict(solver=case["solver"], steps=case["steps"], step_size=case["step_size"])
        if case["method"] == "truncated":
            kw["K"] = case["steps"]
        try:
            if case["method"] == "solve":
                r = fb.solve(prob, lam, **kw)
            else:
                r = fb.hypergradient(prob, lam, case["method"], **kw)
        except (ValueError, TypeError):
            r = None
        if r is not None:
            assert np.isfinite(r.value)
            assert np.all(np.isfinite(r.w))
            if r.grad is not None:
                assert r.grad.shape == prob.lam_shape and np.all(np.isfinite(r.grad))
        assert _same(_snapshot(lam), lam_before)
    for a, b in zip(inputs, before):
        assert _same(_snapshot(a), b)


@pytest.mark.parametrize("bad", [None, "x", 1.5, -1, True])
def test_steps_must_be_a_nonnegative_integer(bad):
    p = fb.datasets.ridge(n=30, m=10, d=4, seed=0).problem()
    with pytest.raises((ValueError, TypeError), match="steps"):
        fb.hypergradient(p, np.zeros(p.lam_shape), steps=bad)
