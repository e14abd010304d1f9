"""Validation loss versus wall time: stocBiO, FSLA, AID-BiO and ITD-BiO on the
sparse per-feature-L2 logistic problem and on data hyper-cleaning, in one
run (issue 5 acceptance):  python bench/exp_stochastic.py [budget_s]

Every method gets the same wall-clock budget per problem (compilation done
beforehand) and starts from the same λ0 with w = 0. The validation loss is
f(w) on the whole validation set at the method's current inner iterate w;
evaluating it is not counted in the method's time (minimize excludes the
callback's time; FSLA excludes its evaluation passes). AID-BiO, ITD-BiO and
stocBiO share the outer optimizer (Adam, same learning rate); FSLA updates λ
with its own STORM momentum, step δ/√(k+1).
"""
import sys
import time

import numpy as np

import fastbilevel as fb

CHECKPOINTS = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)


def timed_run(prob, lam0, method, budget, **kw):
    """[(algorithm time s, full validation loss)] of one minimize run, cut at
    ``budget`` seconds of algorithm time."""
    points = []
    spent = {"cb": 0.0}
    t_start = time.perf_counter()

    def callback(k, lam, r):
        t_in = time.perf_counter()
        w = r if isinstance(r, np.ndarray) else r.w         # fsla passes w
        points.append(prob.outer_value(w))
        elapsed = t_in - t_start - spent["cb"]
        spent["cb"] += time.perf_counter() - t_in
        return elapsed >= budget

    res = fb.minimize(prob, lam0, method, iters=10**7, callback=callback, **kw)
    return list(zip(res.history.time_s, points)), res


def table(name, runs, budget, start):
    cols = list(runs)
    lines = [f"\n{name}: validation loss at wall time (start {start:.4f})",
             f"{'time s':>8}" + "".join(f"{c:>20}" for c in cols)]
    for frac in CHECKPOINTS:
        t = frac * budget
        row = f"{t:>8.1f}"
        for c in cols:
            seen = [v for (s, v) in runs[c][0] if s <= t]
            row += f"{seen[-1]:>20.4f}" if seen else f"{'-':>20}"
        lines.append(row)
    # outer iterations (FSLA: single-loop iterations; its history has a row
    # every eval_every of them)
    lines.append(f"{'iters':>8}" + "".join(
        f"{(runs[c][1].history.passes[-1] if c == 'FSLA' else len(runs[c][0])):>20}"
        for c in cols))
    lines.append(f"{'rows/n':>8}" + "".join(
        f"{runs[c][1].history.rows[-1] / prob_n[name]:>20.0f}" for c in cols))
    return "\n".join(lines)


prob_n = {}


def configs(prob, lam0, which):
    """Per-problem settings (inner steps T/D, batches, outer step). FSLA's
    first inner and v steps are 1.9/L (L the full-data smoothness bound at
    λ0, the step the other methods' GD uses is 1/L), η_0 = 1, and δ was
    picked from {1e2, 1e3, 1e4, 1e5} on a shorter run."""
    L = prob.lipschitz(lam0)
    if which == "text":
        T, lr, S, delta = 20, 0.3, 1000, 1e3
    else:
        T, lr, S, delta = 20, 0.3, 500, 1e4
    fsla = dict(lr=delta, c_tau=1.9 / (L * delta), c_beta=1.9 / (L * delta), c_eta=1.0 / delta,
                batch_size=S, eval_every=200)
    return {
        "ITD-BiO reverse": dict(method="reverse", outer="adam", lr=lr, steps=T),
        "AID-BiO cg": dict(method="implicit", outer="adam", lr=lr, steps=T, K=T),
        "stocBiO": dict(method="stocbio", outer="adam", lr=lr, steps=T, batch_size=S, Q=10,
                        seed=0),
        "FSLA": dict(method="fsla", seed=0, **fsla),
    }


def experiment(name, prob, lam0, budget, which):
    prob_n[name] = prob.n
    start = prob.outer_value(np.zeros(prob.w_shape))
    cfg = configs(prob, lam0, which)
    for label, kw in cfg.items():            # compile everything first
        kw = dict(kw)
        method = kw.pop("method")
        if method == "fsla":
            kw["eval_every"] = 2
        fb.minimize(prob, lam0, method, iters=2, **kw)
    runs = {}
    for label, kw in cfg.items():
        kw = dict(kw)
        method = kw.pop("method")
        runs[label] = timed_run(prob, lam0, method, budget, **kw)
    print(table(name, runs, budget, start), flush=True)
    return runs


def main(budget=30.0, seed=0):
    budget = float(budget)
    ds = fb.datasets.text(seed=seed)
    prob = ds.problem(hyper="feature_l2")
    print(f"text: n={prob.n} m={prob.m} d={prob.d} nnz={prob.nnz}, per-feature L2 logistic, "
          f"lambda0 = -6; {budget:.0f} s per method")
    experiment("sparse per-feature L2", prob, np.full(prob.d, -6.0), budget, "text")
    ds = fb.datasets.hypercleaning(n=5000, m=5000, d=784, c=10, corruption=0.5, seed=seed,
                                   noise=2.0)
    prob = ds.problem(reg=1e-3)
    print(f"\nhyper-cleaning: n={prob.n} m={prob.m} d={prob.d} c={prob.c}, lambda0 = 0; "
          f"{budget:.0f} s per method")
    experiment("hyper-cleaning", prob, np.zeros(prob.n), budget, "hc")


if __name__ == "__main__":
    main(*sys.argv[1:])
