"""Multi-task ``init`` problems: MAML-type meta-learning of a shared start θ
(thesis Alg. 6-7; UFO-BLO Sec. 2-3)."""
import time

import numba
import numpy as np

from . import _checks
from ._checks import DivergenceError, check_bytes, check_seed, check_step_bound
from .backend import CPU
from ._results import HypergradientResult
from ._codes import META_FIRST_ORDER, META_RECOMPUTE, META_REVERSE, META_UFO
from ._registry import MODELS

META_METHODS = {"reverse": META_REVERSE, "recompute": META_RECOMPUTE,
                "first_order": META_FIRST_ORDER, "ufo": META_UFO}


def _task_array(name, A, ndim, dtype):
    A = np.asarray(A)
    if A.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D (tasks first), got shape {A.shape}")
    if A.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {A.dtype}; expected real numbers")
    A = np.ascontiguousarray(A, dtype=dtype)
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{name} contains NaN or inf")
    return A


class MultiTaskProblem:
    """Many tasks sharing a learned inner-loop start θ (hyper ``init``).

    Task i trains on (X[i], y[i]) — inner loss L_i^in(φ) = (1/s) Σ ℓ(x φ; y)
    + (reg/2)‖φ‖² — with r steps of GD from φ_0 = θ, and is scored on
    (X_test[i], y_test[i]): L_i^out(φ_r) = (1/t) Σ ℓ(x φ_r; y). The meta
    objective is M(θ) = mean_i L_i^out(φ_r(θ)) (UFO-BLO eq. 2 over a finite
    task set; thesis eq. 6.8).

    Parameters
    ----------
    model : {"linear", "logistic", "multinomial"}
    X : array_like, shape (N, s, d)
        Dense training rows of the N tasks.
    y : array_like, shape (N, s)
        Their labels (as in BilevelProblem).
    X_test : array_like, shape (N, t, d)
        Dense test rows of the tasks.
    y_test : array_like, shape (N, t)
        Their labels.
    reg : float ≥ 0, default 0
        C of the inner (C/2)‖φ‖².
    dtype : float32 or float64, optional
        Default: that of X.
    n_classes : int, optional
        For multinomial; default: the number of classes in y, which must
        then be 0..c−1 with every class present.

    θ (and every gradient) has shape (d,) or (d, c).
    """

    hyper = "init"

    def __init__(self, model, X, y, X_test, y_test, reg=0.0, dtype=None, n_classes=None):
        self.model = _checks.check_choice("model", model, MODELS)
        self._model = MODELS[model].code
        dt = _checks.check_dtype("dtype", dtype)
        if dt is None:
            dt = np.float32 if np.asarray(X).dtype == np.float32 else np.float64
        self.X = _task_array("X", X, 3, dt)
        self.X_test = _task_array("X_test", X_test, 3, dt)
        self.dtype = self.X.dtype
        N, s, d = self.X.shape
        if self.X_test.shape[0] != N or self.X_test.shape[2] != d:
            raise ValueError(f"X_test has shape {self.X_test.shape}; expected ({N}, t, {d})")
        if N < 1 or s < 1 or self.X_test.shape[1] < 1:
            raise ValueError("need at least one task with one train and one test row")
        y = _task_array("y", y, 2, np.float64)
        yt = _task_array("y_test", y_test, 2, np.float64)
        if y.shape != (N, s):
            raise ValueError(f"y has shape {y.shape}; expected {(N, s)}")
        if yt.shape != self.X_test.shape[:2]:
            raise ValueError(f"y_test has shape {yt.shape}; expected {self.X_test.shape[:2]}")
        self.y = _checks.check_labels("y", y.ravel(), N * s, model).reshape(N, s)
        self.y_test = _checks.check_labels("y_test", yt.ravel(), yt.size, model).reshape(yt.shape)
        self.n_tasks, self.shots, self.d = N, s, d
        self.test_shots = self.X_test.shape[1]
        self.c = _checks.check_n_classes(model, n_classes, self.y, self.y_test)
        self.reg = _checks.check_scalar("reg", reg, low=0.0)
        self.backend = CPU
        self._L = None

    @property
    def w_shape(self):
        return (self.d,) if self.c == 1 else (self.d, self.c)

    lam_shape = w_shape

    @property
    def dim_lam(self):
        return self.d * self.c

    def _theta_in(self, theta):
        th = _checks.check_vector("theta", theta, self.w_shape)
        return np.ascontiguousarray(th.reshape(self.d, self.c).T)

    def _out(self, W):
        return W.T.reshape(self.w_shape).copy()

    def lipschitz(self):
        """max over tasks of the smoothness of the inner loss:
        sup ℓ'' · ‖X_i‖₂²/s + reg."""
        if self._L is None:
            sq = np.linalg.norm(self.X.astype(np.float64), ord=2, axis=(1, 2)) ** 2
            self._L = MODELS[self.model].curvature * float(sq.max()) / self.shots + self.reg
        return self._L

    def meta_value(self, theta, steps, step_size):
        """M(θ): mean test loss over all tasks after ``steps`` GD steps."""
        return meta_hypergradient(self, theta, "first_order", steps, step_size).value

    def __repr__(self):
        return (f"MultiTaskProblem(model={self.model!r}, tasks={self.n_tasks}, "
                f"shots={self.shots}, test_shots={self.test_shots}, d={self.d}, c={self.c}, "
                f"reg={self.reg})")


