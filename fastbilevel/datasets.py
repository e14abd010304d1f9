"""Seeded synthetic generators for the standard bilevel problems.

Every generator returns a :class:`Dataset` whose ``problem()`` builds the
matching :class:`~fastbilevel.BilevelProblem`.
"""
import numpy as np
import scipy.sparse as sp

from ._checks import check_dtype, check_scalar
from .meta import MultiTaskProblem
from .problem import BilevelProblem


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


def binary(n=20000, m=5000, d=784, corruption=0.1, seed=0, dtype=np.float64):
    """Dense binary classification: the :func:`hypercleaning` generator with
    two classes (labels 0/1, a fraction ``corruption`` of the training
    labels redrawn at random). Model ``logistic``, map ``l2``: the dense
    single-output case of sweeps and benchmarks."""
    ds = hypercleaning(n=n, m=m, d=d, c=2, corruption=corruption, seed=seed, dtype=dtype)
    return Dataset("binary", ds.X, ds.y.astype(np.float64), ds.X_val,
                   ds.y_val.astype(np.float64), "logistic", "l2",
                   corrupted=ds.info["corrupted"])


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


class TaskDataset:
    """A family of tasks: ``X`` (N, s, d), ``y`` (N, s), ``X_test`` (N, t, d),
    ``y_test`` (N, t), the ``model``, ``reg`` and generator facts ``info``."""

    def __init__(self, name, X, y, X_test, y_test, model, reg=0.0, **info):
        self.name = name
        self.X, self.y, self.X_test, self.y_test = X, y, X_test, y_test
        self.model, self.reg, self.info = model, reg, info

    def problem(self, reg=None, dtype=None, hyper="init", k=None):
        """The :class:`~fastbilevel.MultiTaskProblem` for these tasks (``hyper``
        and ``k`` as there: ``"feature_map"`` with an embedding of k rows is
        ANIL)."""
        kw = {"n_classes": self.info["n_classes"]} if self.model == "multinomial" else {}
        return MultiTaskProblem(self.model, self.X, self.y, self.X_test, self.y_test,
                                reg=self.reg if reg is None else reg, dtype=dtype,
                                hyper=hyper, k=k, **kw)

    def __repr__(self):
        return (f"TaskDataset({self.name!r}, tasks={self.X.shape[0]}, shots={self.X.shape[1]}, "
                f"test_shots={self.X_test.shape[1]}, d={self.X.shape[2]}, model={self.model!r})")


def few_shot(n_tasks=200, shots=5, test_shots=15, d=20, model="logistic", n_classes=5,
             spread=0.5, noise=0.1, seed=0, dtype=np.float64, rank=None):
    """Few-shot task family with shared structure plus per-task perturbation.

    A shared parameter w* ~ N(0, I) (d, or d×c for multinomial); task i has
    w_i = w* + ``spread``·N(0, I); inputs x ~ N(0, I/d)·√d (unit-variance
    features); labels y = xᵀw_i + ``noise``·N(0, 1) (linear), sign(·)
    (logistic, ±1), or argmax of the logits plus Gumbel-like noise
    (multinomial). Each task has ``shots`` training and ``test_shots`` test
    rows. A good start θ (near w*) lets r GD steps adapt to each task:
    what MAML learns.

    With ``rank`` = k < d the tasks share a k-dimensional subspace instead:
    an orthonormal basis Q (k × d) is drawn, and w* and every w_i are Qᵀ
    times k-dimensional parameters drawn as above. Few shots (s < d) then
    cannot find w_i alone, but a head adapted on the embedding Q x can:
    what ANIL (``problem(hyper="feature_map", k=rank)``) learns.

    ``info``: ``w_star``, ``task_w``, ``n_classes`` and, with ``rank``,
    ``basis`` (Q)."""
    if model not in ("linear", "logistic", "multinomial"):
        raise ValueError(f"model={model!r} must be 'linear', 'logistic' or 'multinomial'")
    for name, v in (("n_tasks", n_tasks), ("shots", shots), ("test_shots", test_shots),
                    ("d", d)):
        check_scalar(name, v, low=1, integer=True)
    rng = _rng(seed)
    dt = _dtype(dtype)
    c = n_classes if model == "multinomial" else 1
    extra = {}
    if rank is None:
        w_star = rng.standard_normal((d, c))
        task_w = w_star[None] + spread * rng.standard_normal((n_tasks, d, c))
    else:
        k = check_scalar("rank", rank, low=1, integer=True)
        if k > d:
            raise ValueError(f"rank={k} exceeds d={d}")
        Q = np.linalg.qr(rng.standard_normal((d, k)))[0].T
        u_star = rng.standard_normal((k, c)) * np.sqrt(d / k)
        u = u_star[None] + spread * np.sqrt(d / k) * rng.standard_normal((n_tasks, k, c))
        w_star = Q.T @ u_star
        task_w = np.einsum("kd,nkc->ndc", Q, u)
        extra["basis"] = Q

    def labels(X, Wt):
        Z = np.einsum("tsd,tdc->tsc", X, Wt)
        if model == "multinomial":
            return np.argmax(Z + noise * rng.gumbel(size=Z.shape), axis=2).astype(float)
        Z = Z[..., 0] + noise * rng.standard_normal(Z.shape[:2])
        return np.where(Z >= 0, 1.0, -1.0) if model == "logistic" else Z

    X = rng.standard_normal((n_tasks, shots, d))
    Xt = rng.standard_normal((n_tasks, test_shots, d))
    y, yt = labels(X, task_w), labels(Xt, task_w)
    ws = w_star[:, 0] if c == 1 else w_star
    tw = task_w[..., 0] if c == 1 else task_w
    return TaskDataset("few_shot", X.astype(dt), y, Xt.astype(dt), yt, model, 0.0,
                       w_star=ws, task_w=tw, n_classes=c, **extra)


