"""GFLOP/s of the dense register tiles on one core: the 4×5 tile against the
8×2 tile, for the dots and the accumulation of a pass over X (n × d, c
classes), on rows that stay in cache and on rows streamed from memory.

    python bench/tiles.py [--d 784] [--c 10] [--repeats 3]

Each figure is the best of 7 calls; the two tiles alternate, ``--repeats``
times, so a busy machine slows both alike.
"""
import argparse
import time

import numpy as np
from numba import njit

from fastbilevel.kernels import dense as D


@njit
def _pass(X, W, C, A, reps, wide):
    """``reps`` passes over the 8-row blocks of X: the dots with every class
    and the accumulation, through the 4×5 tiles (``wide``) or the 8×2 ones."""
    Z = np.empty((8, W.shape[0]))
    step = 5 if wide else 2
    for _ in range(reps):
        for i in range(0, X.shape[0] - 7, 8):
            for k in range(0, W.shape[0] - step + 1, step):
                if wide:
                    D._dot4x5(X, i, W, k, Z, 0)
                    D._dot4x5(X, i + 4, W, k, Z, 4)
                else:
                    D._dot8x2(X, i, W[k], W[k + 1], Z, k, Z, k + 1)
            for k in range(0, W.shape[0] - step + 1, step):
                if wide:
                    D._axpy4x5(X, i, C, 0, k, A)
                    D._axpy4x5(X, i + 4, C, 4, k, A)
                else:
                    D._axpy8x2(X, i, C, k, k + 1, A)
    return Z[0, 0]


def _best(f, *args, calls=7):
    f(*args)
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        f(*args)
        ts.append(time.perf_counter() - t)
    return min(ts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=784)
    ap.add_argument("--c", type=int, default=10, help="a multiple of 10 (both tiles cover it)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.c % 10:
        raise SystemExit("--c must be a multiple of 10")
    rng = np.random.default_rng(0)
    d, c = args.d, args.c
    print(f"{'dtype':8s} {'rows':>6s} {'4x5 GFLOP/s':>24s} {'8x2 GFLOP/s':>24s}")
    for dt in (np.float64, np.float32):
        W = rng.standard_normal((c, d)).astype(dt)
        C = rng.standard_normal((8, c))
        for rows in (80, 20000):            # 80 rows stay in cache; 20000 stream
            reps = 20000 // rows
            X = rng.standard_normal((rows, d)).astype(dt)
            A = np.zeros((c, d), dt)
            flops = 4 * rows * d * c * reps
            a, b = [], []
            for _ in range(args.repeats):
                a.append(flops / _best(_pass, X, W, C, A, reps, True) / 1e9)
                b.append(flops / _best(_pass, X, W, C, A, reps, False) / 1e9)
            fmt = lambda v: " ".join(f"{x:.1f}" for x in v)
            print(f"{dt.__name__:8s} {rows:6d} {fmt(a):>24s} {fmt(b):>24s}", flush=True)


if __name__ == "__main__":
    main()
