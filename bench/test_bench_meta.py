"""Multi-task meta-gradients (MAML ``init``, ANIL ``feature_map``): the
kernel's reverse mode against the NumPy reference with stored iterates
(``reference.numpy_meta_reverse``), same process, all tasks."""
import numpy as np
import pytest

import fastbilevel as fb
from fastbilevel.reference import numpy_meta_reverse

R, ALPHA = 10, 0.05


@pytest.fixture(scope="module")
def tasks():
    return fb.datasets.few_shot(n_tasks=200, shots=25, test_shots=25, d=64, model="multinomial",
                                n_classes=5, rank=8, seed=0)


@pytest.mark.parametrize("impl", ["fused", "numpy"])
@pytest.mark.parametrize("hyper", ["init", "feature_map"])
def test_meta_reverse(benchmark, tasks, hyper, impl):
    prob = tasks.problem(reg=0.1, hyper=hyper, k=8 if hyper == "feature_map" else None)
    theta = np.random.default_rng(0).standard_normal(prob.lam_shape) * 0.1
    if impl == "fused":
        fun = lambda: fb.hypergradient(prob, theta, "reverse", steps=R, step_size=ALPHA)
    else:
        fun = lambda: numpy_meta_reverse(prob, theta, R, ALPHA)
    fun()  # compile / warm up outside the timed rounds
    benchmark.group = f"meta-reverse-{hyper}"
    benchmark.pedantic(fun, rounds=5, iterations=1)
