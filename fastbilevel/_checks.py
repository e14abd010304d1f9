"""Every input check in one place. Errors name the argument and the problem."""
import math
import numbers

import numpy as np
import scipy.sparse as sp

from . import config
from ._registry import MODELS

_FLOATS = (np.float32, np.float64)

# entries beyond this make squared norms and curvature estimates overflow float64
MAX_ABS_ENTRY = 1e100


class DivergenceError(ValueError):
    """An iteration (the inner loop, a linear solve, an outer loop) diverged
    with the given step sizes: a ValueError that says which step to lower.
    :func:`fastbilevel.sweep` flags such a setting instead of raising."""


# |λ| past which e^λ overflows (or underflows to a strength of 0) in float64
MAX_EXP_LAM = 709.0


def exp_lam_escape(problem, lam):
    """For the maps whose strength is e^λ (``l2``, ``feature_l2``): a phrase
    saying where λ went when an outer update took it past ±MAX_EXP_LAM (e^λ
    overflows, or is 0: no regularization left, the mark of a λ step far
    too large), else None."""
    if problem.hyper not in ("feature_l2", "l2"):
        return None
    hi, lo = float(np.max(lam)), float(np.min(lam))
    if hi > MAX_EXP_LAM:
        return f"took lam to {hi:.4g}, where e^lam overflows"
    if lo < -MAX_EXP_LAM:
        return f"took lam to {lo:.4g}, where e^lam is 0 (no regularization left)"
    return None


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


class DeviceError(RuntimeError):
    """``device="cuda"`` was asked for where no usable GPU is, or a method
    that does not run on the GPU yet was called on a GPU problem."""


def not_on_gpu(what):
    """The error for a method that does not run on the CUDA backend yet."""
    return DeviceError(f"{what} does not run on device='cuda' yet: call it on "
                       f"problem.to('cpu')")


def require_cpu(problem, what):
    """``what`` runs on the CPU backend only: refuse a GPU problem."""
    if getattr(problem.backend, "name", "cpu") != "cpu":
        raise not_on_gpu(what)


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
    # always a fresh writable copy: a read-only y (a memmap) would type the kernels anew
    y = np.array(y, dtype=np.float64, order="C")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name} contains NaN or inf")
    return MODELS[model].labels(name, y)


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
    if MODELS[model].multiclass:
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


# ----------------------------------------------- solver settings, resolved per problem
def resolve_step_size(problem, lam, step_size, minibatch=False):
    """The user's step size, checked, or 1/L from ``problem.lipschitz``
    (for minibatch steps the per-sample bound ``problem.lipschitz(lam,
    per_sample=True)``, which every batch's loss obeys)."""
    if step_size is None:
        return 1.0 / smoothness(problem, lam, minibatch)
    return check_scalar("step_size", step_size, low=0.0, low_inclusive=False)


def smoothness(problem, lam, minibatch=False):
    """``problem.lipschitz(lam)``, refused with a named error when the data
    give no curvature to step by (L = 0) or overflow (L not finite)."""
    L = problem.lipschitz(lam, per_sample=minibatch)
    if not np.isfinite(L):
        raise ValueError("the smoothness estimate of g overflows: the entries of X are too "
                         "large for float64 arithmetic; scale the features (e.g. to unit "
                         "variance)")
    if L <= 0.0:
        raise ValueError("the inner problem has no curvature at this lam (X is zero or every "
                         "sample weight is 0, and reg = 0): it has no unique minimizer and no "
                         "step size can be derived; use reg > 0, another lam, or nonzero data")
    return L


def stability_bound(solver, L, beta):
    """The largest stable step size on a quadratic of curvature L: 2/L for
    gd and sgd; 2(1+β)/L for heavy_ball; 2(1+β)/((1+2β)L) for agd (from the
    roots of each iteration's characteristic polynomial)."""
    if solver == "heavy_ball":
        return 2.0 * (1.0 + beta) / L
    if solver == "agd":
        return 2.0 * (1.0 + beta) / ((1.0 + 2.0 * beta) * L)
    return 2.0 / L


_BOUND_FORMULA = {"heavy_ball": "2(1+β)/L", "agd": "2(1+β)/((1+2β)L)"}


def check_step_bound(gamma, L, solver, beta, check_step, name="step_size", label=None,
                     what="g"):
    """Refuse ``gamma`` at or above the solver's stability bound
    (:func:`stability_bound`) for the smoothness L of ``what`` (a number, or
    a callable giving it, evaluated only when the check runs), unless
    ``check_step`` is False; the error names ``name`` and ``label`` (the
    iteration, by default the solver)."""
    if not isinstance(check_step, (bool, np.bool_)):
        raise TypeError(f"check_step={check_step!r} must be a bool")
    if not check_step:
        return
    L = L() if callable(L) else L
    bound = stability_bound(solver, L, beta)
    if gamma >= bound:
        raise ValueError(
            f"{name}={gamma:.4g} makes {label or f'solver={solver!r}'} diverge: the "
            f"smoothness of {what} is about L={L:.4g}, so {name} must be < "
            f"{_BOUND_FORMULA.get(solver, '2/L')} = {bound:.4g}"
            + ("" if solver in ("gd", "sgd") else f" (momentum={beta:.4g})")
            + f"; the default {name}=None uses 1/L. Pass check_step=False to run it anyway "
            "(L is an estimate)")


