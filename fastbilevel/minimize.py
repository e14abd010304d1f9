"""Outer drivers: minimize Φ(λ) = f(w_T(λ)) over λ (docs/math.md §7; thesis Alg. 1
and 2), with warm starts of w (and of v for ``implicit``) between outer
iterations, bounds on λ, a callback and a history."""
import math
import time

import numpy as np

from . import _checks
from ._checks import check_bounds, check_seed
from ._chunks import outer_run
from ._results import History, MinimizeResult
from .hypergrad import METHODS, hypergradient, solve
from .kernels.sampling import derive
from ._params import FSLA as FSLA_PARAMS
from ._params import OUTER as OUTER_PARAMS
from ._params import SOLVER_COMMON, SOLVER_FAMILY
from ._params import ParameterError, check_hypergradient_kw, refuse_unused
from .meta import META_METHODS, MultiTaskProblem
from .problem import BilevelProblem
from .solvers import METHODS as FAMILY
from .solvers import run_solver
from .stochastic import fsla

OUTER = ("sgd", "adam", "nesterov", "hoag")
TOL_SCHEDULES = ("exponential", "quadratic", "cubic")


def _check_outer_step(problem, lam, k, lr, outer):
    """Refuse a λ that the outer update made unusable, naming what to change."""
    if not np.all(np.isfinite(lam)):
        hint = " or betas" if outer == "adam" else ""
        raise ValueError(f"the {outer} update made lam non-finite at outer iteration {k}: "
                         f"lower lr={lr:g}{hint}")
    escape = _checks.exp_lam_escape(problem, lam)
    if escape:
        raise ValueError(f"the {outer} update {escape} at outer iteration {k}: lower "
                         f"lr={lr:g} or give bounds=(low, high)")


def _call_back(callback, k, point, result):
    """``callback(k, point, result)`` if given: (whether it asks to stop,
    seconds it took — left out of the history's wall time)."""
    if callback is None:
        return False, 0.0
    tc = time.perf_counter()
    stop = callback(k, point.copy(), result)
    return bool(stop), time.perf_counter() - tc


def _outer_step(outer, k, lr, decay, betas, beta, bnd, lam, z, m1, m2, g):
    """One outer update at iteration k from the hypergradient g (taken at z
    for nesterov, at λ otherwise): returns the new (λ, z, m1, m2), clipped to
    the bounds ``bnd``. Works elementwise, so λ may hold one start or many."""
    eta = lr / math.sqrt(k + 1) if decay == "sqrt" else lr
    if outer == "sgd":
        lam = lam - eta * g
    elif outer == "adam":
        b1, b2 = betas
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        lam = lam - eta * (m1 / (1 - b1 ** (k + 1))) / (np.sqrt(m2 / (1 - b2 ** (k + 1))) + 1e-8)
    else:
        new = z - eta * g
        if bnd is not None:
            new = np.clip(new, *bnd)
        z = new + beta * (new - lam)
        lam = new
    if bnd is not None:
        lam = np.clip(lam, *bnd)
        z = np.clip(z, *bnd)
    if outer != "nesterov":
        z = lam
    return lam, z, m1, m2


