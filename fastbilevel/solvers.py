"""The stochastic bilevel solver family: SOBA, SABA, AmIGO, MRBO, VRBO,
TTSA, BSA, F2SA and BOME, each a loop of minibatch estimates run in one
compiled kernel (:mod:`fastbilevel.kernels.solvers`).

Call them through :func:`fastbilevel.minimize` (``method="soba"``, ...) or
:func:`run_solver`; see ``docs/math.md`` §13 for every update with its
paper, algorithm and equation.
"""
import math
import time

import numpy as np

from . import _checks
from ._checks import DivergenceError, check_seed, smoothness
from ._chunks import outer_run
from ._params import SOLVER_FAMILY, refuse_unused
from ._results import History, MinimizeResult
from .kernels import solvers as _K
from .problem import BilevelProblem

#: the methods, in the kernel's code order
METHODS = ("soba", "saba", "amigo", "mrbo", "vrbo", "ttsa", "bsa", "f2sa", "bome")

#: per method: (inner steps T, decaying step sizes) by default
_DEFAULTS = {
    "soba": (1, True), "saba": (1, False), "amigo": (10, False), "mrbo": (1, True),
    "vrbo": (3, False), "ttsa": (1, True), "bsa": (10, True), "f2sa": (10, True),
    "bome": (10, False),
}


def default_lr(problem):
    """The default outer step γ₀: 1 for the regularization maps (λ is a log
    strength or a prior, and its hypergradient is O(1)); n/10 for
    ``sample_weights``, whose hypergradient entries are means over the n
    samples (each O(1/n)), so that a weight moves O(0.1) per unit of its
    sample's share of the gradient."""
    return problem.n / 10.0 if problem.hyper == "sample_weights" else 1.0