def fo_blo_counterexample(gap=10.0, steps=4, step_size=1.0, curvatures=(0.1, 1.5)):
    """Two equiprobable least-squares tasks in one dimension on which FO-BLO
    settles where the meta-gradient is far from zero (UFO-BLO Thm. 5, in
    spirit).

    UFO-BLO proves Theorem 5 with piecewise-polynomial task losses; those
    are not losses of this package's models, so this is the closest
    demonstration within them: with L_i(φ) = ½ mean((x φ − y)²) = ½a_i(φ −
    c_i)² + const (a_i = ``curvatures``, c = (0, ``gap``), train = test data),
    r = ``steps`` GD steps of size α = ``step_size`` give φ_r − c_i =
    m_i(θ − c_i) with m_i = (1 − αa_i)^r. The exact meta-gradient is
    ½Σ a_i m_i²(θ − c_i), FO-BLO's expectation ½Σ a_i m_i(θ − c_i): their
    zeros θ* and θ_FO differ (m_2 is small and, for odd r, negative), and
    ‖∇M(θ_FO)‖ grows linearly with ``gap`` — any bound D is exceeded by
    scaling it. For odd r, Σ a_i m_i can even be negative and FO-BLO
    drifts away without end.

    ``info``: ``theta_star`` (stationary point of M), ``theta_fo`` (FO-BLO's
    fixed point; None if Σ a_i m_i ≤ 0), ``grad_at_fo`` (∇M there),
    ``steps``, ``step_size``."""
    a = np.asarray(curvatures, dtype=float)
    if a.shape != (2,) or np.any(a <= 0):
        raise ValueError("curvatures must be two positive numbers")
    check_scalar("steps", steps, low=1, integer=True)
    alpha = check_scalar("step_size", step_size, low=0.0, low_inclusive=False)
    if np.any(alpha * a >= 2):
        raise ValueError("step_size * curvature must be < 2 for both tasks (GD converges)")
    cs = np.array([0.0, float(gap)])
    xs = np.sqrt(a)[:, None] * np.array([[1.0, -1.0]])      # mean x² = a_i
    X = xs[:, :, None]
    y = cs[:, None] * xs                                     # y = c_i x: minimizer c_i
    m = (1 - alpha * a) ** steps
    theta_star = float(np.sum(a * m ** 2 * cs) / np.sum(a * m ** 2))
    den = float(np.sum(a * m))
    theta_fo = float(np.sum(a * m * cs) / den) if den > 0 else None
    grad_fo = None if theta_fo is None else float(0.5 * np.sum(a * m ** 2 * (theta_fo - cs)))
    return TaskDataset("fo_blo_counterexample", X, y, X.copy(), y.copy(), "linear", 0.0,
                       theta_star=theta_star, theta_fo=theta_fo, grad_at_fo=grad_fo,
                       steps=int(steps), step_size=alpha, n_classes=1)


# ------------------------------------------------------------- the user's files
_SPARSE_KEYS = ("data", "indices", "indptr", "shape")
MODEL_CHOICES = ("auto", "linear", "logistic", "multinomial")


class DataFileError(ValueError):
    """A data file that cannot be used: the message names the file and
    what is wrong with it."""


