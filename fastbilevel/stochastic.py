"""Stochastic hypergradients: stocBiO (Ji 2021, thesis Alg. 4-5, Prop. 3)."""
import math
import time

import numpy as np

from . import _checks
from ._checks import (DivergenceError, check_batch, check_seed, check_step_size,
                      resolve_step_size, smoothness)
from ._chunks import outer_run
from ._results import History, HypergradientResult, MinimizeResult
from .problem import BilevelProblem

HESSIAN_SCHEDULES = ("decay", "uniform")


def _batches(problem, batch_size, outer_batch, cross_batch, replace):
    """(training batch, validation batch, cross batch) sizes, checked: the
    training batch defaults to min(n, 128), the validation batch to
    min(m, batch) and the cross batch to the training batch."""
    if not isinstance(replace, (bool, np.bool_)):
        raise TypeError(f"replace={replace!r} must be a bool")
    n, m = problem.n, problem.m
    S = min(n, 128) if batch_size is None else check_batch("batch_size", batch_size, n, replace)
    bv = min(m, S) if outer_batch is None else check_batch("outer_batch", outer_batch, m, replace)
    bc = S if cross_batch is None else check_batch("cross_batch", cross_batch, n, replace)
    return S, bv, bc


def hessian_batch_sizes(B, Q, eta, mu, schedule="decay", n=None):
    """|B_1|, ..., |B_Q| of stocBiO's Neumann estimator.

    ``decay`` (thesis Prop. 3): |B_{Q+1−j}| = ⌈B·Q·(1−ημ)^{j−1}⌉, j = 1..Q:
    the first product applied (B_Q) is the largest, and the later ones, whose
    errors are damped by the preceding (I − ηH) factors, shrink
    geometrically. ``uniform``: every |B_j| = ⌈B·Q⌉ (the same B in Prop. 3's
    variance term, Q times as many rows per product as the smallest decayed
    one). Sizes are clipped to [1, n]."""
    _checks.check_choice("hessian_schedule", schedule, HESSIAN_SCHEDULES)
    rho = 1.0 - eta * mu
    sizes = np.empty(Q, dtype=np.int64)
    for i in range(1, Q + 1):                 # |B_i|, i = Q + 1 − j
        j = Q + 1 - i
        s = B * Q * (rho ** (j - 1) if schedule == "decay" else 1.0)
        sizes[i - 1] = max(1, math.ceil(s - 1e-9))
    if n is not None:
        np.minimum(sizes, n, out=sizes)
    return sizes


