"""Time a first hypergradient call in a fresh environment, per format and dtype.

    python bench/cold_call.py [--formats dense,csr] [--dtypes float64,float32]
                              [--method reverse] [--repeats 1]

For each format and dtype, a new process with an empty kernel cache (its own
``NUMBA_CACHE_DIR`` in a temporary folder) builds a small logistic problem
and times its first ``hypergradient`` call (T = 3), which compiles every
kernel the call needs; a second process with the same, now filled, cache
times the same call again (the cost of a later process). Each figure is a
separate process; with ``--repeats`` the median of that many cold runs is
printed with their range. This machine's noise is a few seconds: compare
versions in the same command, or alternate them.
"""
import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

CHILD = """
import time
import numpy as np, scipy.sparse as sp
import fastbilevel as fb
fmt, dtype, method = {fmt!r}, {dtype!r}, {method!r}
rng = np.random.default_rng(0)
X = rng.standard_normal((40, 6))
y = np.sign(X[:, 0] + 0.1)
if fmt == "csr":
    X = sp.csr_matrix(X * (rng.random(X.shape) < 0.6))
prob = fb.BilevelProblem("logistic", "l2", X[:30], y[:30], X[30:], y[30:], dtype=dtype)
t = time.perf_counter()
fb.hypergradient(prob, np.array(0.0), method, steps=3)
print(time.perf_counter() - t)
"""


def _time_call(fmt, dtype, method, cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache)
    out = subprocess.run([sys.executable, "-c", CHILD.format(fmt=fmt, dtype=dtype,
                                                             method=method)],
                         env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{fmt} {dtype}: the child process failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formats", default="dense,csr")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--method", default="reverse")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)
    print(f"{'data':16s} {'cold first call':>24s} {'warm first call':>16s}")
    for fmt in args.formats.split(","):
        for dtype in args.dtypes.split(","):
            cold = []
            for _ in range(max(1, args.repeats)):
                cache = tempfile.mkdtemp(prefix="fastbilevel-cold-")
                try:
                    cold.append(_time_call(fmt, dtype, args.method, cache))
                    warm = _time_call(fmt, dtype, args.method, cache)
                finally:
                    shutil.rmtree(cache, ignore_errors=True)
            spread = f" ({min(cold):.1f}-{max(cold):.1f})" if len(cold) > 1 else ""
            print(f"{fmt + ' ' + dtype:16s} {statistics.median(cold):>14.1f} s{spread:>8s}"
                  f" {warm:>14.2f} s", flush=True)


if __name__ == "__main__":
    main()
