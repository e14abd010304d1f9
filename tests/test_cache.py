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