def run_solver(problem, lam0, method, iters=300, *, lr=None, step_size=None,
               batch_size=None, outer_batch=None, replace=False, seed=0, w0=None,
               bounds=None, decay=None, inner_steps=None, linear_steps=None,
               linear_step=None, Q=None, eta=None, momentum=None, period=None, nu0=None,
               nu_growth=None, bome_eta=None, eval_every=50, callback=None, progress=False):
    """Run one of the stochastic bilevel solvers for ``iters`` iterations.

    Every method keeps the inner iterate w (and, where it has one, the
    linear-system iterate v ≈ H⁻¹∇_w f) across iterations and moves λ by a
    minibatch hypergradient estimate; batches are drawn in the kernel from
    ``seed`` (bit-identical results per seed on any thread count).

    ``soba``  Dagréou, Ablin, Vaiter & Moreau 2022, Alg. 1: w, v and λ
        each take one step per iteration along ∇_w g, H v − ∇_w f and −J v,
        all from one training and one validation batch; steps
        ρ_k = ρ₀(k+1)^{-2/5}, γ_k = γ₀(k+1)^{-3/5} (their Thm 1).
    ``saba``  the same paper's SABA (Alg. 2 with the SAGA estimator of
        their eq. (8)) on all three directions: per-sample tables of the
        per-row scalars a_iℓ'(z_i), a_iℓ''(z_i)u_i (n × c each), ℓ'(z_j) of
        the validation rows (m × c) and, for ``sample_weights``, ℓ'(z_i)·u_i
        (n), filled by one pass at the start; constant steps (Thm 2).
        Memory: (2n + m)·c (+ n) floats plus three (c, d) means.
    ``amigo``  Arbel & Mairal 2022, Alg. 1-3: per iteration ``inner_steps``
        warm-started SGD steps on w, ``linear_steps`` warm-started SGD steps
        on ½vᵀHv − vᵀ∇_w f (step ``linear_step``), then the λ step; constant
        steps.
    ``mrbo``  Yang, Ji & Liang 2021, Alg. 1: STORM momentum on the
        directions of w and λ, d_k = e(x_k) + (1 − a_k)(d_{k−1} − e(x_{k−1}))
        with both estimates on the same batches, a_k = min(1, a₀(k+1)^{-2/3}),
        steps ∝ (k+1)^{-1/3}; the hypergradient by the Q-term Neumann
        series of their eq. (4) (stocBiO's).
    ``vrbo``  the same paper's Alg. 2: every ``period`` iterations both
        directions are recomputed on all rows (the large batch S₁); λ moves,
        then ``inner_steps`` steps of w, and after each move both directions
        get the SPIDER/SARAH correction (the estimate at the new point minus
        the estimate at the old one, on one fresh batch); constant steps.
    ``ttsa``  Hong, Wai, Wang & Yang 2020, Alg. 1: one SGD step of w and one
        λ step per iteration on two time scales, ρ_k ∝ (k+1)^{-2/5},
        γ_k ∝ (k+1)^{-3/5}; the hypergradient by the randomly truncated
        Neumann series of Ghadimi & Wang's eq. (2.8): p ~ U{0, …, Q−1},
        v = Qη Π_{i≤p}(I − ηH_{B_i}) ∇_w f, h = −J v.
    ``bsa``  Ghadimi & Wang 2018, Alg. 2 (BSA): ``inner_steps`` SGD steps of
        w, then the same truncated-Neumann estimate; γ_k = γ₀/√(k+1).
    ``f2sa``  Kwon, Kwon, Wright & Nowak 2023, Alg. 1 (fully first-order):
        z ≈ argmin g and y ≈ argmin f/ν_k + g by ``inner_steps`` SGD steps
        each (y is the returned w), λ along ν_k(∂_λ g(λ, y) − ∂_λ g(λ, z))
        (the gradient of the penalty f(y) + ν(g(λ, y) − g(λ, z*)));
        ν_k = ν₀ + ``nu_growth``·k; γ_k = γ₀/√(k+1).
    ``bome``  Liu, Ye, Wright, Stone & Liu 2022, Alg. 1: ŵ = ``inner_steps``
        SGD steps from w, q(λ, w) = g(λ, w) − g(λ, ŵ), and (λ, w) moves along
        ∇f + φ∇q with φ = max(η − ⟨∇f, ∇q⟩/‖∇q‖², 0) (their choice
        φ = η‖∇q‖², η = ``bome_eta``); w steps by ρ, λ by γ.

    Parameters
    ----------
    problem : BilevelProblem
        Any map but ``init``; dense or CSR, float32 or float64.
    lam0 : array_like, shape ``problem.lam_shape``
    method : one of :data:`METHODS`
    iters : int ≥ 1, default 300
        Outer iterations.
    lr : float > 0, optional
        γ₀, the step of λ; default :func:`default_lr`.
    step_size : float > 0, optional
        ρ₀, the step of w (and of v); default 1/L with L the per-sample
        smoothness bound of g at λ₀ (a step every minibatch loss tolerates).
    batch_size : int ≥ 1, optional
        Training rows per estimate; default min(n, 64).
    outer_batch : int ≥ 1, optional
        Validation rows per estimate; default min(m, batch_size).
    replace : bool, default False
        Draw batches with replacement.
    seed : int in [0, 2^63), default 0
    w0 : array_like, shape of w, optional
        Start of w (default 0).
    bounds : (low, high), optional
        λ is clipped to [low, high] after every update.
    decay : bool, optional
        Decaying step sizes as above (default: as the method's paper; False
        makes every step constant, True decays γ as 1/√(k+1) where the paper
        gives no rate).
    inner_steps : int ≥ 1, optional
        T (amigo 10, vrbo 3, bsa 10, f2sa 10, bome 10).
    linear_steps, linear_step : AmIGO's M (default 10) and its step (ρ₀).
    Q : int ≥ 1, optional
        Neumann terms (mrbo, vrbo, ttsa, bsa; default 10).
    eta : float > 0, optional
        Neumann step η (default 1/L, the per-sample bound).
    momentum : float > 0, optional
        MRBO's a₀ (default 1).
    period : int ≥ 1, optional
        VRBO's refresh period (default n / (2·batch_size·(inner_steps+1)):
        the full pass then costs about as much as the batches between two).
    nu0, nu_growth : float, optional
        F2SA's ν₀ > 0 (default 1) and ν's growth per iteration ≥ 0
        (default 0.1).
    bome_eta : float > 0, optional
        BOME's η (default 0.5).
    eval_every : int ≥ 1, default 50
        A history row (the full validation loss f(w), not timed) every this
        many iterations; ``callback(k, lam, w)`` is called then (True stops).
    progress : bool, default False
        A progress bar; Ctrl-C raises :class:`~fastbilevel.MinimizeInterrupted`.

    Returns
    -------
    MinimizeResult
        ``lam``, ``history`` (``grad_norm``: the norm of the last λ
        direction), ``w``, ``v`` (the linear-system iterate, where the method
        has one; F2SA: z; BOME: ŵ), ``last`` None.

    Raises
    ------
    DivergenceError
        When an iterate stops being finite (lower ``lr`` or ``step_size``).
    """
    _checks.check_problem(problem, (BilevelProblem,))
    _checks.require_cpu(problem, f"method={method!r}")
    _checks.check_choice("method", method, METHODS)
    given = {k: v for k, v in dict(
        inner_steps=inner_steps, linear_steps=linear_steps, linear_step=linear_step, Q=Q,
        eta=eta, momentum=momentum, period=period, nu0=nu0, nu_growth=nu_growth,
        bome_eta=bome_eta).items() if v is not None}
    refuse_unused(given, SOLVER_FAMILY[method], f"method={method!r}")
    if problem.hyper == "init":
        raise ValueError(f"method={method!r} does not apply to hyper='init' (the implicit "
                         "hypergradient of a learned start is zero); use an ITD method")
    iters = _checks.check_scalar("iters", iters, low=1, integer=True)
    eval_every = _checks.check_scalar("eval_every", eval_every, low=1, integer=True)
    if not isinstance(replace, (bool, np.bool_)):
        raise TypeError(f"replace={replace!r} must be a bool")
    n, m = problem.n, problem.m
    b = min(n, 64) if batch_size is None else _checks.check_batch("batch_size", batch_size, n,
                                                                  replace)
    bv = min(m, b) if outer_batch is None else _checks.check_batch("outer_batch",
                                                                   outer_batch, m, replace)
    seed = check_seed(seed)
    lam, bnd = _checks.start_lam(problem, lam0, bounds)
    L = smoothness(problem, lam, minibatch=True)
    pos = dict(low=0.0, low_inclusive=False)
    rho = 1.0 / L if step_size is None else _checks.check_scalar("step_size", step_size, **pos)
    gamma = default_lr(problem) if lr is None else _checks.check_scalar("lr", lr, **pos)
    T0, decay0 = _DEFAULTS[method]
    T = T0 if inner_steps is None else _checks.check_scalar("inner_steps", inner_steps, low=1,
                                                            integer=True)
    if decay is None:
        decay = decay0
    elif not isinstance(decay, (bool, np.bool_)):
        raise TypeError(f"decay={decay!r} must be a bool")
    fp = np.zeros(_K.N_FP)
    ip = np.zeros(_K.N_IP, dtype=np.int64)
    fp[_K.RHO], fp[_K.GAMMA] = rho, gamma
    fp[_K.ETA_H] = 1.0 / L if eta is None else _checks.check_scalar("eta", eta, **pos)
    fp[_K.MOM] = 1.0 if momentum is None else _checks.check_scalar("momentum", momentum, **pos)
    fp[_K.NU0] = 1.0 if nu0 is None else _checks.check_scalar("nu0", nu0, **pos)
    fp[_K.DNU] = 0.1 if nu_growth is None else _checks.check_scalar("nu_growth", nu_growth,
                                                                     low=0.0)
    fp[_K.BOME_ETA] = 0.5 if bome_eta is None else _checks.check_scalar("bome_eta", bome_eta,
                                                                        **pos)
    fp[_K.RHO_V] = rho if linear_step is None else _checks.check_scalar("linear_step",
                                                                        linear_step, **pos)
    ip[_K.BATCH], ip[_K.VBATCH], ip[_K.INNER] = b, bv, T
    ip[_K.LINEAR] = 10 if linear_steps is None else _checks.check_scalar(
        "linear_steps", linear_steps, low=1, integer=True)
    ip[_K.NQ] = 10 if Q is None else _checks.check_scalar("Q", Q, low=1, integer=True)
    ip[_K.PERIOD] = max(1, round(n / (2 * b * (T + 1)))) if period is None else \
        _checks.check_scalar("period", period, low=1, integer=True)
    ip[_K.DECAY] = int(bool(decay))
    for name, step in (("step_size", rho), ("eta", fp[_K.ETA_H]), ("linear_step",
                                                                   fp[_K.RHO_V])):
        _checks.check_step_size(problem, lam, step, "sgd", 0.0, True, name=name,
                                label=f"method={method!r}")
    state = _State(problem, method, lam, w0)
    hist = History()
    settings = dict(lr=gamma, step_size=rho, fp=fp, ip=ip, replace=bool(replace), seed=seed,
                    bnd=bnd, eval_every=eval_every, code=METHODS.index(method))
    with outer_run(progress, iters, method) as run:
        run.partial = lambda: state.result(hist)
        _loop(problem, state, iters, settings, hist, callback, run)
    return state.result(hist)


