import json

from click.testing import CliRunner

from fastbilevel.cli.main import cli


def test_bench_toy_json(tmp_path):
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, ["bench", "--problem", "toy", "--steps", "5", "--repeats", "1",
                                   "--quick", "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "roofline" in res.output and "reverse" in res.output and "numpy" in res.output
    data = json.loads(out.read_text())
    assert {r["method"] for r in data["results"]} == {"reverse", "numpy"}
    assert data["machine"]["read_GBps"] > 0 and data["machine"]["gemm_GFLOPs"] > 0
    r = data["results"][0]
    assert r["passes"] == 10 and 0 < r["roofline_frac"]  # 2T training passes


def test_bench_rejects_unknown_method():
    res = CliRunner().invoke(cli, ["bench", "--methods", "reverse,magic"])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_info():
    res = CliRunner().invoke(cli, ["info"])
    assert res.exit_code == 0 and "numba" in res.output


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
