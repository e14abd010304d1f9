"""sweep(): B hyperparameter settings at once, one pass over X per step for all.

A grid of regularization strengths, a batch of random restarts of λ, seeds ×
step sizes: :func:`sweep` computes every setting's hypergradient (or, with
``method="solve"``, its inner solution and outer value) with the batched
kernels of :mod:`fastbilevel.kernels.batched`, where the B weight vectors
are the columns of one panel and every pass over the training data serves
all B settings. Each setting's result equals its own :func:`hypergradient`
call to rounding (the sums run in the same order).
"""
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from . import _checks, config, schedules
from ._checks import (DivergenceError, check_step_size, fmt_bytes,
                      resolve_momentum, resolve_step_size, smoothness)
from ._chunks import chunk_bounds, progress_bar, slice_opts
from ._codes import CONVERGED, DIVERGED, NO_CURVATURE, STOPPED
from ._params import SOLVER, check_hypergradient_kw, given_keywords, refuse_unused
from .hypergrad import (LINEAR_SOLVERS, SOLVERS, build_schedule, hypergradient, solve,
                        state_vectors)
from .kernels.unroll import value_stride
from .problem import BilevelProblem

METHODS = ("reverse", "checkpointed", "recompute", "truncated", "forward", "implicit",
           "stocbio", "solve")
STRATEGIES = ("auto", "rows", "settings")
# methods (and solvers) the batched kernels run; the others run setting by setting
_BATCHED_METHODS = frozenset({"reverse", "checkpointed", "recompute", "truncated",
                              "implicit", "solve"})
_BATCHED_SOLVERS = frozenset({"gd", "heavy_ball", "agd"})


class SweepResult:
    """What :func:`sweep` returns: one row per setting b = 0..B−1.

    Attributes
    ----------
    lams : ndarray, (B,) + λ's shape — the settings, as given.
    grad : ndarray, (B,) + λ's shape, or None for ``method="solve"`` — the
        hypergradients; NaN rows for the settings that diverged.
    value : ndarray (B,) — outer values f(w_T); NaN where diverged.
    w : ndarray, (B,) + w's shape — inner solutions w_T; NaN where diverged.
    stats : dict — ``time_s``; ``passes`` (passes over X: with the batched
        kernels each serves all B settings); ``strategy`` ("rows": batched
        kernels; "settings": one run per setting, in parallel threads);
        ``bytes_held`` (stored trajectories, snapshots or tangents, all
        settings); ``diverged`` (B,) bool; ``diverged_at`` (B,) int, the step
        at which each diverged setting was stopped (−1 otherwise);
        ``step_size`` and ``momentum`` (B,); ``inner_values`` (B, ·) g at the
        recorded steps (every ``inner_values_stride``-th); ``method``,
        ``solver``, ``steps``, ``n_settings``, ``chunks``; for ``implicit``
        also ``residual``, ``linear_steps`` and ``converged`` (B,).
    """

    __slots__ = ("lams", "grad", "value", "w", "stats")

    def __init__(self, lams, grad, value, w, stats):
        self.lams, self.grad, self.value, self.w, self.stats = lams, grad, value, w, stats

    def __len__(self):
        return self.value.shape[0]

    def plot(self, path=None, title=None):
        """Outer value against λ with each hypergradient drawn as a slope (a
        matplotlib Figure; written to ``path`` when given). Needs matplotlib
        (``fastbilevel[plot]``)."""
        from .plot import plot_sweep
        return plot_sweep(self, path, title)

    @property
    def best(self):
        """Index of the setting with the lowest outer value (diverged ones
        excluded); None if every setting diverged."""
        ok = np.isfinite(self.value)
        if not ok.any():
            return None
        return int(np.flatnonzero(ok)[np.argmin(self.value[ok])])

    def __repr__(self):
        nd = int(self.stats["diverged"].sum())
        best = self.best
        b = "none" if best is None else f"{best} (value {self.value[best]:.6g})"
        return (f"SweepResult(settings={len(self)}, best={b}, diverged={nd}, "
                f"strategy={self.stats['strategy']!r}, time_s={self.stats['time_s']:.4g})")


