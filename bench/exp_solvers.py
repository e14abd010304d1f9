"""Validation loss against wall time and against passes over the data for
the stochastic bilevel solvers (SOBA, SABA, AmIGO, MRBO, VRBO, TTSA, BSA,
F2SA, BOME, and FSLA) on data hyper-cleaning (dense) and the text problem
(sparse, one ridge strength per feature), in the manner of the
benchopt ``benchmark_bilevel`` figures.

Each method runs with its defaults (batch 64, seed 0, the package's default
steps) for a wall-time budget; a history row (the validation loss f(w) at
the current inner iterate) is taken every ``--eval-every`` iterations, and
at the end the inner problem is solved at the final λ (500 full-batch
steps) to score λ itself. Prints a Markdown table; ``--plot FILE.png``
draws f(w) against time and against passes (needs matplotlib).

    python bench/exp_solvers.py [--budget 10] [--small] [--plot solvers.png]
"""
import argparse
import time

import numpy as np

import fastbilevel as fb
from fastbilevel.solvers import METHODS

ALL = METHODS + ("fsla",)


def problems(small):
    if small:
        hc = fb.datasets.hypercleaning(n=2000, m=1000, d=100, c=10, seed=0)
        tx = fb.datasets.text(n=2000, m=1000, d=5000, row_nnz=40, seed=0)
    else:
        hc = fb.datasets.hypercleaning(seed=0)
        tx = fb.datasets.text(seed=0)
    p_hc = hc.problem(reg=1e-2)
    p_tx = tx.problem(hyper="feature_l2")
    return [("hyper-cleaning", p_hc, np.zeros(p_hc.lam_shape)),
            ("text", p_tx, np.full(p_tx.lam_shape, np.log(1e-3)))]


def run(prob, lam0, method, budget, eval_every):
    t0 = time.perf_counter()

    def stop(k, lam, w):
        return time.perf_counter() - t0 > budget
    kw = dict(iters=10**7, batch_size=64, seed=0, eval_every=eval_every, callback=stop)
    r = fb.minimize(prob, lam0, method=method, **kw)
    wall = time.perf_counter() - t0
    refit = prob.outer_value(fb.solve(prob, r.lam, steps=500).w)
    return r, wall, refit


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=10.0, help="seconds per method")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--small", action="store_true", help="small problems (a quick check)")
    ap.add_argument("--methods", default=",".join(ALL))
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    methods = args.methods.split(",")
    curves = {}
    print(f"budget {args.budget:g} s per method, batch 64, seed 0, defaults\n")
    print("| problem | method | iterations | passes | f(w) at the end | f(w*(λ)) refit |"
          " f(w*(λ₀)) |")
    print("|---|---|---|---|---|---|---|")
    for name, prob, lam0 in problems(args.small):
        f0 = prob.outer_value(fb.solve(prob, lam0, steps=500).w)
        for m in methods:
            fb.minimize(prob, lam0, method=m, iters=2, batch_size=8, seed=0)  # compile
            r, wall, refit = run(prob, lam0, m, args.budget, args.eval_every)
            h = r.history
            it = args.eval_every * len(h)
            passes = h.rows[-1] / prob.n
            print(f"| {name} | {m} | {it} | {passes:.1f} | {h.outer_value[-1]:.4f} | "
                  f"{refit:.4f} | {f0:.4f} |", flush=True)
            curves[(name, m)] = (np.asarray(h.time_s), np.asarray(h.rows) / prob.n,
                                 np.asarray(h.outer_value))
    if args.plot:
        from matplotlib.figure import Figure
        fig = Figure(figsize=(11, 7), layout="constrained")
        axes = fig.subplots(2, 2)
        for row, name in enumerate(dict.fromkeys(name for name, _ in curves)):
            for m in methods:
                if (name, m) not in curves:
                    continue
                t, p, f = curves[(name, m)]
                axes[row, 0].plot(t, f, label=m)
                axes[row, 1].plot(p, f, label=m)
            axes[row, 0].set(title=f"{name}: validation loss", xlabel="wall time (s)")
            axes[row, 1].set(title=f"{name}: validation loss", xlabel="passes over X")
        axes[0, 1].legend(fontsize=7)
        fig.savefig(args.plot, dpi=110)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
