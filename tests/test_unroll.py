"""Every exact way through the inner loop agrees with ``reverse`` to rounding,
for every model × map × format and every solver; reverse matches finite
differences for the momentum solvers; truncation obeys Shaban Prop. 3.1;
schedules cost what the theory says."""
import numpy as np
import pytest

import fastbilevel as fb
import naive
from conftest import make_problem, random_lam, tol
from fastbilevel import schedules

T = 12
SOLVERS = ["gd", "heavy_ball", "agd"]
EXACT = ([("checkpointed", dict(snapshots=s)) for s in (1, 2, 3, T, T + 5)]
         + [("checkpointed", dict(snapshots=s, schedule="uniform")) for s in (1, 3, T + 5)]
         + [("recompute", {}), ("forward", {}), ("truncated", dict(K=T))])


def _setup(combo, solver):
    prob, s = make_problem(*combo)
    lam = random_lam(prob)
    gamma = 0.5 / prob.lipschitz(lam)
    beta = None if solver == "gd" else 0.5
    return prob, s, lam, gamma, beta


@pytest.mark.parametrize("solver", SOLVERS)
def test_exact_methods_agree_with_reverse(combo, solver):
    prob, _, lam, gamma, beta = _setup(combo, solver)
    ref = fb.hypergradient(prob, lam, "reverse", solver, steps=T, step_size=gamma, momentum=beta)
    for method, kw in EXACT:
        r = fb.hypergradient(prob, lam, method, solver, steps=T, step_size=gamma,
                             momentum=beta, **kw)
        # forward mode's tangent passes multiply in float64 on every format;
        # reverse's passes over dense float32 rows multiply in float32
        exact = (lambda t: tol(prob, t)) if method == "forward" else (lambda t: t)
        assert naive.rel_err(r.grad, ref.grad) < exact(1e-10), (method, kw)
        assert naive.rel_err(r.w, ref.w) < exact(1e-13), (method, kw)
        assert r.value == pytest.approx(ref.value, rel=exact(1e-13))


@pytest.mark.parametrize("solver", ["heavy_ball", "agd"])
def test_momentum_reverse_matches_fd(combo, solver):
    prob, s, lam, gamma, beta = _setup(combo, solver)
    r = fb.hypergradient(prob, lam, "reverse", solver, steps=T, step_size=gamma, momentum=beta)
    fd = naive.central_diff(lambda l: naive.phi(s, l, T, gamma, solver, beta), lam, eps=1e-5)
    assert naive.rel_err(r.grad, fd) < tol(prob, 1e-6)
    assert naive.rel_err(r.w, naive.gd(s, lam, T, gamma, solver=solver, beta=beta)) < \
        tol(prob, 1e-12)


def test_truncated_within_shaban_bound_and_decreasing():
    """‖h_{T−K} − d_λf‖ ≤ (1−γα)^K/(γα)·‖∇_w f(w_T)‖·M_B (Prop. 3.1) for
    K = 1..T on the toy problem, and the error decreases in K."""
    ds = fb.datasets.shaban_toy()
    prob, info = ds.problem(), ds.info
    lam, gamma, TT, alpha, MB = info["lam"], info["step_size"], info["steps"], info["alpha"], info["M_B"]
    kw = dict(steps=TT, step_size=gamma, w0=info["w0"])
    exact = fb.hypergradient(prob, lam, "reverse", **kw)
    gnorm = np.linalg.norm(prob.outer_grad(exact.w))
    errs = []
    for K in range(1, TT + 1):
        hK = fb.hypergradient(prob, lam, "truncated", K=K, **kw).grad
        err = np.linalg.norm(hK - exact.grad)
        bound = (1 - gamma * alpha) ** K / (gamma * alpha) * gnorm * MB
        assert err <= bound * (1 + 1e-12), (K, err, bound)
        errs.append(err)
    assert all(b < a for a, b in zip(errs[:-1], errs[1:-1]))
    assert errs[-1] <= 1e-14 * np.linalg.norm(exact.grad)


