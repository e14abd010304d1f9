"""hypergradient(): d/dλ f(w_T(λ)) through a compiled inner loop (docs/math.md §6-7)."""
import math
import time

import numpy as np

from . import _checks, config, schedules
from ._chunks import pass_progress
from ._checks import (DivergenceError, check_bytes, check_finite_result, check_step_size, resolve_momentum,
                      resolve_sampler, resolve_step_size, smoothness)
from ._results import HypergradientResult
from ._codes import (AGD, CG, CONVERGED, DIVERGED, GD, HEAVY_BALL, HEAVY_BALL_LS, NEUMANN,
                     NO_CURVATURE)
from ._params import SOLVER as SOLVER_PARAMS
from ._params import check_hypergradient_kw, given_keywords, refuse_unused
from .kernels.unroll import value_stride
from .meta import MultiTaskProblem, meta_hypergradient
from .problem import BilevelProblem
from .stochastic import stocbio

METHODS = ("reverse", "truncated", "checkpointed", "recompute", "forward", "implicit",
           "stocbio")
LINEAR_SOLVERS = {"cg": CG, "neumann": NEUMANN, "heavy_ball": HEAVY_BALL_LS}
SOLVERS = {"gd": GD, "heavy_ball": HEAVY_BALL, "agd": AGD, "sgd": GD}


def state_vectors(solver):
    """Vectors in a solver state: 1 for gd and sgd (w_t), 2 for heavy_ball
    (w_t, w_{t−1}) and agd (y_t, s_t)."""
    return 1 if solver in ("gd", "sgd") else 2
SCHEDULES = ("revolve", "uniform")


def build_schedule(method, T, K, snapshots, schedule):
    """The action list of an ITD method (see :mod:`fastbilevel.schedules`)."""
    if method == "reverse":
        return schedules.reverse(T)
    if method == "recompute":
        return schedules.recompute(T)
    if method == "truncated":
        if K is None:
            raise ValueError("method='truncated' needs K (the number of reverse steps)")
        K = _checks.check_scalar("K", K, low=0, integer=True)
        if K > T:
            raise ValueError(f"K={K} must be <= steps={T}")
        return schedules.truncated(T, K)
    schedule = "revolve" if schedule is None else schedule
    _checks.check_choice("schedule", schedule, SCHEDULES)
    # default ⌈√T⌉ (isqrt(T − 1) + 1 for T ≥ 1; 1 for T = 0)
    s = max(1, math.isqrt(max(T - 1, 0)) + 1) if snapshots is None else \
        _checks.check_scalar("snapshots", snapshots, low=1, integer=True)
    return schedules.revolve(T, s) if schedule == "revolve" else schedules.uniform(T, s)


