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
    assert r["passes"] == 11 and 0 < r["roofline_frac"]


def test_bench_rejects_unknown_method():
    res = CliRunner().invoke(cli, ["bench", "--methods", "reverse,magic"])
    assert res.exit_code != 0 and "unknown method" in res.output


def test_info():
    res = CliRunner().invoke(cli, ["info"])
    assert res.exit_code == 0 and "numba" in res.output
