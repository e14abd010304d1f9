"""The scikit-learn estimators: scikit-learn's own estimator checks, the
learned strength against a grid of refits, and hyper-cleaning on flipped
labels."""
import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("sklearn")

from sklearn.base import clone                                  # noqa: E402
from sklearn.exceptions import NotFittedError                    # noqa: E402
from sklearn.linear_model import LogisticRegression, Ridge       # noqa: E402
from sklearn.model_selection import GridSearchCV                 # noqa: E402
from sklearn.pipeline import make_pipeline                       # noqa: E402
from sklearn.preprocessing import StandardScaler                 # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastbilevel.sklearn import HyperLogisticRegression, HyperRidge, SampleReweighter  # noqa: E402

# small outer loops keep scikit-learn's ~50 checks per estimator quick
CHECKED = [HyperLogisticRegression(outer_iters=2, steps=20), HyperRidge(outer_iters=2, steps=20),
           SampleReweighter(outer_iters=2, steps=20)]


@parametrize_with_checks(CHECKED)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def _blobs(n=300, d=6, c=2, seed=0, flip=0.0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 2.0
    y = rng.integers(0, c, n)
    X = centers[y] + rng.standard_normal((n, d))
    noisy = np.zeros(n, dtype=bool)
    if flip:
        noisy = rng.random(n) < flip
        y = np.where(noisy, (y + 1 + rng.integers(0, c - 1, n)) % c, y)
    return X, y, noisy


def test_ridge_matches_sklearn_ridge_at_the_learned_alpha():
    # the refit is exactly scikit-learn's Ridge at alpha_ (intercept unpenalized)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 8))
    y = X @ rng.standard_normal(8) + 0.5 * rng.standard_normal(200) + 3.0
    est = HyperRidge(random_state=0).fit(X, y)
    ref = Ridge(alpha=est.alpha_).fit(X, y)
    np.testing.assert_allclose(est.coef_, ref.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(est.intercept_, ref.intercept_, rtol=1e-6, atol=1e-8)


def test_logistic_matches_sklearn_at_the_learned_C():
    X, y, _ = _blobs(c=3, seed=1)
    est = HyperLogisticRegression(random_state=0).fit(X, y)
    ref = LogisticRegression(C=est.C_, tol=1e-12, max_iter=10000).fit(X, y)
    np.testing.assert_allclose(est.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    assert est.predict_proba(X).shape == (300, 3)
    np.testing.assert_allclose(est.predict_proba(X).sum(axis=1), 1.0)


def test_learned_strength_is_near_the_best_of_a_grid():
    # the outer loop lands where the validation loss of a grid of fits is lowest
    rng = np.random.default_rng(3)
    X = rng.standard_normal((120, 40))
    y = X[:, :5] @ rng.standard_normal(5) + 2.0 * rng.standard_normal(120)
    est = HyperRidge(random_state=0, outer_iters=60).fit(X, y)
    va = est.validation_indices_
    tr = np.setdiff1d(np.arange(120), va)
    alphas = np.logspace(-3, 4, 141)
    # alpha (a strength per sum of squares) is kept from the training part to the refit
    losses = [np.mean((Ridge(alpha=a).fit(X[tr], y[tr]).predict(X[va]) - y[va]) ** 2)
              for a in alphas]
    best = alphas[int(np.argmin(losses))]
    assert abs(np.log(est.alpha_ / best)) < 0.05
    assert est.history_.outer_value[-1] < est.history_.outer_value[0]


def test_sparse_equals_dense():
    X, y, _ = _blobs(c=2, seed=2)
    X[np.abs(X) < 0.8] = 0.0
    a = HyperLogisticRegression(random_state=0, outer_iters=8).fit(X, y)
    b = HyperLogisticRegression(random_state=0, outer_iters=8).fit(sp.csr_matrix(X), y)
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.lam_, b.lam_, rtol=1e-9)


def test_feature_l2_fits_the_validation_set_at_least_as_well_as_l2():
    # one strength per feature contains the tied one (the same start and split):
    # its outer loop reaches a lower validation loss, with λ spread per feature
    rng = np.random.default_rng(4)
    X = rng.standard_normal((100, 10))
    y = X[:, :3] @ np.array([2.0, -1.0, 1.5]) + rng.standard_normal(100)
    tied = HyperRidge(random_state=0, outer_iters=60).fit(X, y)
    free = HyperRidge(hyper="feature_l2", random_state=0, outer_iters=60).fit(X, y)
    assert free.lam_.shape == (10,) and np.ndim(tied.lam_) == 0
    assert free.history_.outer_value[0] == pytest.approx(tied.history_.outer_value[0], rel=1e-6)
    assert free.history_.outer_value.min() < 0.9 * tied.history_.outer_value.min()
    assert np.ptp(free.lam_) > 5.0


def test_cv_folds_and_string_labels():
    X, y, _ = _blobs(c=3, seed=5)
    labels = np.array(["ant", "bee", "cat"])[y]
    est = HyperLogisticRegression(cv=3, random_state=0, outer_iters=5).fit(X, labels)
    assert list(est.classes_) == ["ant", "bee", "cat"]
    assert est.validation_indices_ is None
    assert (est.predict(X) == labels).mean() > 0.9


def test_pipeline_gridsearch_clone_and_not_fitted():
    X, y, _ = _blobs(c=2, seed=6)
    pipe = make_pipeline(StandardScaler(), HyperLogisticRegression(outer_iters=5))
    gs = GridSearchCV(pipe, {"hyperlogisticregression__hyper": ["l2", "feature_l2"]}, cv=2)
    gs.fit(X, y)
    assert gs.best_score_ > 0.9
    fresh = clone(HyperRidge(steps=7))
    assert fresh.get_params()["steps"] == 7
    with pytest.raises(NotFittedError):
        fresh.predict(X)


def test_bad_parameters_are_named():
    X, y, _ = _blobs()
    with pytest.raises(ValueError, match="hyper="):
        HyperLogisticRegression(hyper="l1").fit(X, y)
    with pytest.raises(ValueError, match="validation_fraction="):
        HyperRidge(validation_fraction=1.5).fit(X, y.astype(float))
    with pytest.raises(ValueError, match="C="):
        SampleReweighter(C=0.0).fit(X, y)
    with pytest.raises(ValueError, match="X_val and y_val"):
        SampleReweighter().fit(X, y, X_val=X)


def test_reweighter_finds_flipped_labels():
    X, y, noisy = _blobs(n=400, c=2, seed=7, flip=0.2)
    Xv, yv, _ = _blobs(n=100, c=2, seed=7)           # same centers, clean labels
    Xv, yv = Xv[:100], yv[:100]
    est = SampleReweighter(random_state=0).fit(X, y, Xv, yv)
    assert est.sample_weight_.shape == (400,)
    # the flipped samples get the lowest weights: most of the first |noisy| suspects
    k = int(noisy.sum())
    assert noisy[est.suspicious_[:k]].mean() > 0.8
    assert est.sample_weight_[noisy].mean() < est.sample_weight_[~noisy].mean() - 0.2
    # and the reweighted model beats the unweighted one on clean data
    plain = LogisticRegression(C=1.0 / (1e-3 * 400)).fit(X, y)
    Xt, yt, _ = _blobs(n=2000, c=2, seed=7)
    assert est.score(Xt, yt) >= plain.score(Xt, yt)


def test_reweighter_holdout_keeps_weight_one():
    X, y, _ = _blobs(n=120, c=3, seed=8)
    est = SampleReweighter(outer_iters=3, random_state=0).fit(X, y)
    va = est.validation_indices_
    assert va.size == 30
    np.testing.assert_array_equal(est.sample_weight_[va], 1.0)
    assert np.intersect1d(est.suspicious_, va).size == 0
    assert est.suspicious_.size == 90


def test_without_scikit_learn_the_error_names_the_extra():
    import subprocess
    import sys
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import fastbilevel.sklearn\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'fastbilevel[sklearn]'" in out.stdout