@pytest.mark.parametrize("solver", SOLVERS)
def test_truncated_K_equals_T_is_reverse_including_init(solver):
    prob, _ = make_problem("logistic", "init", "dense64")
    lam = random_lam(prob)
    beta = None if solver == "gd" else 0.3
    kw = dict(steps=9, step_size=0.3, momentum=beta)
    ref = fb.hypergradient(prob, lam, "reverse", solver, **kw).grad
    assert naive.rel_err(fb.hypergradient(prob, lam, "truncated", solver, K=9, **kw).grad, ref) < 1e-14
    # K < T drops B_0 = I (and the early steps): a different vector
    assert naive.rel_err(fb.hypergradient(prob, lam, "truncated", solver, K=4, **kw).grad, ref) > 1e-6


def test_revolve_is_the_optimal_binomial_schedule():
    cost, _ = schedules._binomial_costs(200, 8)
    assert all(cost[l, f] == schedules.revolve_cost(l, f + 1)
               for f in range(9) for l in range(1, 201))
    for TT, s in ((1, 1), (2, 1), (7, 3), (50, 4), (100, 10), (333, 7)):
        sc = schedules.revolve(TT, s)
        assert sc.forward_steps() == schedules.revolve_cost(TT, min(s, TT)) + 1
        assert sc.nslots == min(s, TT)


def test_stats_account_for_memory_and_passes():
    prob, _ = make_problem("multinomial", "sample_weights", "dense64")
    lam = random_lam(prob)
    vec = prob.dim_w * 8
    kw = dict(steps=40, step_size=0.3)
    r = fb.hypergradient(prob, lam, "reverse", **kw).stats
    assert r["trajectory_bytes"] == 40 * vec and r["passes"] == 80 and r["recomputed_steps"] == 0
    c = fb.hypergradient(prob, lam, "checkpointed", snapshots=5, **kw).stats
    assert c["trajectory_bytes"] == 5 * vec and c["snapshots"] == 5
    assert c["gradient_passes"] == schedules.revolve_cost(40, 5) + 1 and c["hvp_passes"] == 40
    d = fb.hypergradient(prob, lam, "checkpointed", snapshots=7, **kw).stats
    assert d["snapshots"] == 7  # default is ⌈√40⌉ = 7
    u = fb.hypergradient(prob, lam, "checkpointed", snapshots=5, schedule="uniform", **kw).stats
    assert u["trajectory_bytes"] == (4 + 8) * vec  # 4 snapshots + an 8-point segment buffer
    rc = fb.hypergradient(prob, lam, "recompute", **kw).stats
    assert rc["trajectory_bytes"] == vec and rc["gradient_passes"] == 40 + 39 * 38 // 2
    hb = fb.hypergradient(prob, lam, "recompute", "heavy_ball", momentum=0.5, **kw).stats
    assert hb["trajectory_bytes"] == 2 * vec
    t = fb.hypergradient(prob, lam, "truncated", K=6, **kw).stats
    assert t["trajectory_bytes"] == 6 * vec and t["hvp_passes"] == 6


def test_forward_refused_above_memory_limit(monkeypatch):
    prob, _ = make_problem("multinomial", "sample_weights", "dense64")
    monkeypatch.setattr(fb.config, "MAX_TRAJECTORY_BYTES", 1000)
    with pytest.raises(ValueError, match="method='forward' would hold dim λ × dim w = 37 × 15"):
        fb.hypergradient(prob, np.zeros(prob.n), "forward", steps=3, step_size=0.1)