def stocbio(problem, lam, steps=10, step_size=None, w0=None, *, Q=10, eta=None,
            batch_size=None, hessian_batch=None, hessian_schedule="decay",
            hessian_sizes=None, outer_batch=None, cross_batch=None, replace=False,
            seed=0, check_step=True):
    """One stocBiO hypergradient estimate (thesis Alg. 4, lines 3-12; Alg. 5).

    D = ``steps`` minibatch SGD steps from ``w0`` (warm start; default 0)
    on batches S_t of ``batch_size`` rows give ŵ; then v_0 = ∇_w F(ŵ; D_F) on
    ``outer_batch`` validation rows, the Neumann recursion r_Q = v_0,
    r_{i−1} = r_i − η H(ŵ; B_i) r_i (i = Q..1) on independent batches B_i,
    v_Q = η Σ_{i=0}^{Q} r_i, and ∇̂Φ = ∇_λ F − J(ŵ; D_G) v_Q with D_G of
    ``cross_batch`` rows (only ``sample_weights`` reads data for J; for the
    other maps J is exact). Each pass reads only its batch's rows.

    Parameters
    ----------
    problem : BilevelProblem
        Any map but ``init`` (the implicit hypergradient of a learned start
        is zero).
    lam : array_like, shape ``problem.lam_shape``
    steps : int ≥ 0, default 10
        D, the minibatch SGD steps.
    step_size : float > 0, optional
        The SGD step α; default 1/L with L the per-sample bound of
        ``problem.lipschitz(lam, per_sample=True)``.
    w0 : array_like, shape of w, optional
        Warm start of the SGD (default 0).
    Q : int ≥ 0, default 10
        Neumann terms.
    eta : float > 0, optional
        η of the Neumann series; default 1/L with the per-sample L (Prop. 3
        needs η ≤ 1/L).
    batch_size : int ≥ 1, optional
        |S_t|; default min(n, 128). Also the default of ``outer_batch``
        (capped at m) and of ``cross_batch``.
    hessian_batch : float > 0, optional
        B of Prop. 3; default batch_size/Q, so that the largest Hessian
        batch has ``batch_size`` rows.
    hessian_schedule : {"decay", "uniform"}, default "decay"
        Sizes of the Hessian batches (see :func:`hessian_batch_sizes`).
    hessian_sizes : sequence of Q ints ≥ 1, optional
        Explicit Hessian batch sizes; overrides the two above.
    outer_batch : int ≥ 1, optional
        |D_F|, validation rows of v₀ and of the returned value.
    cross_batch : int ≥ 1, optional
        |D_G|, training rows of the cross term (``sample_weights`` only).
    replace : bool, default False
        Draw batches with replacement.
    seed : int in [0, 2^63), default 0
        Fixes every batch (bit-identical on any thread count).
    check_step : bool, default True
        Refuse ``step_size`` or ``eta`` ≥ 2/L (L of the full objective: a
        necessary condition) before running.

    Returns
    -------
    HypergradientResult
        ``grad`` the estimate; ``w`` ŵ (pass it back as ``w0`` to
        warm-start the next call); ``value`` F(ŵ; D_F), the validation loss
        on the D_F batch; ``stats`` with ``rows_sampled`` (training rows
        read), ``val_rows``, ``hessian_sizes`` and ``passes``.
    """
    t0 = time.perf_counter()
    _checks.check_problem(problem, (BilevelProblem,))
    if problem.hyper == "init":
        raise ValueError("method='stocbio' does not apply to hyper='init' (the implicit "
                         "hypergradient of a learned start is zero); use an ITD method")
    D = _checks.check_scalar("steps", steps, low=0, integer=True)
    Q = _checks.check_scalar("Q", Q, low=0, integer=True)
    n = problem.n
    S, df, dg = _batches(problem, batch_size, outer_batch, cross_batch, replace)
    seed = check_seed(seed)
    hp = problem._lam_in(lam)
    gamma = resolve_step_size(problem, lam, step_size, minibatch=True)
    check_step_size(problem, lam, gamma, "sgd", 0.0, check_step)
    L = smoothness(problem, lam, minibatch=True)
    eta = 1.0 / L if eta is None else _checks.check_scalar("eta", eta, low=0.0,
                                                           low_inclusive=False)
    check_step_size(problem, lam, eta, "sgd", 0.0, check_step, name="eta",
                    label="the Neumann series")
    mu = problem.strong_convexity(lam)
    if hessian_sizes is not None:
        if hessian_batch is not None:
            raise ValueError("give hessian_batch or hessian_sizes, not both")
        hs = np.asarray(hessian_sizes)
        if hs.shape != (Q,) or hs.dtype.kind not in "iu" or np.any(hs < 1):
            raise ValueError(f"hessian_sizes must be Q={Q} integers >= 1, got {hessian_sizes!r}")
        if not replace and np.any(hs > n):
            raise ValueError(f"hessian_sizes exceed the {n} training rows (without replacement)")
        hs = np.ascontiguousarray(hs, dtype=np.int64)
    else:
        B = S / max(Q, 1) if hessian_batch is None else \
            _checks.check_scalar("hessian_batch", hessian_batch, low=0.0, low_inclusive=False)
        if eta * mu >= 1.0:
            raise ValueError(f"eta={eta:.4g} with mu={mu:.4g}: eta*mu must be < 1 "
                             "(Prop. 3 needs eta <= 1/L)")
        hs = hessian_batch_sizes(B, Q, eta, mu, hessian_schedule, None if replace else n)
    W0 = np.zeros((problem.c, problem.d)) if w0 is None else problem._w_in("w0", w0)
    h = np.zeros(problem.dim_lam)
    be = problem.backend
    W, fval, status, counts = be.stocbio_run(
        problem.train, hp.a, hp.da, problem._model, problem._hyper, hp.rdiag, hp.prior,
        problem.val, W0, D, gamma, S, eta, hs, df, dg, bool(replace), seed, h,
        be.fixed_nchunks())
    if status >= 0:
        raise DivergenceError(f"step_size={gamma:.4g} makes the SGD loop diverge at step {status}; "
                         f"the per-sample smoothness of g is about L={L:.4g}, so "
                         f"step_size must be < 2/L = {2 / L:.4g}")
    if not np.all(np.isfinite(h)):
        raise DivergenceError(f"the Neumann series diverged: eta={eta:.4g} must be <= 1/L "
                         f"(L≈{L:.4g} per sample)")
    sw = problem.hyper == "sample_weights"
    stats = {
        "method": "stocbio", "solver": "sgd", "steps": D, "step_size": gamma, "Q": Q,
        "eta": eta, "batch_size": S, "outer_batch": df, "cross_batch": dg if sw else 0,
        "hessian_sizes": hs, "replace": bool(replace), "seed": seed,
        "rows_sampled": int(counts[0]), "val_rows": int(counts[1]),
        "gradient_passes": D, "hvp_passes": Q + int(sw), "val_passes": 1,
        "passes": D + Q + int(sw), "trajectory_bytes": 0,
        "time_s": time.perf_counter() - t0,
    }
    return HypergradientResult(problem._lam_out(h), float(fval), problem._w_out(W), stats)


