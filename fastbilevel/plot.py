"""Figures of runs, sweeps and benchmarks (``pip install 'fastbilevel[plot]'``).

Each function returns a :class:`matplotlib.figure.Figure` built without
pyplot (no display, no global state: safe in scripts, servers and tests)
and, with ``path``, also writes it there (PNG, PDF, SVG: by the suffix).
:meth:`History.plot <fastbilevel.History.plot>` and
:meth:`SweepResult.plot <fastbilevel.SweepResult.plot>` call these.
"""
import numpy as np

__all__ = ["plot_history", "plot_sweep", "plot_bench"]

EXACT = ("reverse", "checkpointed", "recompute", "forward")


def _figure(ncols, nrows=1, size=(5.0, 3.6)):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'fastbilevel[plot]'") from None
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path, dpi=110):
    if path is not None:
        fig.savefig(path, dpi=dpi)
    return fig


def _log_if_positive(ax, values, axis="y"):
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size and v.min() > 0 and v.max() / v.min() > 50:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def plot_history(history, path=None, title=None):
    """Outer value and hypergradient norm of an outer loop (a
    :class:`~fastbilevel.History`), against wall time and against passes
    over the training data: a 2 × 2 figure."""
    if len(history) == 0:
        raise ValueError("the history is empty: nothing to plot (run at least one outer "
                         "iteration)")
    fig, ax = _figure(2, 2)
    xs = (("time_s", "wall time (s)"), ("passes", "passes over the training data"))
    ys = (("outer_value", "outer value f(w_T)"), ("grad_norm", "‖hypergradient‖"))
    for i, (yname, ylabel) in enumerate(ys):
        y = getattr(history, yname)
        for j, (xname, xlabel) in enumerate(xs):
            a = ax[i, j]
            a.plot(getattr(history, xname), y, marker="o", markersize=3, linewidth=1.2)
            a.set_xlabel(xlabel)
            a.set_ylabel(ylabel)
            a.grid(True, alpha=0.3)
            _log_if_positive(a, y)
    fig.suptitle(title or f"outer loop: {len(history)} iterations")
    return _save(fig, path)


def _sweep_axis(lams):
    """(x, direction, label): the settings' coordinate along the line they
    lie on (λ scalar, or λ = v·u for a fixed u, as in a grid of one
    strength), else their index with no direction."""
    L = np.asarray(lams, dtype=float).reshape(len(lams), -1)
    if L.shape[1] == 1:
        return L[:, 0], np.ones(1), "λ"
    span = L[-1] - L[0]
    nrm = np.linalg.norm(span)
    if nrm > 0:
        u = span / nrm
        t = (L - L[0]) @ u
        if np.allclose(L, L[0] + np.outer(t, u), rtol=1e-9, atol=1e-12 * (1 + np.abs(L).max())):
            ones = np.ones(L.shape[1]) / np.sqrt(L.shape[1])
            if np.allclose(np.abs(u), ones):         # λ = v·1: by v, slope dΦ/dv = ∇Φ·1
                return L[:, 0], np.ones(L.shape[1]), "λ (every entry)"
            return t, u, "position along the settings' line"
    return np.arange(L.shape[0], dtype=float), None, "setting"


def plot_sweep(result, path=None, title=None):
    """Outer value against λ for a :class:`~fastbilevel.SweepResult`, with
    each setting's hypergradient drawn as the slope of a short tangent
    (along the line of the settings; λ scalar or λ = v·1). Diverged
    settings are marked on the x-axis; the best one is circled."""
    fig, ax = _figure(1)
    a = ax[0, 0]
    x, u, xlabel = _sweep_axis(result.lams)
    val = np.asarray(result.value, dtype=float)
    ok = np.isfinite(val)
    order = np.argsort(x)
    a.plot(x[order][ok[order]], val[order][ok[order]], marker="o", markersize=4,
           linewidth=1.2, label="outer value")
    if result.grad is not None and u is not None and ok.any():
        G = np.asarray(result.grad, dtype=float).reshape(len(val), -1)
        slope = G @ u
        half = 0.35 * (np.ptp(x) / max(len(x) - 1, 1) if len(x) > 1 else 1.0)
        for b in np.flatnonzero(ok):
            a.plot([x[b] - half, x[b] + half], [val[b] - half * slope[b], val[b] + half * slope[b]],
                   color="tab:red", linewidth=1.0, label="hypergradient (slope)"
                   if b == np.flatnonzero(ok)[0] else None)
    if (~ok).any():
        lo = np.nanmin(val) if ok.any() else 0.0
        a.plot(x[~ok], np.full((~ok).sum(), lo), "x", color="black", label="diverged")
    best = result.best
    if best is not None:
        a.plot([x[best]], [val[best]], "o", markersize=11, markerfacecolor="none",
               markeredgecolor="tab:green", label=f"best ({x[best]:.4g})")
    a.set_xlabel(xlabel)
    a.set_ylabel("outer value f(w_T)")
    a.grid(True, alpha=0.3)
    a.legend(fontsize="small")
    st = result.stats
    a.set_title(title or f"sweep of {len(val)} settings: {st.get('method')}, T={st.get('steps')}")
    return _save(fig, path)


def plot_bench(rows, path=None, title=None):
    """``fastbilevel bench`` rows: median time per method beside its
    roofline bound (the time at peak bandwidth or peak FLOP rate), and
    memory held against time for the exact methods."""
    if not rows:
        raise ValueError("no benchmark rows to plot")
    fig, ax = _figure(2, size=(5.6, 0.45 * len(rows) + 2.2))
    a = ax[0, 0]
    names = [f"{r['method']} ({r['dtype']})" for r in rows]
    y = np.arange(len(rows))
    med = np.array([r["median_s"] for r in rows])
    bound = np.array([np.nan if r.get("roofline_s") is None else r["roofline_s"]
                      for r in rows])
    a.barh(y, med, color="tab:blue", label="median time")
    a.scatter(bound, y, marker="|", s=250, color="tab:red", zorder=3,
              label="roofline bound")
    a.set_yticks(y, names)
    a.invert_yaxis()
    a.set_xlabel("time per call (s)")
    a.set_ylabel("method")
    _log_if_positive(a, np.concatenate([med, bound]), axis="x")
    a.grid(True, axis="x", alpha=0.3)
    a.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=2)
    b = ax[0, 1]
    exact = [r for r in rows if r["method"].split("[")[0] in EXACT]
    for r in exact or rows:
        mb = r.get("rss_MB", None)
        mem = (mb - r["rss_before_MB"]) if mb is not None else r["trajectory_bytes"] / 1e6
        b.scatter([r["median_s"]], [max(mem, 1e-3)], s=40)
        b.annotate(r["method"], (r["median_s"], max(mem, 1e-3)), fontsize="small",
                   xytext=(4, 3), textcoords="offset points")
    b.set_xlabel("time per call (s)")
    b.set_ylabel("memory held (MB)" + (" (peak RSS over the data)" if any(
        "rss_MB" in r for r in rows) else " (stored trajectory)"))
    b.set_yscale("log")
    b.grid(True, alpha=0.3)
    b.set_title("exact methods: memory against time" if exact else "memory against time")
    fig.suptitle(title or "fastbilevel bench")
    return _save(fig, path)