# ------------------------------------------------------------ per-setting inputs
def _check_lams(problem, lams):
    """``lams`` as a float64 array (B,) + λ's shape, B ≥ 1."""
    shape = problem.lam_shape
    try:
        arr = np.array(lams, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"lams must be an array of numbers of shape (B,) + {shape}") from e
    if shape == () and arr.ndim == 0:      # one l2 setting given as a scalar
        arr = arr.reshape(1)
    if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape:
        raise ValueError(f"lams has shape {arr.shape}; a sweep over hyper="
                         f"{problem.hyper!r} needs shape (B,) + {shape}: one λ of shape "
                         f"{shape} per setting")
    if arr.shape[0] == 0:
        raise ValueError("lams holds no setting (B = 0)")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr.reshape(arr.shape[0], -1)))[0, 0]
        raise ValueError(f"lams[{bad}] has a NaN or inf entry")
    return arr


def _per_setting(name, value, B, shape=()):
    """None, one value of ``shape`` shared by all settings, or B of them
    (leading axis B) → a list of B values (None entries when None)."""
    if value is None:
        return [None] * B
    arr = np.asarray(value)
    if arr.shape == shape:
        return [value] * B
    if arr.shape == (B,) + shape:
        return [arr[b] if shape else arr[b].item() for b in range(B)]
    per = f"({B},)" if not shape else f"({B}, {', '.join(map(str, shape))})"
    raise ValueError(f"{name} has shape {arr.shape}: give one value of shape {shape} for "
                     f"every setting, or one per setting, shape {per}")


class _Layout:
    """The data as the batched kernels take it, built once per problem.

    CSR data: the features renumbered by decreasing frequency in the
    training rows (the most used weights of every setting then share a few
    pages and cache lines: measured 1.8× faster gathers on the text
    problem), and Xᵀ in CSR form for the accumulation over columns. Users
    never see the permuted order: the per-feature inputs are permuted on the
    way in and every output un-permuted on the way out. Dense data, and any
    data of a GPU problem (its backend keeps its own transpose), is used as
    is (``perm`` None)."""

    def __init__(self, problem):
        self.perm = None
        self.train, self.val = problem.train, problem.val
        self.trainT = self.valT = None
        if not problem.sparse or problem.device != "cpu":
            return
        import scipy.sparse as sp
        d = problem.d
        count = np.bincount(problem.train.indices, minlength=d)
        perm = np.argsort(-count, kind="stable")
        rank = np.empty(d, dtype=np.int64)
        rank[perm] = np.arange(d)
        self.perm = perm
        self.train, self.trainT = self._renumber(problem.train, rank, d, sp)
        self.val, self.valT = self._renumber(problem.val, rank, d, sp)

    @staticmethod
    def _renumber(D, rank, d, sp):
        n = D.y.shape[0]
        X = sp.csr_matrix((D.data.copy(), rank[D.indices], D.indptr.copy()), shape=(n, d))
        X.sort_indices()        # in place: on copies, never on the problem's arrays
        XT = X.T.tocsr()
        XT.sort_indices()
        data = D._replace(indptr=X.indptr.astype(np.int64), indices=X.indices.astype(np.int32),
                          data=np.ascontiguousarray(X.data, dtype=D.data.dtype))
        return data, (XT.indptr.astype(np.int64), XT.indices.astype(np.int32),
                      np.ascontiguousarray(XT.data, dtype=D.data.dtype))

    def features_in(self, arr):
        """Per-feature arrays (last axis d) into the kernels' order."""
        return arr if self.perm is None or arr.size == 0 else \
            np.ascontiguousarray(arr[..., self.perm])

    def features_out(self, arr):
        """Kernel-order arrays (last axis d) back to the user's order."""
        if self.perm is None or arr.size == 0:
            return arr
        out = np.empty_like(arr)
        out[..., self.perm] = arr
        return out


def _layout(problem):
    """The problem's :class:`_Layout` (built on first use, kept on it)."""
    lay = problem.__dict__.get("_batched_layout")
    if lay is None:
        lay = problem.__dict__["_batched_layout"] = _Layout(problem)
    return lay


