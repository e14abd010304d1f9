"""Long runs are visible and interruptible: progress bars that change no
result, Ctrl-C in minimize with the partial result, the compile notice."""
import json
import sys

import numba
import numpy as np
import pytest

import fastbilevel as fb
from fastbilevel import _cache
from fastbilevel.kernels.data import Data
from conftest import sigint_subprocess


def _ridge():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 20))
    y = X @ rng.standard_normal(20) + rng.standard_normal(300)
    return fb.BilevelProblem("linear", "l2", X[:200], y[:200], X[200:], y[200:])


@pytest.mark.parametrize("method", ["reverse", "implicit"])
def test_a_bar_on_hypergradient_changes_no_bit(method, capsys):
    pytest.importorskip("tqdm")
    p = _ridge()
    a = fb.hypergradient(p, np.array(-1.0), method, steps=200)
    b = fb.hypergradient(p, np.array(-1.0), method, steps=200, progress=True)
    assert np.array_equal(a.grad, b.grad) and np.array_equal(a.w, b.w)
    err = capsys.readouterr().err
    # the bar counts every pass of every kernel of the call
    assert f"{a.stats['passes']}pass" in err.replace(" ", "")


def test_a_bar_on_minimize_shows_the_outer_value_and_changes_no_bit(capsys):
    pytest.importorskip("tqdm")
    p = _ridge()
    kw = dict(method="reverse", iters=6, steps=40, lr=0.3)
    a = fb.minimize(p, np.array(0.0), **kw)
    b = fb.minimize(p, np.array(0.0), progress=True, **kw)
    assert np.array_equal(a.lam, b.lam)
    assert np.array_equal(a.history.outer_value, b.history.outer_value)
    err = capsys.readouterr().err
    assert "6/6" in err and f"outer {b.history.outer_value[-1]:.6g}" in err
    many = fb.minimize_many(p, np.array([0.0, -2.0]), progress=True, **kw)
    assert np.array_equal(many.lam[0], a.lam)
    assert "minimize_many (2 starts)" in capsys.readouterr().err


def test_progress_needs_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"fastbilevel\[progress\]"):
        fb.minimize(_ridge(), np.array(0.0), iters=2, steps=5, progress=True)


def test_compile_notice_once_per_format_and_dtype(capfd, monkeypatch):
    # a fresh function of the package compiles (no cache): one line on stderr,
    # and none for a second compile of the same format and dtype
    monkeypatch.setattr(_cache, "_NOTICED", set())

    def probe(d):
        return d.y.sum() + d.X.shape[0]

    def probe2(d):
        return d.y.sum() - 1.0

    for f in (probe, probe2):
        f.__module__ = "fastbilevel.probe"
    X, y = np.ones((3, 2)), np.ones(3)
    numba.njit(probe)(Data(X, None, None, None, y))
    numba.njit(probe2)(Data(X, None, None, None, y))
    err = capfd.readouterr().err
    assert err.count("fastbilevel: compiling kernels for dense float64 data") == 1
    assert "happens once" in err
    # a function outside the package is not announced
    numba.njit(lambda d: d.y.sum())(Data(X.astype(np.float32), None, None, None, y))
    assert "compiling" not in capfd.readouterr().err


LONG_MINIMIZE = """
import sys, numpy as np, fastbilevel as fb
rng = np.random.default_rng(0)
X = rng.standard_normal((2000, 50))
p = fb.BilevelProblem("linear", "l2", X, X[:, 0], X[:100], X[:100, 0])
def cb(k, lam, r):
    if k == 2:
        print("running", flush=True)
try:
    fb.{call}(p, {lam0}, method="reverse", iters=10**6, steps=2000, lr=0.05, callback=cb)
except fb.MinimizeInterrupted as e:
    r = e.result
    hists = [r.history] if hasattr(r, "history") else r.histories
    best = np.atleast_1d(e.best_value)
    print("interrupted", min(map(len, hists)),
          all(np.min(h.outer_value) == b for h, b in zip(hists, best)),
          np.all(np.isfinite(e.best_lam)), np.shape(r.lam), flush=True)
    sys.exit(3)
print("finished", flush=True)
"""


@pytest.mark.parametrize("call,lam0", [("minimize", "np.array(0.0)"),
                                       ("minimize_many", "np.array([0.0, -1.0])")])
def test_ctrl_c_in_minimize_gives_the_partial_result(call, lam0):
    """SIGINT during a run of 10^6 outer iterations: MinimizeInterrupted with
    the iterations done and the best λ. The wait is a guard against a hang,
    not a timing assertion: the measured delay is printed."""
    rc, out, err, delay = sigint_subprocess(
        [sys.executable, "-c", LONG_MINIMIZE.format(call=call, lam0=lam0)],
        lambda line: line.strip() == "running")
    print(f"{call}: exited {delay:.3f} s after SIGINT; {out.strip()}")
    assert rc == 3, err[-2000:]
    word, n, best_ok, finite, shape = out.split(maxsplit=4)
    assert word == "interrupted" and int(n) >= 3
    assert best_ok == "True" and finite == "True"
    assert shape.strip() == ("()" if call == "minimize" else "(2,)")


def test_ctrl_c_in_the_minimize_command_writes_the_partial_result(tmp_path):
    out = tmp_path / "lam.json"
    rc, stdout, err, _ = sigint_subprocess(
        [sys.executable, "-u", "-m", "fastbilevel.cli.main", "minimize", "--problem", "ridge",
         "--quick", "--method", "reverse", "--iters", "1000000", "-T", "200", "--lr", "0.01",
         "--no-progress", "--out", str(out)],
        lambda line: line.startswith("problem: ridge"), wait=3.0)   # some outer iterations
    assert rc == 130, err[-2000:]
    assert "interrupted after" in stdout and f"wrote {out}" in stdout
    got = json.loads(out.read_text())
    assert got["interrupted"] is True
    n = len(got["history"]["outer_value"])
    assert n >= 1 and len(got["history"]["passes"]) == n
    assert np.all(np.isfinite(got["lam"]))