class _State:
    """A run's state in the kernel's layout (λ in kernel order)."""

    def __init__(self, problem, method, lam, w0):
        self.problem = problem
        self.method = method
        to_k = lambda x: problem._map.to_kernel_order(problem, x)  # noqa: E731
        self.to_k = to_k
        self.lam = to_k(lam)
        hp = problem._lam_in(lam)
        c, d, n, m = problem.c, problem.d, problem.n, problem.m
        self.a, self.da, self.rdiag = hp.a.copy(), hp.da.copy(), hp.rdiag.copy()
        self.prior = hp.prior.copy() if problem.hyper == "biased_l2" else np.empty((0, 0))
        self.W = np.zeros((c, d)) if w0 is None else problem._w_in("w0", w0)
        self.V, self.Z, self.Wm, self.Dw = (np.zeros((c, d)) for _ in range(4))
        self.U = np.zeros(problem.dim_lam)
        self.old = (self.a.copy(), self.da.copy(), self.rdiag.copy(), self.prior.copy())
        saba = method == "saba"
        sw = problem.hyper == "sample_weights"
        self.tables = (np.zeros((n if saba else 0, c)), np.zeros((n if saba else 0, c)),
                       np.zeros((m if saba else 0, c)), np.zeros(n if saba and sw else 0),
                       np.zeros((c, d)), np.zeros((c, d)), np.zeros((c, d)))

    def result(self, hist):
        p = self.problem
        second = self.V if self.method not in ("f2sa", "bome") else self.Z
        return MinimizeResult(p._lam_out(self.lam), hist, p._w_out(self.W), p._w_out(second),
                              None)


