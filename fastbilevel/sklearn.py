"""scikit-learn estimators that learn their regularization by hypergradient
descent (``pip install 'fastbilevel[sklearn]'``).

* :class:`HyperLogisticRegression` and :class:`HyperRidge`: ``fit`` holds out
  a validation part, learns one ridge strength (``hyper="l2"``) or one per
  feature (``hyper="feature_l2"``) by descending the validation loss with
  hypergradients, then refits on all the data with the learned strength.
* :class:`SampleReweighter`: hyper-cleaning as a tool — learns a weight
  σ(λ_i) ∈ (0, 1) per training sample so that the model trained on the
  weighted samples does well on a trusted validation set; the samples with
  the lowest weights are the suspicious ones (e.g. mislabeled).

All three are ordinary scikit-learn estimators (``clone``, ``Pipeline``,
``GridSearchCV``, ``check_estimator``). Dense and sparse X; the data are
used in float64. An unpenalized intercept is fitted as a constant column
inside (its penalty is fixed at 1e-8, far below any learned strength).

The penalty convention is that of the package: the inner objective is
(1/n) Σ_i ℓ(x_iᵀw; y_i) + ½ Σ_j e^{λ_j} w_j², so e^λ is a strength per
sample. In scikit-learn's terms, LogisticRegression's C = 1/(n·e^λ) and
Ridge's alpha = n·e^λ (for least squares ℓ = ½ r²); the refit on all n
samples keeps C (alpha) fixed, i.e. shifts λ by log(n_train/n).
"""
import math
import numbers
import time

import numpy as np
import scipy.sparse as sp

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data
except ImportError as e:                         # pragma: no cover (tested in a subprocess)
    raise ImportError("fastbilevel.sklearn needs scikit-learn >= 1.6: "
                      "pip install 'fastbilevel[sklearn]'") from e

from ._results import History
from .hypergrad import hypergradient, solve
from .minimize import _outer_step
from .problem import BilevelProblem

__all__ = ["HyperLogisticRegression", "HyperRidge", "SampleReweighter"]

_LAM_INTERCEPT = math.log(1e-8)      # the intercept column's (fixed) log-strength
_METHODS = ("implicit", "reverse", "checkpointed", "recompute", "forward", "truncated")


# ------------------------------------------------------------------ helpers
def _check_param(name, value, kind, low=None, high=None, choices=None):
    """Validate one constructor parameter at fit time (scikit-learn style)."""
    if choices is not None:
        if value not in choices:
            raise ValueError(f"{name}={value!r}: choose one of {list(choices)}")
        return value
    ok = (isinstance(value, numbers.Integral) if kind is int
          else isinstance(value, numbers.Real)) and not isinstance(value, bool)
    if not ok or (kind is float and not math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be a{'n integer' if kind is int else ' real'}"
                         " number")
    if (low is not None and value < low) or (high is not None and value > high):
        rng = f"[{low}, {'inf' if high is None else high}]"
        raise ValueError(f"{name}={value!r} must be in {rng}")
    return value


def _split(n, fraction, rng, labels=None):
    """Train / validation indices: ``fraction`` of the samples held out
    (stratified by ``labels``: every class keeps at least one training
    sample), at least one on each side."""
    if n < 2:
        raise ValueError(f"fit needs at least 2 samples (one to train, one to validate); got "
                         f"{n} sample")
    groups = [np.arange(n)] if labels is None else \
        [np.flatnonzero(labels == k) for k in np.unique(labels)]
    val = []
    for g in groups:
        g = rng.permutation(g)
        k = min(int(round(fraction * g.size)), g.size - 1)
        val.append(g[:k])
    val = np.sort(np.concatenate(val)).astype(np.intp)
    if val.size == 0:                            # tiny data: hold out one sample
        big = max(groups, key=len)
        val = np.array([rng.choice(big) if big.size > 1 else rng.integers(n)], dtype=np.intp)
    train = np.setdiff1d(np.arange(n), val)
    return train, val


