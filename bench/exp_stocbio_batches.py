"""stocBiO: sampled rows needed to reach a given error with decaying
(thesis Prop. 3) versus uniform Hessian batch sizes (issue 5 acceptance):
python bench/exp_stocbio_batches.py

A dense logistic problem with per-feature L2 (μ = 0.1, η = 1/L per sample),
ŵ solved to machine precision and passed as the warm start with D = 0 steps,
and v₀ on the whole validation set, so the error is the Neumann estimator's
alone: bias (1 − ημ)^{Q+1} plus the Hessian batches' variance. For each
schedule and a geometric grid of B, the mean-square error to the exact
implicit hypergradient is estimated over ``draws`` seeds; the table gives,
per target relative MSE, the smallest B that reaches it and the Hessian rows
one estimate then reads, Σ_j |B_j|.
"""
import sys

import numpy as np

import fastbilevel as fb
from fastbilevel.stochastic import hessian_batch_sizes


def main(draws=200, Q=400, seed=0):
    draws, Q = int(draws), int(Q)
    rng = np.random.default_rng(seed)
    n, m, d = 20000, 5000, 20
    w_true = rng.standard_normal(d)
    X = rng.standard_normal((n, d))
    y = np.sign(X @ w_true + rng.standard_normal(n))
    Xv = rng.standard_normal((m, d))
    yv = np.sign(Xv @ w_true + rng.standard_normal(m))
    prob = fb.BilevelProblem("logistic", "feature_l2", X, y, Xv, yv)
    lam = np.full(d, np.log(0.1))
    w = fb.solve(prob, lam, steps=5000).w
    exact = fb.hypergradient(prob, lam, "implicit", steps=0, w0=w, K=200, tol=1e-14).grad
    eta = 1.0 / prob.lipschitz(lam, per_sample=True)
    mu = prob.strong_convexity(lam)
    nrm2 = float(np.sum(exact ** 2))
    print(f"n={n} d={d}, eta={eta:.4g}, mu={mu:.3g}, eta*mu={eta * mu:.4f}, Q={Q}, "
          f"bias factor (1-eta*mu)^(Q+1) = {(1 - eta * mu) ** (Q + 1):.3g}, {draws} draws")
    grid = np.geomspace(0.0025, 2.0, 19)
    res = {}
    for sched in ("decay", "uniform"):
        rows, rel = [], []
        for B in grid:
            sizes = hessian_batch_sizes(B, Q, eta, mu, sched, n)
            g = np.array([fb.hypergradient(prob, lam, "stocbio", steps=0, w0=w, Q=Q, eta=eta,
                                           hessian_sizes=sizes, outer_batch=m, cross_batch=1,
                                           batch_size=1, seed=k).grad for k in range(draws)])
            rel.append(np.mean(np.sum((g - exact) ** 2, axis=1)) / nrm2)
            rows.append(int(sizes.sum()))
        res[sched] = (np.array(rows), np.array(rel))
        print(f"{sched:>8}: B " + " ".join(f"{b:7.3g}" for b in grid))
        print(f"{'':>8}  rows " + " ".join(f"{r:7d}" for r in rows))
        print(f"{'':>8}  rel MSE " + " ".join(f"{e:7.2e}" for e in rel))
    print(f"\n{'target rel MSE':>15}{'decay rows':>12}{'uniform rows':>14}{'uniform/decay':>15}")
    for target in (3e-3, 1e-3, 3e-4, 1e-4, 3e-5):
        need = {}
        for sched, (rows, rel) in res.items():
            ok = np.nonzero(rel <= target)[0]
            need[sched] = int(rows[ok[0]]) if len(ok) else None
        dr, ur = need["decay"], need["uniform"]
        ratio = f"{ur / dr:.2f}" if dr and ur else "-"
        print(f"{target:>15g}{str(dr):>12}{str(ur):>14}{ratio:>15}")


if __name__ == "__main__":
    main(*sys.argv[1:])
