"""Seeded synthetic generators for the standard bilevel problems.

Every generator returns a :class:`Dataset` whose ``problem()`` builds the
matching :class:`~fastbilevel.BilevelProblem`.
"""
import numpy as np
import scipy.sparse as sp

from ._checks import check_dtype, check_scalar


class Dataset:
    """Training and validation data plus what the generator knows.

    Attributes: ``X, y, X_val, y_val``; ``model`` and ``hyper`` it is meant
    for; ``reg`` (C or μ where the map uses one); ``info``, a dict of
    generator facts (e.g. ``corrupted``, the mask of flipped labels).
    """

    def __init__(self, name, X, y, X_val, y_val, model, hyper, reg=None, **info):
        self.name = name
        self.X, self.y, self.X_val, self.y_val = X, y, X_val, y_val
        self.model, self.hyper, self.reg = model, hyper, reg
        self.info = info

    def problem(self, hyper=None, reg=None, dtype=None):
        """The BilevelProblem for this data (``hyper``/``reg`` override)."""
        from .problem import BilevelProblem
        hyper = self.hyper if hyper is None else hyper
        if reg is None and hyper == self.hyper:
            reg = self.reg
        if hyper in ("feature_l2", "l2"):
            reg = None
        kw = {}
        if self.model == "multinomial":
            kw["n_classes"] = self.info.get("n_classes")
        return BilevelProblem(self.model, hyper, self.X, self.y, self.X_val,
                              self.y_val, reg=reg, dtype=dtype, **kw)

    def __repr__(self):
        return (f"Dataset({self.name!r}, X{self.X.shape}, X_val{self.X_val.shape}, "
                f"model={self.model!r}, hyper={self.hyper!r})")


def _rng(seed):
    return np.random.default_rng(check_scalar("seed", seed, low=0, integer=True))


def _dtype(dtype):
    return check_dtype("dtype", dtype) or np.dtype(np.float64)


def hypercleaning(n=20000, m=5000, d=784, c=10, corruption=0.5, seed=0,
                  dtype=np.float64, noise=0.35):
    """Data hyper-cleaning (Shaban Sec. 4.2.1; Franceschi et al. 2017).

    MNIST-like dense data in [0, 1]: c class prototypes (sparse "strokes"),
    each sample its prototype plus Gaussian ``noise``, clipped (larger
    noise: more overlap between classes). A fraction ``corruption``
    of the training labels is replaced by a uniformly random class (as in
    Shaban App. G.1); validation labels are clean. Model ``multinomial``,
    map ``sample_weights`` with C = 1e-3.
    ``info``: ``corrupted`` (mask of changed labels), ``y_clean``.
    """
    n = check_scalar("n", n, low=1, integer=True)
    m = check_scalar("m", m, low=1, integer=True)
    d = check_scalar("d", d, low=1, integer=True)
    c = check_scalar("c", c, low=2, integer=True)
    corruption = check_scalar("corruption", corruption, low=0.0)
    noise = check_scalar("noise", noise, low=0.0)
    if corruption > 1:
        raise ValueError(f"corruption={corruption} must be in [0, 1]")
    rng = _rng(seed)
    dt = _dtype(dtype)
    protos = rng.uniform(0.3, 1.0, (c, d)) * (rng.random((c, d)) < 0.25)

    def draw(k):
        labels = rng.integers(0, c, k)
        X = protos[labels] + noise * rng.standard_normal((k, d))
        np.clip(X, 0.0, 1.0, out=X)
        return np.ascontiguousarray(X, dtype=dt), labels

    X, y_clean = draw(n)
    X_val, y_val = draw(m)
    flip = rng.random(n) < corruption
    y = y_clean.copy()
    y[flip] = rng.integers(0, c, int(flip.sum()))
    corrupted = y != y_clean
    return Dataset("hypercleaning", X, y, X_val, y_val, "multinomial",
                   "sample_weights", reg=1e-3, corrupted=corrupted,
                   y_clean=y_clean, n_classes=c)


def text(n=11314, m=7532, d=101631, row_nnz=160, zipf=1.1, informative=0.02,
         seed=0, dtype=np.float64):
    """Text-like sparse binary classification (20 Newsgroups-sized defaults).

    Feature frequencies follow a power law (rank^{−zipf}, ranks randomly
    permuted over the columns); a row holds about ``row_nnz`` distinct
    features with log(1 + count) values, L2-normalised. Labels are
    sign(x·w* + noise) with w* supported on a fraction ``informative`` of the
    features. Model ``logistic``, map ``feature_l2``.
    """
    n = check_scalar("n", n, low=1, integer=True)
    m = check_scalar("m", m, low=1, integer=True)
    d = check_scalar("d", d, low=1, integer=True)
    row_nnz = check_scalar("row_nnz", row_nnz, low=1, integer=True)
    rng = _rng(seed)
    dt = _dtype(dtype)
    p = np.arange(1, d + 1, dtype=np.float64) ** -float(zipf)
    cdf = np.cumsum(p)
    cdf /= cdf[-1]
    perm = rng.permutation(d)
    w_true = rng.standard_normal(d) * (rng.random(d) < informative)

    def draw(k):
        # draws per row (lognormal lengths), then duplicates become counts
        lens = np.maximum(1, rng.lognormal(np.log(row_nnz * 1.45), 0.5, k).astype(np.int64))
        rows = np.repeat(np.arange(k), lens)
        cols = perm[np.minimum(np.searchsorted(cdf, rng.random(rows.size)), d - 1)]
        A = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(k, d))
        A.sum_duplicates()
        A.data = np.log1p(A.data)
        norms = np.sqrt(np.asarray(A.multiply(A).sum(axis=1)).ravel())
        A = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ A
        A = A.tocsr()
        A.sum_duplicates()
        margin = A @ w_true
        noise = 0.1 * np.std(margin) * rng.standard_normal(k)
        y = np.where(margin + noise >= 0, 1.0, -1.0)
        return sp.csr_matrix(A, dtype=dt), y

    X, y = draw(n)
    X_val, y_val = draw(m)
    return Dataset("text", X, y, X_val, y_val, "logistic", "feature_l2",
                   w_true=w_true)


