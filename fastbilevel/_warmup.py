"""``fastbilevel compile``: fill the kernel cache ahead of time.

Numba compiles one specialization of a kernel per combination of argument
types. In this package the model, the hyperparameter map, the solver and
the linear solver are integer codes read at run time, so the types come
from the data's format (dense or CSR) and dtype (float32 or float64), and
from which family of kernels runs: the fused oracles, the schedule
interpreter (full-batch and minibatch), forward mode, the implicit solves,
stocBiO, FSLA, the batched sweep kernels and the multi-task meta-gradients.
:func:`plan` runs each family once on a tiny problem per format and dtype,
which compiles (or loads) every specialization the API uses; a cluster
node or a container image can then start every later process from the
cache (see ``fastbilevel info`` for its location).
"""
import time

import numpy as np
import scipy.sparse as sp

FORMATS = ("dense", "csr")
DTYPES = ("float64", "float32")


def _problem(fmt, dtype, model="logistic", hyper="l2"):
    from .problem import BilevelProblem
    rng = np.random.default_rng(0)
    X = rng.standard_normal((24, 5)) * (rng.random((24, 5)) < 0.7)
    y = np.where(X[:, 0] + 0.1 * rng.standard_normal(24) > 0, 1.0, -1.0)
    if fmt == "csr":
        X = sp.csr_matrix(X)
    return BilevelProblem(model, hyper, X[:16], y[:16], X[16:], y[16:], dtype=dtype,
                          reg=None if hyper == "l2" else 1e-2)


def _multitask(dtype):
    """MAML and ANIL meta-gradients and the task oracles on tiny tasks."""
    from .hypergrad import hypergradient
    from .meta import MultiTaskProblem
    rng = np.random.default_rng(0)
    X, Xt = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 2, 5))
    y, yt = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    maml = MultiTaskProblem("linear", X.astype(dtype), y, Xt.astype(dtype), yt, reg=1e-2)
    hypergradient(maml, np.zeros(5), "reverse", steps=2)
    anil = MultiTaskProblem("linear", X.astype(dtype), y, Xt.astype(dtype), yt, reg=1e-2,
                            hyper="feature_map", k=2)
    theta = np.full(anil.lam_shape, 0.1)
    hypergradient(anil, theta, "reverse", steps=2, step_size=0.1)
    anil.hvp(0, np.zeros(2), theta, np.ones(2))


def plan(formats=FORMATS, dtypes=DTYPES):
    """[(label, function)]: one call per kernel family, format and dtype."""
    from .hypergrad import hypergradient
    from .minimize import minimize
    from .sweep import sweep
    out = []
    for fmt in formats:
        for dt in dtypes:
            def p(fmt=fmt, dt=dt, **kw):
                return _problem(fmt, dt, **kw)
            lam = np.array(0.0)
            tag = f"{fmt} {dt}"
            out += [
                (f"{tag}: oracles", lambda p=p, lam=lam: (
                    p().inner_grad(np.zeros(5), lam), p().hvp(np.zeros(5), lam, np.ones(5)),
                    p().cross(np.zeros(5), lam, np.ones(5)))),
                (f"{tag}: unrolled (reverse, checkpointed, recompute, truncated)",
                 lambda p=p, lam=lam: hypergradient(p(), lam, "reverse", steps=3)),
                (f"{tag}: minibatch unrolled (solver='sgd')",
                 lambda p=p, lam=lam: hypergradient(p(), lam, "reverse", "sgd",
                                                              steps=3, batch_size=4)),
                (f"{tag}: forward mode",
                 lambda p=p, lam=lam: hypergradient(p(), lam, "forward", steps=3)),
                (f"{tag}: implicit solves",
                 lambda p=p, lam=lam: hypergradient(p(), lam, "implicit", steps=3,
                                                              K=3)),
                (f"{tag}: stocBiO",
                 lambda p=p, lam=lam: hypergradient(p(), lam, "stocbio", steps=3,
                                                              batch_size=4, Q=2)),
                (f"{tag}: FSLA",
                 lambda p=p, lam=lam: minimize(p(), lam, "fsla", iters=2,
                                                        batch_size=4)),
                (f"{tag}: stochastic solvers (SOBA ... BOME)",
                 lambda p=p, lam=lam: minimize(p(), lam, "soba", iters=2,
                                                        batch_size=4)),
                (f"{tag}: batched sweeps (unrolled)",
                 lambda p=p: sweep(p(), np.array([0.0, -1.0]), steps=3,
                                         strategy="rows")),
                (f"{tag}: batched sweeps (implicit)",
                 lambda p=p: sweep(p(), np.array([0.0, -1.0]), "implicit", steps=3,
                                         K=3, strategy="rows")),
            ]
            if fmt == "dense":                 # multi-task problems hold dense tasks
                out.append((f"{tag}: multi-task meta-gradients (MAML, ANIL)",
                            lambda dt=dt: _multitask(dt)))
    return out


def warm(formats=FORMATS, dtypes=DTYPES, echo=print):
    """Run :func:`plan`, echoing one line per kernel family (with the time:
    a compile takes seconds, a cache load milliseconds). Returns the list of
    (label, seconds)."""
    done = []
    for label, fn in plan(formats, dtypes):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        done.append((label, dt))
        echo(f"{label:<70} {dt:8.2f} s")
    return done