def hypergradient(problem, lam, method="reverse", solver="gd", steps=100,
                  step_size=None, w0=None, *, K=None, snapshots=None,
                  schedule=None, momentum=None, linear_solver=None, tol=None,
                  v0=None, eta=None, batch_size=None, replace=None, seed=None, check_step=True,
                  progress=False, **method_kw):
    """Hypergradient of Φ(λ) = f(w_T(λ)), w_T = T steps of the inner solver.

    For a :class:`~fastbilevel.meta.MultiTaskProblem` this is
    :func:`~fastbilevel.meta.meta_hypergradient` (methods ``reverse``,
    ``recompute``, ``first_order``, ``ufo``; arguments ``q``,
    ``meta_batch``, ``seed``).

    Parameters
    ----------
    problem : BilevelProblem or MultiTaskProblem
    lam : array_like, shape ``problem.lam_shape``
    method : {"reverse", "truncated", "checkpointed", "recompute", "forward"}
        ``reverse`` — exact reverse mode through the unrolled loop (Shaban
        et al. 2019, eq. 6; UFO-BLO Alg. 4), storing the T gradient points
        (T·dim w·8 bytes), T gradient + T fused H·v/J·v passes.
        ``checkpointed`` — exactly ``reverse`` holding at most ``snapshots``
        solver states (default ⌈√T⌉), recomputing the rest: ``schedule=
        "revolve"`` is Griewank's optimal binomial schedule (fewest
        recomputed steps, r·T − C(s+r, s+1) in all), ``"uniform"`` a
        snapshot every ⌈T/s⌉ steps plus a ⌈T/s⌉-point segment buffer.
        ``recompute`` — exactly ``reverse`` with one stored state, recomputing
        w_t from w_0 for every reverse step: O(T²) passes (UFO-BLO Alg. 5).
        ``truncated`` — K-RMD (Shaban eq. 8): only the last K reverse steps,
        storing K points; with K = T it equals ``reverse``.
        ``forward`` — exactly ``reverse`` in forward mode (Shaban eq. 7): one
        tangent per hyperparameter (dim λ·dim w·8 bytes, T·dim λ passes);
        meant for few hyperparameters (e.g. ``l2``) and refused when the
        tangents exceed ``config.MAX_TRAJECTORY_BYTES``.
        ``implicit`` — AID (thesis Alg. 1; FSLA Lemma 2): runs the inner loop
        to ŵ = w_T, solves H(ŵ)v = ∇_w f(ŵ) with ``linear_solver`` in at
        most K steps (default 100) or until ‖∇_w f − Hv‖ ≤ tol·‖∇_w f‖, and
        returns ∇_λ f − J(ŵ)v. Exact only as T and K grow (on strongly
        convex inner problems); holds O(dim w). ``stats`` add ``residual``,
        ``linear_steps``, ``converged`` and ``v`` (shape of w: pass it back
        as ``v0`` to warm-start the next solve).
        ``stocbio`` — the minibatch AID estimator of the thesis (Alg. 4-5):
        see :func:`fastbilevel.stochastic.stocbio` for its arguments
        (``Q``, ``eta``, ``hessian_batch``, ...), passed on from here.
    solver : {"gd", "heavy_ball", "agd", "sgd"}
        ``gd``: w_{t+1} = w_t − γ∇g(w_t). ``heavy_ball``: + β(w_t − w_{t−1}).
        ``agd``: Nesterov (AccBiO) y_{t+1} = s_t − γ∇g(s_t),
        s_{t+1} = y_{t+1} + β(y_{t+1} − y_t), output y_T.
        ``sgd``: gd with ∇g on a minibatch of ``batch_size`` rows drawn for
        step t from ``seed`` (with or without ``replace``-ment) inside the
        kernel; every ITD method differentiates exactly this sampled
        trajectory (the reverse sweep redraws step t's batch).
    steps : int ≥ 0, default 100
        T.
    step_size : float > 0, optional
        γ; default 1/L with L estimated by ``problem.lipschitz(lam)``.
    w0 : array_like, shape of w, optional
        Start of the inner loop (default 0; for ``init`` the start is λ and
        w0 must not be given).
    K : int, optional
        For ``truncated``: the reverse steps (required). For ``implicit``:
        the linear-solver steps at most (default 100).
    snapshots : int ≥ 1, optional
        For ``checkpointed``: solver states held (default ⌈√T⌉).
    schedule : {"revolve", "uniform"}, optional
        For ``checkpointed`` (default "revolve").
    momentum : float in [0, 1), optional
        For ``heavy_ball`` and ``agd``; default from κ = L/μ (see
        :func:`fastbilevel._checks.resolve_momentum`).
    linear_solver : {"cg", "neumann", "heavy_ball"}, optional
        For ``implicit`` (default "cg"). ``neumann``: v ← v + η(b − Hv),
        η = ``eta``; ``heavy_ball``: AccBiO's α = 4/(√L+√μ)²,
        β = ((√κ−1)/(√κ+1))².
    tol : float ≥ 0, optional
        For ``implicit``: the relative residual to stop at (default 1e-10).
    v0 : array_like, shape of w, optional
        For ``implicit``: start of the linear solve (default 0).
    eta : float > 0, optional
        For ``implicit`` with ``neumann`` (default 1/L); for ``stocbio``.
    batch_size : int ≥ 1, optional
        For ``sgd`` and ``stocbio`` (default min(n, 128)).
    replace : bool, optional
        For ``sgd`` and ``stocbio``: draw with replacement (default without).
    seed : int in [0, 2^63), optional
        For ``sgd``, ``stocbio`` and the multi-task methods (default 0). The
        same seed gives bit-identical results on any thread count (passes
        are split into ``config.STOCHASTIC_NCHUNKS`` chunks, not one per
        thread).
    check_step : bool, default True
        Refuse a ``step_size`` (and, for ``neumann``, an ``eta``) at or above
        the solver's stability bound for the estimated smoothness L (2/L for
        gd; see :func:`stability_bound`) before running. While running, an
        inner loop whose g becomes non-finite or rises far above g(w_0) is
        reported as divergent either way.
    progress : bool, default False
        Show a bar counting the passes over the data while the compiled loop
        runs (needs tqdm: ``fastbilevel[progress]``); the results do not
        change.

    **method_kw
        The keywords of :func:`fastbilevel.stochastic.stocbio` (``Q``,
        ``hessian_batch``, ...) or of the multi-task methods (``q``,
        ``meta_batch``).

    Every keyword the chosen method (and solver) does not use is refused
    (:class:`fastbilevel._params.ParameterError`, listing those it accepts).
    A run can be stopped with Ctrl-C (KeyboardInterrupt) at any step.

    Returns
    -------
    HypergradientResult

    Raises
    ------
    ValueError
        On invalid input, when the stored trajectory would exceed
        ``config.MAX_TRAJECTORY_BYTES``, or when the inner loop diverges
        with this step size.
    KeyboardInterrupt
        On Ctrl-C: the compiled loop stops at its next pass over the data.
    """
    with pass_progress(progress, "hypergradient") as finish:
        r = _hypergradient(problem, lam, method, solver, steps, step_size, w0, K, snapshots,
                           schedule, momentum, linear_solver, tol, v0, eta, batch_size,
                           replace, seed, check_step, method_kw)
        finish(r.stats.get("passes"))
        return r


