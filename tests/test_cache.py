"""Kernels loaded from Numba's on-disk cache in fresh processes, with other
thread counts, run and give bit-identical results for a fixed chunk count.

(A cached function that calls a parallel one crashed when loaded from the
cache with numba 0.68; the kernels are laid out so that this cannot happen:
see ``kernels/oracles.py``.)
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbilevel as fb

SCRIPT = """
import json, numpy as np, fastbilevel as fb
fb.config.NCHUNKS = 2
ds = fb.datasets.hypercleaning(n=64, m=16, d=12, c=3, seed=0)
p = ds.problem()
r = fb.hypergradient(p, np.zeros(p.n), steps=7, step_size=0.5)
q = fb.datasets.text(n=60, m=20, d=300, row_nnz=8, seed=0).problem()
s = fb.hypergradient(q, np.full(q.d, -1.0), steps=7, step_size=0.5)
print(json.dumps([r.grad.tolist(), s.grad.tolist()]))
"""


def test_cached_kernels_in_fresh_processes(monkeypatch):
    monkeypatch.setattr(fb.config, "NCHUNKS", 2)
    ds = fb.datasets.hypercleaning(n=64, m=16, d=12, c=3, seed=0)
    p = ds.problem()
    want_r = fb.hypergradient(p, np.zeros(p.n), steps=7, step_size=0.5).grad
    q = fb.datasets.text(n=60, m=20, d=300, row_nnz=8, seed=0).problem()
    want_s = fb.hypergradient(q, np.full(q.d, -1.0), steps=7, step_size=0.5).grad
    for threads in ("1", "2"):
        env = dict(os.environ, NUMBA_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        got_r, got_s = json.loads(out.stdout.strip().splitlines()[-1])
        assert np.array_equal(np.array(got_r), want_r)
        assert np.array_equal(np.array(got_s), want_s)


VALUE_SCRIPT = """
import numpy as np, fastbilevel as fb
assert fb.__file__.startswith({root!r}), fb.__file__
rng = np.random.default_rng(0)
X = rng.standard_normal((30, 4))
p = fb.BilevelProblem("linear", "l2", X, rng.standard_normal(30), X[:5], np.zeros(5))
print(repr(p.inner_value(np.ones(4), np.array(-50.0))))
"""


def _value(root):
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", VALUE_SCRIPT.format(root=root)], env=env,
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    return float(out.stdout.strip())


def test_an_edited_inlined_module_is_never_served_stale(tmp_path):
    """The per-row loss in _rowmath.py is inlined into oracle_pass, whose own
    file (oracles.py) does not change: a cache keyed on the entry point's
    file would serve the old kernel. Keyed by all the package's sources, the
    edited copy compiles anew, and the original still gives its own result."""
    import shutil
    src = os.path.dirname(fb.__file__)
    root = str(tmp_path / "copy")
    shutil.copytree(src, os.path.join(root, "fastbilevel"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    original_root = os.path.dirname(src)
    before = _value(root)
    assert before == _value(original_root)
    rowmath = os.path.join(root, "fastbilevel", "kernels", "_rowmath.py")
    with open(rowmath) as fh:
        text = fh.read()
    assert text.count("return 0.5 * r * r") == 1
    with open(rowmath, "w") as fh:
        fh.write(text.replace("return 0.5 * r * r", "return 0.25 * r * r"))
    after = _value(root)
    # g = data part + ridge part, with e^-50 ≈ 2e-22 the ridge part vanishes
    assert after == pytest.approx(before / 2, rel=1e-12)
    assert _value(original_root) == before
    # and nothing was cached inside either package
    for base in (src, os.path.join(root, "fastbilevel")):
        assert not [f for _, _, fs in os.walk(base) for f in fs if f.endswith((".nbi", ".nbc"))]


def test_unswitch_limit_holds_only_while_a_package_function_compiles(monkeypatch):
    """LLVM's unswitching threshold is lowered from the start to the end of
    the outermost compile of one of the package's functions (nested in a
    user's function too), on errors as well, and never for other code."""
    from numba import njit
    from numba.core import types
    from numba.core.caching import NullCache
    from fastbilevel import _cache
    from fastbilevel.kernels import sigmoid
    calls = []
    monkeypatch.setattr(_cache, "_set_unswitch", calls.append)
    # a load from the on-disk cache is no compile: an earlier run of the same
    # sources (a second CI run on one machine) must not decide this test
    monkeypatch.setattr(sigmoid, "_cache", NullCache())
    assert not {(types.int16,), (types.int8,)} & set(sigmoid.overloads)   # nor an earlier test

    @njit
    def user(t):
        return t + 1.0

    user(1.0)
    assert calls == []                           # a user's function alone

    @njit
    def user_calls_ours(t):
        return sigmoid(t) + 1.0

    user_calls_ours(np.int16(3))                 # a new signature of a package function
    assert calls == [_cache.UNSWITCH_THRESHOLD, _cache._LLVM_UNSWITCH_DEFAULT]
    assert user_calls_ours(np.int16(3)) == pytest.approx(1.0 + 1.0 / (1.0 + np.exp(-3.0)))

    calls.clear()
    with pytest.raises(Exception):
        sigmoid("not a number")                  # a failed compile restores the default too
    assert calls == [_cache.UNSWITCH_THRESHOLD, _cache._LLVM_UNSWITCH_DEFAULT]

    calls.clear()
    monkeypatch.setattr(_cache, "UNSWITCH_THRESHOLD", None)
    sigmoid(np.int8(2))
    assert calls == []                           # switched off