def minimize(problem, lam0, method="implicit", outer=None, iters=100, lr=None,
             decay=None, outer_momentum=None, betas=None, bounds=None,
             warm_start=True, callback=None, tol_schedule=None, tol0=None,
             max_inner_steps=None, progress=False, **hypergradient_kw):
    """Minimize Φ(λ) = f(w_T(λ)) with hypergradients from :func:`hypergradient`.

    Parameters
    ----------
    problem : BilevelProblem
    lam0 : array_like, shape ``problem.lam_shape``
    method : any :func:`hypergradient` method (default ``implicit``: AID-BiO;
        ``reverse`` etc.: ITD-BiO; ``stocbio``: thesis Alg. 4, each outer
        iteration one :func:`~fastbilevel.stochastic.stocbio` estimate with
        the inner SGD warm-started), or ``fsla``: the single-loop
        :func:`~fastbilevel.stochastic.fsla` (its own STORM update of λ with
        δ = ``lr``; ``outer`` does not apply; its arguments c_tau, c_beta,
        c_eta, batch_size, eval_every, ... are passed on), or one of the
        stochastic solver family ``soba``, ``saba``, ``amigo``, ``mrbo``,
        ``vrbo``, ``ttsa``, ``bsa``, ``f2sa``, ``bome``
        (:func:`fastbilevel.solvers.run_solver`: each its own update of λ
        with γ₀ = ``lr``; ``outer`` does not apply). A ``seed`` in the
        keyword arguments (stocbio, solver="sgd") is turned into an
        independent seed per outer iteration.
    outer : {"sgd", "adam", "nesterov", "hoag"}, default "adam"
        ``sgd``: λ ← λ − η_k ∇Φ; ``adam``: Adam with ``betas``; ``nesterov``:
        AccBiO's outer momentum, λ_{k+1} = z_k − η_k∇Φ(z_k),
        z_{k+1} = λ_{k+1} + β(λ_{k+1} − λ_k) with β = ``outer_momentum``.
        ``hoag`` (Pedregosa 2016): at iteration k the inner problem is solved
        to ‖∇_w g‖ ≤ ε_k (warm-started chunks of ``steps`` steps, at most
        ``max_inner_steps``) and the implicit linear system to relative
        residual ε_k, with ε_k = tol0·0.9^k, tol0/(k+1)² or tol0/(k+1)³
        (``tol_schedule``); a step that raises the outer value by more than
        ε_k is rejected (λ reverts, the step size halves), an accepted one
        grows the step size by 5%. Uses ``method="implicit"``.
    iters : int ≥ 1, default 100
        Outer iterations.
    lr : float > 0, optional
        Outer step size η (δ for ``fsla``; HOAG's initial step); default
        0.1 (for the solver family: :func:`fastbilevel.solvers.default_lr`).
    decay : {None, "sqrt"}, optional
        For sgd, adam and nesterov: η_k = lr (constant) or lr/√(k+1).
    outer_momentum : float in [0, 1), optional
        For nesterov: β (default 0.9).
    betas : (float, float) in [0, 1), optional
        For adam: (β₁, β₂) (default (0.9, 0.999)).
    tol_schedule : {"exponential", "quadratic", "cubic"}, optional
        For hoag: how ε_k falls (default "quadratic").
    tol0 : float > 0, optional
        For hoag: ε_0 (default 1e-2).
    max_inner_steps : int ≥ 1, optional
        For hoag: inner steps per outer iteration at most (default 10000).
    bounds : (low, high), optional
        λ is clipped to [low, high] after every update (scalars or arrays).
    warm_start : bool
        Start each inner loop at the previous w_T (not for ``init``, whose
        start is λ) and each implicit linear solve at the previous v.
    callback : callable(k, lam, result) -> bool, optional
        Called after every hypergradient; returning True stops.
    progress : bool, default False
        Show a progress bar over the outer iterations with the outer value
        (needs tqdm: ``fastbilevel[progress]``).
    **hypergradient_kw
        Passed on (solver, steps, step_size, K, tol, linear_solver, ...).

    Every keyword that the method or outer update does not use is refused
    before anything runs (:class:`fastbilevel._params.ParameterError`).

    Ctrl-C stops a run within one pass over the data and raises
    :class:`~fastbilevel.MinimizeInterrupted` (a KeyboardInterrupt) with the
    iterations done (``.result``) and the best λ so far (``.best_lam``).

    Returns
    -------
    MinimizeResult
    """
    _checks.check_problem(problem, (BilevelProblem, MultiTaskProblem))
    multitask = isinstance(problem, MultiTaskProblem)
    if method in FAMILY:
        if multitask:
            raise ValueError(f"method={method!r} runs on a BilevelProblem, not a "
                             "MultiTaskProblem; use method='reverse', 'recompute', "
                             "'first_order' or 'ufo'")
        outer_kw = {k: v for k, v in (("decay", decay), ("outer_momentum", outer_momentum),
                                      ("betas", betas), ("tol_schedule", tol_schedule),
                                      ("tol0", tol0), ("max_inner_steps", max_inner_steps))
                    if v is not None and k != "decay"}
        if outer is not None:
            raise ValueError(f"outer does not apply to method={method!r} (it updates λ by "
                             "its own rule, with step lr)")
        refuse_unused(dict(outer_kw, **hypergradient_kw),
                      SOLVER_COMMON | SOLVER_FAMILY[method], f"method={method!r}")
        if not warm_start:
            raise ParameterError(f"warm_start=False does not apply to method={method!r} (its "
                                 "iterates are its state)")
        if decay is not None and not isinstance(decay, (bool, np.bool_)):
            raise ValueError(f"decay={decay!r}: for method={method!r} give True or False "
                             "(decaying step sizes as in its paper, or constant)")
        return run_solver(problem, lam0, method, iters, lr=lr, bounds=bounds, decay=decay,
                          callback=callback, progress=progress, **hypergradient_kw)
    if lr is None:
        lr = 0.1
    _checks.check_choice("method", method, tuple(META_METHODS) if multitask
                         else METHODS + ("fsla",) + FAMILY)
    outer_kw = {k: v for k, v in (("decay", decay), ("outer_momentum", outer_momentum),
                                  ("betas", betas), ("tol_schedule", tol_schedule),
                                  ("tol0", tol0), ("max_inner_steps", max_inner_steps))
                if v is not None}
    if method == "fsla":
        if outer is not None:
            raise ValueError("outer does not apply to method='fsla' (it updates λ with "
                             "its own STORM momentum, step lr/√(k+1))")
        refuse_unused(dict(outer_kw, **hypergradient_kw), FSLA_PARAMS, "method='fsla'")
        if not warm_start:
            raise ParameterError("warm_start=False does not apply to method='fsla' (its "
                                 "iterates are its state)")
        return fsla(problem, lam0, iters, delta=lr, bounds=bounds, callback=callback,
                    progress=progress, **hypergradient_kw)
    outer = "adam" if outer is None else outer
    _checks.check_choice("outer", outer, OUTER)
    refuse_unused(outer_kw, OUTER_PARAMS[outer], f"outer={outer!r}")
    if outer == "hoag" and method != "implicit":
        raise ValueError("outer='hoag' uses method='implicit'")
    for key in ("w0", "v0", "tol") if outer == "hoag" else ("w0", "v0"):
        if key in hypergradient_kw and (warm_start or outer == "hoag"):
            raise ValueError(f"{key} is managed by minimize" + (
                " with outer='hoag'" if outer == "hoag" else " when warm_start=True"))
    check_hypergradient_kw(method, hypergradient_kw.get("solver", "gd"), hypergradient_kw,
                           multitask)
    betas = (0.9, 0.999) if betas is None else betas
    outer_momentum = 0.9 if outer_momentum is None else outer_momentum
    tol_schedule = "quadratic" if tol_schedule is None else tol_schedule
    tol0 = 1e-2 if tol0 is None else tol0
    max_inner_steps = 10000 if max_inner_steps is None else max_inner_steps
    iters = _checks.check_scalar("iters", iters, low=1, integer=True)
    lr = _checks.check_scalar("lr", lr, low=0.0, low_inclusive=False)
    if outer == "hoag":
        if hypergradient_kw.get("steps", 100) == 0:
            raise ValueError("outer='hoag' solves the inner problem in chunks of steps inner "
                             "steps until its tolerance holds: steps=0 never gets there; "
                             "give steps >= 1")
        _checks.check_choice("tol_schedule", tol_schedule, TOL_SCHEDULES)
        tol0 = _checks.check_scalar("tol0", tol0, low=0.0, low_inclusive=False)
        max_inner_steps = _checks.check_scalar("max_inner_steps", max_inner_steps, low=1,
                                               integer=True)
    if decay not in (None, "sqrt"):
        raise ValueError(f"decay={decay!r} is not None or 'sqrt'")
    beta = _checks.check_scalar("outer_momentum", outer_momentum, low=0.0)
    if beta >= 1:
        raise ValueError(f"outer_momentum={beta} must be < 1")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas={betas!r} must be a pair (beta1, beta2)")
    for i, b in enumerate(betas):
        if _checks.check_scalar(f"betas[{i}]", b, low=0.0) >= 1.0:
            raise ValueError(f"betas[{i}]={b} must be in [0, 1) (Adam divides by 1 - beta^k)")
    lam, bnd = _checks.start_lam(problem, lam0, bounds)
    if outer == "hoag":
        with outer_run(progress, iters, "minimize (hoag)") as run:
            return _hoag(problem, lam, iters, lr, bnd, callback, tol_schedule, tol0,
                         max_inner_steps, warm_start, hypergradient_kw, run)
    z = lam.copy()                      # where the hypergradient is taken
    m1 = np.zeros_like(lam)
    m2 = np.zeros_like(lam)
    hist = History()
    seed = check_seed(hypergradient_kw.get("seed", 0))
    t0 = time.perf_counter()
    with outer_run(progress, iters, "minimize") as run:
        return _outer_loop(problem, method, outer, iters, lr, decay, betas, beta, bnd, lam, z,
                           m1, m2, hist, warm_start, callback, multitask, seed, t0, run,
                           hypergradient_kw)