def test_default_momentum_converges_to_ridge_solution():
    ds = fb.datasets.ridge(n=80, m=30, d=8, seed=2)
    prob = ds.problem()
    lam = np.full(8, np.log(0.3))
    H = ds.X.T @ ds.X / 80 + 0.3 * np.eye(8)
    w_star = np.linalg.solve(H, ds.X.T @ ds.y / 80)
    for solver in ("heavy_ball", "agd"):
        r = fb.hypergradient(prob, lam, "reverse", solver, steps=400)
        assert 0 < r.stats["momentum"] < 1
        assert naive.rel_err(r.w, w_star) < 1e-9


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(method="truncated"), ValueError, "needs K"),
    (dict(method="truncated", K=20), ValueError, "K=20 must be <= steps=10"),
    (dict(method="reverse", K=3), ValueError, "K=3 does not apply to method='reverse'"),
    (dict(method="checkpointed", snapshots=0), ValueError, "snapshots=0 must be >= 1"),
    (dict(method="recompute", snapshots=3), ValueError, "snapshots=3 does not apply"),
    (dict(method="checkpointed", schedule="binomial"), ValueError, "schedule='binomial'"),
    (dict(solver="gd", momentum=0.5), ValueError, "momentum=0.5 does not apply .*solver='gd'"),
    (dict(solver="agd", momentum=1.0), ValueError, "momentum=1.0 must be < 1"),
    (dict(method="forward", K=2), ValueError, "K=2 does not apply to method='forward'"),
])
def test_argument_errors(kw, exc, msg):
    prob, _ = make_problem("linear", "l2", "dense64")
    with pytest.raises(exc, match=msg):
        fb.hypergradient(prob, 0.0, steps=10, step_size=0.1, **kw)


def test_momentum_needs_strong_convexity_or_explicit_value():
    prob, _ = make_problem("logistic", "sample_weights", "dense64", reg=0.0)
    with pytest.raises(ValueError, match="needs momentum"):
        fb.hypergradient(prob, np.zeros(prob.n), solver="agd", steps=3)
    r = fb.hypergradient(prob, np.zeros(prob.n), solver="agd", steps=3, momentum=0.2)
    assert r.stats["momentum"] == 0.2
    f = fb.hypergradient(prob, np.zeros(prob.n), "forward", solver="agd", steps=3, momentum=0.2)
    assert naive.rel_err(r.grad, f.grad) < 1e-10


def test_momentum_divergence_reported():
    prob, _ = make_problem("linear", "l2", "dense64")
    L = prob.lipschitz(0.0)
    with pytest.raises(ValueError, match="diverge"):
        fb.hypergradient(prob, 0.0, "checkpointed", "heavy_ball", steps=300,
                         step_size=5.0 / L, momentum=0.5)


def test_solve_is_the_inner_loop_alone():
    prob, _ = make_problem("logistic", "feature_l2", "csr64")
    lam = random_lam(prob)
    for solver, beta in (("gd", None), ("agd", 0.4)):
        s = fb.solve(prob, lam, solver, steps=20, step_size=0.3, momentum=beta)
        r = fb.hypergradient(prob, lam, "reverse", solver, steps=20, step_size=0.3, momentum=beta)
        assert np.array_equal(s.w, r.w) and s.value == r.value
        assert s.stats["passes"] == 20 and s.stats["trajectory_bytes"] == 0


def test_plan_picks_fastest_method_within_budget():
    prob, _ = make_problem("multinomial", "sample_weights", "dense64")
    vec = prob.dim_w * 8
    TT = 200
    assert fb.plan(prob, TT, TT * vec)["method"] == "reverse"
    p = fb.plan(prob, TT, 12 * vec)
    assert p["method"] == "checkpointed" and p["snapshots"] == 12
    assert fb.plan(prob, TT, vec)["method"] == "recompute"
    with pytest.raises(ValueError, match="not even one solver state"):
        fb.plan(prob, TT, vec - 1)
    # the plan runs within its budget and costs what it says
    lam = random_lam(prob)
    r = fb.hypergradient(prob, lam, p["method"], steps=TT, step_size=0.3, snapshots=p["snapshots"])
    assert r.stats["trajectory_bytes"] <= 12 * vec and r.stats["passes"] == p["passes"]
    # one hyperparameter: forward mode (T shared passes) beats every reverse method
    q, _ = make_problem("logistic", "l2", "dense64")
    assert fb.plan(q, TT, 10**9)["method"] == "forward"
