"""hypergradient(): d/dλ f(w_T(λ)) through a compiled inner loop (DESIGN §4)."""
import time

import numpy as np

from . import _checks, config
from . import kernels as K
from ._parallel import nchunks

METHODS = ("reverse",)
SOLVERS = ("gd",)


class HypergradientResult:
    """What :func:`hypergradient` returns.

    Attributes
    ----------
    grad : ndarray, shape of λ — the hypergradient d_λ f(w_T(λ), λ).
    value : float — outer value f(w_T).
    w : ndarray, shape of w — the inner solver's output w_T.
    stats : dict — ``time_s`` (wall time), ``passes`` (passes over the
        training X), ``val_passes`` (passes over X_val), ``trajectory_bytes``
        (bytes held for the stored trajectory), ``inner_values`` (g(w_t, λ),
        t = 0..T−1), ``step_size``, ``steps``, ``method``, ``solver``.
    """

    __slots__ = ("grad", "value", "w", "stats")

    def __init__(self, grad, value, w, stats):
        self.grad, self.value, self.w, self.stats = grad, value, w, stats

    def __repr__(self):
        return (f"HypergradientResult(value={self.value:.6g}, "
                f"|grad|={np.linalg.norm(self.grad):.6g}, "
                f"time_s={self.stats['time_s']:.4g}, passes={self.stats['passes']})")


def resolve_step_size(problem, lam, step_size):
    """The user's step size, checked, or 1/L from ``problem.lipschitz``."""
    if step_size is None:
        return 1.0 / problem.lipschitz(lam)
    return _checks.check_scalar("step_size", step_size, low=0.0, low_inclusive=False)


def hypergradient(problem, lam, method="reverse", solver="gd", steps=100,
                  step_size=None, w0=None):
    """Hypergradient of Φ(λ) = f(w_T(λ)), w_T = T steps of the inner solver.

    Parameters
    ----------
    problem : BilevelProblem
    lam : array_like, shape ``problem.lam_shape``
    method : {"reverse"}
        ``reverse``: exact reverse-mode differentiation of the unrolled loop
        (Shaban et al. 2019, eq. 6; UFO-BLO Alg. 4). The iterates w_0..w_{T−1}
        are stored (T·dim w·8 bytes); each reverse step does H(w_t)α and
        J(w_t)α in one fused pass over X:
        α ← ∇_w f(w_T); for t = T−1..0: h ← h − γJ(w_t)α, α ← α − γH(w_t)α;
        h ← h + α for ``init``.
    solver : {"gd"}
        w_{t+1} = w_t − γ∇_w g(w_t, λ), all T steps in one compiled call.
    steps : int ≥ 0
        T.
    step_size : float > 0, optional
        γ; default 1/L with L estimated by ``problem.lipschitz(lam)``.
    w0 : array_like, shape of w, optional
        Start of the inner loop (default 0; for ``init`` the start is λ and
        w0 must not be given).

    Returns
    -------
    HypergradientResult

    Raises
    ------
    ValueError
        On invalid input, or when the inner loop diverges with this step size.
    """
    t0 = time.perf_counter()
    _checks.check_choice("method", method, METHODS)
    _checks.check_choice("solver", solver, SOLVERS)
    T = _checks.check_scalar("steps", steps, low=0, integer=True)
    hp = problem._lam_in(lam)
    gamma = resolve_step_size(problem, lam, step_size)
    if problem.hyper == "init":
        if w0 is not None:
            raise ValueError("w0 must not be given for hyper='init': the inner "
                             "loop starts at lam")
        W0 = hp.W0
    elif w0 is None:
        W0 = np.zeros((problem.c, problem.d))
    else:
        W0 = problem._w_in("w0", w0)
    traj_bytes = T * problem.dim_w * 8
    if traj_bytes > config.MAX_TRAJECTORY_BYTES:
        raise ValueError(
            f"steps={T}: method='reverse' would store {traj_bytes / 2**30:.1f} GiB "
            f"of iterates, above config.MAX_TRAJECTORY_BYTES="
            f"{config.MAX_TRAJECTORY_BYTES / 2**30:.1f} GiB")
    traj = np.empty((T, problem.c, problem.d))
    gvals = np.empty(T)
    WT, div = K.gd_loop(*problem.train, problem.y, hp.a, problem._model, hp.rdiag,
                        hp.prior, W0, gamma, T, traj, gvals, nchunks())
    if div >= 0:
        _raise_divergence(problem, lam, gamma, gvals, div)
    alpha = np.empty_like(WT)
    value = K.oracle_pass(*problem.val, problem.y_val, np.empty(0), problem._model, WT,
                          WT, True, False, alpha, alpha, np.empty(0), nchunks())
    h = np.zeros(problem.dim_lam)
    K.reverse_sweep(*problem.train, problem.y, hp.a, hp.da, problem._model,
                    problem._hyper, hp.rdiag, gamma, traj, alpha, h, nchunks())
    stats = {
        "time_s": time.perf_counter() - t0,
        "passes": 2 * T,
        "val_passes": 1,
        "trajectory_bytes": traj_bytes,
        "inner_values": gvals,
        "step_size": gamma,
        "steps": T,
        "method": method,
        "solver": solver,
    }
    return HypergradientResult(problem._lam_out(h), float(value),
                               problem._w_out(WT), stats)


def _raise_divergence(problem, lam, gamma, gvals, t):
    L = problem.lipschitz(lam)
    raise ValueError(
        f"step_size={gamma:.4g} makes the inner loop diverge: g(w_t) went from "
        f"{gvals[0]:.4g} to {gvals[t]:.4g} at step {t}. The smoothness of g is "
        f"about L={L:.4g}; gradient descent needs step_size < 2/L = {2 / L:.4g}")
