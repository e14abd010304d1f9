"""The README's Python examples run as written."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 4
    rng = np.random.default_rng(0)
    X, X_val = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    ns = {"X": X, "y": np.sign(X[:, 0] + 0.1), "X_val": X_val, "y_val": np.sign(X_val[:, 0] + 0.1)}
    for code in blocks:
        exec(compile(code, str(README), "exec"), ns)
    assert ns["r"].grad.shape == (5000,) and np.all(np.isfinite(ns["r"].grad))
    assert ns["grads"].shape == (5,) and np.all(np.isfinite(ns["grads"]))
    assert ns["res"].history.outer_value[-1] < ns["res"].history.outer_value[0]
    assert np.all(np.isfinite(ns["g"].grad))
    assert ns["fres"].history.outer_value[-1] < ns["fres"].history.outer_value[0]
    assert len(ns["sres"].history) == 20 and len(ns["mres"].history) == 50