def test_assign_copies_every_rank_and_refuses_other_shapes():
    from numba import njit
    from fastbilevel.kernels._arrays import assign

    @njit
    def copy(dst, src):
        assign(dst, src)

    rng = np.random.default_rng(0)
    for shape in [(5,), (3, 4), (2, 3, 4), (2, 2, 3, 2)]:
        src = rng.standard_normal(shape)
        keep = src.copy()
        dst = np.zeros(shape)
        copy(dst, src)
        assert np.array_equal(dst, src) and np.array_equal(src, keep)
    dst = np.zeros((4, 6))
    copy(dst[:, ::2], np.ones((4, 3)))           # a strided view: only its entries change
    assert dst[:, ::2].sum() == 12 and dst[:, 1::2].sum() == 0
    with pytest.raises(ValueError, match="different shapes"):
        copy(np.zeros((3, 4)), np.zeros((4, 3)))


def test_elementwise_loops_match_the_array_expressions_bit_for_bit():
    """The loops that replace array expressions in the parallel entry points
    give NumPy's elementwise values exactly, on 2-D and 3-D arrays and on
    the leading slice of a 3-D one."""
    from fastbilevel.kernels._arrays import add_scaled, momentum_step, scale_into, sub_into
    rng = np.random.default_rng(3)
    for shape in [(3, 7), (2, 3, 5)]:
        x, y, z = (rng.standard_normal(shape) for _ in range(3))
        a, b = 0.37, -1.9
        got = y.copy()
        add_scaled(got, a, x)
        assert np.array_equal(got, y + a * x)
        got = np.empty(shape)
        scale_into(got, a, x)
        assert np.array_equal(got, a * x)
        sub_into(got, x, y)
        assert np.array_equal(got, x - y)
        v, vprev = x.copy(), y.copy()
        momentum_step(v, vprev, z, a, b)
        assert np.array_equal(v, x + a * z + b * (x - y)) and np.array_equal(vprev, x)
    P = rng.standard_normal((3, 4, 5))
    keep = P.copy()
    add_scaled(P[1], 2.0, P[2])
    assert np.array_equal(P[1], keep[1] + 2.0 * keep[2])
    assert np.array_equal(P[0], keep[0]) and np.array_equal(P[2], keep[2])


def test_bounds_are_searchsorted():
    """lower_bound / upper_bound against np.searchsorted (both sides) on
    sorted int32 and int64 arrays with repeats, empty arrays and values
    outside the range."""
    from fastbilevel.kernels._arrays import lower_bound, upper_bound
    rng = np.random.default_rng(4)
    for _ in range(500):
        a = np.sort(rng.integers(0, 12, rng.integers(0, 10))).astype(
            rng.choice([np.int32, np.int64]))
        v = int(rng.integers(-2, 15))
        assert lower_bound(a, v) == np.searchsorted(a, v)
        assert upper_bound(a, v) == np.searchsorted(a, v, side="right")


def test_a_renamed_copy_of_the_same_sources_gets_its_own_cache_folder(tmp_path):
    """Numba's cache index pickles the module path of each kernel: a copy of
    the package imported under another name (as ``bench/ab_kernels.py``
    imports the previous version) must not share the folder, or each would
    find index entries naming the other's module."""
    import shutil
    src = os.path.dirname(fb.__file__)
    shutil.copytree(src, str(tmp_path / "fastbilevel_copy"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import fastbilevel_copy\n"
              "print(fastbilevel_copy._cache.resolved_cache_dir())")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    theirs, ours = out.stdout.strip(), fb._cache.resolved_cache_dir()
    assert os.path.dirname(theirs) == os.path.dirname(ours) and theirs != ours
