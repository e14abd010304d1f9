"""The backend seam: the Python layer reaches compiled code only through its
problem's backend, which a recording backend can observe."""
import ast
import os

import numpy as np
import pytest

import fastbilevel as fb
from fastbilevel.backend import CPU, CPUBackend

ENTRY_POINTS = {"oracle_pass", "oracle_pass_rows", "oracle_pass_serial", "run_schedule", "forward_mode",
                "implicit_solve", "stocbio_run", "fsla_run", "meta_gradient", "task_pass", "reg_value",
                "reg_grad_add", "reg_hvp_add", "cross_add", "run_schedule_multi",
                "implicit_solve_multi"}
PY_LAYER = ["problem.py", "hypergrad.py", "stochastic.py", "meta.py", "minimize.py",
            "datasets.py", "sweep.py"]


@pytest.mark.parametrize("module", PY_LAYER)
def test_python_layer_never_calls_kernels_directly(module):
    path = os.path.join(os.path.dirname(fb.__file__), module)
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "kernels" in node.module:
            assert not {a.name for a in node.names} & ENTRY_POINTS, (module, node.lineno)
        if isinstance(node, ast.Attribute) and node.attr in ENTRY_POINTS:
            # only as backend.<name> (problem.backend.x, be.x, self.backend.x)
            base = node.value
            name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
            assert name in ("backend", "be"), (module, node.lineno, ast.unparse(node))


class Recording(CPUBackend):
    """The CPU backend, recording the name of every compiled call."""

    def __init__(self):
        self.calls = []
        for name in ENTRY_POINTS:
            setattr(self, name, self._wrap(name, getattr(CPU, name)))

    def _wrap(self, name, fun):
        def call(*args):
            self.calls.append(name)
            return fun(*args)
        return call


def _with(prob, backend):
    prob.backend = backend
    return prob


def test_every_method_runs_through_the_backend():
    ds = fb.datasets.hypercleaning(n=60, m=20, d=8, c=3, seed=0)
    cpu = ds.problem()
    rec = Recording()
    p = _with(ds.problem(), rec)
    lam = np.zeros(p.n)
    cases = [("reverse", {}, "run_schedule"), ("implicit", {}, "implicit_solve"),
             ("stocbio", dict(batch_size=16, Q=3), "stocbio_run")]
    for method, kw, entry in cases:
        rec.calls.clear()
        got = fb.hypergradient(p, lam, method, steps=5, **kw)
        want = fb.hypergradient(cpu, lam, method, steps=5, **kw)
        assert entry in rec.calls, (method, rec.calls)
        assert np.array_equal(got.grad, want.grad) and got.value == want.value
    rec.calls.clear()
    lp = _with(fb.datasets.ridge(n=40, m=10, d=4, seed=0).problem("l2"), rec)
    fb.hypergradient(lp, np.array(0.0), "forward", steps=4)
    assert "forward_mode" in rec.calls
    rec.calls.clear()
    fb.minimize(p, lam, "fsla", iters=4, batch_size=16, eval_every=4)
    assert "fsla_run" in rec.calls
    lams = np.zeros((3, p.n))
    for method, entry in (("reverse", "run_schedule_multi"),
                          ("implicit", "implicit_solve_multi")):
        rec.calls.clear()
        got = fb.sweep(p, lams, method, steps=5, strategy="rows")
        want = fb.sweep(cpu, lams, method, steps=5, strategy="rows")
        assert entry in rec.calls, (method, rec.calls)
        assert np.array_equal(got.grad, want.grad)
    rec.calls.clear()
    w = np.zeros(p.w_shape)
    p.inner_grad(w, lam)
    p.hvp(w, lam, w)
    p.cross(w, lam, w)
    assert rec.calls.count("oracle_pass") == 3 and "cross_add" in rec.calls
    mt = fb.datasets.few_shot(n_tasks=4, shots=3, test_shots=3, d=4, seed=0).problem(reg=0.1)
    mt.backend = rec
    rec.calls.clear()
    fb.hypergradient(mt, np.zeros(4), "reverse", steps=3)
    assert rec.calls == ["meta_gradient"]


def test_implicit_reuses_the_runs_outer_gradient():
    """run_schedule returns ∇_w f(w_T): the implicit method makes one
    validation pass in all, not a second one for the right-hand side."""
    prob = fb.datasets.ridge(n=40, m=10, d=4, seed=0).problem("l2")
    r = fb.hypergradient(prob, np.array(0.0), "implicit", steps=30, tol=1e-12)
    assert r.stats["val_passes"] == 1
    w = r.w
    b = prob.outer_grad(w)
    # the solve used exactly ∇_w f(ŵ): H v = b to the tolerance
    v = r.stats["v"]
    assert np.linalg.norm(prob.hvp(w, np.array(0.0), v) - b) <= 1e-10 * np.linalg.norm(b)