def check_step_size(problem, lam, gamma, solver, beta, check_step, name="step_size",
                    label=None):
    """:func:`check_step_bound` with L the estimated smoothness of the full
    objective at λ. For minibatch steps this is a necessary condition (on a
    quadratic the mean of the SGD iterates follows gd on the full
    objective), not the per-sample bound that the default step size uses."""
    check_step_bound(gamma, lambda: smoothness(problem, lam), solver, beta, check_step, name,
                     label)


def resolve_momentum(problem, lam, solver, momentum):
    """β for heavy_ball and agd: the user's, or from κ = L/μ with μ the
    regularizer's strong convexity: (√κ−1)/(√κ+1) for agd (AccBiO),
    ((√κ−1)/(√κ+1))² for heavy_ball (Polyak)."""
    if solver in ("gd", "sgd"):       # the method table refuses a momentum here
        return 0.0
    if momentum is not None:
        beta = check_scalar("momentum", momentum, low=0.0)
        if beta >= 1.0:
            raise ValueError(f"momentum={beta} must be < 1")
        return beta
    mu = problem.strong_convexity(lam)
    if mu <= 0.0:
        raise ValueError(f"solver={solver!r} needs momentum=... here: the inner problem "
                         "has no strong-convexity floor (reg = 0) to derive it from")
    q = math.sqrt(smoothness(problem, lam) / mu)
    beta = (q - 1.0) / (q + 1.0)
    return beta if solver == "agd" else beta * beta


def check_seed(seed):
    """A seed: an integer in [0, 2^63)."""
    seed = check_scalar("seed", seed, low=0, integer=True)
    if seed >= 2**63:
        raise ValueError(f"seed={seed} must be < 2**63")
    return seed


def check_batch(name, b, n, replace):
    """A batch size in [1, n] (any size ≥ 1 when drawing with replacement)."""
    b = check_scalar(name, b, low=1, integer=True)
    if b > n and not replace:
        raise ValueError(f"{name}={b} exceeds the {n} rows it is drawn from "
                         "(without replacement)")
    return b


def resolve_sampler(problem, solver, batch_size, replace, seed):
    """The kernel sampler int64 [batch, replace, seed] for ``sgd``, else None."""
    if solver != "sgd":               # the method table refuses a batch_size here
        return None
    b = min(problem.n, 128) if batch_size is None else \
        check_batch("batch_size", batch_size, problem.n, replace)
    if not isinstance(replace, (bool, np.bool_)):
        raise TypeError(f"replace={replace!r} must be a bool")
    return np.array([b, int(replace), check_seed(seed)], dtype=np.int64)


def check_finite_result(label, value, *arrays):
    """Never return a non-finite result: say what to change instead."""
    if np.isfinite(value) and all(np.all(np.isfinite(a)) for a in arrays):
        return
    raise DivergenceError(f"method={label!r} gave a non-finite result (outer value {value:.4g}): "
                     "lam, w0 or the data are too large for float64 arithmetic at this "
                     "point; scale the data or start from a smaller lam/w0")


def fmt_bytes(n):
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} bytes"


def check_bytes(nbytes, what):
    if nbytes > config.MAX_TRAJECTORY_BYTES:
        raise ValueError(f"{what} {fmt_bytes(nbytes)}, above config.MAX_TRAJECTORY_BYTES="
                         f"{fmt_bytes(config.MAX_TRAJECTORY_BYTES)}")


def start_lam(problem, lam0, bounds):
    """(λ₀ checked and clipped to the bounds, the bounds checked or None)."""
    lam = check_vector("lam0", np.asarray(lam0), problem.lam_shape)
    bnd = check_bounds(problem, bounds)
    if bnd is not None:
        lam = np.clip(lam, *bnd)
    return lam, bnd


def check_bounds(problem, bounds):
    """None, or (low, high) broadcast to λ's shape, checked."""
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError("bounds must be a pair (low, high) of scalars or arrays of λ's shape")
    out = []
    for name, b in zip(("low", "high"), bounds):
        try:
            arr = np.asarray(b, dtype=float)
        except (TypeError, ValueError) as e:
            raise TypeError(f"bounds: {name}={b!r} is not a number or an array of numbers") from e
        try:
            out.append(np.broadcast_to(arr, problem.lam_shape))
        except ValueError:
            raise ValueError(f"bounds: {name} has shape {arr.shape}, which does not fit λ's "
                             f"shape {problem.lam_shape}; give a scalar or an array of that "
                             "shape") from None
    lo, hi = out
    if np.any(np.isnan(lo)) or np.any(np.isnan(hi)) or np.any(lo > hi):
        raise ValueError("bounds: need low <= high everywhere (no NaN)")
    return lo, hi