def _folds(n, cv, fraction, rng, labels=None):
    """[(train, validation)]: one hold-out split (``cv=None``) or ``cv``
    folds (stratified by ``labels`` when given; every sample validates once)."""
    if cv is None:
        return [_split(n, fraction, rng, labels)]
    if n < cv:
        raise ValueError(f"cv={cv} folds need at least {cv} samples; got {n} samples")
    # shuffle within each class, then deal the samples to the folds in turn
    if labels is None:
        order = rng.permutation(n)
    else:
        order = np.concatenate([rng.permutation(np.flatnonzero(labels == k))
                                for k in np.unique(labels)])
    fold_of = np.empty(n, dtype=np.intp)
    fold_of[order] = np.arange(n) % cv
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(cv)]


def _with_intercept(X):
    """X with a constant column appended (same format)."""
    if sp.issparse(X):
        return sp.hstack([X, np.ones((X.shape[0], 1))], format="csr", dtype=np.float64)
    return np.hstack([X, np.ones((X.shape[0], 1))])


def _momentum(problem, lam_full, mu):
    """AGD's β from κ = L/μ, μ the smallest learned strength (the intercept's
    tiny fixed penalty is left out: its curvature comes from the loss)."""
    q = math.sqrt(max(problem.lipschitz(lam_full) / mu, 1.0))
    return min((q - 1.0) / (q + 1.0), 0.999)