def _hypergradient(problem, lam, method, solver, steps, step_size, w0, K, snapshots, schedule,
                   momentum, linear_solver, tol, v0, eta, batch_size, replace, seed,
                   check_step, method_kw):
    _checks.check_problem(problem, (BilevelProblem, MultiTaskProblem))
    multitask = isinstance(problem, MultiTaskProblem)
    given = given_keywords(dict(step_size=step_size, w0=w0, K=K, snapshots=snapshots,
                                schedule=schedule, momentum=momentum,
                                linear_solver=linear_solver, tol=tol, v0=v0, eta=eta,
                                batch_size=batch_size, replace=replace, seed=seed),
                           method_kw, solver, check_step)
    check_hypergradient_kw(method, solver, given, multitask)
    seed = 0 if seed is None else seed
    replace = False if replace is None else replace
    if multitask:
        return meta_hypergradient(problem, lam, method, steps, step_size, seed=seed,
                                  check_step=check_step, **method_kw)
    if method == "stocbio":
        if solver not in ("gd", "sgd"):
            raise ValueError(f"method='stocbio' runs minibatch SGD inner steps; "
                             f"solver={solver!r} does not apply")
        return stocbio(problem, lam, steps=steps, step_size=step_size, w0=w0, eta=eta,
                       batch_size=batch_size, replace=replace, seed=seed,
                       check_step=check_step, **method_kw)
    sampler = resolve_sampler(problem, solver, batch_size, replace, seed)
    if method == "implicit":
        return _implicit(problem, lam, solver, steps, step_size, w0, momentum, K,
                         linear_solver, tol, v0, eta, sampler, check_step)
    if method == "forward":
        sched = None
    else:
        sched = lambda T: build_schedule(method, T, K, snapshots, schedule)
    r = _run_actions(problem, lam, solver, steps, step_size, w0, momentum, sched, method,
                     sampler, check_step)
    r.stats["method"] = method
    if method == "checkpointed":
        r.stats["schedule"] = "revolve" if schedule is None else schedule
    return r


