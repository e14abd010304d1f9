"""The model and map registries: every entry is usable, and each map's
translation of λ is the formula of docs/math.md §3."""
import numpy as np
import pytest

import fastbilevel as fb
from fastbilevel import _codes
from fastbilevel._registry import MAPS, MODELS

from conftest import make_problem, random_lam


def test_codes_are_distinct_per_kind():
    assert sorted(m.code for m in MODELS.values()) == [_codes.LINEAR, _codes.LOGISTIC,
                                                       _codes.MULTINOMIAL]
    assert len({h.code for h in MAPS.values()}) == len(MAPS) == 5


@pytest.mark.parametrize("hyper", list(MAPS))
def test_map_translation_follows_the_formulas(hyper):
    prob, _ = make_problem("multinomial", hyper, "dense64")
    lam = random_lam(prob)
    hp = prob._lam_in(lam)
    d, c = prob.d, prob.c
    if hyper == "sample_weights":
        assert np.allclose(hp.a, 1 / (1 + np.exp(-lam)), rtol=1e-15)
        assert np.allclose(hp.da, np.exp(-lam) / (1 + np.exp(-lam)) ** 2, rtol=1e-13)
    else:
        assert hp.a.shape == (0,) and hp.da.shape == (0,)
    if hyper in ("feature_l2", "l2"):
        assert np.allclose(hp.rdiag, np.exp(lam) * np.ones(d), rtol=1e-15)
    else:
        assert np.all(hp.rdiag == prob.reg)
    if hyper == "biased_l2":
        assert hp.prior.shape == (c, d) and np.array_equal(hp.prior, lam.T)
    if hyper == "init":
        assert np.array_equal(hp.W0, lam.T)
    # the kernel order round-trips
    m = MAPS[hyper]
    assert np.array_equal(m.from_kernel_order(prob, m.to_kernel_order(prob, lam)),
                          np.asarray(lam, float))


@pytest.mark.parametrize("model", list(MODELS))
def test_smoothness_uses_the_models_curvature(model):
    prob, _ = make_problem(model, "l2", "dense64")
    lam = np.array(-1.0)
    L = prob.lipschitz(lam)
    assert L == pytest.approx(MODELS[model].curvature * prob.data_sq_norm() + np.exp(-1.0),
                              rel=1e-15)