def _solve_to(problem, lam, w, tol, chunk, max_steps, momentum, scale):
    """AGD in warm-started chunks of ``chunk`` steps until
    ‖∇_w g‖ ≤ tol·scale or ``max_steps``: returns (w, passes over the data)."""
    done = 0
    while True:
        w = solve(problem, lam, "agd", chunk, w0=w, momentum=momentum).w
        done += chunk
        if done >= max_steps or \
                np.linalg.norm(problem.inner_grad(w, lam)) <= tol * scale:
            return w, done + -(-done // chunk)      # steps + one gradient pass per chunk


class _Outer:
    """Adam on the learned log-strengths θ (or logits), with bounds; keeps
    the point of lowest validation loss."""

    def __init__(self, theta0, lr, bounds):
        self.theta = np.array(theta0, dtype=np.float64)
        self.z = self.theta.copy()
        self.m1 = np.zeros_like(self.theta)
        self.m2 = np.zeros_like(self.theta)
        self.lr, self.bounds = lr, bounds
        self.best = (math.inf, self.theta.copy(), None)

    def step(self, k, value, grad, w):
        if value < self.best[0]:
            self.best = (value, self.theta.copy(), w)
        self.theta, self.z, self.m1, self.m2 = _outer_step(
            "adam", k, self.lr, None, (0.9, 0.999), 0.0, self.bounds, self.theta, self.z,
            self.m1, self.m2, grad)


def _hypergradient_step(prob, lam, w, v, est, beta, scale):
    """One outer iteration's hypergradient for an estimator's settings:
    ``implicit`` solves the inner problem to ``est.tol`` first (warm start
    ``w``) and warm-starts CG from ``v``; the unrolled methods differentiate
    ``est.steps`` AGD steps from ``w``. Returns (result, w, v, passes)."""
    if est.method == "implicit":
        w, passes = _solve_to(prob, lam, w, est.tol, est.steps, est.max_inner_steps, beta,
                              scale)
        r = hypergradient(prob, lam, "implicit", "agd", steps=0, w0=w, v0=v, momentum=beta,
                          tol=est.tol)
        return r, w, r.stats["v"], passes + r.stats["passes"]
    r = hypergradient(prob, lam, est.method, "agd", steps=est.steps, w0=w, momentum=beta)
    return r, r.w, v, r.stats["passes"]


class _HyperBase(BaseEstimator):
    """What the three estimators share: sparse input, and the checks of the
    outer-loop parameters."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    def _check_outer_params(self):
        _check_param("method", self.method, None, choices=_METHODS)
        _check_param("steps", self.steps, int, low=1)
        _check_param("outer_iters", self.outer_iters, int, low=0)
        _check_param("lr", self.lr, float, low=0.0)
        _check_param("validation_fraction", self.validation_fraction, float, low=0.01,
                     high=0.9)
        _check_param("tol", self.tol, float, low=0.0)
        _check_param("max_inner_steps", self.max_inner_steps, int, low=1)


# ----------------------------------------------------- regularization learners
class _HyperLinear(_HyperBase):
    """Shared fit of HyperLogisticRegression and HyperRidge."""

    _model_kind = None          # "classifier" | "regressor"

    def __init__(self, hyper="l2", method="implicit", steps=50, outer_iters=30, lr=0.3,
                 lam0=None, validation_fraction=0.25, cv=None, tol=1e-4,
                 max_inner_steps=2000, random_state=None):
        self.hyper = hyper
        self.method = method
        self.steps = steps
        self.outer_iters = outer_iters
        self.lr = lr
        self.lam0 = lam0
        self.validation_fraction = validation_fraction
        self.cv = cv
        self.tol = tol
        self.max_inner_steps = max_inner_steps
        self.random_state = random_state

    def _check_params(self):
        if self.cv is not None:
            _check_param("cv", self.cv, int, low=2)
        _check_param("hyper", self.hyper, None, choices=("l2", "feature_l2"))
        self._check_outer_params()
        if self.lam0 is not None:
            _check_param("lam0", self.lam0, float)

    def _learn(self, X, y, model, n_classes, strat):
        """The outer loop and the refit; sets the fitted attributes."""
        self._check_params()
        t0 = time.perf_counter()
        n, d = X.shape
        rng = check_random_state(self.random_state)
        folds = _folds(n, self.cv, self.validation_fraction, rng, strat)
        Xa = _with_intercept(X)
        nc = n_classes if model == "multinomial" else None
        probs = [BilevelProblem(model, "feature_l2", Xa[tr], y[tr], Xa[va], y[va],
                                n_classes=nc) for tr, va in folds]
        n_tr = float(np.mean([tr.size for tr, _ in folds]))
        tied = self.hyper == "l2"
        theta0 = math.log(1.0 / n_tr) if self.lam0 is None else float(self.lam0)
        outer = _Outer(np.full(() if tied else (d,), theta0), self.lr, (-18.0, 8.0))

        def full(theta):
            return np.append(np.broadcast_to(theta, (d,)), _LAM_INTERCEPT)

        K = len(folds)
        ws, vs = [None] * K, [None] * K
        scales = [max(float(np.linalg.norm(p.inner_grad(np.zeros(p.w_shape), full(theta0)))),
                      1e-300) for p in probs]
        hist = History()
        passes = 0
        for k in range(self.outer_iters):
            lam = full(outer.theta)
            mu = math.exp(float(np.min(outer.theta)))
            value, g, resid, lin, inner_g = 0.0, 0.0, 0.0, 0, 0.0
            for f, prob in enumerate(probs):     # the outer loss: the mean over the folds
                r, ws[f], vs[f], p = _hypergradient_step(prob, lam, ws[f], vs[f], self,
                                                         _momentum(prob, lam, mu), scales[f])
                passes += p
                if self.method == "implicit":
                    resid = max(resid, r.stats["residual"])
                    lin += r.stats["linear_steps"]
                value += r.value / K
                g = g + r.grad[:d] / K
                inner_g = max(inner_g, float(np.linalg.norm(prob.inner_grad(r.w, lam))))
            g = np.sum(g) if tied else g
            hist._append(outer_value=value, grad_norm=float(np.linalg.norm(g)),
                         inner_grad_norm=inner_g,
                         residual=resid if self.method == "implicit" else math.nan,
                         linear_steps=lin, passes=passes, rows=passes * n_tr,
                         time_s=time.perf_counter() - t0, accepted=True, tol=math.nan)
            outer.step(k, value, g, ws[0])
        best = outer.best if np.isfinite(outer.best[0]) else (None, outer.theta, ws[0])
        # refit on all n samples with C (alpha) kept: λ shifts by log(n_train / n)
        lam_ = best[1] + math.log(n_tr / n)
        lam_all = full(lam_)
        prob_all = BilevelProblem(model, "feature_l2", Xa, y, Xa, y, n_classes=nc)
        beta = _momentum(prob_all, lam_all, math.exp(float(np.min(lam_))))
        w_all, _ = _solve_to(prob_all, lam_all, best[2], self.tol * 1e-4, max(self.steps, 100),
                             max(self.max_inner_steps, 20000), beta, scales[0])
        self.lam_ = float(lam_) if tied else lam_
        self.history_ = hist
        self.n_iter_ = len(hist)
        self.validation_indices_ = folds[0][1] if self.cv is None else None
        self._set_coef(w_all, d)
        return self


def _scores(est, X):
    check_is_fitted(est)
    X = validate_data(est, X, accept_sparse="csr", dtype=np.float64, reset=False)
    s = X @ est.coef_.T + est.intercept_
    return np.asarray(s)


class _LinearClassifier(ClassifierMixin):
    """decision_function / predict / predict_proba from coef_ and intercept_
    (binary: logistic; multiclass: softmax)."""

    def _encode(self, y):
        check_classification_targets(y)
        enc = LabelEncoder()
        yk = enc.fit_transform(y)
        self.classes_ = enc.classes_
        c = self.classes_.size
        if c < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; got "
                             f"1 class ({self.classes_[0]!r})")
        return yk.astype(np.float64), c

    def _set_coef(self, w, d):
        if self.classes_.size == 2:
            self.coef_ = w[:d].reshape(1, d).copy()
            self.intercept_ = np.array([w[d]])
        else:
            self.coef_ = np.ascontiguousarray(w[:d].T)
            self.intercept_ = w[d].copy()

    def decision_function(self, X):
        """Scores: x·w + b, shape (n,) for two classes (positive: classes_[1]),
        else (n, n_classes)."""
        s = _scores(self, X)
        return s.ravel() if self.classes_.size == 2 else s

    def predict_proba(self, X):
        """Class probabilities, shape (n, n_classes): logistic for two
        classes, softmax otherwise."""
        s = self.decision_function(X)
        if self.classes_.size == 2:
            p = 0.5 * (1.0 + np.tanh(0.5 * s))            # σ(s) without overflow
            return np.column_stack([1.0 - p, p])
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        return e / e.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        return np.log(self.predict_proba(X))

    def predict(self, X):
        s = self.decision_function(X)
        k = (s > 0).astype(np.intp) if self.classes_.size == 2 else np.argmax(s, axis=1)
        return self.classes_[k]


class HyperLogisticRegression(_LinearClassifier, _HyperLinear):
    """Logistic regression (binary) or multinomial logistic regression
    (multiclass) whose ridge strength is learned by hypergradient descent on
    a held-out validation loss.

    ``fit`` holds out ``validation_fraction`` of the samples (stratified),
    runs ``outer_iters`` Adam steps (step ``lr``) on λ, the log of the ridge
    strength (one, ``hyper="l2"``, or one per feature, ``"feature_l2"``),
    with the hypergradient of the validation cross-entropy at every step,
    keeps the λ of lowest validation loss, and refits on all the samples.

    Parameters
    ----------
    hyper : {"l2", "feature_l2"}, default "l2"
    method : {"implicit", "reverse", "checkpointed", "recompute", "forward", "truncated"}
        Hypergradient estimator. ``implicit`` (default): the inner problem is
        solved to ``tol`` by warm-started accelerated gradient descent and
        the hypergradient comes from a CG solve; the others differentiate
        ``steps`` warm-started AGD steps.
    steps : int, default 50
        Inner AGD steps per outer iteration (for ``implicit``: per chunk).
    outer_iters : int, default 30
    lr : float, default 0.3
        Adam step on λ (natural-log units).
    lam0 : float, optional
        Starting λ (default log(1/n_train): scikit-learn's C = 1).
    validation_fraction : float in [0.01, 0.9], default 0.25
    cv : int ≥ 2, optional
        Instead of one hold-out part: ``cv`` folds (stratified), the outer
        loss being the mean validation loss over the folds (each fold its
        own inner problem; ``cv`` times the work).
    tol : float, default 1e-4
        Inner and linear-system tolerance, relative to ‖∇g(0)‖ (the refit
        solves to ``tol``·1e-4).
    max_inner_steps : int, default 2000
    random_state : int, RandomState or None
        The validation split.

    Attributes
    ----------
    coef_ : (1, n_features) or (n_classes, n_features)
    intercept_ : (1,) or (n_classes,)
    lam_ : float or (n_features,) — learned log-strength(s) used in the
        refit (per sample: C = 1/(n·e^lam_)).
    C_ : float or (n_features,) — the same as scikit-learn's C.
    classes_, n_features_in_, n_iter_ (outer iterations),
    history_ : :class:`fastbilevel.History` of the outer loop (over the
        folds: mean outer value, largest residuals, summed passes),
    validation_indices_ : the held-out samples (None with ``cv``).
    """

    def fit(self, X, y):
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64)
        yk, c = self._encode(y)
        model = "logistic" if c == 2 else "multinomial"
        self._learn(X, yk, model, c, yk)
        self.C_ = 1.0 / (X.shape[0] * np.exp(self.lam_))
        return self


class HyperRidge(RegressorMixin, _HyperLinear):
    """Ridge regression whose strength is learned by hypergradient descent
    on a held-out validation loss (see :class:`HyperLogisticRegression` for
    the parameters; the validation loss is the mean squared error).

    Attributes
    ----------
    coef_ : (n_features,); intercept_ : float;
    lam_ : float or (n_features,) — learned log-strength(s) of the refit;
    alpha_ : the same as scikit-learn's Ridge alpha (= n·e^lam_);
    n_features_in_, n_iter_, history_, validation_indices_.
    """

    def fit(self, X, y):
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64,
                             y_numeric=True)
        self._learn(X, np.asarray(y, dtype=np.float64), "linear", 1, None)
        self.alpha_ = X.shape[0] * np.exp(self.lam_)
        return self

    def _set_coef(self, w, d):
        self.coef_ = w[:d].copy()
        self.intercept_ = float(w[d])

    def predict(self, X):
        return _scores(self, X)


# ---------------------------------------------------------------- reweighting
class SampleReweighter(_LinearClassifier, _HyperBase):
    """Hyper-cleaning: learn a weight per training sample so that a
    (multinomial) logistic regression trained on the weighted samples has a
    low loss on a trusted validation set.

    The weights are a_i = σ(λ_i) ∈ (0, 1) in the inner objective
    (1/n) Σ a_i ℓ(x_iᵀw; y_i) + (C/2)‖w‖²; λ starts at 0 (every weight ½)
    and takes ``outer_iters`` Adam steps (step ``lr``) down the validation
    loss, with hypergradients from ``method``. Mislabeled or otherwise
    harmful samples end with low weights.

    ``fit(X, y, X_val=None, y_val=None)``: with ``X_val, y_val`` (trusted
    data) every sample of X is weighted; without, ``validation_fraction`` of
    X is held out (stratified) as the trusted part, and those samples keep
    weight 1. After fit the estimator is a classifier: the model trained on
    the weighted samples.

    Parameters
    ----------
    C : float > 0, default 1e-3 — ridge strength of the inner problem.
    method, steps, outer_iters, lr, tol, max_inner_steps, validation_fraction,
    random_state : as for :class:`HyperLogisticRegression` (defaults
        ``method="implicit"``, ``outer_iters=50``, ``lr=0.1``).

    Attributes
    ----------
    sample_weight_ : (n_samples,) — σ(λ_i) (1 for held-out samples).
    suspicious_ : indices of the weighted samples, lowest weight first.
    coef_, intercept_, classes_, n_features_in_, n_iter_, history_,
    validation_indices_ (empty when X_val is given).
    """

    def __init__(self, C=1e-3, method="implicit", steps=50, outer_iters=50, lr=0.1,
                 validation_fraction=0.25, tol=1e-4, max_inner_steps=2000,
                 random_state=None):
        self.C = C
        self.method = method
        self.steps = steps
        self.outer_iters = outer_iters
        self.lr = lr
        self.validation_fraction = validation_fraction
        self.tol = tol
        self.max_inner_steps = max_inner_steps
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None):
        _check_param("C", self.C, float, low=0.0)
        if not self.C > 0:
            raise ValueError(f"C={self.C!r} must be > 0")
        self._check_outer_params()
        X, y = validate_data(self, X, y, accept_sparse="csr", dtype=np.float64)
        yk, c = self._encode(y)
        n, d = X.shape
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither (then validation_fraction "
                             "of X is held out)")
        if X_val is None:
            tr, va = _split(n, self.validation_fraction, check_random_state(self.random_state),
                            yk)
            Xt, yt, Xv, yv = X[tr], yk[tr], X[va], yk[va]
        else:
            Xv, yv = validate_data(self, X_val, y_val, accept_sparse="csr", dtype=np.float64,
                                   reset=False)
            unknown = np.setdiff1d(np.unique(yv), self.classes_)
            if unknown.size:
                raise ValueError(f"y_val has labels not in y: {unknown[:5].tolist()}")
            yv = np.searchsorted(self.classes_, yv).astype(np.float64)
            tr, va = np.arange(n), np.zeros(0, dtype=np.intp)
            Xt, yt = X, yk
        model = "logistic" if c == 2 else "multinomial"
        prob = BilevelProblem(model, "sample_weights", _with_intercept(Xt), yt,
                              _with_intercept(Xv), yv, reg=float(self.C),
                              n_classes=c if c > 2 else None)
        t0 = time.perf_counter()
        outer = _Outer(np.zeros(tr.size), self.lr, (-12.0, 12.0))
        scale = max(float(np.linalg.norm(prob.inner_grad(np.zeros(prob.w_shape),
                                                         outer.theta))), 1e-300)
        w = v = r = None
        hist = History()
        passes = 0
        for k in range(self.outer_iters):
            lam = outer.theta
            r, w, v, p = _hypergradient_step(prob, lam, w, v, self, None, scale)
            passes += p
            hist._append(outer_value=r.value, grad_norm=float(np.linalg.norm(r.grad)),
                         inner_grad_norm=math.nan, residual=r.stats.get("residual", math.nan),
                         linear_steps=r.stats.get("linear_steps", 0), passes=passes,
                         rows=passes * tr.size, time_s=time.perf_counter() - t0,
                         accepted=True, tol=math.nan)
            outer.step(k, r.value, r.grad, r.w)
        lam = outer.theta
        w, _ = _solve_to(prob, lam, w, self.tol, max(self.steps, 100),
                         max(self.max_inner_steps, 5000), None, scale)
        weights = np.ones(n)
        weights[tr] = 1.0 / (1.0 + np.exp(-lam))
        self.sample_weight_ = weights
        self.suspicious_ = tr[np.argsort(weights[tr], kind="stable")]
        self.lam_ = lam.copy()
        self.history_ = hist
        self.n_iter_ = len(hist)
        self.validation_indices_ = va
        self._set_coef(w, d)
        return self
