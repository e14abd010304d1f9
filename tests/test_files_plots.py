"""The CLI and the datasets on the user's files (dense .npz, sparse .npz in
SciPy's layout, svmlight text), named errors for bad files, and plots."""
import json
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

import fastbilevel as fb
from fastbilevel.cli.main import cli
from fastbilevel.datasets import DataFileError, load_file, save_npz


def _data(seed=0, n=120, d=8, sparse=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    if sparse:
        X = sp.csr_matrix(X * (rng.random((n, d)) < 0.4))
    y = (np.asarray(X @ np.arange(1.0, d + 1)).ravel() + 0.5 * rng.standard_normal(n) > 0)
    return X, y.astype(int)


@pytest.fixture
def files(tmp_path):
    X, y = _data()
    Xs, ys = _data(1, sparse=True)
    np.savez(tmp_path / "dense.npz", X=X, y=y)
    save_npz(tmp_path / "sparse.npz", Xs, ys, Xs[:30], ys[:30])
    sk = pytest.importorskip("sklearn.datasets")
    sk.dump_svmlight_file(Xs, 2 * ys - 1, str(tmp_path / "data.svm"))
    return tmp_path, (X, y), (Xs, ys)


def test_files_load_as_the_arrays_they_hold(files):
    path, (X, y), (Xs, ys) = files
    ds = load_file(str(path / "dense.npz"), seed=3, val_fraction=0.25)
    assert ds.model == "logistic" and ds.info["split"] and ds.X.shape == (90, 8)
    # the seeded split: train and validation rows are the file's rows
    rows = np.concatenate([ds.X, ds.X_val])
    assert sorted(map(tuple, rows)) == sorted(map(tuple, X))
    sparse = load_file(str(path / "sparse.npz"))
    assert sp.issparse(sparse.X) and not sparse.info["split"]
    assert (sparse.X != Xs).nnz == 0 and (sparse.X_val != Xs[:30]).nnz == 0
    np.testing.assert_array_equal(sparse.y, ys)
    # SciPy itself reads the sparse file's matrix
    assert (sp.load_npz(path / "sparse.npz") != Xs).nnz == 0
    svm = load_file(str(path / "data.svm"), seed=0)
    assert sp.issparse(svm.X) and svm.model == "logistic"
    assert list(svm.info["classes"]) == [-1.0, 1.0]


def test_model_inference_and_label_encoding(tmp_path):
    X, _ = _data()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "multi.npz", X=X, y=rng.choice([3, 7, 9], 120))
    np.savez(tmp_path / "real.npz", X=X, y=rng.standard_normal(120))
    m = load_file(str(tmp_path / "multi.npz"))
    assert m.model == "multinomial" and set(np.unique(m.y)) <= {0.0, 1.0, 2.0}
    assert list(m.info["classes"]) == [3, 7, 9]
    assert m.problem().c == 3
    assert load_file(str(tmp_path / "real.npz")).model == "linear"
    with pytest.raises(DataFileError, match="multi.npz: model='logistic' needs 2 classes"):
        load_file(str(tmp_path / "multi.npz"), model="logistic")


@pytest.mark.parametrize("content,match", [
    ({"X": np.ones((5, 2))}, "bad.npz: no labels"),
    ({"y": np.ones(5)}, "bad.npz: no data"),
    ({"X": np.ones((5, 2)), "y": np.ones(4)}, "bad.npz: X has 5 samples but y has 4"),
    ({"X": np.ones(5), "y": np.ones(5)}, r"bad.npz: X has shape \(5,\)"),
    ({"data": np.ones(2), "indices": np.zeros(2, int), "y": np.ones(2)}, "missing"),
    ({"X": np.ones((5, 2)), "y": np.ones(5), "X_val": np.ones((2, 2))},
     "bad.npz: has X_val without y_val"),
    ({"X": np.ones((5, 2)), "y": np.array([1.0, np.nan, 0, 1, 0])}, "bad.npz: y has NaN"),
    ({"X": np.ones((5, 2)), "y": np.ones(5), "X_val": np.ones((2, 3)), "y_val": np.ones(2)},
     "bad.npz: X has 2 features but the validation part has 3"),
])
def test_bad_npz_files_are_named_errors(tmp_path, content, match):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(DataFileError, match=match):
        load_file(str(tmp_path / "bad.npz"))


def test_text_that_is_not_svmlight_and_missing_files(tmp_path):
    pytest.importorskip("sklearn")
    (tmp_path / "junk.txt").write_text("hello world\n")
    with pytest.raises(DataFileError, match="junk.txt: not a readable svmlight"):
        load_file(str(tmp_path / "junk.txt"))
    with pytest.raises(DataFileError, match="nope.npz: no such file"):
        load_file(str(tmp_path / "nope.npz"))
    res = CliRunner().invoke(cli, ["sweep", "--data", str(tmp_path / "junk.txt")])
    assert res.exit_code == 2 and "junk.txt: not a readable svmlight" in res.output


