"""Multi-task problems: MAML-type meta-learning of a shared start θ (``init``;
thesis Alg. 6-7, UFO-BLO Sec. 2-3) and ANIL, a shared linear embedding with a
head adapted per task (``feature_map``; thesis Alg. 8, Prop. 10)."""
import time

import numba
import numpy as np

from . import _checks
from ._checks import DivergenceError, check_bytes, check_seed, check_step_bound
from .backend import OnDevice
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


HYPERS = ("init", "feature_map")


class MultiTaskProblem(OnDevice):
    """Many tasks sharing what meta-learning learns: the inner loop's start
    (``hyper="init"``, MAML) or a linear embedding and the head's start
    (``hyper="feature_map"``, ANIL).

    ``init``: task i trains φ on (X[i], y[i]) — inner loss L_i^in(φ) =
    (1/s) Σ ℓ(x φ; y) + (reg/2)‖φ‖² — with r steps of GD from φ_0 = θ, and is
    scored on (X_test[i], y_test[i]): L_i^out(φ_r) = (1/t) Σ ℓ(x φ_r; y). The
    meta objective is M(θ) = mean_i L_i^out(φ_r(θ)) (UFO-BLO eq. 2 over a
    finite task set; thesis eq. 6.8). θ has the shape of φ: (d,) or (d, c).

    ``feature_map``: rows are embedded by a shared P (k × d) and each task
    adapts a head w ((k,) or (k, c)) on the embedded rows P x: L_i^in(w, P)
    = (1/s) Σ ℓ(wᵀ P x; y) + (reg/2)‖w‖², r GD steps on w from w_0, scored
    by L_i^out(w_r, P). Both P and w_0 are learned (thesis Alg. 8, eq. 7.1):
    θ = [P | w_0ᵀ] has shape (k, d + c) — row a holds the a-th embedding
    direction and its head weight(s); :meth:`split` and :meth:`join` convert.

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
        C of the inner (C/2)‖φ‖² (‖w‖² for ``feature_map``).
    dtype : float32 or float64, optional
        Default: that of X.
    n_classes : int, optional
        For multinomial; default: the number of classes in y, which must
        then be 0..c−1 with every class present.
    hyper : {"init", "feature_map"}, default "init"
    k : int ≥ 1
        The embedding's dimension; ``feature_map`` only (and needed there).
    device : {"cpu", "cuda"}, default "cpu"
        Where the passes run. "cuda" copies the tasks to the GPU once and
        runs each meta-batch's tasks in lockstep there (every method and
        the task oracles; NumPy arrays in and out); without a usable GPU it
        raises :class:`fastbilevel.DeviceError`.
    """

    def __init__(self, model, X, y, X_test, y_test, reg=0.0, dtype=None, n_classes=None,
                 hyper="init", k=None, device="cpu"):
        self.model = _checks.check_choice("model", model, MODELS)
        self._model = MODELS[model].code
        self.hyper = _checks.check_choice("hyper", hyper, HYPERS)
        if hyper == "feature_map":
            if k is None:
                raise ValueError("hyper='feature_map' needs k, the embedding's dimension "
                                 "(the rows of P)")
            self.k = _checks.check_scalar("k", k, low=1, integer=True)
        elif k is not None:
            raise ValueError(f"k={k!r} applies to hyper='feature_map', not {hyper!r}")
        else:
            self.k = None
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
        self._L = None
        self._set_device(device)

    _GPU_BACKEND = ("fastbilevel.cuda_meta", "CUDAMetaBackend")

    @property
    def _m(self):
        """Length of the adapted vector per class: d (init) or k (feature_map)."""
        return self.d if self.k is None else self.k

    @property
    def w_shape(self):
        """Shape of what each task adapts: φ (init) or the head w (feature_map)."""
        return (self._m,) if self.c == 1 else (self._m, self.c)

    @property
    def lam_shape(self):
        """Shape of θ: that of φ (init), or (k, d + c) for [P | w_0ᵀ]."""
        return self.w_shape if self.k is None else (self.k, self.d + self.c)

    @property
    def dim_lam(self):
        return int(np.prod(self.lam_shape))

    def split(self, theta):
        """θ → (P of shape (k, d), w_0 of the head's shape) (``feature_map``)."""
        self._need_feature_map("split")
        th = _checks.check_vector("theta", theta, self.lam_shape)
        return th[:, :self.d].copy(), th[:, self.d:].reshape(self.w_shape).copy()

    def join(self, P, w0=None):
        """θ = [P | w_0ᵀ] from P (k, d) and the head's start (default 0)."""
        self._need_feature_map("join")
        P = _checks.check_vector("P", P, (self.k, self.d))
        w0 = np.zeros(self.w_shape) if w0 is None else _checks.check_vector("w0", w0,
                                                                            self.w_shape)
        return np.hstack([P, w0.reshape(self.k, self.c)])

    def _need_feature_map(self, what):
        if self.k is None:
            raise ValueError(f"{what} applies to hyper='feature_map'; this problem's "
                             f"hyper is {self.hyper!r}")

    def _theta_in(self, theta):
        """θ in the kernels' layout: (start (c, m), P (k, d) or (0, 0))."""
        th = _checks.check_vector("theta", theta, self.lam_shape)
        if self.k is None:
            return np.ascontiguousarray(th.reshape(self.d, self.c).T), np.empty((0, 0))
        return (np.ascontiguousarray(th[:, self.d:].T),
                np.ascontiguousarray(th[:, :self.d]))

    def _w_in(self, w):
        return np.ascontiguousarray(
            _checks.check_vector("w", w, self.w_shape).reshape(self._m, self.c).T)

    def _out(self, W, GP):
        """θ-shaped gradient from the start's (c, m) and P's (k, d) parts."""
        if self.k is None:
            return W.T.reshape(self.w_shape).copy()
        return np.hstack([GP, W.T])

    def lipschitz(self, theta=None):
        """max over tasks of the smoothness of the inner loss:
        sup ℓ'' · ‖X_i‖₂²/s + reg, with X_i Pᵀ in place of X_i for
        ``feature_map`` (which depends on P, so there θ is needed)."""
        if self.k is not None:
            if theta is None:
                raise ValueError("with hyper='feature_map' the smoothness depends on P: "
                                 "give theta")
            P = self._theta_in(theta)[1]
            E = np.einsum("nsd,kd->nsk", self.X.astype(np.float64), P)
            sq = np.linalg.norm(E, ord=2, axis=(1, 2)) ** 2
            return MODELS[self.model].curvature * float(sq.max()) / self.shots + self.reg
        if self._L is None:
            sq = np.linalg.norm(self.X.astype(np.float64), ord=2, axis=(1, 2)) ** 2
            self._L = MODELS[self.model].curvature * float(sq.max()) / self.shots + self.reg
        return self._L

    def meta_value(self, theta, steps, step_size):
        """M(θ): mean test loss over all tasks after ``steps`` GD steps."""
        return meta_hypergradient(self, theta, "first_order", steps, step_size).value

    # ---------------------------------------------------------- task oracles
    def _task_pass(self, task, test, w, theta, v=None):
        """One task's pass (see the oracles below) in the user's shapes:
        (value, ∇_w, ∇²_w·v or None, ∂_θ part or None)."""
        i = _checks.check_scalar("task", task, low=0, integer=True)
        if i >= self.n_tasks:
            raise ValueError(f"task={i} is not below the number of tasks {self.n_tasks}")
        W = self._w_in(w)
        _, P = self._theta_in(theta)
        feat = self.k is not None
        if not feat:
            P = np.eye(self.d)
        V = W if v is None else np.ascontiguousarray(
            _checks.check_vector("v", v, self.w_shape).reshape(self._m, self.c).T)
        X, y = (self.X_test[i], self.y_test[i]) if test else (self.X[i], self.y[i])
        G, HV, C = np.empty_like(W), np.empty_like(W), np.empty_like(P)
        val = self.backend.task_pass(X, y, self._model, 0.0 if test else self.reg, P, W, V,
                                     v is not None, G, HV, C)
        shape = self.w_shape
        lam_part = np.hstack([C, np.zeros((self.k, self.c))]) if feat else np.zeros(shape)
        return (float(val), G.T.reshape(shape).copy(),
                HV.T.reshape(shape).copy() if v is not None else None, lam_part)

    def inner_value(self, task, w, theta):
        """L_i^in(w, θ): task i's train loss with its regularizer."""
        return self._task_pass(task, False, w, theta)[0]

    def inner_grad(self, task, w, theta):
        """∇_w L_i^in(w, θ)."""
        return self._task_pass(task, False, w, theta)[1]

    def hvp(self, task, w, theta, v):
        """∇²_w L_i^in(w, θ) v."""
        return self._task_pass(task, False, w, theta, v)[2]

    def cross(self, task, w, theta, v):
        """∂_θ ⟨∇_w L_i^in(w, θ), v⟩ (θ-shaped; zero for ``init``, where θ
        enters only as the start, and in the head's columns of θ)."""
        return self._task_pass(task, False, w, theta, v)[3]

    def outer_value(self, task, w, theta):
        """L_i^out(w, θ): task i's test loss."""
        return self._task_pass(task, True, w, theta)[0]

    def outer_grad(self, task, w, theta):
        """∇_w L_i^out(w, θ)."""
        return self._task_pass(task, True, w, theta)[1]

    def outer_grad_lam(self, task, w, theta):
        """∂_θ L_i^out(w, θ) (θ-shaped; zero for ``init``)."""
        return self._task_pass(task, True, w, theta)[3]

    def __repr__(self):
        emb = f", hyper='feature_map', k={self.k}" if self.k is not None else ""
        return (f"MultiTaskProblem(model={self.model!r}, tasks={self.n_tasks}, "
                f"shots={self.shots}, test_shots={self.test_shots}, d={self.d}, c={self.c}, "
                f"reg={self.reg}{emb})")