def fsla(problem, lam0, iters=1000, *, delta=0.1, c_tau=None, c_beta=None, c_eta=None,
         batch_size=None, outer_batch=None, cross_batch=None, replace=False, seed=0,
         bounds=None, w0=None, eval_every=50, callback=None, progress=False):
    """FSLA (Li, Gu & Huang 2022, Alg. 1): λ, ω, the v-state and the STORM
    momentum d each move once per iteration, from minibatches; see
    :func:`fastbilevel.kernels.stochastic.fsla_run` for the exact updates.
    Step sizes α_k = δ/√(k+1) (the paper's δ/√k, shifted so k = 0 is
    defined), τ = c_τα_k, β = c_βα_k, η = min(1, c_ηα_k).

    Parameters
    ----------
    problem : BilevelProblem
        Any map but ``init``.
    lam0 : array_like, shape ``problem.lam_shape``
        Start of λ.
    iters : int ≥ 1, default 1000
        Iterations.
    delta : float > 0, default 0.1
        δ, the scale of the λ step α_k = δ/√(k+1).
    c_tau : float > 0, optional
        Inner step τ_k = c_τ α_k; default 1/(Lδ), so that the first inner
        step is 1/L with L the per-sample smoothness bound of g at λ0 (a
        step every minibatch loss tolerates).
    c_beta : float > 0, optional
        v-state step β_k = c_β α_k; default 1/(Lδ) likewise.
    c_eta : float > 0, optional
        STORM weight η_k = min(1, c_η α_k); default 1/δ, so that η₀ = 1 (the
        first momentum is the plain estimate).
    batch_size : int ≥ 1, optional
        Rows of ξ₁ and ξ₃; default min(n, 128). Also the default of
        ``cross_batch``.
    outer_batch : int ≥ 1, optional
        Validation rows of ξ₂; default min(m, batch_size).
    cross_batch : int ≥ 1, optional
        Training rows of ξ₅ (the cross term).
    replace : bool, default False
        Draw batches with replacement.
    seed : int in [0, 2^63), default 0
        Fixes every batch (bit-identical on any thread count).
    bounds : (low, high), optional
        λ is clipped to [low, high] after every update.
    w0 : array_like, shape of w, optional
        Start of ω (default 0).
    eval_every : int ≥ 1, default 50
        A history row, with the full validation loss f(ω_k) (its pass is
        not counted in ``time_s``), every this many iterations; the callback
        is called then.
    callback : callable(k, lam, w) -> bool, optional
        Returning True stops.
    progress : bool, default False
        A progress bar over the iterations with the validation loss (needs
        tqdm). Ctrl-C raises :class:`~fastbilevel.MinimizeInterrupted` with
        the iterations done (in chunks of ``eval_every``).

    Returns
    -------
    MinimizeResult
        ``v`` is the final v-state; ``last`` is None.
    """
    _checks.check_problem(problem, (BilevelProblem,))
    if problem.hyper == "init":
        raise ValueError("method='fsla' does not apply to hyper='init'; use an ITD method")
    iters = _checks.check_scalar("iters", iters, low=1, integer=True)
    eval_every = _checks.check_scalar("eval_every", eval_every, low=1, integer=True)
    delta = _checks.check_scalar("delta", delta, low=0.0, low_inclusive=False)
    S, bv, bc = _batches(problem, batch_size, outer_batch, cross_batch, replace)
    seed = check_seed(seed)
    lam, bnd = _checks.start_lam(problem, lam0, bounds)
    L0 = smoothness(problem, lam, minibatch=True)
    vals = {"delta": delta}
    for k, v, default in (("c_tau", c_tau, 1.0 / (L0 * delta)),
                          ("c_beta", c_beta, 1.0 / (L0 * delta)), ("c_eta", c_eta, 1.0 / delta)):
        vals[k] = default if v is None else _checks.check_scalar(k, v, low=0.0,
                                                                 low_inclusive=False)
    hp = problem._lam_in(lam)
    # kernel-order λ and bounds (the order of the hypergradient vector h)
    to_k = lambda x: problem._map.to_kernel_order(problem, x)  # noqa: E731
    lk = to_k(lam)
    lo, hi = (to_k(bnd[0]), to_k(bnd[1])) if bnd is not None else (np.empty(0), np.empty(0))
    W = np.zeros((problem.c, problem.d)) if w0 is None else problem._w_in("w0", w0)
    V = np.zeros_like(W)
    dmom = np.zeros(problem.dim_lam)
    a = hp.a.copy()
    da = hp.da.copy()
    rdiag = hp.rdiag.copy()
    prior = hp.prior.copy() if problem.hyper == "biased_l2" else np.empty((0, 0))
    reg = float(problem.reg) if problem.reg is not None else 0.0
    hist = History()
    be = problem.backend
    nch = be.fixed_nchunks()
    with outer_run(progress, iters, "fsla") as run:
        run.partial = lambda: MinimizeResult(problem._lam_out(lk), hist, problem._w_out(W),
                                             problem._w_out(V), None)
        _fsla_loop(problem, iters, eval_every, lk, W, V, dmom, a, da, rdiag, prior, reg, vals,
                   S, bv, bc, replace, seed, lo, hi, nch, delta, hist, callback, run)
    return MinimizeResult(problem._lam_out(lk), hist, problem._w_out(W), problem._w_out(V),
                          None)


