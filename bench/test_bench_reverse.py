"""Fused reverse-mode hypergradient vs the NumPy/BLAS reference, same process."""
import numpy as np
import pytest

import fastbilevel as fb
from fastbilevel.reference import numpy_reverse

T = 20


@pytest.fixture(scope="module")
def hypercleaning():
    p = fb.datasets.hypercleaning(n=10000, m=2000).problem()
    return p, np.zeros(p.n)


@pytest.fixture(scope="module")
def text():
    p = fb.datasets.text(n=5000, m=2000, d=50000).problem()
    return p, np.full(p.d, -2.0)


@pytest.mark.parametrize("impl", ["fused", "numpy"])
@pytest.mark.parametrize("name", ["hypercleaning", "text"])
def test_reverse(benchmark, request, name, impl):
    prob, lam = request.getfixturevalue(name)
    gamma = 1.0 / prob.lipschitz(lam)
    if impl == "fused":
        fun = lambda: fb.hypergradient(prob, lam, steps=T, step_size=gamma)
    else:
        fun = lambda: numpy_reverse(prob, lam, T, gamma, dtype=prob.dtype)
    fun()  # compile / warm up outside the timed rounds
    benchmark.group = f"reverse-{name}"
    benchmark.pedantic(fun, rounds=5, iterations=1)


@pytest.mark.parametrize("name", ["hypercleaning", "text"])
def test_oracle_pass(benchmark, request, name):
    prob, lam = request.getfixturevalue(name)
    w = np.zeros(prob.w_shape)
    prob.inner_grad(w, lam)
    benchmark.group = f"pass-{name}"
    benchmark(prob.inner_grad, w, lam)
