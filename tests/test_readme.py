"""The README's Python examples run as written, and give what an
independent computation gives."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 7
    rng = np.random.default_rng(0)
    X, X_val = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    ns = {"X": X, "y": np.sign(X[:, 0] + 0.1), "X_val": X_val, "y_val": np.sign(X_val[:, 0] + 0.1)}

    def run(k):
        exec(compile(blocks[k], str(README), "exec"), ns)

    run(0)
    fb = ns["fb"]
    assert ns["r"].grad.shape == (5000,)
    # the reverse sweep is what checkpointing recomputes
    same = fb.hypergradient(ns["prob"], np.zeros(5000), "checkpointed", steps=100)
    assert np.allclose(ns["r"].grad, same.grad, rtol=1e-10, atol=1e-14)
    run(1)
    assert ns["res"].history.outer_value[-1] < ns["res"].history.outer_value[0]
    run(2)
    # each setting of the sweep is its own hypergradient; the grid search its values
    for b in (0, 31, 63):
        one = fb.hypergradient(ns["prob"], ns["lams"][b], steps=50)
        assert abs(ns["sw"].grad[b] - one.grad) <= 1e-12 * abs(one.grad)
    np.testing.assert_allclose(ns["grid"].value, ns["sw"].value, rtol=1e-12)
    assert ns["best"] == int(np.argmin(ns["sw"].value))
    run(3)
    # the estimator's refit is scikit-learn's own model at the learned C
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    Xs = StandardScaler().fit_transform(ns["Xb"])
    ref = LogisticRegression(C=ns["hlr"].C_, tol=1e-12, max_iter=10000).fit(Xs, ns["yb"])
    np.testing.assert_allclose(ns["clf"].predict_proba(ns["Xb"]), ref.predict_proba(Xs),
                               atol=1e-4)
    assert ns["rw"].sample_weight_.shape == (40,) and len(ns["rw"].suspicious_) == 40
    run(4)
    # the seed fixes every batch of the stocBiO estimate
    again = fb.hypergradient(ns["prob"], np.zeros(ns["prob"].n), "stocbio", steps=20, Q=10,
                             batch_size=64, seed=0)
    assert np.array_equal(ns["g"].grad, again.grad)
    assert ns["fres"].history.outer_value[-1] < ns["fres"].history.outer_value[0]
    assert len(ns["sres"].history) == 20 and len(ns["mres"].history) == 50
    anil = ns["anil"]
    assert ns["P"].shape == (2, 10) and ns["w0"].shape == (2,)
    assert anil.meta_value(ns["ares"].lam, 5, 0.1) < anil.meta_value(ns["theta0"], 5, 0.1)
    run(5)
    # every solver's final λ beats λ₀ when the inner problem is solved there
    prob = ns["prob"]
    before = prob.outer_value(fb.solve(prob, np.zeros(prob.n), steps=500).w)
    for m, r in ns["runs"].items():
        assert prob.outer_value(fb.solve(prob, r.lam, steps=500).w) < before, m
    run(6)
    # the embedding example equals the API, λ by λ
    prob = fb.BilevelProblem("logistic", "l2", X, ns["y"], X_val, ns["y_val"])
    want = [fb.hypergradient(prob, lam, steps=30, step_size=0.5).grad
            for lam in np.linspace(-3, 1, 5)]
    np.testing.assert_allclose(ns["grads"], want, rtol=1e-12)