def _resolve(problem, lams, solver, step_size, momentum, w0, check_step):
    """Per-setting kernel parameters: (HyperParams list, gammas, betas, W0s)."""
    B = lams.shape[0]
    hps = [problem._lam_in(lams[b]) for b in range(B)]
    sizes = _per_setting("step_size", step_size, B)
    moms = _per_setting("momentum", momentum, B)
    gammas = np.empty(B)
    betas = np.empty(B)
    for b in range(B):
        lam = lams[b]
        try:
            gammas[b] = resolve_step_size(problem, lam, sizes[b], minibatch=solver == "sgd")
            betas[b] = resolve_momentum(problem, lam, solver, moms[b])
            check_step_size(problem, lam, gammas[b], solver, betas[b], check_step)
        except ValueError as e:
            raise type(e)(f"setting {b} (lams[{b}]): {e}") from None
    if problem.hyper == "init":
        if w0 is not None:
            raise ValueError("w0 must not be given for hyper='init': each inner loop starts "
                             "at its lam")
        W0 = np.stack([hp.W0 for hp in hps])
    else:
        starts = _per_setting("w0", w0, B, problem.w_shape)
        W0 = np.zeros((B, problem.c, problem.d))
        for b in range(B):
            if starts[b] is not None:
                W0[b] = problem._w_in("w0" if np.ndim(w0) == len(problem.w_shape)
                                      else f"w0[{b}]", starts[b])
    return hps, gammas, betas, W0


def _stack_params(problem, hps):
    """The batched kernels' per-setting arrays: A, DA (B, n) or (0, 0), RD
    (B, d), PRIOR (B, c, d) or (0, 0, 0)."""
    if problem.hyper == "sample_weights":
        A = np.stack([hp.a for hp in hps])
        DA = np.stack([hp.da for hp in hps])
    else:
        A = DA = np.empty((0, 0))
    RD = np.stack([hp.rdiag for hp in hps])
    PRIOR = np.stack([hp.prior for hp in hps]) if problem.hyper == "biased_l2" else \
        np.empty((0, 0, 0))
    return A, DA, RD, PRIOR


# ------------------------------------------------------------------- strategy
def _batchable(method, solver):
    return method in _BATCHED_METHODS and solver in _BATCHED_SOLVERS


# below this many settings a CSR sweep runs setting by setting: the batched
# CSR pass has a cost per pass that does not shrink with B (the column-owned
# accumulation over Xᵀ), measured on the text problem (T=20, 2 threads) to
# cross the per-setting runs at B ≈ 6 (n=11314, 1.74M nnz) and ≈ 7 (quick)
CSR_ROWS_MIN_SETTINGS = 8


def _choose_strategy(problem, method, solver, strategy, B):
    """"rows" (batched kernels) where the method and solver allow it, unless,
    on the CPU, the rows are too few to split among the threads (fewer than
    64 per thread) and there are settings to go round, or the data are CSR
    and there are fewer than ``CSR_ROWS_MIN_SETTINGS`` settings: then
    "settings"."""
    _checks.check_choice("strategy", strategy, STRATEGIES)
    can = _batchable(method, solver)
    if strategy == "rows":
        if not can:
            raise ValueError(
                f"strategy='rows' (the batched kernels) runs the full-batch solvers "
                f"{sorted(_BATCHED_SOLVERS)} with methods {sorted(_BATCHED_METHODS)}; "
                f"method={method!r} with solver={solver!r} runs setting by setting: use "
                "strategy='settings' or 'auto'")
        return "rows"
    if strategy == "settings" or not can:
        return "settings"
    if problem.device != "cpu":     # a GPU runs the settings as grid rows: always batch
        return "rows"
    if problem.sparse and B < CSR_ROWS_MIN_SETTINGS:
        return "settings"
    threads = numba.get_num_threads()
    if problem.n < 64 * threads and B >= threads and threads > 1 and _threadsafe():
        return "settings"
    return "rows"


