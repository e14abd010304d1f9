"""What the estimators and drivers return: typed results with one layout."""
import numpy as np


class HypergradientResult:
    """What :func:`hypergradient` returns.

    Attributes
    ----------
    grad : ndarray, shape of λ — the hypergradient (an estimate of it for
        ``truncated``).
    value : float — outer value f(w_T).
    w : ndarray, shape of w — the inner solver's output w_T.
    stats : dict — ``time_s`` (wall time); ``passes`` (passes over the
        training X: ``gradient_passes`` + ``hvp_passes``); ``val_passes``;
        ``trajectory_bytes`` (peak bytes held for stored iterates, snapshots
        or tangents); ``snapshots``; ``recomputed_steps`` (solver steps run
        beyond the first T); ``inner_values`` (g at the gradient points,
        t = 0..T−1); ``step_size``, ``momentum``, ``steps``, ``method``,
        ``solver`` and, for checkpointing, ``schedule``.
    """

    __slots__ = ("grad", "value", "w", "stats")

    def __init__(self, grad, value, w, stats):
        self.grad, self.value, self.w, self.stats = grad, value, w, stats

    def __repr__(self):
        g = "None" if self.grad is None else f"{np.linalg.norm(self.grad):.6g}"
        return (f"HypergradientResult(value={self.value:.6g}, |grad|={g}, "
                f"time_s={self.stats['time_s']:.4g}, passes={self.stats['passes']})")


class History:
    """Per outer iteration, as arrays: ``outer_value`` (f(w_T) at the point
    where the hypergradient was taken), ``grad_norm`` (‖hypergradient‖),
    ``inner_grad_norm`` (‖∇_w g(w_T, λ)‖, the inner residual), ``residual``
    (linear-solver residual, NaN unless ``implicit``), ``linear_steps``,
    ``passes`` (passes over X, cumulative; minibatch passes for the
    stochastic methods, iterations for FSLA), ``rows`` (training rows
    read, cumulative: the cost measure common to full-batch and minibatch
    methods), ``time_s`` (wall time, cumulative, not counting the callback
    or FSLA's evaluation passes), ``accepted`` (HOAG: whether the step into this point was
    kept; always True otherwise) and ``tol`` (HOAG's tolerance ε_k, else NaN)."""

    FIELDS = ("outer_value", "grad_norm", "inner_grad_norm", "residual",
              "linear_steps", "passes", "rows", "time_s", "accepted", "tol")

    def __init__(self):
        self._rows = []

    def _append(self, **row):
        self._rows.append(row)

    def __len__(self):
        return len(self._rows)

    def __getattr__(self, name):
        if name in History.FIELDS:
            return np.array([r[name] for r in self._rows])
        raise AttributeError(name)

    def plot(self, path=None, title=None):
        """Outer value and hypergradient norm against wall time and against
        passes over the data (a matplotlib Figure; written to ``path`` when
        given). Needs matplotlib (``fastbilevel[plot]``)."""
        from .plot import plot_history
        return plot_history(self, path, title)

    def as_table(self):
        """The history as aligned text, one line per outer iteration."""
        head = f"{'iter':>5}{'outer':>14}{'|grad|':>12}{'|inner g|':>12}{'lin res':>11}{'passes':>9}{'time s':>9}"
        lines = [head]
        for k, r in enumerate(self._rows):
            lines.append(f"{k:>5}{r['outer_value']:>14.6g}{r['grad_norm']:>12.4g}"
                         f"{r['inner_grad_norm']:>12.4g}{r['residual']:>11.3g}"
                         f"{r['passes']:>9}{r['time_s']:>9.3f}")
        return "\n".join(lines)


class MinimizeResult:
    """``lam`` (final λ), ``history`` (:class:`History`), ``w`` and ``v``
    (the last inner solution and linear-system solution, for warm starts),
    ``last`` (the last HypergradientResult)."""

    __slots__ = ("lam", "history", "w", "v", "last")

    def __init__(self, lam, history, w, v, last):
        self.lam, self.history, self.w, self.v, self.last = lam, history, w, v, last

    def __repr__(self):
        h = self.history
        return (f"MinimizeResult(iters={len(h)}, outer {h.outer_value[0]:.6g} -> "
                f"{h.outer_value[-1]:.6g}, time_s={h.time_s[-1]:.3g})")


class MinimizeInterrupted(KeyboardInterrupt):
    """Raised by :func:`~fastbilevel.minimize` and
    :func:`~fastbilevel.minimize_many` on Ctrl-C (a KeyboardInterrupt, so
    ``except KeyboardInterrupt`` still catches it), with what was done.

    Attributes
    ----------
    result : MinimizeResult or MultiStartResult — the outer iterations that
        finished: ``lam`` where the next iteration would have started,
        ``history`` up to there.
    best_lam : the λ of lowest outer value seen (per start for
        minimize_many; None before the first iteration finished).
    best_value : that outer value (NaN if none).
    """

    def __init__(self, result, best_lam, best_value):
        super().__init__(f"interrupted: {self._done(result)} outer iterations done; "
                         "the best λ so far is in .best_lam, the partial result in .result")
        self.result, self.best_lam, self.best_value = result, best_lam, best_value

    @staticmethod
    def _done(result):
        hist = getattr(result, "history", None)
        if hist is not None:
            return len(hist)
        return max((len(h) for h in result.histories), default=0)


class _Best:
    """The point of lowest outer value seen, elementwise over starts."""

    def __init__(self, shape=None):
        self.value = np.inf if shape is None else np.full(shape, np.inf)
        self.lam = None

    def see(self, value, lam):
        if np.ndim(self.value) == 0:
            if value < self.value:
                self.value, self.lam = float(value), np.array(lam, copy=True)
            return
        if self.lam is None:
            self.lam = np.array(lam, copy=True)
        better = np.asarray(value) < self.value      # NaN (diverged) is never better
        self.value = np.where(better, value, self.value)
        self.lam[better] = np.asarray(lam)[better]

    def interrupted(self, result):
        value = np.where(np.isfinite(self.value), self.value, np.nan)   # inf: none seen
        return MinimizeInterrupted(result, self.lam, float(value) if value.ndim == 0 else value)
