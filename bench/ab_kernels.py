"""Two versions of fastbilevel in one process, timed call by call
alternately, so that a busy machine slows both alike.

    git worktree add /tmp/fb_old REV
    mkdir /tmp/oldpkg && cp -r /tmp/fb_old/fastbilevel /tmp/oldpkg/fastbilevel_old
    python bench/ab_kernels.py {text,hc} [float64|float32] [--old-path /tmp/oldpkg]

The older version is imported as ``fastbilevel_old`` (the package imports
itself relatively, so a renamed copy runs as it is). For the text or the
hyper-cleaning problem it prints the medians of the gradient pass, the HVP
pass (with the cross term where the map has one) and a reverse
hypergradient (T = 100 text, 30 hyper-cleaning), old against new, and
whether the two hypergradients are identical. Check the tool's own bias
with an A/A run (a copy of the same sources as the old version): on the
2-core Ice Lake machine the hyper-cleaning passes read 0.96-0.97x there,
so differences of a few percent are not resolved.
"""
import sys
import time

import numpy as np

if "--old-path" in sys.argv:
    k = sys.argv.index("--old-path")
    sys.path.insert(0, sys.argv[k + 1])
    del sys.argv[k:k + 2]
else:
    sys.path.insert(0, "/tmp/oldpkg")
import fastbilevel as new  # noqa: E402
import fastbilevel_old as old  # noqa: E402
from fastbilevel import datasets  # noqa: E402


def _calls(mod, prob, problem_name, W, V):
    """The three timed calls of one version on its own problem object."""
    c = mod.kernels.oracle_pass
    nch, D, mdl = prob.backend.nchunks(), prob.train, prob._model
    G, HV, e = np.empty_like(W), np.empty_like(W), np.empty(0)
    sw = prob.hyper == "sample_weights"
    cross = np.empty(prob.n) if sw else e
    a = np.ones(prob.n) if sw else e
    lam = np.zeros(prob.lam_shape)
    T = 100 if problem_name == "text" else 30
    gamma = 1.0 / prob.lipschitz(lam)
    return {
        "grad": lambda: c(D, a, mdl, W, V, True, False, G, HV, e, nch),
        "hvp": lambda: c(D, a, mdl, W, V, False, True, G, HV, cross, nch),
        "reverse": lambda: mod.hypergradient(prob, lam, "reverse", steps=T, step_size=gamma),
    }


def main():
    name = sys.argv[1]
    dt = np.dtype(sys.argv[2]) if len(sys.argv) > 2 else np.dtype(np.float64)
    ds = datasets.text() if name == "text" else datasets.hypercleaning(dtype=dt)
    pn = ds.problem()
    po = old.BilevelProblem(pn.model, pn.hyper, ds.X, ds.y, ds.X_val, ds.y_val,
                            reg=None if pn.hyper in ("l2", "feature_l2") else ds.reg,
                            n_classes=pn.c if pn.c > 1 else None)
    W = np.random.default_rng(0).standard_normal((pn.c, pn.d)) * 0.01
    res = {"old": _calls(old, po, name, W, W.copy()), "new": _calls(new, pn, name, W, W.copy())}
    for calls in res.values():
        for f in calls.values():
            f()                                 # compile, or load from the cache
    for what, reps in (("grad", 40), ("hvp", 40), ("reverse", 8)):
        ts = {"old": [], "new": []}
        for k in range(reps):
            # ABBA order: neither version always runs second
            for tag in (("old", "new") if k % 2 == 0 else ("new", "old")):
                t = time.perf_counter()
                res[tag][what]()
                ts[tag].append(time.perf_counter() - t)
        mo, mn = np.median(ts["old"]), np.median(ts["new"])
        unit, s = ("s", 1) if what == "reverse" else ("ms", 1e3)
        print(f"{name} {pn.dtype} {what:8s} old {mo * s:.3f} {unit}  new {mn * s:.3f} {unit}  "
              f"speed-up {mo / mn:.2f}x  (medians of {reps} calls each, ABBA order)", flush=True)
    go, gn = res["old"]["reverse"]().grad, res["new"]["reverse"]().grad
    print("hypergradients identical:", np.array_equal(go, gn),
          "max rel diff %.1e" % (np.abs(go - gn).max() / np.abs(go).max()))


if __name__ == "__main__":
    main()