def _fsla_loop(problem, iters, eval_every, lk, W, V, dmom, a, da, rdiag, prior, reg, vals, S, bv,
               bc, replace, seed, lo, hi, nch, delta, hist, callback, run):
    """FSLA's iterations, ``eval_every`` at a time, updating lk, W, V, dmom
    in place."""
    be = problem.backend
    rows_total = 0
    spent = 0.0
    k = 0
    while k < iters:
        chunk = min(eval_every, iters - k)
        t0 = time.perf_counter()
        status, counts = be.fsla_run(
            problem.train, problem._model, problem._hyper, reg, problem.val,
            lk, W, V, dmom, a, da, rdiag, prior, k, chunk, vals["delta"],
            vals["c_tau"], vals["c_beta"], vals["c_eta"], S, bv, bc, bool(replace), seed,
            lo, hi, nch)
        spent += time.perf_counter() - t0
        if status >= 0:
            raise DivergenceError(f"FSLA diverged at iteration {status}: lower delta={delta} "
                             "(or c_tau, c_beta)")
        k += chunk
        rows_total += int(counts[0])
        w = problem._w_out(W)
        lam_pub = problem._lam_out(lk)
        hist._append(outer_value=float(problem.outer_value(w)),
                     grad_norm=float(np.linalg.norm(dmom)), inner_grad_norm=math.nan,
                     residual=math.nan, linear_steps=0, passes=k, rows=rows_total,
                     time_s=spent, accepted=True, tol=math.nan)
        run.record(hist._rows[-1]["outer_value"], lam_pub, chunk)
        if callback is not None and callback(k, lam_pub, w):
            break
