import numpy as np
import pytest

import fastbilevel as fb


def test_hypercleaning_seeded_and_corrupted():
    a = fb.datasets.hypercleaning(n=400, m=100, d=20, c=5, seed=3)
    b = fb.datasets.hypercleaning(n=400, m=100, d=20, c=5, seed=3)
    assert np.array_equal(a.X, b.X) and np.array_equal(a.y, b.y)
    frac = a.info["corrupted"].mean()
    assert 0.25 < frac < 0.55          # 50% resampled uniformly: ~40% actually change
    assert np.array_equal(a.y[~a.info["corrupted"]], a.info["y_clean"][~a.info["corrupted"]])
    p = a.problem()
    assert p.model == "multinomial" and p.hyper == "sample_weights" and p.c == 5


def test_text_is_canonical_sparse_power_law():
    ds = fb.datasets.text(n=500, m=200, d=5000, row_nnz=40, seed=1)
    assert ds.X.has_canonical_format and ds.X.shape == (500, 5000)
    counts = np.bincount(ds.X.indices, minlength=5000)
    top = np.sort(counts)[::-1]
    assert top[:50].sum() > 10 * top[-2500:].sum()   # heavy head, long tail
    p = ds.problem()
    assert p.sparse and p.model == "logistic" and set(np.unique(p.y)) <= {-1.0, 1.0}


def test_ridge_and_float32():
    ds = fb.datasets.ridge(n=50, m=20, d=8, dtype=np.float32)
    assert ds.X.dtype == np.float32 and ds.problem().dtype == np.float32


def test_load_sklearn_optional():
    try:
        import sklearn  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="scikit-learn"):
            fb.datasets.load_sklearn("digits")
        return
    ds = fb.datasets.load_sklearn("breast_cancer")
    assert ds.problem().model == "logistic"
    with pytest.raises(ValueError, match="name='iris'"):
        fb.datasets.load_sklearn("iris")


def test_binary_is_logistic_with_two_classes():
    ds = fb.datasets.binary(n=300, m=100, d=20, corruption=0.2, seed=3)
    assert ds.model == "logistic" and ds.hyper == "l2"
    assert set(np.unique(ds.y)) <= {0.0, 1.0} and set(np.unique(ds.y_val)) <= {0.0, 1.0}
    assert 0 < ds.info["corrupted"].mean() < 0.2
    prob = ds.problem()
    assert prob.c == 1 and prob.lam_shape == ()