def _threadsafe():
    """Whether parallel kernels may run from several host threads at once
    (TBB and OpenMP layers; not workqueue)."""
    try:
        return numba.threading_layer() in ("tbb", "omp")
    except ValueError:          # no parallel kernel has run yet: the configured layer
        return numba.config.THREADING_LAYER in ("safe", "tbb", "threadsafe", "omp")


# ---------------------------------------------------------------------- sweep
def sweep(problem, lams, method="reverse", solver="gd", steps=100, step_size=None, w0=None,
          *, K=None, snapshots=None, schedule=None, momentum=None, linear_solver=None,
          tol=None, v0=None, eta=None, batch_size=None, replace=None, seed=None,
          check_step=True, strategy="auto", chunk_size=None, client=None, progress=None,
          **method_kw):
    """Hypergradients (or inner solutions) of B hyperparameter settings at once.

    Parameters
    ----------
    problem : BilevelProblem
    lams : array_like, shape (B,) + ``problem.lam_shape``
        The settings (for ``l2``, shape (B,): e.g. ``np.linspace(-6, 2, 64)``).
    method : str
        Any method of :func:`hypergradient` (``reverse``, ``checkpointed``,
        ``recompute``, ``truncated``, ``forward``, ``implicit``,
        ``stocbio``), or ``solve``: the inner loop and f(w_T) only (a plain
        grid search; ``grad`` is None).
    solver, steps, K, snapshots, schedule, linear_solver, tol, eta, batch_size, replace,
    check_step, **method_kw
        As in :func:`hypergradient`, shared by every setting.
    step_size, momentum : float or array (B,), optional
        Shared, or one per setting; default per setting as in
        :func:`hypergradient` (1/L at that setting's λ).
    w0, v0 : array, shape of w or (B,) + shape of w, optional
        Shared or per setting.
    seed : int or int array (B,), optional
        Shared or per setting (``sgd``, ``stocbio``).
    strategy : {"auto", "rows", "settings"}
        ``rows``: the batched kernels, each pass over X serving all B
        settings (full-batch solvers gd, heavy_ball, agd with the methods
        reverse, checkpointed, recompute, truncated, implicit and solve).
        ``settings``: one single-setting run per setting, as many at a time
        as Numba has threads (forward, stocbio and sgd always run so: their
        passes cannot be shared). ``auto``: rows where possible, unless the
        problem has fewer than 64 rows per thread, or is CSR with fewer
        than ``CSR_ROWS_MIN_SETTINGS`` (8) settings (the batched CSR pass
        has a cost per pass that B does not divide: below 8 settings the
        single-setting runs were faster in our measurements). A GPU problem
        (``device="cuda"``) takes "rows" wherever the method and solver
        allow it (its B settings are rows of thread blocks), else runs
        setting by setting, one at a time.
    chunk_size : int, optional
        Settings per batched kernel call (default all B, or B split evenly
        over the Dask workers): bounds the memory held at once, and a
        progress bar advances per chunk.
    client : dask.distributed.Client, optional
        Run the chunks on a Dask cluster: the problem is sent to each worker
        once, each worker runs the batched kernels on its chunks, and the
        results come back in order, equal to the local sweep.
    progress : bool, optional
        Show a progress bar over the chunks (needs tqdm); default: no bar.

    Memory: ``reverse`` holds B·T·dim w floats (``truncated`` B·K·dim w,
    ``checkpointed`` B·snapshots·dim w); past ``config.MAX_TRAJECTORY_BYTES``
    the sweep is refused; use ``method="checkpointed"`` or ``chunk_size``.

    A setting whose inner loop diverges is flagged in ``stats["diverged"]``
    and its rows are NaN; the others are unaffected. Ctrl-C stops the sweep
    with a KeyboardInterrupt within one pass.

    Returns
    -------
    SweepResult
    """
    t0 = time.perf_counter()
    _checks.check_problem(problem, (BilevelProblem,))
    _checks.check_choice("method", method, METHODS)
    if problem.device != "cpu" and client is not None:
        _checks.require_cpu(problem, "sweep(client=...)")
    given = given_keywords(dict(step_size=step_size, w0=w0, K=K, snapshots=snapshots,
                                schedule=schedule, momentum=momentum,
                                linear_solver=linear_solver, tol=tol, v0=v0, eta=eta,
                                batch_size=batch_size, replace=replace, seed=seed),
                           method_kw, solver, check_step)
    if method == "solve":
        _checks.check_choice("solver", solver, SOLVERS)
        refuse_unused(given, frozenset({"solver", "step_size", "w0", "check_step"})
                      | SOLVER[solver], f"method='solve' with solver={solver!r}")
    else:
        check_hypergradient_kw(method, solver, given)
    T = _checks.check_scalar("steps", steps, low=0, integer=True)
    lams = _check_lams(problem, lams)
    B = lams.shape[0]
    if chunk_size is not None:
        chunk_size = _checks.check_scalar("chunk_size", chunk_size, low=1, integer=True)
    for name, shape in (("step_size", ()), ("momentum", ()), ("seed", ()),
                        ("w0", problem.w_shape), ("v0", problem.w_shape)):
        _per_setting(name, given.get(name), B, shape)
    # the kernels see chunks of chunk_size settings
    strat = _choose_strategy(problem, method, solver, strategy,
                             B if chunk_size is None else min(B, chunk_size))
    opts = dict(method=method, solver=solver, steps=T, step_size=step_size, w0=w0, K=K,
                snapshots=snapshots, schedule=schedule, momentum=momentum,
                linear_solver=linear_solver, tol=tol, v0=v0, eta=eta, batch_size=batch_size,
                replace=replace, seed=seed, check_step=check_step, method_kw=method_kw)
    if client is not None:
        from ._distributed import run_on_client
        _layout(problem)        # built once here, shipped to the workers with the problem
        parts = run_on_client(client, problem, lams, strat, opts, chunk_size, progress,
                              run_chunk)
    else:
        parts = _run_chunks(problem, lams, strat, opts, chunk_size, progress)
    out = _concat(parts)
    out.stats["time_s"] = time.perf_counter() - t0
    out.stats["chunks"] = len(parts)
    return out


