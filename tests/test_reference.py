"""The NumPy baseline timed by ``fastbilevel bench`` computes the same
hypergradient as the kernels (otherwise its timings would mean nothing)."""
import pytest

import fastbilevel as fb
import naive
from conftest import HYPERS, MODELS, make_problem, random_lam
from fastbilevel.reference import numpy_reverse


@pytest.mark.parametrize("fmt", ["dense64", "csr32"])
@pytest.mark.parametrize("hyper", HYPERS)
@pytest.mark.parametrize("model", MODELS)
def test_numpy_reference_matches_kernels(model, hyper, fmt):
    prob, _ = make_problem(model, hyper, fmt)
    lam = random_lam(prob)
    r = fb.hypergradient(prob, lam, steps=8, step_size=0.3)
    g, v, w = numpy_reverse(prob, lam, 8, 0.3)
    assert naive.rel_err(g, r.grad) < 1e-10
    assert naive.rel_err(v, r.value) < 1e-12
    assert naive.rel_err(w, r.w) < 1e-12