def meta_hypergradient(problem, theta, method="reverse", steps=10, step_size=None, *,
                       q=None, meta_batch=None, seed=0, check_step=True):
    """Meta-gradient of M(θ) over a meta-batch of tasks (UFO-BLO Alg. 1's b/v).

    Parameters
    ----------
    problem : MultiTaskProblem
    theta : array_like, shape (d,) or (d, c)
        θ, the learned start of every task's inner loop.
    method : {"reverse", "recompute", "first_order", "ufo"}, default "reverse"
        ``reverse``: UFO-BLO Alg. 4, r stored states per task.
        ``recompute``: Alg. 5, O(dim θ) memory, O(r²) steps.
        ``first_order``: FO-BLO, Alg. 2, ∇L^out(φ_r), biased.
        ``ufo``: Alg. 3, FO-BLO plus, with probability q, (exact − FO)/q
        with the exact term by ``recompute``: unbiased.
    steps : int ≥ 0, default 10
        r, inner GD steps per task.
    step_size : float > 0, optional
        α; default 1/L with L = ``problem.lipschitz()``.
    q : float in (0, 1], optional
        For ``ufo``; default min(1, 1/r): with q ∝ 1/r the expected cost
        stays O(r) (UFO-BLO Cor. 1).
    meta_batch : int ≥ 1, optional
        Tasks per estimate; default all, in order. Otherwise drawn without
        replacement from ``seed``.
    seed : int in [0, 2^63), default 0
        Fixes the meta-batch and UFO's coins.
    check_step : bool, default True
        Refuse step_size ≥ 2/L before running; a task whose inner loss rises
        during the inner loop is reported as divergent either way.

    Returns
    -------
    HypergradientResult
        ``grad`` (shape of θ); ``value`` (mean test loss of the meta-batch
        at φ_r); ``w`` None; ``stats`` (tasks, corrections, train_steps,
        time_s, ...).

    Raises
    ------
    ValueError
        On invalid input, a diverging inner loop, or when ``reverse`` would
        hold more than ``config.MAX_TRAJECTORY_BYTES`` (r states per task
        of the meta-batch running at once).

    Ctrl-C stops a run at its next inner step (KeyboardInterrupt).
    """
    t0 = time.perf_counter()
    if not isinstance(problem, MultiTaskProblem):
        raise TypeError(f"meta_hypergradient needs a MultiTaskProblem, got "
                        f"{type(problem).__name__}")
    _checks.check_choice("method", method, META_METHODS)
    r = _checks.check_scalar("steps", steps, low=0, integer=True)
    L = problem.lipschitz()
    if not (np.isfinite(L) and L > 0.0):
        raise ValueError(f"the tasks' smoothness estimate is L={L!r}: the task data are zero "
                         "(with reg = 0) or too large for float64; scale X or use reg > 0")
    alpha = 1.0 / L if step_size is None else \
        _checks.check_scalar("step_size", step_size, low=0.0, low_inclusive=False)
    check_step_bound(alpha, L, "gd", 0.0, check_step, label="the tasks' inner GD",
                     what="their train losses")
    if method == "ufo":
        q = min(1.0, 1.0 / max(r, 1)) if q is None else _checks.check_scalar("q", q, low=0.0,
                                                                            low_inclusive=False)
        if q > 1.0:
            raise ValueError(f"q={q} must be in (0, 1]")
    elif q is not None:
        raise ValueError(f"q applies to method='ufo', not {method!r}")
    else:
        q = 1.0
    N = problem.n_tasks
    B = N if meta_batch is None else _checks.check_scalar("meta_batch", meta_batch, low=1,
                                                          integer=True)
    if B > N:
        raise ValueError(f"meta_batch={B} exceeds the {N} tasks")
    seed = check_seed(seed)
    if method == "reverse":
        check_bytes(r * problem.dim_lam * 8 * min(B, numba.get_num_threads()),
                     f"steps={r}: method='reverse' would store, over the tasks run at once,")
    Th = problem._theta_in(theta)
    G = np.empty_like(Th)
    val, tasks, fired, tsteps = problem.backend.meta_gradient(
        problem.X, problem.y, problem.X_test, problem.y_test,
        problem._model, problem.reg, Th, r, alpha, META_METHODS[method], q, B, seed, G)
    if not (np.all(np.isfinite(G)) and np.isfinite(val)):
        raise DivergenceError(f"the inner loop diverged: step_size={alpha:.4g} must be < 2/L = "
                         f"{2 / L:.4g} (L over the tasks' train losses)")
    stats = {"method": method, "steps": r, "step_size": alpha, "q": q if method == "ufo" else None,
             "meta_batch": B, "tasks": tasks.copy(), "corrections": int(fired),
             "train_steps": int(tsteps), "seed": seed,
             "trajectory_bytes": (r if method == "reverse" else 1) * problem.dim_lam * 8,
             "passes": int(tsteps), "time_s": time.perf_counter() - t0}
    return HypergradientResult(problem._out(G), float(val), None, stats)