def _run_chunks(problem, lams, strat, opts, chunk_size, progress):
    """Run the settings chunk by chunk on this machine."""
    B = lams.shape[0]
    bounds = chunk_bounds(B, chunk_size)
    bar = progress_bar(progress, len(bounds), f"sweep of {B} settings")
    parts = []
    try:
        for lo, hi in bounds:
            parts.append(run_chunk(problem, lams[lo:hi], strat,
                                   slice_opts(opts, lo, hi, len(problem.w_shape))))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return parts


def run_chunk(problem, lams, strat, opts):
    """One chunk of a sweep (also what a Dask worker runs): a SweepResult."""
    if strat == "rows":
        return _run_rows(problem, lams, opts)
    return _run_settings(problem, lams, opts)


def _concat(parts):
    if len(parts) == 1:
        return parts[0]
    st = dict(parts[0].stats)
    for k in ("diverged", "diverged_at", "step_size", "momentum", "residual",
              "linear_steps", "converged", "linear_failed", "v"):
        if k in st:
            st[k] = np.concatenate([p.stats[k] for p in parts])
    nv = max(p.stats["inner_values"].shape[1] for p in parts)
    st["inner_values"] = np.concatenate(
        [np.pad(p.stats["inner_values"], ((0, 0), (0, nv - p.stats["inner_values"].shape[1])),
                constant_values=np.nan) for p in parts])
    if "errors" in st:
        st["errors"] = [e for p in parts for e in p.stats["errors"]]
    for k in ("passes", "bytes_held"):
        st[k] = sum(p.stats[k] for p in parts) if k == "passes" else \
            max(p.stats[k] for p in parts)
    grad = None if parts[0].grad is None else np.concatenate([p.grad for p in parts])
    return SweepResult(np.concatenate([p.lams for p in parts]), grad,
                       np.concatenate([p.value for p in parts]),
                       np.concatenate([p.w for p in parts]), st)


