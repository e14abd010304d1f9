"""Bytes held by each exact method, for every solver, against the formula:
stored points are one vector each, snapshots and forward tangents are one
solver state each (gd and sgd: 1 vector; heavy_ball and agd: 2)."""
import math

import numpy as np
import pytest

import fastbilevel as fb
from fastbilevel import schedules

NSTATE = {"gd": 1, "sgd": 1, "heavy_ball": 2, "agd": 2}
T = 12


def expected_bytes(method, solver, vec, dim_lam, s=3, K=5):
    state = NSTATE[solver] * vec
    return {"reverse": T * vec,
            "truncated": K * vec,
            "recompute": state,
            "revolve": s * state,
            # snapshots at the starts of all segments but the last, which the
            # first sweep stores in the L-point segment buffer
            "uniform": (math.ceil(T / math.ceil(T / s)) - 1) * state + math.ceil(T / s) * vec,
            "forward": dim_lam * state,
            "solve": 0,
            "implicit": 0}[method]


@pytest.mark.parametrize("solver", list(NSTATE))
@pytest.mark.parametrize("method", ["reverse", "truncated", "recompute", "revolve", "uniform",
                                    "forward", "solve", "implicit"])
def test_trajectory_bytes(method, solver):
    prob = fb.datasets.ridge(n=40, m=10, d=6, seed=0).problem("l2")
    vec = prob.dim_w * 8
    kw = dict(solver=solver, steps=T)
    if solver == "sgd":
        kw.update(batch_size=8, seed=1)
    if solver in ("heavy_ball", "agd"):
        kw["momentum"] = 0.3
    if method == "solve":
        r = fb.solve(prob, np.array(0.0), **kw)
    else:
        name = method if method not in ("revolve", "uniform") else "checkpointed"
        extra = {"truncated": dict(K=5), "revolve": dict(snapshots=3, schedule="revolve"),
                 "uniform": dict(snapshots=3, schedule="uniform")}.get(method, {})
        r = fb.hypergradient(prob, np.array(0.0), name, **kw, **extra)
    assert r.stats["trajectory_bytes"] == expected_bytes(method, solver, vec, prob.dim_lam)


def test_plan_counts_sgd_states_as_one_vector():
    prob = fb.datasets.ridge(n=40, m=10, d=6, seed=0).problem("feature_l2")
    vec = prob.dim_w * 8
    # room for 4 states of gd/sgd but only 2 of heavy_ball: more snapshots, fewer passes
    p_sgd = fb.plan(prob, 40, 4 * vec, solver="sgd")
    p_hb = fb.plan(prob, 40, 4 * vec, solver="heavy_ball")
    assert p_sgd["method"] == "checkpointed" and p_sgd["snapshots"] == 4
    assert p_sgd["bytes"] == 4 * vec
    assert p_hb["method"] == "checkpointed" and p_hb["snapshots"] == 2
    assert p_sgd["passes"] == schedules.revolve_cost(40, 4) + 1 + 40