def meta_hypergradient(problem, theta, method="reverse", steps=10, step_size=None, *,
                       q=None, meta_batch=None, seed=0, check_step=True):
    """Meta-gradient of M(θ) over a meta-batch of tasks (UFO-BLO Alg. 1's b/v).

    Parameters
    ----------
    problem : MultiTaskProblem
    theta : array_like, shape ``problem.lam_shape``
        θ: the learned start of every task's inner loop, (d,) or (d, c)
        (``init``); [P | w_0ᵀ] of shape (k, d + c) (``feature_map``), whose
        gradient is ANIL's pair ∂/∂P, ∂/∂w_0 (thesis Prop. 10).
    method : {"reverse", "recompute", "first_order", "ufo"}, default "reverse"
        ``reverse``: UFO-BLO Alg. 4, r stored states per task.
        ``recompute``: Alg. 5, O(dim θ) memory, O(r²) steps.
        ``first_order``: FO-BLO, Alg. 2, ∇L^out(φ_r), biased.
        ``ufo``: Alg. 3, FO-BLO plus, with probability q, (exact − FO)/q
        with the exact term by ``recompute``: unbiased.
    steps : int ≥ 0, default 10
        r, inner GD steps per task.
    step_size : float > 0, optional
        α; default 1/L with L = ``problem.lipschitz()``. Needed for
        ``feature_map`` (its L depends on P).
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
    feat = problem.k is not None
    Th, P = problem._theta_in(theta)
    if feat and step_size is None:
        raise ValueError("hyper='feature_map' needs step_size: the inner loss's smoothness "
                         "depends on P, so no fixed default exists; e.g. give "
                         "step_size=1/problem.lipschitz(theta0) for the starting theta0")
    L = problem.lipschitz(theta) if (check_step or step_size is None) else None
    if L is not None and not (np.isfinite(L) and L > 0.0):
        raise ValueError(f"the tasks' smoothness estimate is L={L!r}: the task data are zero "
                         "(with reg = 0) or too large for float64; scale X or use reg > 0")
    alpha = 1.0 / L if step_size is None else \
        _checks.check_scalar("step_size", step_size, low=0.0, low_inclusive=False)
    if L is not None:
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
    if method == "reverse":            # the GPU runs the whole meta-batch at once
        at_once = B if problem.device == "cuda" else min(B, numba.get_num_threads())
        check_bytes(r * problem.c * problem._m * 8 * at_once,
                    f"steps={r}: method='reverse' would store, over the tasks run at once,")
    G = np.empty_like(Th)
    GP = np.empty_like(P)
    val, tasks, fired, tsteps = problem.backend.meta_gradient(
        problem.X, problem.y, problem.X_test, problem.y_test,
        problem._model, problem.reg, Th, P, r, alpha, META_METHODS[method], q, B, seed, G, GP)
    if not (np.all(np.isfinite(G)) and np.all(np.isfinite(GP)) and np.isfinite(val)):
        L = problem.lipschitz(theta) if L is None else L
        raise DivergenceError(f"the inner loop diverged: step_size={alpha:.4g} must be < 2/L = "
                         f"{2 / L:.4g} (L over the tasks' train losses)")
    stats = {"method": method, "steps": r, "step_size": alpha, "q": q if method == "ufo" else None,
             "meta_batch": B, "tasks": tasks.copy(), "corrections": int(fired),
             "train_steps": int(tsteps), "seed": seed,
             "trajectory_bytes": (r if method == "reverse" else 1) * problem.c * problem._m * 8,
             "passes": int(tsteps), "time_s": time.perf_counter() - t0}
    return HypergradientResult(problem._out(G, GP), float(val), None, stats)