def save_npz(path, X, y, X_val=None, y_val=None):
    """Write data for :func:`load_file` (and ``fastbilevel ... --data``):
    dense X as ``X`` (and ``X_val``); sparse X in SciPy's sparse ``.npz``
    layout (``data``, ``indices``, ``indptr``, ``shape``, ``format``: the
    file is also readable by ``scipy.sparse.load_npz``), its validation
    part under the same keys prefixed ``val_``; labels as ``y``, ``y_val``."""
    if (X_val is None) != (y_val is None):
        raise ValueError("give both X_val and y_val, or neither")
    out = {"y": np.asarray(y)}
    for prefix, M in (("", X), ("val_", X_val)):
        if M is None:
            continue
        if sp.issparse(M):
            M = sp.csr_matrix(M)
            out.update({prefix + "data": M.data, prefix + "indices": M.indices,
                        prefix + "indptr": M.indptr, prefix + "shape": np.array(M.shape),
                        prefix + "format": np.array(b"csr")})
        else:
            out["X_val" if prefix else "X"] = np.asarray(M)
    if y_val is not None:
        out["y_val"] = np.asarray(y_val)
    np.savez(path, **out)


def _npz_matrix(path, z, prefix):
    """The dense (``X``/``X_val``) or SciPy-layout sparse matrix under
    ``prefix`` in an opened .npz, or None."""
    dense = "X_val" if prefix else "X"
    keys = [prefix + k for k in _SPARSE_KEYS]
    if dense in z.files:
        X = z[dense]
        if X.ndim != 2:
            raise DataFileError(f"{path}: {dense} has shape {X.shape}; expected (samples, "
                                "features)")
        return X
    have = [k for k in keys if k in z.files]
    if not have:
        return None
    if len(have) < len(keys):
        raise DataFileError(f"{path}: a sparse matrix needs the keys {keys}; missing "
                            f"{sorted(set(keys) - set(have))}")
    fmt = z[prefix + "format"].item() if prefix + "format" in z.files else b"csr"
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    cls = {"csr": sp.csr_matrix, "csc": sp.csc_matrix}.get(fmt)
    if cls is None:
        raise DataFileError(f"{path}: sparse format {fmt!r}; expected csr or csc")
    try:
        M = cls((z[prefix + "data"], z[prefix + "indices"], z[prefix + "indptr"]),
                shape=tuple(int(s) for s in z[prefix + "shape"]))
    except (ValueError, TypeError) as e:
        raise DataFileError(f"{path}: the sparse matrix under {prefix or 'the top level'!r} "
                            f"is malformed ({e})") from None
    return M.tocsr()


def _read_npz(path):
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFileError(f"{path}: not a readable .npz file ({e})") from None
    with z:
        X = _npz_matrix(path, z, "")
        if X is None:
            raise DataFileError(f"{path}: no data: expected X (dense) or data/indices/"
                                f"indptr/shape (SciPy's sparse layout); the file has "
                                f"{sorted(z.files)}")
        if "y" not in z.files:
            raise DataFileError(f"{path}: no labels: add y (fastbilevel.datasets.save_npz("
                                "path, X, y) writes X and y together)")
        y = z["y"]
        Xv = _npz_matrix(path, z, "val_")
        yv = z["y_val"] if "y_val" in z.files else None
    if (Xv is None) != (yv is None):
        raise DataFileError(f"{path}: has {'X_val' if Xv is not None else 'y_val'} without "
                            f"{'y_val' if Xv is not None else 'X_val'}")
    return X, y, Xv, yv


def _read_svmlight(path):
    try:
        from sklearn.datasets import load_svmlight_file
    except ImportError:
        raise ImportError(f"{path}: reading svmlight/libsvm text needs scikit-learn: pip "
                          "install 'fastbilevel[sklearn]' (or save the data with "
                          "fastbilevel.datasets.save_npz)") from None
    try:
        X, y = load_svmlight_file(path)
    except (ValueError, OSError, UnicodeDecodeError) as e:
        raise DataFileError(f"{path}: not a readable svmlight/libsvm file ({e})") from None
    return X.tocsr(), y, None, None


