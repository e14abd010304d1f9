"""float32 against float64 data on the hyper-cleaning problem, timed call by
call alternately in one process, so that a busy machine slows both alike.

    python bench/dtype_ratio.py [-T 100] [--repeats 7]

Runs a reverse hypergradient (T steps, γ = 1/L of the float64 problem, λ = 0)
on the float64 and the float32 copies of ``datasets.hypercleaning()``,
alternating, and prints both medians, the ratio of the medians, the median
of the per-pair ratios with their range, and the float32 hypergradient's
relative error against the float64 one. (``fastbilevel bench --dtype both``
prints a paired figure of the same kind, for any bench problem, besides its
table rows, which time all float64 calls first and then the float32 ones.)
"""
import argparse
import time

import numpy as np

import fastbilevel as fb
from fastbilevel import datasets


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-T", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    probs = {dt: datasets.hypercleaning(dtype=dt).problem() for dt in ("float64", "float32")}
    lam = np.zeros(probs["float64"].lam_shape)
    gamma = 1.0 / probs["float64"].lipschitz(lam)
    grads = {}

    def call(dt):
        return fb.hypergradient(probs[dt], lam, "reverse", steps=args.T, step_size=gamma)

    for dt in probs:
        grads[dt] = call(dt).grad                 # compile, or load from the cache
    ts = {dt: [] for dt in probs}
    for _ in range(args.repeats):
        for dt in probs:
            t = time.perf_counter()
            call(dt)
            ts[dt].append(time.perf_counter() - t)
    m64, m32 = np.median(ts["float64"]), np.median(ts["float32"])
    pairs = [a / b for a, b in zip(ts["float64"], ts["float32"])]
    err = np.linalg.norm(grads["float32"] - grads["float64"]) / np.linalg.norm(grads["float64"])
    print(f"hyper-cleaning reverse, T={args.T}, medians of {args.repeats} alternating calls: "
          f"float64 {m64:.3f} s, float32 {m32:.3f} s; float32 is {m64 / m32:.2f}x faster "
          f"(median of per-pair ratios {np.median(pairs):.2f}x, range {min(pairs):.2f}-"
          f"{max(pairs):.2f}); float32 hypergradient relative error {err:.1e}")


if __name__ == "__main__":
    main()