def _outer_loop(problem, method, outer, iters, lr, decay, betas, beta, bnd, lam, z, m1, m2,
                hist, warm_start, callback, multitask, seed, t0, run, hypergradient_kw):
    """The loop of :func:`minimize` for sgd, adam and nesterov."""
    w = v = last = None
    passes = rows = 0
    t_cb = 0.0

    def partial():
        return MinimizeResult(lam, hist, w, v, last)

    run.partial = partial
    for k in range(iters):
        kw = dict(hypergradient_kw)
        if method == "stocbio" or kw.get("solver") == "sgd" or multitask:
            kw["seed"] = int(derive(seed, k))
        if warm_start and w is not None and problem.hyper != "init":
            kw["w0"] = w
        if warm_start and v is not None and method == "implicit":
            kw["v0"] = v
        point = z if outer == "nesterov" else lam
        r = hypergradient(problem, point, method, **kw)
        g = r.grad
        if method == "stocbio":         # a full pass would dominate a minibatch method
            inner_g = math.nan
            passes += r.stats["passes"]
            rows += r.stats["rows_sampled"]
        elif multitask:
            inner_g = math.nan
            passes += r.stats["train_steps"]
            rows += r.stats["train_steps"] * problem.shots
        else:
            inner_g = float(np.linalg.norm(problem.inner_grad(r.w, point)))
            passes += r.stats["passes"] + 1
            rows += r.stats.get("rows_sampled", r.stats["passes"] * problem.n) + problem.n
        hist._append(outer_value=r.value, grad_norm=float(np.linalg.norm(g)),
                     inner_grad_norm=inner_g, residual=r.stats.get("residual", math.nan),
                     linear_steps=r.stats.get("linear_steps", 0), passes=passes, rows=rows,
                     time_s=time.perf_counter() - t0 - t_cb, accepted=True, tol=math.nan)
        w, v, last = r.w, r.stats.get("v"), r
        run.record(r.value, point)
        stop, spent = _call_back(callback, k, point, r)
        t_cb += spent
        if stop:
            break
        lam, z, m1, m2 = _outer_step(outer, k, lr, decay, betas, beta, bnd, lam, z, m1, m2, g)
        _check_outer_step(problem, z, k, lr, outer)
    return MinimizeResult(lam, hist, w, v, last)


