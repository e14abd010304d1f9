"""fastbilevel.peers, the hypergradient written the way a JAX or PyTorch user
would (``fastbilevel bench --peers``): equal to fastbilevel's reverse mode
on every model × map × format where the package is installed (neither is a
dependency: those tests skip without it); a missing or unknown peer is
named."""
import importlib
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbilevel as fb
from conftest import HYPERS, MODELS, make_problem, random_lam
from fastbilevel import peers

INSTALLED = {p: importlib.util.find_spec(p) is not None for p in peers.PEERS}


@pytest.mark.parametrize("fmt", ["dense64", "csr64", "dense32"])
@pytest.mark.parametrize("hyper", HYPERS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("peer", peers.PEERS)
def test_peer_equals_reverse(peer, model, hyper, fmt):
    pytest.importorskip(peer)
    prob, _ = make_problem(model, hyper, fmt, n=30, m=10, d=6)
    lam = random_lam(prob)
    ours = fb.hypergradient(prob, lam, "reverse", steps=5, step_size=0.2)
    grad, value = peers.hypergradient(peer, prob, lam, 5, 0.2)()
    assert grad.shape == np.shape(ours.grad)
    tol = 1e-12 if fmt.endswith("64") else 1e-5      # float32: the peer computes in float32
    assert np.linalg.norm(grad - ours.grad) <= tol * np.linalg.norm(ours.grad)
    assert abs(value - ours.value) <= tol * abs(ours.value)


def test_unknown_and_missing_peers_are_named(monkeypatch):
    prob, _ = make_problem("linear", "l2", "dense64", n=10, m=5, d=3)
    with pytest.raises(ValueError, match="peer='mxnet' is not one of"):
        peers.hypergradient("mxnet", prob, np.array(0.0), 2, 0.1)
    real = importlib.import_module

    def no_jax(name, *a, **kw):
        if name == "jax":
            raise ImportError("No module named 'jax'")
        return real(name, *a, **kw)
    monkeypatch.setattr(importlib, "import_module", no_jax)
    with pytest.raises(peers.PeerMissing, match="pip install jax"):
        peers.hypergradient("jax", prob, np.array(0.0), 2, 0.1)


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "fastbilevel.cli.main", "bench", "--problem",
                           "toy", "--quick", "-T", "3", "--repeats", "1", *args],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))


def test_bench_peers_rows_or_notes(tmp_path):
    out = tmp_path / "b.json"
    p = _bench("--methods", "reverse", "--peers", "jax,torch", "--json", str(out))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    rows = {r["method"]: r for r in json.load(open(out))["results"]}
    for peer, there in INSTALLED.items():
        if there:
            r = rows[peer]
            assert r["peer_rel_err"] < 1e-10 and r["passes"] == rows["reverse"]["passes"]
            assert r["reverse_speedup"] == pytest.approx(r["median_s"]
                                                         / rows["reverse"]["median_s"])
            assert f"peer {peer} (float64)" in p.stdout
        else:
            assert peer not in rows
            assert f"pip install {peer}" in p.stdout


def test_bench_unknown_peer_is_a_usage_error():
    p = _bench("--peers", "jax,mxnet")
    assert p.returncode == 2 and "--peers" in p.stderr and "mxnet" in p.stderr, p.stderr
