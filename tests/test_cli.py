import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import fastbilevel as fb
from fastbilevel._cache import resolved_cache_dir
from fastbilevel import bench as bench_mod
from fastbilevel.cli.main import cli


def _check_row_arithmetic(r, peaks):
    """A bench row's derived figures follow from its timings and counts."""
    assert r["median_s"] == pytest.approx(float(np.median(r["times_s"])))
    assert r["GBps"] == pytest.approx(r["bytes"] / r["median_s"] / 1e9)
    assert r["GFLOPs"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
    gemm = peaks["gemm32_GFLOPs"] if r["dtype"] == "float32" else \
        max(peaks["gemm_GFLOPs"], peaks["fma_GFLOPs"])
    bound = max(r["bytes"] / (peaks["read_GBps"] * 1e9), r["flops"] / (gemm * 1e9))
    assert r["roofline_s"] == pytest.approx(bound)
    assert r["roofline_frac"] == pytest.approx(bound / r["median_s"])


def test_bench_toy_json(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["bench", "--problem", "toy", "--steps", "5", "--repeats", "1",
                                   "--quick", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "roofline" in res.output and "reverse" in res.output and "numpy" in res.output
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["results"]}
    # numpy_free: NumPy without this environment's OpenBLAS override, where one is set
    overridden = any(v in os.environ for v in bench_mod.BLAS_OVERRIDES)
    assert set(rows) == {"reverse", "numpy"} | ({"numpy_free"} if overridden else set())
    assert data["machine"]["read_GBps"] > 0 and data["machine"]["gemm_GFLOPs"] > 0
    assert data["machine"]["fma_GFLOPs"] > 0 and "FMA loop" in res.output
    r = rows["reverse"]
    p = fb.datasets.shaban_toy().problem()
    assert r["passes"] == 10                           # 2T training passes
    assert r["trajectory_bytes"] == 5 * p.dim_w * 8    # T stored points
    # T gradient + T H·v passes over X, one validation pass, dense float64
    assert r["bytes"] == 10 * p.n * p.d * 8 + p.m * p.d * 8
    assert r["flops"] == (4 * 5 + 6 * 5) * p.n * p.d + 4 * p.m * p.d
    assert len(r["times_s"]) == 1
    for row in rows.values():
        _check_row_arithmetic(row, data["machine"])
    best_numpy = min(rows[m]["median_s"] for m in rows if m.startswith("numpy"))
    assert r["speedup_vs_numpy"] == pytest.approx(best_numpy / r["median_s"])
    assert f"{r['speedup_vs_numpy']:.2f}x" in res.output


def test_bench_both_dtypes_reports_the_float32_error(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["bench", "--problem", "ridge", "--quick", "--dtype", "both",
                                   "-T", "5", "--repeats", "1", "--methods", "reverse",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert [r["dtype"] for r in data["results"]] == ["float64", "float32"]
    ds64 = bench_mod.bench_dataset("ridge", True, 0, "float64")
    ds32 = bench_mod.bench_dataset("ridge", True, 0, "float32")
    p64, p32 = ds64.problem(), ds32.problem()
    lam = bench_mod.default_lam(p64)
    gamma = 1.0 / p64.lipschitz(lam)
    h64 = fb.hypergradient(p64, lam, steps=5, step_size=gamma).grad
    h32 = fb.hypergradient(p32, lam, steps=5, step_size=gamma).grad
    want = np.linalg.norm(h32 - h64) / np.linalg.norm(h64)
    assert 0 < want < 1e-4
    assert data["float32_rel_err"] == pytest.approx(want, rel=1e-6)
    assert f"relative error {want:.2e}" in res.output
    # the speed-up: pairs of calls alternating between the dtypes
    f32 = data["float32_against_float64"]
    assert f32["rel_err"] == data["float32_rel_err"] and f32["pairs"] == 1
    assert f32["speedup"] == f32["speedup_min"] == f32["speedup_max"] == \
        pytest.approx(f32["float64_s"] / f32["float32_s"], rel=1e-12)
    assert f"float32 {f32['speedup']:.2f}x faster (median of 1 alternating pairs" in res.output


def test_float32_against_float64_pairs_alternate(monkeypatch):
    """Each pair times one float64 and one float32 call, the order swapping
    from pair to pair; the speed-up is the median of the per-pair ratios."""
    ds64 = bench_mod.bench_dataset("ridge", True, 0, "float64")
    ds32 = bench_mod.bench_dataset("ridge", True, 0, "float32")
    p64, p32 = ds64.problem(), ds32.problem()
    order, clock = [], iter([0.0, 8.0, 8.0, 10.0, 10.0, 11.0, 11.0, 13.0, 13.0, 16.0, 16.0, 20.0])
    real = bench_mod.hypergradient

    def spy(p, *a, **k):
        order.append(str(p.dtype))
        return real(p, *a, **k)
    monkeypatch.setattr(bench_mod, "hypergradient", spy)
    r = bench_mod.float32_against_float64(p64, p32, 3, 3, clock=lambda: next(clock))
    assert order == ["float64", "float32",                     # the first (warm-up) calls
                     "float64", "float32", "float32", "float64", "float64", "float32"]
    # float64 took 8, 2, 3 s and float32 2, 1, 4 s: per-pair ratios 4, 2, 0.75,
    # whose median (2) is not the ratio of the medians (3 / 2)
    assert (r["speedup"], r["speedup_min"], r["speedup_max"]) == (2.0, 0.75, 4.0)
    assert (r["float64_s"], r["float32_s"], r["pairs"]) == (3.0, 2.0, 3)


def test_bench_rejects_unknown_method():
    res = CliRunner().invoke(cli, ["bench", "--methods", "reverse,magic"])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_info():
    import numba
    res = CliRunner().invoke(cli, ["info"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"fastbilevel {fb.__version__} (")
    assert f"numba {numba.__version__}" in res.output
    assert f"kernel cache: {resolved_cache_dir()} " in res.output
    assert f"requested {numba.config.THREADING_LAYER!r}" in res.output


def test_bench_all_methods_with_rss(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["bench", "--problem", "toy", "-T", "6", "--repeats", "1", "--quick",
                                   "--methods", "reverse,checkpointed,recompute,truncated,forward,solve,numpy,"
                                   "implicit_cg,implicit_neumann",
                                   "--solver", "agd", "--momentum", "0.3", "--snapshots", "2", "-K", "3",
                                   "--rss", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"reverse", "checkpointed", "recompute", "truncated", "forward", "solve", "numpy",
                         "implicit_cg", "implicit_neumann"}
    assert rows["implicit_cg"]["passes"] <= 6 + 3 + 1  # T gradient + at most K + 1 H·v passes
    assert rows["reverse"]["passes"] == 12 and rows["truncated"]["passes"] == 9
    assert rows["checkpointed"]["passes"] > 12 and rows["solve"]["passes"] == 6
    assert rows["recompute"]["passes"] == 6 + 5 * 4 // 2 + 6     # T + (T-1)(T-2)/2 + T
    dim_w = fb.datasets.shaban_toy().problem().dim_w
    assert rows["reverse"]["trajectory_bytes"] == 6 * dim_w * 8
    assert rows["recompute"]["trajectory_bytes"] == 2 * dim_w * 8   # one agd state: 2 vectors
    assert rows["solve"]["trajectory_bytes"] == 0
    assert all(r["rss_MB"] > 0 for r in rows.values())


def test_bench_stochastic_methods(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["bench", "--problem", "hypercleaning", "-T", "4", "--repeats",
                                   "1", "--quick", "--methods",
                                   "stocbio,numpy_stocbio,fsla,numpy_fsla", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"stocbio", "numpy_stocbio", "fsla", "numpy_fsla"}
    # stocBiO against its NumPy twin, FSLA against its own
    assert rows["stocbio"]["speedup_vs_numpy"] > 0 and rows["fsla"]["speedup_vs_numpy"] > 0
    assert 0 < rows["stocbio"]["passes"] < 4 + 1     # minibatch rows, as fractions of a pass
    for name in ("stocbio", "fsla"):
        assert rows[name]["speedup_vs_numpy"] == pytest.approx(
            rows["numpy_" + name]["median_s"] / rows[name]["median_s"])


def test_clear_cache_removes_other_sources_only(tmp_path, monkeypatch):
    from fastbilevel import _cache
    root = tmp_path / "fastbilevel"
    current = root / "0.1.0-aaaa"
    stale = root / "0.0.9-bbbb"
    for d in (current / "kernels", stale / "kernels"):
        d.mkdir(parents=True)
    (stale / "kernels" / "x.nbc").write_bytes(b"0" * 2048)
    (current / "kernels" / "y.nbc").write_bytes(b"1" * 10)
    monkeypatch.setattr(_cache, "_RESOLVED", [str(current)])
    res = CliRunner().invoke(cli, ["info"])
    assert "stale kernel caches: 1 folders" in res.output
    res = CliRunner().invoke(cli, ["clear-cache"])
    assert res.exit_code == 0, res.output
    assert "removed 1 stale kernel cache folders" in res.output
    assert not stale.exists() and (current / "kernels" / "y.nbc").exists()
    assert "stale kernel caches" not in CliRunner().invoke(cli, ["info"]).output


def test_sweep_command_table_and_json_match_the_api(tmp_path):
    out = tmp_path / "sweep.json"
    res = CliRunner().invoke(cli, ["sweep", "--problem", "ridge", "--quick", "--lams=-3:1:5",
                                   "-T", "8", "--no-progress", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    ds = fb.datasets.ridge(n=2000, m=500, d=200)
    prob = ds.problem(hyper="l2")
    want = fb.sweep(prob, np.linspace(-3, 1, 5), steps=8)
    np.testing.assert_allclose(data["outer_value"], want.value, rtol=1e-12)
    np.testing.assert_allclose(np.ravel(data["hypergradient"]), want.grad, rtol=1e-12)
    assert data["best"] == want.best
    rows = [ln for ln in res.output.splitlines() if ln[2:].strip()[:1] in "-0123456789"
            and len(ln.split()) >= 3]
    assert len(rows) == 5
    starred = [ln for ln in rows if ln.startswith("*")]
    assert len(starred) == 1 and float(starred[0].split()[1]) == np.linspace(-3, 1, 5)[want.best]


def test_sweep_command_grid_search_and_bad_lams():
    res = CliRunner().invoke(cli, ["sweep", "--problem", "ridge", "--quick", "--lams", "0.5,-1",
                                   "--method", "solve", "-T", "4", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "hypergradient" not in res.output and "best: v=" in res.output
    for bad in ("1:2", "a:b:3", "0:1:0", ","):
        res = CliRunner().invoke(cli, ["sweep", "--quick", f"--lams={bad}"])
        assert res.exit_code == 2 and "--lams" in res.output


def test_bench_sweep_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")   # asks for the override-free NumPy row
    out = tmp_path / "b.json"
    res = CliRunner().invoke(cli, ["bench", "--problem", "ridge", "--quick", "-T", "4",
                                   "--repeats", "1", "--methods", "reverse", "--sweep", "3",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = {r["method"]: r for r in json.loads(out.read_text())["results"]}
    assert {"sweep[3]", "singles[3]", "numpy_sweep[3]", "numpy_sweep_free[3]"} <= set(rows)
    sw, one = rows["sweep[3]"], rows["singles[3]"]
    assert sw["passes"] == 8 and one["passes"] == 24        # one batched pass serves 3 settings
    assert sw["speedup_vs_singles"] == pytest.approx(one["median_s"] / sw["median_s"])
    assert sw["flops"] == one["flops"] and sw["bytes"] < one["bytes"]
    assert "throughput of 3 single calls" in res.output


NO_COMPILES = """
import numba.core.event as ev, sys
compiled = []
class L(ev.Listener):
    def on_start(self, e):
        f = e.data["dispatcher"].py_func
        if f.__module__.startswith("fastbilevel"):
            compiled.append(f.__module__ + "." + f.__name__)
    def on_end(self, e):
        pass
ev.register("numba:compile", L())
from fastbilevel._warmup import warm
warm(("dense",), ("float64",), echo=lambda line: None)
print("compiled:", sorted(set(compiled)))
"""


def test_compile_fills_the_cache_for_a_new_process():
    # after `fastbilevel compile`, a new process running every kernel family
    # loads them all from the cache: not one compile
    res = CliRunner().invoke(cli, ["compile", "--formats", "dense", "--dtypes", "float64"])
    assert res.exit_code == 0, res.output
    assert "dense float64: implicit solves" in res.output
    assert "11 kernel families ready" in res.output
    out = subprocess.run([sys.executable, "-c", NO_COMPILES], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip().endswith("compiled: []"), out.stdout + out.stderr[-2000:]
    bad = CliRunner().invoke(cli, ["compile", "--formats", "dense,coo"])
    assert bad.exit_code == 2 and "coo" in bad.output and "dense, csr" in bad.output



def test_a_blas_override_is_measured_around(monkeypatch, tmp_path):
    # stand-in for OPENBLAS_CORETYPE (never changed in the tests): with an
    # override variable set, the GEMM peak and the NumPy baseline are also
    # timed in a child process without it; the roofline uses the higher peak
    monkeypatch.setattr(bench_mod, "BLAS_OVERRIDES", ("FASTBILEVEL_TEST_BLAS_OVERRIDE",))
    monkeypatch.setenv("FASTBILEVEL_TEST_BLAS_OVERRIDE", "x")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["bench", "--problem", "toy", "--steps", "5", "--repeats", "1",
                                   "--quick", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    peaks = data["machine"]
    assert peaks["gemm_GFLOPs_free"] > 0 and peaks["gemm_GFLOPs_process"] > 0
    for key in ("gemm", "gemm32"):
        assert peaks[f"{key}_GFLOPs"] == max(peaks[f"{key}_GFLOPs_free"],
                                             peaks[f"{key}_GFLOPs_process"])
    assert peaks["blas_overrides"] == {"FASTBILEVEL_TEST_BLAS_OVERRIDE": "x"}
    assert "without that override" in res.output
    rows = {r["method"]: r for r in data["results"]}
    assert set(rows) == {"reverse", "numpy", "numpy_free"}
    free = rows["numpy_free"]
    assert free["bytes"] == rows["numpy"]["bytes"] and free["flops"] == rows["numpy"]["flops"]
    _check_row_arithmetic(free, peaks)
    best = min(rows["numpy"]["median_s"], free["median_s"])
    assert rows["reverse"]["speedup_vs_numpy"] == pytest.approx(best / rows["reverse"]["median_s"])


def test_fma_loop_computes_its_recurrence():
    """The FMA peak's loop does the work it is timed for: each chain is the
    affine recurrence a ← a·x + y, whose n-th term is known in closed form."""
    n, x, y = 1000, 0.999, 1e-3
    a0 = 1.0 + np.arange(bench_mod.FMA_CHAINS) * 1e-3
    want = np.sum(a0 * x ** n + y * (1 - x ** n) / (1 - x))
    assert bench_mod._fma_all(n, x, y, 3) == pytest.approx(3 * want, rel=1e-12)