def _hoag(problem, lam, iters, lr, bnd, callback, tol_schedule, tol0, max_inner_steps,
          warm_start, kw, run):
    """HOAG-style outer loop (see :func:`minimize`)."""
    kw = dict(kw)
    solver = kw.pop("solver", "gd")
    chunk = kw.pop("steps", 100)
    step_size = kw.pop("step_size", None)
    momentum = kw.pop("momentum", None)
    hist = History()
    w = v = last = None
    passes = 0
    t0 = time.perf_counter()
    step = lr
    prev = None            # (lam, value, grad) of the last accepted point
    k_eff = 0

    def partial():
        return MinimizeResult(prev[0] if prev is not None else lam, hist, w, v, last)

    run.partial = partial
    for k in range(iters):
        eps = {"exponential": tol0 * 0.9 ** k_eff, "quadratic": tol0 / (k_eff + 1) ** 2,
               "cubic": tol0 / (k_eff + 1) ** 3}[tol_schedule]
        # inner problem to ‖∇_w g‖ ≤ ε_k, warm-started, in chunks
        w_start = w if (warm_start and w is not None and problem.hyper != "init") else None
        done = 0
        while True:
            r = solve(problem, lam, solver, chunk, step_size, w_start, momentum=momentum)
            passes += r.stats["passes"] + 1
            done += chunk
            gnorm = float(np.linalg.norm(problem.inner_grad(r.w, lam)))
            w_start = r.w if problem.hyper != "init" else None
            if gnorm <= eps or done >= max_inner_steps or problem.hyper == "init":
                break
        hw0 = None if problem.hyper == "init" else r.w
        vv = v if (warm_start and v is not None) else None
        r = hypergradient(problem, lam, "implicit", solver, steps=0, step_size=step_size,
                          w0=hw0, momentum=momentum, tol=eps, v0=vv, **kw)
        passes += r.stats["passes"]
        g = r.grad
        accepted = prev is None or r.value <= prev[1] + eps
        hist._append(outer_value=r.value, grad_norm=float(np.linalg.norm(g)),
                     inner_grad_norm=gnorm, residual=r.stats["residual"],
                     linear_steps=r.stats["linear_steps"], passes=passes,
                     rows=passes * problem.n, time_s=time.perf_counter() - t0,
                     accepted=accepted, tol=eps)
        run.record(r.value, lam)
        if callback is not None and callback(k, lam.copy(), r):
            break
        if accepted:
            prev = (lam, r.value, g)
            w, v, last = r.w, r.stats["v"], r
            step *= 1.05
            k_eff += 1
        else:
            step *= 0.5
        base, _, gb = prev
        lam = base - step * gb
        if bnd is not None:
            lam = np.clip(lam, *bnd)
        _check_outer_step(problem, lam, k, lr, "hoag")
    final = prev[0] if prev is not None else lam
    return MinimizeResult(final, hist, w, v, last)