# ------------------------------------------------------------------ batched rows
def _run_rows(problem, lams, opts):
    """The batched kernels on every setting of ``lams`` at once."""
    method, solver, T = opts["method"], opts["solver"], opts["steps"]
    B = lams.shape[0]
    hps, gammas, betas, W0 = _resolve(problem, lams, solver, opts["step_size"],
                                      opts["momentum"], opts["w0"], opts["check_step"])
    A, DA, RD, PRIOR = _stack_params(problem, hps)
    if method in ("solve", "implicit"):
        sched = schedules.inner_only(T)
    else:
        sched = build_schedule(method, T, opts["K"], opts["snapshots"], opts["schedule"])
    vec = problem.dim_w * 8
    held = B * (sched.nslots * state_vectors(solver) * vec + sched.buf_len * vec)
    if held > config.MAX_TRAJECTORY_BYTES:
        raise ValueError(
            f"steps={T}, {B} settings: method={method!r} would store B × "
            f"{'T' if method == 'reverse' else 'stored steps'} × dim w floats = "
            f"{fmt_bytes(held)}, above config.MAX_TRAJECTORY_BYTES="
            f"{fmt_bytes(config.MAX_TRAJECTORY_BYTES)}; use method='checkpointed' (⌈√T⌉ "
            "states per setting) or a smaller chunk_size")
    gvals = np.zeros((B, max(1, min(T, config.MAX_INNER_VALUES))))
    H = np.zeros((B, problem.dim_lam))
    nch = problem.backend.nchunks()
    lay = _layout(problem)
    RD = lay.features_in(RD)
    PRIOR = lay.features_in(PRIOR)
    WT, fvals, status, counts, GF = problem.backend.run_schedule_multi(
        lay.train, lay.trainT, A, DA, problem._model, problem._hyper, RD,
        PRIOR, lay.val, lay.valT, SOLVERS[solver], gammas, betas, lay.features_in(W0), T,
        sched.actions, sched.nslots, sched.buf_len, gvals, H, nch)
    passes = int(counts[0] + counts[1])
    stats = {"method": method, "solver": solver, "steps": T, "strategy": "rows",
             "n_settings": B, "step_size": gammas, "momentum": betas,
             "bytes_held": int(held), "val_passes": int(counts[2])}
    diverged_at = np.where(status >= 0, status, -1)
    if method == "implicit":
        H, extra, failed = _implicit_rows(problem, lay, lams, A, DA, RD, WT, GF, status, opts,
                                          stats)
        diverged_at[failed & (diverged_at < 0)] = T
        passes += extra
    stats["passes"] = passes
    if problem.hyper in ("feature_l2", "biased_l2", "init"):    # λ indexed by feature
        H = lay.features_out(H.reshape(W0.shape[0], -1, problem.d)).reshape(H.shape)
    return _package(problem, lams, H if method != "solve" else None, fvals,
                    lay.features_out(WT), diverged_at, gvals, T, stats)


