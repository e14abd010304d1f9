"""Every input check in one place. Errors name the argument and the problem."""
import numbers

import numpy as np
import scipy.sparse as sp

_FLOATS = (np.float32, np.float64)

# entries beyond this make squared norms and curvature estimates overflow float64
MAX_ABS_ENTRY = 1e100


def check_problem(problem, kinds):
    """``problem`` must be an instance of one of ``kinds`` (classes); a
    built-in Dataset gets a hint to call its ``problem()``."""
    if isinstance(problem, kinds):
        return problem
    names = " or ".join(k.__name__ for k in kinds)
    if type(problem).__name__ == "Dataset" and callable(getattr(problem, "problem", None)):
        raise TypeError(f"problem is a Dataset, not a {names}: build one with ds.problem() "
                        "(e.g. fb.hypergradient(ds.problem(reg=1e-3), lam))")
    raise TypeError(f"problem must be a {names}, got {type(problem).__name__}")


def _check_entries(name, values):
    """No NaN/inf, and no entry so large that squares overflow float64."""
    if values.size == 0:
        return
    top = float(np.max(np.abs(values)))
    if not np.isfinite(top):
        raise ValueError(f"{name} contains NaN or inf")
    if top > MAX_ABS_ENTRY:
        raise ValueError(f"{name} has entries up to {top:.3g}: squared norms overflow "
                         "float64 arithmetic; scale the features (e.g. to unit variance)")


def check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {sorted(choices)}")
    return value


def check_dtype(name, dtype):
    """None, or float32/float64 in any spelling numpy accepts."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{name}={dtype!r} is not a dtype") from e
    if dt.type not in _FLOATS:
        raise TypeError(f"{name}={dtype!r}: only float32 and float64 are supported")
    return dt


def _float_dtype_of(name, dt, requested):
    if requested is not None:
        return requested
    if dt.type in _FLOATS:
        return dt
    if dt.kind in "biuf":
        return np.dtype(np.float64)
    raise TypeError(f"{name} has dtype {dt}; expected a real numeric dtype "
                    "(float32 or float64 are used as is)")


def check_data(name, X, dtype=None, like_sparse=None, n_features=None):
    """Validate a design matrix and return the kernel layout.

    Returns ``(Xd, indptr, indices, data, sparse, shape)``: dense data as
    ``(X, None, None, None, False, shape)`` with X C-contiguous (n, d), sparse
    data as ``(None, indptr, indices, data, True, shape)``, a canonical CSR
    triple (indptr int64, indices int32).
    ``like_sparse`` forces the format (validation data follows training data).
    """
    if sp.issparse(X):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got ndim={X.ndim}")
        dt = _float_dtype_of(name, X.dtype, dtype)
        if X.format != "csr":
            X = X.tocsr()
            X.sum_duplicates()
        else:
            # a new matrix object over the same arrays: scipy's checks below
            # may retype the index arrays of the object they inspect, and the
            # caller's matrix must stay as it was
            X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=X.shape, copy=False)
            try:
                X.check_format(full_check=True)
            except ValueError as e:
                raise ValueError(f"{name} is not a valid CSR matrix: {e}") from e
            if not X.has_canonical_format:
                raise ValueError(
                    f"{name} is a non-canonical CSR matrix (unsorted column "
                    "indices or duplicate entries); call "
                    f"{name}.sum_duplicates() (which also sorts) first")
        data = np.ascontiguousarray(X.data, dtype=dt)
        _check_entries(name, data)
        sparse = True
        shape = X.shape
        indptr = np.ascontiguousarray(X.indptr, dtype=np.int64)
        indices = np.ascontiguousarray(X.indices, dtype=np.int32)
    else:
        if isinstance(X, np.ndarray):
            arr = X
        else:
            try:
                arr = np.asarray(X)
            except Exception as e:  # pragma: no cover - numpy's own message
                raise TypeError(f"{name} cannot be converted to an array: {e}") from e
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_samples, n_features), "
                             f"got shape {arr.shape}")
        dt = _float_dtype_of(name, arr.dtype, dtype)
        arr = np.ascontiguousarray(arr, dtype=dt)
        _check_entries(name, arr)
        sparse = False
        shape = arr.shape
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {shape})")
    if n_features is not None and shape[1] != n_features:
        raise ValueError(f"{name} has {shape[1]} features, expected {n_features} "
                         "(as in the training data)")
    if like_sparse is not None and like_sparse != sparse:
        if like_sparse:
            c = sp.csr_matrix(arr)
            c.sum_duplicates()
            return (None,
                    np.ascontiguousarray(c.indptr, dtype=np.int64),
                    np.ascontiguousarray(c.indices, dtype=np.int32),
                    np.ascontiguousarray(c.data, dtype=dt), True, shape)
        arr = np.ascontiguousarray(
            sp.csr_matrix((data, indices, indptr), shape=shape).toarray(), dtype=dt)
        sparse = False
    if sparse:
        return None, indptr, indices, data, True, shape
    return arr, None, None, None, False, shape


def check_labels(name, y, n, model):
    """Labels as float64: real for linear, ±1 for logistic ({0, 1} is mapped
    to {−1, +1}), class indices 0..c−1 for multinomial."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} labels for {n} samples")
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {y.dtype}; expected numbers")
    y = np.ascontiguousarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or inf")
    if model == "logistic":
        vals = set(np.unique(y).tolist())
        if vals <= {-1.0, 1.0}:
            return y
        if vals <= {0.0, 1.0}:
            return 2.0 * y - 1.0
        raise ValueError(f"{name}: logistic labels must be in {{-1, +1}} or "
                         f"{{0, 1}}, got values {sorted(vals)[:5]}")
    if model == "multinomial":
        if np.any(y != np.round(y)) or np.any(y < 0):
            raise ValueError(f"{name}: multinomial labels must be integers "
                             "0..n_classes-1")
    return y