def test_cli_minimize_on_a_file_equals_the_api(files):
    path, _, _ = files
    out = path / "out.json"
    res = CliRunner().invoke(cli, ["minimize", "--data", str(path / "dense.npz"), "--iters", "6",
                                   "-T", "40", "--method", "reverse", "--lr", "0.3",
                                   "--no-progress", "--out", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    prob = load_file(str(path / "dense.npz")).problem()
    want = fb.minimize(prob, np.array(0.0), method="reverse", iters=6, lr=0.3, steps=40)
    assert got["lam"] == pytest.approx(float(want.lam), rel=1e-12)
    np.testing.assert_allclose(got["history"]["outer_value"], want.history.outer_value,
                               rtol=1e-12)
    assert "outer value" in res.output and "wrote" in res.output
    npz = path / "out.npz"
    res = CliRunner().invoke(cli, ["minimize", "--data", str(path / "dense.npz"), "--iters", "2",
                                   "-T", "10", "--no-progress", "--out", str(npz)])
    assert res.exit_code == 0, res.output
    with np.load(npz) as z:
        assert z["lam"].shape == () and z["history_outer_value"].shape == (2,)
    res = CliRunner().invoke(cli, ["minimize", "--data", str(path / "dense.npz"),
                                   "--out", str(path / "out.csv")])
    assert res.exit_code == 2 and ".json or .npz" in res.output


@pytest.mark.parametrize("name", ["sparse.npz", "data.svm"])
def test_cli_sweep_on_a_file_equals_the_api(files, name):
    path, _, _ = files
    out = path / "sw.json"
    res = CliRunner().invoke(cli, ["sweep", "--data", str(path / name), "--lams=-4:0:3", "-T",
                                   "20", "--no-progress", "--json", str(out)])
    assert res.exit_code == 0, res.output
    got = json.loads(out.read_text())
    prob = load_file(str(path / name)).problem(hyper="l2")
    r = fb.sweep(prob, np.linspace(-4, 0, 3), steps=20)
    np.testing.assert_allclose(got["outer_value"], r.value, rtol=1e-12)
    assert got["best"] == r.best


def test_cli_bench_on_a_file(files):
    path, _, _ = files
    res = CliRunner().invoke(cli, ["bench", "--data", str(path / "sparse.npz"), "--methods",
                                   "reverse,numpy", "-T", "5", "--repeats", "1", "--quick"])
    assert res.exit_code == 0, res.output
    assert "problem: sparse.npz" in res.output and "csr float64" in res.output
    assert res.output.count("\nreverse ") == 1


# ------------------------------------------------------------------- plots
def _png(path):
    mpimg = pytest.importorskip("matplotlib.image")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000
    h, w = mpimg.imread(str(path)).shape[:2]
    assert 300 < h < 3000 and 300 < w < 3000


def _labels(fig):
    return {(a.get_xlabel(), a.get_ylabel()) for a in fig.axes}


def test_history_and_sweep_plots(tmp_path):
    pytest.importorskip("matplotlib")
    X, y = _data()
    prob = fb.BilevelProblem("logistic", "l2", X[:80], y[:80], X[80:], y[80:])
    res = fb.minimize(prob, np.array(0.0), method="reverse", iters=4, steps=20)
    fig = res.history.plot(tmp_path / "h.png")
    _png(tmp_path / "h.png")
    assert _labels(fig) == {(x, y) for x in ("wall time (s)", "passes over the training data")
                            for y in ("outer value f(w_T)", "‖hypergradient‖")}
    sw = fb.sweep(prob, np.linspace(-4, 1, 6), steps=20)
    fig = sw.plot(tmp_path / "s.png")
    _png(tmp_path / "s.png")
    assert _labels(fig) == {("λ", "outer value f(w_T)")}
    ax = fig.axes[0]
    # one tangent per setting, each with the hypergradient as its slope
    tangents = [ln for ln in ax.get_lines() if ln.get_color() == "tab:red"]
    assert len(tangents) == 6
    (x0, x1), (y0, y1) = tangents[2].get_data()
    assert (y1 - y0) / (x1 - x0) == pytest.approx(float(sw.grad[2]), rel=1e-9)
    # a vector λ = v·1 is plotted against v, slope ∇Φ·1
    fl = fb.BilevelProblem("logistic", "feature_l2", X[:80], y[:80], X[80:], y[80:])
    swv = fb.sweep(fl, np.linspace(-4, 1, 3)[:, None] * np.ones(8), steps=10)
    fig = swv.plot()
    assert _labels(fig) == {("λ (every entry)", "outer value f(w_T)")}
    t = [ln for ln in fig.axes[0].get_lines() if ln.get_color() == "tab:red"][1]
    (x0, x1), (y0, y1) = t.get_data()
    assert (y1 - y0) / (x1 - x0) == pytest.approx(float(swv.grad[1].sum()), rel=1e-9)


def test_cli_plots(files):
    pytest.importorskip("matplotlib")
    path, _, _ = files
    for args, png in ((["bench", "--data", str(path / "dense.npz"), "--methods",
                        "reverse,checkpointed,numpy", "-T", "5", "--repeats", "1", "--quick"], "b.png"),
                      (["sweep", "--data", str(path / "dense.npz"), "--lams=-3:0:4", "-T", "5",
                        "--no-progress"], "s.png"),
                      (["minimize", "--data", str(path / "dense.npz"), "--iters", "3", "-T", "5",
                        "--no-progress"], "m.png")):
        res = CliRunner().invoke(cli, args + ["--plot", str(path / png)])
        assert res.exit_code == 0, res.output
        _png(path / png)


def test_plots_need_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    hist = fb.History()
    hist._append(outer_value=1.0, grad_norm=1.0, inner_grad_norm=0.0, residual=0.0,
                 linear_steps=0, passes=1, rows=1, time_s=0.1, accepted=True, tol=0.0)
    with pytest.raises(ImportError, match=r"fastbilevel\[plot\]"):
        hist.plot()
    with pytest.raises(ValueError, match="empty"):
        fb.History().plot()