def _implicit_rows(problem, lay, lams, A, DA, RD, WT, GF, status, opts, stats):
    """The batched linear solves of ``implicit`` after the batched inner
    loops: H_b v_b = ∇_w f_b, then h_b = −J_b v_b. Returns (H, passes, the
    settings whose linear solve diverged or met zero curvature)."""
    B = lams.shape[0]
    ls = "cg" if opts["linear_solver"] is None else opts["linear_solver"]
    _checks.check_choice("linear_solver", ls, LINEAR_SOLVERS)
    Kls = 100 if opts["K"] is None else _checks.check_scalar("K", opts["K"], low=0,
                                                               integer=True)
    tol = 1e-10 if opts["tol"] is None else _checks.check_scalar("tol", opts["tol"], low=0.0)
    etas = np.zeros(B)
    alphas = np.zeros(B)
    lbetas = np.zeros(B)
    eta = opts["eta"]
    if eta is not None and ls != "neumann":
        raise ValueError("eta applies to linear_solver='neumann'")
    for b in range(B):
        lam = lams[b]
        if ls == "neumann":
            L = smoothness(problem, lam)
            etas[b] = 1.0 / L if eta is None else _checks.check_scalar(
                "eta", eta, low=0.0, low_inclusive=False)
            check_step_size(problem, lam, etas[b], "gd", 0.0, opts["check_step"], name="eta",
                            label="linear_solver='neumann'")
        elif ls == "heavy_ball":
            L = smoothness(problem, lam)
            mu = problem.strong_convexity(lam)
            if mu <= 0.0:
                raise ValueError(f"setting {b}: linear_solver='heavy_ball' needs a strongly "
                                 "convex inner problem (reg > 0) for its step sizes")
            alphas[b] = 4.0 / (math.sqrt(L) + math.sqrt(mu)) ** 2
            q = math.sqrt(L / mu)
            lbetas[b] = ((q - 1.0) / (q + 1.0)) ** 2
    starts = _per_setting("v0", opts["v0"], B, problem.w_shape)
    V0 = np.zeros_like(WT)
    for b in range(B):
        if starts[b] is not None:
            V0[b] = problem._w_in("v0", starts[b])
    V0 = lay.features_in(V0)
    alive = status < 0
    WTs = np.where(alive[:, None, None], WT, 0.0)
    Bv = np.where(alive[:, None, None], GF, 0.0)
    nch = problem.backend.nchunks()
    H = np.zeros((B, problem.dim_lam))
    v, resid, its, lstat = problem.backend.implicit_solve_multi(
        lay.train, lay.trainT, A, DA, problem._model, problem._hyper, RD,
        WTs, Bv, V0, LINEAR_SOLVERS[ls], Kls, tol, etas, alphas, lbetas, H, nch)
    extra = int(its.max(initial=0)) + 1 + int(problem.hyper == "sample_weights")
    failed = (lstat == DIVERGED) | (lstat == NO_CURVATURE) | (lstat == STOPPED)
    vpub = lay.features_out(v).transpose(0, 2, 1).reshape((B,) + problem.w_shape).copy()
    stats.update(linear_solver=ls, residual=resid, linear_steps=its,
                 converged=lstat == CONVERGED, linear_failed=failed & alive, v=vpub)
    return H, extra, failed & alive