def _loop(problem, st, iters, s, hist, callback, run):
    """The iterations, ``eval_every`` at a time, with a history row each."""
    lo, hi = (st.to_k(s["bnd"][0]), st.to_k(s["bnd"][1])) if s["bnd"] is not None else \
        (np.empty(0), np.empty(0))
    rows_total = 0
    spent = 0.0
    k = 0
    while k < iters:
        chunk = min(s["eval_every"], iters - k)
        t0 = time.perf_counter()
        status, counts = _K.solver_run(
            s["code"], problem.train, problem.val, problem._model, problem._hyper, st.lam,
            st.a, st.da, st.rdiag, st.prior, st.W, st.V, st.Z, st.Wm, st.Dw, st.U,
            *st.old, *st.tables, s["fp"], s["ip"], k, chunk, s["replace"],
            s["seed"], lo, hi)
        spent += time.perf_counter() - t0
        if status >= 0:
            raise DivergenceError(
                f"method={st.method!r} diverged at iteration {status} (an iterate stopped "
                f"being finite): lower lr={s['lr']:.4g} or step_size={s['step_size']:.4g}")
        escape = _checks.exp_lam_escape(problem, st.lam)
        if escape:
            raise DivergenceError(f"method={st.method!r} {escape} by iteration {k + chunk}: "
                                  f"lower lr={s['lr']:.4g} or give bounds=(low, high)")
        k += chunk
        rows_total += int(counts[0])
        w = problem._w_out(st.W)
        lam_pub = problem._lam_out(st.lam)
        hist._append(outer_value=float(problem.outer_value(w)),
                     grad_norm=float(np.linalg.norm(st.U)), inner_grad_norm=math.nan,
                     residual=math.nan, linear_steps=0, passes=rows_total / problem.n,
                     rows=rows_total, time_s=spent, accepted=True, tol=math.nan)
        run.record(hist._rows[-1]["outer_value"], lam_pub, chunk)
        if callback is not None and callback(k, lam_pub, w):
            break