class MultiStartResult:
    """What :func:`minimize_many` returns: B outer loops run in lockstep.

    Attributes
    ----------
    lam : ndarray, (B,) + λ's shape — the final λ of every start (a start
        whose inner loop diverged keeps the λ at which it did).
    value : ndarray (B,) — the last outer value of every start (NaN where
        diverged).
    histories : list of :class:`History`, one per start (``passes`` and
        ``rows`` count the shared batched passes: each serves every start;
        ``inner_grad_norm`` is NaN: it would cost a pass per start).
    w : ndarray, (B,) + w's shape — the last inner solutions.
    diverged : ndarray (B,) bool — starts stopped by a divergent inner loop.
    """

    __slots__ = ("lam", "value", "histories", "w", "diverged")

    def __init__(self, lam, value, histories, w, diverged):
        self.lam, self.value, self.histories, self.w, self.diverged = (lam, value, histories,
                                                                       w, diverged)

    @property
    def best(self):
        """Index of the start with the lowest last outer value (None if all
        diverged)."""
        ok = np.isfinite(self.value)
        return int(np.flatnonzero(ok)[np.argmin(self.value[ok])]) if ok.any() else None

    def __len__(self):
        return len(self.histories)

    def __repr__(self):
        b = self.best
        return (f"MultiStartResult(starts={len(self)}, best={b}"
                + ("" if b is None else f" (value {self.value[b]:.6g})")
                + f", diverged={int(self.diverged.sum())})")


