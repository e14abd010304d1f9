"""Every method refuses each keyword it does not use, over the whole table,
naming the method and listing what it accepts."""
import re

import numpy as np
import pytest

import fastbilevel as fb
from fastbilevel import _params as P
from fastbilevel._params import ParameterError

_PROB = fb.datasets.ridge(n=40, m=10, d=4, seed=0).problem("l2")
_MT = fb.datasets.few_shot(n_tasks=4, shots=3, test_shots=3, d=4, seed=0).problem(reg=0.1)

# a plausible value for every keyword of hypergradient()
VALUES = dict(step_size=0.1, w0=np.zeros(4), K=2, snapshots=2, schedule="uniform",
              momentum=0.5, linear_solver="neumann", tol=1e-3, v0=np.zeros(4), eta=0.1,
              batch_size=4, replace=True, seed=1, check_step=False, Q=3, hessian_batch=2.0,
              hessian_schedule="uniform", hessian_sizes=[1, 1, 1], outer_batch=2,
              cross_batch=2, meta_batch=2, q=0.5, solver="sgd")
ALL = sorted(set(VALUES))


def _cases():
    for method in P.HYPERGRADIENT:
        for solver in (("sgd",) if method == "stocbio" else P.SOLVER):
            ok = P.accepted(method, solver)
            for key in ALL:
                if key not in ok and key != "solver":
                    yield method, solver, key


@pytest.mark.parametrize("method,solver,key", list(_cases()))
def test_hypergradient_refuses_unused_keywords(method, solver, key):
    kw = {key: VALUES[key]}
    if solver != "gd":
        kw["solver"] = solver
    with pytest.raises(ParameterError) as info:
        fb.hypergradient(_PROB, np.array(0.0), method, steps=3, **kw)
    msg = str(info.value)
    assert msg.startswith(f"{key}=") and f"method={method!r}" in msg
    listed = re.search(r"it accepts: (.*)$", msg).group(1).split(", ")
    assert set(listed) == set(P.accepted(method, solver))


@pytest.mark.parametrize("method,key", [(m, k) for m in P.META for k in ALL
                                         if k not in P.META[m]])
def test_multitask_methods_refuse_unused_keywords(method, key):
    with pytest.raises(ParameterError, match=f"^{key}=.*method={method!r} on a MultiTaskProblem"):
        fb.hypergradient(_MT, np.zeros(4), method, steps=2, **{key: VALUES[key]})


@pytest.mark.parametrize("outer,key", [(o, k) for o in P.OUTER
                                       for k in ("decay", "betas", "outer_momentum",
                                                 "tol_schedule", "tol0", "max_inner_steps")
                                       if k not in P.OUTER[o]])
def test_minimize_refuses_keywords_of_other_outer_updates(outer, key):
    value = {"decay": "sqrt", "betas": (0.8, 0.9), "outer_momentum": 0.5,
             "tol_schedule": "cubic", "tol0": 0.1, "max_inner_steps": 50}[key]
    with pytest.raises(ParameterError, match=f"^{key}=.*outer={outer!r}"):
        fb.minimize(_PROB, np.array(0.0), "implicit", outer=outer, iters=1, **{key: value})


def test_minimize_checks_the_method_keywords_before_running():
    with pytest.raises(ParameterError, match="^tol=0.001 does not apply to method='reverse'"):
        fb.minimize(_PROB, np.array(0.0), "reverse", iters=1, tol=1e-3)
    with pytest.raises(ParameterError, match="^K=3 does not apply to method='fsla'"):
        fb.minimize(_PROB, np.array(0.0), "fsla", iters=1, K=3)
    with pytest.raises(ParameterError, match="^betas=.*method='fsla'"):
        fb.minimize(_PROB, np.array(0.0), "fsla", iters=1, betas=(0.5, 0.5))


def test_solve_refuses_keywords_of_other_solvers():
    with pytest.raises(ParameterError, match="^momentum=0.5 does not apply to solve with "
                                             "solver='gd'"):
        fb.solve(_PROB, np.array(0.0), steps=2, momentum=0.5)
    with pytest.raises(ParameterError, match="^seed=3 does not apply"):
        fb.solve(_PROB, np.array(0.0), "agd", steps=2, seed=3)


def test_parameter_error_is_a_type_and_a_value_error():
    assert issubclass(ParameterError, TypeError) and issubclass(ParameterError, ValueError)


def test_accepted_keywords_are_used():
    """Each accepted keyword changes nothing it should not: passing it is not refused."""
    for method in ("reverse", "truncated", "checkpointed", "implicit"):
        kw = {"truncated": dict(K=2), "checkpointed": dict(snapshots=2, schedule="uniform"),
              "implicit": dict(K=5, tol=1e-6, linear_solver="cg")}.get(method, {})
        r = fb.hypergradient(_PROB, np.array(0.0), method, steps=3, **kw)
        assert np.isfinite(r.grad)
