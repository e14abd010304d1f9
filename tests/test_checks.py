"""Bad input gets a clear error naming the argument and the problem."""
import numpy as np
import pytest
import scipy.sparse as sp

import fastbilevel as fb
from conftest import make_data


def _ok(**over):
    X, y, Xv, yv = make_data("logistic", "dense64", n=9)
    kw = dict(model="logistic", hyper="l2", X=X, y=y, X_val=Xv, y_val=yv)
    kw.update(over)
    return kw


@pytest.mark.parametrize("over,exc,msg", [
    (dict(model="svm"), ValueError, "model='svm'"),
    (dict(hyper="l1"), ValueError, "hyper='l1'"),
    (dict(X=np.ones(9)), ValueError, "X must be 2-D"),
    (dict(X=np.full((9, 5), np.nan)), ValueError, "X contains NaN"),
    (dict(X=np.ones((9, 5), dtype=complex)), TypeError, "X has dtype complex"),
    (dict(X_val=np.ones((6, 4))), ValueError, "X_val has 4 features"),
    (dict(y=np.ones(8)), ValueError, "y has 8 labels for 9 samples"),
    (dict(y=np.r_[np.ones(8), 2.0]), ValueError, "y: logistic labels"),
    (dict(y_val=np.r_[np.ones(5), np.inf]), ValueError, "y_val contains NaN"),
    (dict(dtype=np.int32), TypeError, "dtype"),
    (dict(X=np.ones((0, 5)), y=np.ones(0)), ValueError, "X is empty"),
])
def test_problem_input_errors(over, exc, msg):
    with pytest.raises(exc, match=msg):
        fb.BilevelProblem(**_ok(**over))


def test_non_canonical_csr_refused_and_other_sparse_formats_converted():
    X = sp.csr_matrix((np.array([1.0, 2.0]), np.array([3, 1]), np.array([0, 2, 2])), shape=(2, 5))
    assert not X.has_canonical_format
    kw = dict(model="linear", hyper="l2", X=X, y=np.zeros(2), X_val=np.ones((1, 5)), y_val=np.zeros(1))
    with pytest.raises(ValueError, match="X is a non-canonical CSR"):
        fb.BilevelProblem(**kw)
    X.sum_duplicates()
    p = fb.BilevelProblem(**kw)
    assert p.sparse and p.nnz == 2
    kw["X"] = sp.coo_matrix(X.toarray())
    assert fb.BilevelProblem(**kw).sparse
    bad = sp.csr_matrix(X)
    bad.indices = np.array([3, 9], dtype=np.int32)
    kw["X"] = bad
    with pytest.raises(ValueError, match="X is not a valid CSR"):
        fb.BilevelProblem(**kw)


def test_multinomial_labels():
    X, y, Xv, yv = make_data("multinomial", "dense64")
    with pytest.raises(ValueError, match="y: multinomial labels must be integers"):
        fb.BilevelProblem("multinomial", "l2", X, y + 0.5, Xv, yv)
    with pytest.raises(ValueError, match="n_classes=2 but labels go up to 2"):
        fb.BilevelProblem("multinomial", "l2", X, y, Xv, yv, n_classes=2)
    assert fb.BilevelProblem("multinomial", "l2", X, y, Xv, yv, n_classes=5).c == 5


def test_reg_checks():
    X, y, Xv, yv = make_data("linear", "dense64")
    with pytest.raises(ValueError, match="reg=-1.0 must be >= 0"):
        fb.BilevelProblem("linear", "sample_weights", X, y, Xv, yv, reg=-1.0)
    with pytest.raises(ValueError, match="reg=0.0 must be > 0"):
        fb.BilevelProblem("linear", "biased_l2", X, y, Xv, yv, reg=0.0)
    with pytest.warns(UserWarning, match="reg is unused"):
        fb.BilevelProblem("linear", "l2", X, y, Xv, yv, reg=1.0)


def test_hypergradient_argument_errors():
    p = fb.BilevelProblem(**_ok())
    lam = np.array(0.0)
    with pytest.raises(ValueError, match="method='nope'"):
        fb.hypergradient(p, lam, method="nope")
    with pytest.raises(ValueError, match="solver='adam'"):
        fb.hypergradient(p, lam, solver="adam")
    with pytest.raises(TypeError, match="steps=2.5 must be an integer"):
        fb.hypergradient(p, lam, steps=2.5)
    with pytest.raises(ValueError, match="steps=-1 must be >= 0"):
        fb.hypergradient(p, lam, steps=-1)
    with pytest.raises(ValueError, match="step_size=-0.1 must be > 0"):
        fb.hypergradient(p, lam, step_size=-0.1)
    with pytest.raises(ValueError, match="step_size=inf must be finite"):
        fb.hypergradient(p, lam, step_size=np.inf)
    with pytest.raises(ValueError, match=r"lam has shape \(3,\), expected \(\)"):
        fb.hypergradient(p, np.zeros(3))
    with pytest.raises(ValueError, match="lam contains NaN"):
        fb.hypergradient(p, np.nan)
    with pytest.raises(ValueError, match="lam is too large"):
        fb.hypergradient(p, 1000.0)
    with pytest.raises(ValueError, match=r"w0 has shape \(2,\)"):
        fb.hypergradient(p, lam, w0=np.zeros(2))
    assert fb.hypergradient(p, np.array([0.0]), steps=2).grad.shape == ()


def test_trajectory_memory_limit(monkeypatch):
    p = fb.BilevelProblem(**_ok())
    monkeypatch.setattr(fb.config, "MAX_TRAJECTORY_BYTES", 1000)
    with pytest.raises(ValueError, match="steps=100: method='reverse' would store"):
        fb.hypergradient(p, 0.0, steps=100)