def minimize_many(problem, lam0, method="reverse", outer=None, iters=100, lr=0.1, decay=None,
                  outer_momentum=None, betas=None, bounds=None, warm_start=True,
                  callback=None, progress=False, **sweep_kw):
    """:func:`minimize` from B starts at once: ``lam0`` has shape (B,) +
    λ's shape, and the B outer loops run in lockstep, each outer iteration
    one :func:`~fastbilevel.sweep` (the batched kernels: every pass over X
    serves all starts). Start b follows exactly the iterates of
    ``minimize(problem, lam0[b], ...)`` with the same arguments (to
    rounding), with warm starts of w (and v for ``implicit``) per start.

    ``method``: a method of :func:`sweep` except ``solve``; ``outer``:
    ``sgd``, ``adam`` (default) or ``nesterov`` (``hoag``, whose accepted
    and rejected steps differ per start, and ``fsla`` run one start at a
    time: use :func:`minimize`). ``callback(k, lams, sweep_result)`` is
    called after every iteration with the points of the active starts;
    returning True stops all. A start whose inner loop diverges stops there
    (flagged in ``diverged``); the others go on. Other keywords as in
    :func:`minimize` (``progress``: a bar over the outer iterations with the
    best start's outer value; Ctrl-C raises
    :class:`~fastbilevel.MinimizeInterrupted` with the iterations done and
    the best λ of every start), and ``strategy``, ``chunk_size``,
    ``client`` of :func:`sweep`.

    Returns
    -------
    MultiStartResult
    """
    from .sweep import _check_lams, sweep
    _checks.check_problem(problem, (BilevelProblem,))
    _checks.check_choice("method", method, tuple(m for m in METHODS))
    outer = "adam" if outer is None else outer
    if outer not in ("sgd", "adam", "nesterov"):
        raise ValueError(f"outer={outer!r}: minimize_many runs the outer updates 'sgd', "
                         "'adam' and 'nesterov' in lockstep; run outer='hoag' (and "
                         "method='fsla') start by start with minimize")
    outer_kw = {k: v for k, v in (("decay", decay), ("outer_momentum", outer_momentum),
                                  ("betas", betas)) if v is not None}
    refuse_unused(outer_kw, OUTER_PARAMS[outer], f"outer={outer!r}")
    for key in ("w0", "v0"):
        if key in sweep_kw and warm_start:
            raise ValueError(f"{key} is managed by minimize_many when warm_start=True")
    hg_kw = {k: v for k, v in sweep_kw.items() if k not in ("strategy", "chunk_size", "client")}
    check_hypergradient_kw(method, hg_kw.get("solver", "gd"), hg_kw)
    betas = (0.9, 0.999) if betas is None else betas
    beta = _checks.check_scalar("outer_momentum", 0.9 if outer_momentum is None
                                else outer_momentum, low=0.0)
    if beta >= 1:
        raise ValueError(f"outer_momentum={beta} must be < 1")
    if decay not in (None, "sqrt"):
        raise ValueError(f"decay={decay!r} is not None or 'sqrt'")
    iters = _checks.check_scalar("iters", iters, low=1, integer=True)
    lr = _checks.check_scalar("lr", lr, low=0.0, low_inclusive=False)
    lam = _check_lams(problem, lam0).reshape((-1,) + problem.lam_shape)
    B = lam.shape[0]
    bnd = check_bounds(problem, bounds)
    if bnd is not None:
        lam = np.clip(lam, *bnd)
    z = lam.copy()
    m1 = np.zeros_like(lam)
    m2 = np.zeros_like(lam)
    hists = [History() for _ in range(B)]
    active = np.ones(B, dtype=bool)
    value = np.full(B, np.nan)
    w = np.zeros((B,) + problem.w_shape)
    v = None
    have_w = False
    seed = check_seed(sweep_kw.get("seed", 0))
    passes = rows = 0
    t0 = time.perf_counter()
    t_cb = 0.0
    with outer_run(progress, iters, f"minimize_many ({B} starts)", shape=(B,)) as run:
        run.partial = lambda: MultiStartResult(lam, value, hists, w, ~active)
        for k in range(iters):
            idx = np.flatnonzero(active)
            if idx.size == 0:
                break
            kw = dict(sweep_kw)
            for key in ("step_size", "momentum"):       # per-start values of the active starts
                if np.ndim(kw.get(key)) == 1:
                    kw[key] = np.asarray(kw[key])[idx]
            if method == "stocbio" or kw.get("solver") == "sgd":
                kw["seed"] = int(derive(seed, k))
            if warm_start and have_w and problem.hyper != "init":
                kw["w0"] = w[idx]
            if warm_start and v is not None and method == "implicit":
                kw["v0"] = v[idx]
            point = (z if outer == "nesterov" else lam)[idx]
            r = sweep(problem, point, method, **kw)
            passes += r.stats["passes"]
            rows += r.stats["passes"] * problem.n
            elapsed = time.perf_counter() - t0 - t_cb
            g = np.zeros_like(lam)
            for pos, b in enumerate(idx):
                if r.stats["diverged"][pos]:
                    active[b] = False
                    value[b] = np.nan
                    continue
                g[b] = r.grad[pos]
                value[b] = r.value[pos]
                w[b] = r.w[pos]
                res = r.stats.get("residual")
                hists[b]._append(outer_value=float(r.value[pos]),
                                 grad_norm=float(np.linalg.norm(r.grad[pos])),
                                 inner_grad_norm=math.nan,
                                 residual=math.nan if res is None else float(res[pos]),
                                 linear_steps=int(r.stats["linear_steps"][pos])
                                 if "linear_steps" in r.stats else 0,
                                 passes=passes, rows=rows, time_s=elapsed, accepted=True,
                                 tol=math.nan)
            seen_v = np.full(B, np.nan)
            seen_v[idx] = r.value                       # NaN where a start diverged
            run.record(seen_v, z if outer == "nesterov" else lam)
            have_w = True
            if method == "implicit":
                v = np.zeros((B,) + problem.w_shape) if v is None else v
                # the batched solve's v per start, for the next warm start
                v[idx] = _sweep_v(problem, r)
            stop, spent = _call_back(callback, k, point, r)
            t_cb += spent
            if stop:
                break
            upd = active.copy()
            lam[upd], z[upd], m1[upd], m2[upd] = _outer_step(outer, k, lr, decay, betas, beta, bnd,
                                                             lam[upd], z[upd], m1[upd], m2[upd],
                                                             g[upd])
            for b in np.flatnonzero(upd):
                _check_outer_step(problem, z[b], k, lr, outer)
    return MultiStartResult(lam, value, hists, w, ~active)


def _sweep_v(problem, r):
    """The linear-system solutions of an implicit sweep, in w's shape."""
    v = r.stats.get("v")
    if v is None:
        raise RuntimeError("the implicit sweep did not return v")
    return v
