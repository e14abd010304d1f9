"""stocBiO hypergradient and FSLA iteration on the sparse per-feature-L2
logistic problem (n = 11314, d = 101631), against the same algorithms in
NumPy/SciPy on the same batches (``fastbilevel.reference``), same process."""
import numpy as np
import pytest

import fastbilevel as fb
from fastbilevel.reference import numpy_fsla, numpy_stocbio
from fastbilevel.stochastic import hessian_batch_sizes

D, Q, S = 20, 10, 1000


@pytest.fixture(scope="module")
def text():
    p = fb.datasets.text().problem(hyper="feature_l2")
    lam = np.full(p.d, -6.0)
    L = p.lipschitz(lam, per_sample=True)
    return p, lam, 1.0 / L


@pytest.mark.parametrize("impl", ["fused", "numpy"])
def test_stocbio_hypergradient(benchmark, text, impl):
    prob, lam, step = text
    sizes = hessian_batch_sizes(S / Q, Q, step, prob.strong_convexity(lam), n=prob.n)
    if impl == "fused":
        fun = lambda: fb.hypergradient(prob, lam, "stocbio", steps=D, step_size=step, Q=Q,
                                       eta=step, batch_size=S, hessian_sizes=sizes, seed=1)
    else:
        fun = lambda: numpy_stocbio(prob, lam, D, step, Q, step, S, sizes, S, S, seed=1)
    fun()
    benchmark.group = "stocbio-text"
    benchmark.pedantic(fun, rounds=10, iterations=1)


@pytest.mark.parametrize("impl", ["fused", "numpy"])
def test_fsla_iterations(benchmark, text, impl):
    """100 FSLA iterations (divide by 100 for one)."""
    prob, lam, step = text
    kw = dict(delta=100.0, c_tau=step / 100.0, c_beta=step / 100.0, c_eta=0.01)
    if impl == "fused":
        fun = lambda: fb.fsla(prob, lam, 100, batch_size=S, seed=1, eval_every=100, **kw)
    else:
        fun = lambda: numpy_fsla(prob, lam, 100, kw["delta"], kw["c_tau"], kw["c_beta"],
                                 kw["c_eta"], S, S, S, seed=1)
    fun()
    benchmark.group = "fsla-text-100-iterations"
    benchmark.pedantic(fun, rounds=5, iterations=1)