def _package(problem, lams, H, fvals, WT, diverged_at, gvals, T, stats):
    """Per-setting outputs in the public layouts, NaN for diverged settings."""
    B = lams.shape[0]
    bad = diverged_at != -1
    w = WT.transpose(0, 2, 1).reshape((B,) + problem.w_shape).copy()
    value = np.array(fvals, dtype=np.float64)
    grad = None
    if H is not None:
        grad = np.stack([problem._lam_out(H[b]) for b in range(B)]) if B else H
        # a result that is not finite is a divergence the kernel could not see
        finite = np.isfinite(value) & np.isfinite(grad.reshape(B, -1)).all(1) \
            & np.isfinite(w.reshape(B, -1)).all(1)
    else:
        finite = np.isfinite(value) & np.isfinite(w.reshape(B, -1)).all(1)
    newly = ~finite & ~bad
    diverged_at = diverged_at.copy()
    diverged_at[newly] = T
    bad = bad | newly
    value[bad] = np.nan
    w[bad] = np.nan
    if grad is not None:
        grad[bad] = np.nan
    stride = value_stride(T, gvals.shape[1])
    iv = gvals[:, :-(-T // stride)].copy() if T else gvals[:, :0].copy()
    for b in np.flatnonzero(diverged_at >= 0):
        iv[b, diverged_at[b] // stride + 1:] = np.nan
    stats.update(diverged=bad, diverged_at=diverged_at, inner_values=iv,
                 inner_values_stride=stride)
    return SweepResult(lams, grad, value, w, stats)


# -------------------------------------------------------------- setting by setting
def _run_settings(problem, lams, opts):
    """One single-setting run per setting, as many at once as Numba has
    threads (when the threading layer allows it); each equals its own
    :func:`hypergradient` call bit for bit."""
    method, solver, T = opts["method"], opts["solver"], opts["steps"]
    B = lams.shape[0]
    per = {name: _per_setting(name, opts[name], B, shape)
           for name, shape in (("step_size", ()), ("momentum", ()), ("seed", ()),
                               ("w0", problem.w_shape), ("v0", problem.w_shape))}
    for b in range(B):          # every input error before anything runs
        problem._lam_in(lams[b])
    shared = {k: opts[k] for k in ("K", "snapshots", "schedule", "linear_solver", "tol",
                                   "eta", "batch_size", "replace") if opts[k] is not None}
    shared.update(opts["method_kw"])

    def one(b):
        kw = dict(shared, **{k: v[b] for k, v in per.items() if v[b] is not None})
        if method == "solve":
            return solve(problem, lams[b], solver=solver, steps=T,
                         check_step=opts["check_step"], **kw)
        return hypergradient(problem, lams[b], method=method, solver=solver, steps=T,
                             check_step=opts["check_step"], **kw)

    results = [None] * B
    errors = [None] * B
    cancel = threading.Event()

    def guarded(b):
        if cancel.is_set():
            return
        try:
            results[b] = one(b)
        except DivergenceError as e:
            errors[b] = e
        except (TypeError, ValueError) as e:
            cancel.set()
            raise type(e)(f"setting {b} (lams[{b}]): {e}") from None

    workers = min(B, numba.get_num_threads()) if _threadsafe() else 1
    if problem.device != "cpu":
        workers = 1             # the GPU runs one setting at a time
    if workers <= 1:
        for b in range(B):
            guarded(b)
    else:
        with ThreadPoolExecutor(workers) as pool:
            futures = [pool.submit(guarded, b) for b in range(B)]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                cancel.set()
                raise
    return _collect_settings(problem, lams, results, errors, opts)


def _collect_settings(problem, lams, results, errors, opts):
    method, solver, T = opts["method"], opts["solver"], opts["steps"]
    B = lams.shape[0]
    # a diverged setting keeps the values recorded up to its divergence (NaN
    # after), as on the batched kernels
    ivs = [r.stats.get("inner_values") if r is not None else
           getattr(errors[b], "inner_values", None) for b, r in enumerate(results)]
    nv = max([iv.shape[0] for iv in ivs if iv is not None] + [1])
    gvals = np.full((B, nv), np.nan)
    value = np.full(B, np.nan)
    w = np.full((B,) + problem.w_shape, np.nan)
    grad = None if method == "solve" else np.full((B,) + problem.lam_shape, np.nan)
    diverged_at = np.full(B, -1)
    gam = np.full(B, np.nan)
    mom = np.full(B, np.nan)
    passes = 0
    held = 0
    for b, r in enumerate(results):
        if ivs[b] is not None:
            gvals[b, :ivs[b].shape[0]] = ivs[b]
        if r is None:
            diverged_at[b] = _step_of(errors[b], T)
            continue
        value[b] = r.value
        w[b] = r.w
        if grad is not None:
            grad[b] = r.grad
        gam[b] = r.stats.get("step_size", np.nan)
        mom[b] = r.stats.get("momentum", np.nan) or 0.0
        passes += int(r.stats.get("passes", 0))
        held += int(r.stats.get("trajectory_bytes", 0))
    stats = {"method": method, "solver": solver, "steps": T, "strategy": "settings",
             "n_settings": B, "step_size": gam, "momentum": mom, "passes": passes,
             "bytes_held": held, "diverged": diverged_at != -1, "diverged_at": diverged_at,
             "inner_values": gvals,
             "inner_values_stride": value_stride(T, config.MAX_INNER_VALUES) if T else 1,
             "errors": [None if e is None else str(e) for e in errors]}
    if method == "implicit":
        for k in ("residual", "linear_steps", "converged"):
            stats[k] = np.array([np.nan if r is None else r.stats[k] for r in results])
        stats["v"] = np.stack([np.full(problem.w_shape, np.nan) if r is None else r.stats["v"]
                               for r in results])
    return SweepResult(lams, grad, value, w, stats)


def _step_of(err, T):
    """The step a DivergenceError names ("at step t"), else T."""
    import re
    m = re.search(r"at step (\d+)", str(err))
    return int(m.group(1)) if m else T