def check_scalar(name, value, low=None, low_inclusive=True, integer=False):
    """A finite real (or integer) scalar, optionally bounded below."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name}={value!r} must be an integer")
        value = int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name}={value!r} must be a real number")
        value = float(value)
        if not np.isfinite(value):
            raise ValueError(f"{name}={value!r} must be finite")
    if low is not None:
        if (value < low) if low_inclusive else (value <= low):
            op = ">=" if low_inclusive else ">"
            raise ValueError(f"{name}={value!r} must be {op} {low}")
    return value


def check_vector(name, v, shape):
    """A finite float64 array of exactly ``shape`` (a copy, C-contiguous)."""
    arr = np.asarray(v)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {arr.dtype}; expected real numbers")
    if arr.shape != tuple(shape):
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(shape)}")
    arr = np.array(arr, dtype=np.float64, order="C")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def check_n_classes(model, n_classes, y, *other_labels):
    """c for multinomial (else 1): ``n_classes`` if given (every label must be
    below it), else the number of classes in the training labels ``y``,
    which must then be exactly 0..c−1 with every class present (a label
    that skips classes is almost always a typo or an unencoded label, and
    would silently build a model with that many outputs)."""
    if model == "multinomial":
        top = int(max(float(v.max()) for v in (y,) + other_labels)) + 1
        if n_classes is not None:
            c = check_scalar("n_classes", n_classes, low=2, integer=True)
            if c < top:
                raise ValueError(f"n_classes={c} but labels go up to {top - 1}")
            return c
        present = np.unique(y)
        c = present.shape[0]
        if c < 2:
            raise ValueError(f"y: multinomial labels need at least 2 classes, got "
                             f"{present.tolist()}")
        if top != c:
            missing = np.setdiff1d(np.arange(min(top, c + 10)), present)[:5].tolist()
            raise ValueError(
                f"y: multinomial labels must be 0..c-1 with every class present in y; got "
                f"{c} distinct labels up to {top - 1} (missing e.g. {missing}). Encode "
                "them with np.unique(y, return_inverse=True)[1] (or scikit-learn's "
                "LabelEncoder), or pass n_classes explicitly")
        return c
    if n_classes not in (None, 1):
        raise ValueError(f"n_classes={n_classes!r} only applies to model='multinomial'")
    return 1