def _labels(path, y, y_val, model):
    """Infer the model if "auto" and encode the labels: (model, y, y_val, classes)."""
    for name, v in (("y", y), ("y_val", y_val)):
        if v is not None and (v.ndim != 1 or v.dtype.kind not in "biuf"):
            raise DataFileError(f"{path}: {name} must be a 1-D array of numbers; got dtype "
                                f"{v.dtype}, shape {v.shape}")
        if v is not None and not np.all(np.isfinite(v)):
            raise DataFileError(f"{path}: {name} has NaN or inf")
    both = y if y_val is None else np.concatenate([y, y_val])
    classes = np.unique(both)
    integral = np.all(classes == np.round(classes))
    if model == "auto":
        model = ("logistic" if classes.size == 2 else
                 "multinomial" if integral and 2 < classes.size <= 1000 else "linear")
    if model == "linear":
        return model, y.astype(np.float64), None if y_val is None else \
            y_val.astype(np.float64), None
    if classes.size < 2:
        raise DataFileError(f"{path}: model={model!r} needs at least 2 classes; the labels "
                            f"are all {classes[0]!r}")
    if model == "logistic" and classes.size != 2:
        raise DataFileError(f"{path}: model='logistic' needs 2 classes; the labels have "
                            f"{classes.size} (use model='multinomial')")
    enc = lambda v: None if v is None else np.searchsorted(classes, v).astype(np.float64)  # noqa: E731
    return model, enc(y), enc(y_val), classes


def load_file(path, model="auto", hyper="l2", val_fraction=0.2, seed=0, dtype=None,
              reg=None):
    """A :class:`Dataset` from the user's file.

    Formats (by content, not by name): a ``.npz`` with ``X`` (dense) or
    SciPy's sparse layout (``data``, ``indices``, ``indptr``, ``shape``,
    ``format`` — what ``scipy.sparse.save_npz`` writes) plus labels ``y``,
    optionally a validation part (``X_val`` or ``val_``-prefixed sparse
    keys, and ``y_val``): see :func:`save_npz`. Anything else is read as
    svmlight/libsvm text with scikit-learn's loader (``fastbilevel[sklearn]``).

    model : "auto" (two label values: logistic; up to 1000 integer values:
        multinomial; else linear), "linear", "logistic" or "multinomial".
        Class labels are encoded as 0..c−1 in sorted order (``info["classes"]``).
    val_fraction : the part of the samples held out for validation when the
        file has no validation part (a seeded random split).

    Raises :class:`DataFileError` (a ValueError) naming the file and the
    problem for a file that cannot be used.
    """
    import os
    if model not in MODEL_CHOICES:
        raise ValueError(f"model={model!r}: choose one of {list(MODEL_CHOICES)}")
    if not os.path.isfile(path):
        raise DataFileError(f"{path}: no such file")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"PK\x03\x04":                       # a zip: .npz
        X, y, Xv, yv = _read_npz(path)
    else:
        X, y, Xv, yv = _read_svmlight(path)
    if y.shape[0] != X.shape[0]:
        raise DataFileError(f"{path}: X has {X.shape[0]} samples but y has {y.shape[0]} labels")
    if Xv is not None:
        if Xv.shape[1] != X.shape[1]:
            raise DataFileError(f"{path}: X has {X.shape[1]} features but the validation "
                                f"part has {Xv.shape[1]}")
        if yv.shape[0] != Xv.shape[0]:
            raise DataFileError(f"{path}: the validation part has {Xv.shape[0]} samples but "
                                f"{yv.shape[0]} labels")
        if sp.issparse(X) != sp.issparse(Xv):
            Xv = sp.csr_matrix(Xv) if sp.issparse(X) else Xv.toarray()
    if X.dtype.kind not in "biuf":
        raise DataFileError(f"{path}: X has dtype {X.dtype}; expected numbers")
    model, y, yv, classes = _labels(path, y, yv, model)
    split = Xv is None
    if split:
        frac = check_scalar("val_fraction", val_fraction)
        if not 0.0 < frac < 1.0:
            raise ValueError(f"val_fraction={val_fraction!r} must be in (0, 1)")
        n = X.shape[0]
        k = int(round(frac * n))
        if k < 1 or k > n - 1:
            raise DataFileError(f"{path}: {n} samples cannot be split with val_fraction="
                                f"{frac:g} (each part needs a sample)")
        perm = _rng(seed).permutation(n)
        va, tr = np.sort(perm[:k]), np.sort(perm[k:])
        X, Xv, y, yv = X[tr], X[va], y[tr], y[va]
    if dtype is not None:
        X, Xv = X.astype(_dtype(dtype)), Xv.astype(_dtype(dtype))
    info = {"path": path, "split": split}
    if classes is not None:
        info["classes"] = classes
        if model == "multinomial":
            info["n_classes"] = classes.size
    name = os.path.basename(path)
    return Dataset(name, X, y, Xv, yv, model, hyper,
                   reg=reg, **info)      # None: the map's own default (C or μ)