def _run_actions(problem, lam, solver, steps, step_size, w0, momentum, make_schedule,
                 label, sampler=None, check_step=True, outer_grad=False):
    """Validate, run the schedule ``make_schedule(T)`` (forward mode when it
    is None) and package the result; ``label`` names the method in errors;
    ``sampler`` from :func:`resolve_sampler` (None: full-batch steps).
    With ``outer_grad`` also returns ∇_w f(w_T) in the kernels' (c, d)
    layout, from the run's own validation pass."""
    t0 = time.perf_counter()
    _checks.check_choice("solver", solver, SOLVERS)
    T = _checks.check_scalar("steps", steps, low=0, integer=True)
    hp = problem._lam_in(lam)
    gamma = resolve_step_size(problem, lam, step_size, minibatch=sampler is not None)
    beta = resolve_momentum(problem, lam, solver, momentum)
    check_step_size(problem, lam, gamma, solver, beta, check_step)
    if problem.hyper == "init":
        if w0 is not None:
            raise ValueError("w0 must not be given for hyper='init': the inner "
                             "loop starts at lam")
        W0 = hp.W0
    elif w0 is None:
        W0 = np.zeros((problem.c, problem.d))
    else:
        W0 = problem._w_in("w0", w0)
    code = SOLVERS[solver]
    nstate = state_vectors(solver)
    vec = problem.dim_w * 8
    if make_schedule is None:
        held = problem.dim_lam * nstate * vec
        check_bytes(held, f"method='forward' would hold dim λ × dim w = "
                           f"{problem.dim_lam} × {problem.dim_w} tangents")
        nslots = 0
    else:
        sched = make_schedule(T)
        held = sched.nslots * nstate * vec + sched.buf_len * vec
        check_bytes(held, f"steps={T}: method={label!r} would store")
        nslots = sched.nslots
    gvals = np.zeros(max(1, min(T, config.MAX_INNER_VALUES)))
    h = np.zeros(problem.dim_lam)
    be = problem.backend
    args = (problem.train, hp.a, hp.da, problem._model, problem._hyper, hp.rdiag, hp.prior,
            problem.val, code, gamma, beta, W0, T)
    nch = be.nchunks() if sampler is None else be.fixed_nchunks()
    if make_schedule is None:
        WT, value, status, counts, GF = be.forward_mode(*args, gvals, h, nch, sampler)
        passes = T * problem.dim_lam  # dim λ ≥ 1 (l2 has shape ())
    else:
        WT, value, status, counts, GF = be.run_schedule(*args, sched.actions, sched.nslots,
                                                        sched.buf_len, gvals, h, nch, sampler)
        passes = int(counts[0] + counts[1])
    stride = value_stride(T, gvals.shape[0])
    if status >= 0:
        iv = gvals[:-(-T // stride)].copy()
        iv[status // stride + 1:] = np.nan         # the values up to the divergence
        _raise_divergence(problem, lam, gamma, gvals[0], value, status, sampler is not None,
                          iv)
    check_finite_result(label, value, h, WT)
    stats = {
        "method": None, "solver": solver, "steps": T, "step_size": gamma, "momentum": beta,
        "time_s": time.perf_counter() - t0,
        "passes": passes,
        "gradient_passes": int(counts[0]),
        "hvp_passes": int(counts[1]),
        "val_passes": int(counts[2]),
        "trajectory_bytes": int(held),
        "snapshots": nslots,
        "recomputed_steps": int(counts[0]) - T,
        "inner_values": gvals[:-(-T // stride)].copy(),
        "inner_values_stride": stride,
    }
    if sampler is not None:
        stats.update(batch_size=int(sampler[0]), replace=bool(sampler[1]),
                     seed=int(sampler[2]), rows_sampled=int(counts[0] + counts[1]) * int(sampler[0]))
    r = HypergradientResult(problem._lam_out(h), float(value), problem._w_out(WT), stats)
    return (r, GF) if outer_grad else r


def _raise_divergence(problem, lam, gamma, g0, gt, t, minibatch=False, inner_values=None):
    """Raise the DivergenceError of an inner loop that diverged at step t; it
    carries the recorded inner values (``.inner_values``, NaN past t)."""
    L = problem.lipschitz(lam, per_sample=minibatch)
    what = "g on a minibatch (per-sample bound)" if minibatch else "g"
    e = DivergenceError(
        f"step_size={gamma:.4g} makes the inner loop diverge: g went from "
        f"{g0:.4g} to {gt:.4g} at step {t}. The smoothness of {what} is "
        f"about L={L:.4g}; gradient descent needs step_size < 2/L = {2 / L:.4g}")
    e.inner_values = inner_values
    raise e


def solve(problem, lam, solver="gd", steps=100, step_size=None, w0=None, *,
          momentum=None, batch_size=None, replace=None, seed=None, check_step=True):
    """The inner loop alone: w_T after ``steps`` steps of ``solver`` (same
    arguments as :func:`hypergradient`). Returns a HypergradientResult with
    ``grad`` None, ``w`` = w_T, ``value`` = f(w_T) and stats (time_s,
    passes, inner_values, ...). No trajectory is kept."""
    _checks.check_problem(problem, (BilevelProblem,))
    _checks.check_choice("solver", solver, SOLVERS)
    given = {k: v for k, v in (("momentum", momentum), ("batch_size", batch_size),
                               ("replace", replace), ("seed", seed)) if v is not None}
    refuse_unused(given, SOLVER_PARAMS[solver], f"solve with solver={solver!r}")
    sampler = resolve_sampler(problem, solver, batch_size, False if replace is None else replace,
                              0 if seed is None else seed)
    r = _run_actions(problem, lam, solver, steps, step_size, w0, momentum,
                     schedules.inner_only, "solve", sampler, check_step)
    r.grad = None
    r.stats["method"] = "solve"
    return r


def plan(problem, steps, memory_bytes, solver="gd", hvp_cost=1.3):
    """The fastest exact method for T = ``steps`` within ``memory_bytes`` of
    trajectory storage, counted in passes over X (an H·v pass costing
    ``hvp_cost`` gradient passes; 1.3 measured on dense multinomial data).

    Returns a dict: ``method``, ``snapshots`` (for checkpointed), ``bytes``
    held, ``passes`` (gradient + H·v), ``cost`` (gradient-pass units). The
    candidates are ``reverse`` (T points), ``checkpointed`` with the revolve
    schedule and as many snapshots as fit, ``recompute`` (one state), and
    ``forward`` (dim λ tangents). Raises ValueError if not even one solver
    state fits.
    """
    _checks.check_problem(problem, (BilevelProblem,))
    T = _checks.check_scalar("steps", steps, low=0, integer=True)
    budget = _checks.check_scalar("memory_bytes", memory_bytes, low=0)
    _checks.check_choice("solver", solver, SOLVERS)
    vec = problem.dim_w * 8
    state = vec * state_vectors(solver)
    options = []
    if T * vec <= budget:
        options.append({"method": "reverse", "snapshots": None, "bytes": T * vec,
                        "passes": 2 * T, "cost": T + hvp_cost * T})
    s = int(min(T, budget // state)) if state else 0
    if s >= 2:
        f = schedules.revolve_cost(T, s) + 1
        options.append({"method": "checkpointed", "snapshots": s, "bytes": s * state,
                        "passes": f + T, "cost": f + hvp_cost * T})
    if state <= budget:
        f = T + (T - 1) * (T - 2) // 2 if T > 1 else T
        options.append({"method": "recompute", "snapshots": None, "bytes": state,
                        "passes": f + T, "cost": f + hvp_cost * T})
    m = problem.dim_lam
    if m * state <= budget:
        options.append({"method": "forward", "snapshots": None, "bytes": m * state,
                        "passes": T * max(1, m), "cost": T * (hvp_cost + (m - 1) * hvp_cost)})
    if not options:
        raise ValueError(f"memory_bytes={budget:.0f} holds not even one solver state "
                         f"({state} bytes)")
    return min(options, key=lambda o: (o["cost"], o["bytes"]))


def _implicit(problem, lam, solver, steps, step_size, w0, momentum, K, linear_solver, tol,
              v0, eta, sampler=None, check_step=True):
    t0 = time.perf_counter()
    linear_solver = "cg" if linear_solver is None else linear_solver
    _checks.check_choice("linear_solver", linear_solver, LINEAR_SOLVERS)
    K = 100 if K is None else _checks.check_scalar("K", K, low=0, integer=True)
    tol = 1e-10 if tol is None else _checks.check_scalar("tol", tol, low=0.0)
    r, b = _run_actions(problem, lam, solver, steps, step_size, w0, momentum,
                        schedules.inner_only, "implicit", sampler, check_step,
                        outer_grad=True)    # b = ∇_w f(ŵ), from the run's last pass
    hp = problem._lam_in(lam)
    W = problem._w_in("w", r.w)
    be = problem.backend
    V0 = np.zeros_like(W) if v0 is None else problem._w_in("v0", v0)
    L = smoothness(problem, lam)
    mu = problem.strong_convexity(lam)
    alpha = beta = 0.0
    if linear_solver == "neumann":
        eta = 1.0 / L if eta is None else _checks.check_scalar("eta", eta, low=0.0,
                                                                 low_inclusive=False)
        check_step_size(problem, lam, eta, "gd", 0.0, check_step, name="eta",
                        label="linear_solver='neumann'")
    else:
        if eta is not None:
            raise ValueError("eta applies to linear_solver='neumann'")
        eta = 0.0
        if linear_solver == "heavy_ball":
            if mu <= 0.0:
                raise ValueError("linear_solver='heavy_ball' needs a strongly convex inner "
                                 "problem (reg > 0) for its step sizes")
            alpha = 4.0 / (math.sqrt(L) + math.sqrt(mu)) ** 2
            q = math.sqrt(L / mu)
            beta = ((q - 1.0) / (q + 1.0)) ** 2
    v, resid, it, status = be.implicit_solve(problem.train, hp.a, problem._model, hp.rdiag, W,
                                             b, V0, LINEAR_SOLVERS[linear_solver], K, tol, eta,
                                             alpha, beta, be.nchunks())
    if status == NO_CURVATURE:
        raise ValueError(
            f"linear_solver='cg' met a direction of zero curvature at step {it}: H(w) is "
            "singular where ∇_w f has weight (a feature the training data never uses, or "
            "no ridge); use reg > 0 (or a smaller lam for l2/feature_l2), or "
            "linear_solver='neumann' for a truncated series")
    if status == DIVERGED:
        raise DivergenceError(
            f"linear_solver={linear_solver!r} diverged at step {it} (residual {resid:.3g}); "
            f"H has L≈{L:.4g}" + (f", so eta={eta:.4g} must be < 2/L = {2 / L:.4g}"
                                  if linear_solver == "neumann" else ""))
    v_out = problem._w_out(v)
    grad = -problem.cross(r.w, lam, v_out)     # ∇_λ f = 0: d_λ f = −J(ŵ)v
    check_finite_result("implicit", r.value, grad, v_out)
    extra = int(problem.hyper == "sample_weights")   # J needs a pass over X only there
    st = r.stats
    st.update({
        "method": "implicit", "linear_solver": linear_solver,
        "time_s": time.perf_counter() - t0,
        "residual": float(resid), "linear_steps": int(it),
        "converged": status == CONVERGED, "v": v_out,
        "hvp_passes": int(it) + 1 + extra,
    })
    st["passes"] = st["gradient_passes"] + st["hvp_passes"]
    return HypergradientResult(grad, r.value, r.w, st)