def ridge(n=500, m=500, d=50, noise=0.5, seed=0, dtype=np.float64):
    """Dense least squares with per-feature L2 (λ_j = log ridge strength).

    Feature scales decay geometrically (an ill-conditioned design); w* has
    a few large and many small coefficients. Model ``linear``, map
    ``feature_l2``; the inner problem has a closed form.
    """
    n = check_scalar("n", n, low=1, integer=True)
    m = check_scalar("m", m, low=1, integer=True)
    d = check_scalar("d", d, low=1, integer=True)
    rng = _rng(seed)
    dt = _dtype(dtype)
    scales = 0.9 ** (np.arange(d) / max(1, d // 20))
    w_true = rng.standard_normal(d) * np.where(rng.random(d) < 0.2, 3.0, 0.1)

    def draw(k):
        X = rng.standard_normal((k, d)) * scales
        return np.ascontiguousarray(X, dtype=dt), X @ w_true + noise * rng.standard_normal(k)

    X, y = draw(n)
    X_val, y_val = draw(m)
    return Dataset("ridge", X, y, X_val, y_val, "linear", "feature_l2", w_true=w_true)


def shaban_toy():
    """The inner problem of Shaban et al. (2019), Sec. 4.1, in this model class.

    g(w, λ) = ½(w − λ)ᵀG(w − λ) + const with G = diag(1, ½) is written as a
    one-sample least-squares term ¼w₁² plus ``biased_l2`` with μ = ½:
    g = ¼w₁² + ¼‖w − λ‖², whose Hessian is exactly G (α = ½ strongly convex,
    1-smooth). Here B_{t+1} = γμI (the paper's is γG), so M_B = γ/2. The
    paper's outer ‖w‖² + 10‖sin w‖² is not a validation loss of a linear
    model; the outer loss here is f(w) = ¼‖w‖² (validation X̃ = I, ỹ = 0).
    ``info``: ``w0`` = (2, 2), ``step_size`` = 0.1, ``steps`` = 100,
    ``alpha`` = ½, ``M_B`` = 0.05, ``lam`` = (1, 1).
    """
    X = np.array([[np.sqrt(0.5), 0.0]])
    X_val = np.eye(2)
    return Dataset("shaban_toy", X, np.zeros(1), X_val, np.zeros(2), "linear",
                   "biased_l2", reg=0.5, w0=np.array([2.0, 2.0]), step_size=0.1,
                   steps=100, alpha=0.5, M_B=0.05, lam=np.array([1.0, 1.0]))


def load_sklearn(name, val_fraction=0.5, seed=0):
    """scikit-learn's bundled ``digits`` (multinomial, sample_weights) or
    ``breast_cancer`` (logistic, feature_l2), standardised and split.
    Needs scikit-learn (optional dependency: ``pip install fastbilevel[sklearn]``).
    """
    try:
        import sklearn.datasets as skd
    except ImportError as e:
        raise ImportError("load_sklearn needs scikit-learn, an optional dependency: "
                          "pip install scikit-learn") from e
    loaders = {"digits": (skd.load_digits, "multinomial", "sample_weights", 1e-3),
               "breast_cancer": (skd.load_breast_cancer, "logistic", "feature_l2", None)}
    if name not in loaders:
        raise ValueError(f"name={name!r} is not one of {sorted(loaders)}")
    load, model, hyper, reg = loaders[name]
    X, y = load(return_X_y=True)
    X = (X - X.mean(0)) / np.maximum(X.std(0), 1e-12)
    rng = _rng(seed)
    idx = rng.permutation(X.shape[0])
    k = int(round(X.shape[0] * (1 - check_scalar("val_fraction", val_fraction, low=0.0))))
    tr, va = idx[:k], idx[k:]
    info = {"n_classes": int(y.max()) + 1} if model == "multinomial" else {}
    return Dataset(name, np.ascontiguousarray(X[tr]), y[tr].astype(float),
                   np.ascontiguousarray(X[va]), y[va].astype(float), model, hyper,
                   reg=reg, **info)
