"""Timing, machine peaks and roofline accounting for ``fastbilevel bench``.

The roofline bound of a run is max(bytes / peak read bandwidth,
flops / peak GEMM rate), with the bytes and flops the method must move:
every pass reads X once (dense: n·d·itemsize; CSR: nnz·(itemsize + 4) +
(n + 1)·8), a gradient pass does 4·nnz·c flops (dots and accumulation), an
HVP pass 6·nnz·c (two dots, one accumulation). Both peaks are measured in the
same run, on the same machine, as the timings.
"""
import time

import numpy as np
from numba import njit, prange

from . import config
from ._parallel import nchunks
from .hypergrad import hypergradient, resolve_step_size
from .reference import numpy_reverse

_FM = set(config.FASTMATH)


@njit(cache=True, fastmath=_FM)
def _sum_range(a, lo, hi):
    # a 0-based slice: with range(lo, hi) Numba cannot prove i >= 0 and its
    # negative-index wraparound check keeps the loop scalar (5 vs 26 GB/s)
    b = a[lo:hi]
    s = 0.0
    for i in range(b.shape[0]):
        s += b[i]
    return s


@njit(cache=True, parallel=True)
def _read_all(a, nch):
    """Σ a, split in nch parallel chunks (a pure streaming read of a). The
    chunk sum is a fastmath helper: a reduction written inline in the prange
    body is not vectorized."""
    n = a.shape[0]
    parts = np.zeros(nch)
    for t in prange(nch):
        parts[t] = _sum_range(a, (n * t) // nch, (n * (t + 1)) // nch)
    return parts.sum()


def median_time(fun, repeats):
    """(median, all) wall seconds of ``repeats`` calls of fun()."""
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fun()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), ts


def machine_peaks(quick=False):
    """Measured peak read bandwidth (GB/s, all threads, an array far larger
    than the caches) and GEMM rate (GFLOP/s, float64, numpy's BLAS)."""
    nbytes = (256 if quick else 1024) * 2**20
    a = np.ones(nbytes // 8)
    nch = nchunks()
    _read_all(a, nch)
    best = min(median_time(lambda: _read_all(a, nch), 1)[0] for _ in range(5 if quick else 10))
    bw = nbytes / best / 1e9
    del a
    k = 1500 if quick else 3000
    A = np.random.default_rng(0).standard_normal((k, k))
    A @ A
    best = min(median_time(lambda: A @ A, 1)[0] for _ in range(3 if quick else 5))
    return {"read_GBps": bw, "gemm_GFLOPs": 2 * k ** 3 / best / 1e9}


def pass_costs(problem):
    """Bytes per pass over X and X_val, and flops per nonzero·class."""
    item = problem.dtype.itemsize
    if problem.sparse:
        b_tr = problem.nnz * (item + 4) + (problem.n + 1) * 8
        b_va = problem.nnz_val * (item + 4) + (problem.m + 1) * 8
    else:
        b_tr = problem.nnz * item
        b_va = problem.nnz_val * item
    return b_tr, b_va


def reverse_cost(problem, steps):
    """(bytes, flops) that reverse-mode through ``steps`` GD steps must move:
    T gradient passes, T HVP passes, one validation gradient pass."""
    b_tr, b_va = pass_costs(problem)
    c = problem.c
    flops = steps * (4 + 6) * problem.nnz * c + 4 * problem.nnz_val * c
    return 2 * steps * b_tr + b_va, flops


def run_bench(problem, lam, methods, steps, repeats, peaks, step_size=None):
    """Time each method on (problem, lam); returns one dict per method."""
    gamma = resolve_step_size(problem, lam, step_size)
    nbytes, flops = reverse_cost(problem, steps)
    bound = max(nbytes / (peaks["read_GBps"] * 1e9), flops / (peaks["gemm_GFLOPs"] * 1e9))
    calls = {
        "reverse": lambda: hypergradient(problem, lam, "reverse", steps=steps, step_size=gamma),
        "numpy": lambda: numpy_reverse(problem, lam, steps, gamma, dtype=problem.dtype),
    }
    rows = []
    for m in methods:
        fun = calls[m]
        t0 = time.perf_counter()
        fun()
        first = time.perf_counter() - t0
        med, ts = median_time(fun, repeats)
        rows.append({
            "method": m, "dtype": str(problem.dtype), "steps": steps,
            "first_call_s": first, "median_s": med, "times_s": ts,
            "passes": 2 * steps + 1, "bytes": nbytes, "flops": flops,
            "GBps": nbytes / med / 1e9, "GFLOPs": flops / med / 1e9,
            "roofline_s": bound, "roofline_frac": bound / med,
            "trajectory_bytes": steps * problem.dim_w * 8,
        })
    base = {r["dtype"]: r["median_s"] for r in rows if r["method"] == "numpy"}
    for r in rows:
        r["speedup_vs_numpy"] = base[r["dtype"]] / r["median_s"] if r["dtype"] in base else None
    return rows


def format_table(rows):
    head = (f"{'method':<10}{'dtype':<9}{'T':>5}{'first s':>9}{'median s':>10}"
            f"{'passes':>8}{'GB/s':>8}{'GFLOP/s':>9}{'roofline':>10}{'vs numpy':>10}")
    out = [head, "-" * len(head)]
    for r in rows:
        sp = f"{r['speedup_vs_numpy']:.2f}x" if r["speedup_vs_numpy"] else "-"
        out.append(f"{r['method']:<10}{r['dtype']:<9}{r['steps']:>5}{r['first_call_s']:>9.3f}"
                   f"{r['median_s']:>10.4f}{r['passes']:>8}{r['GBps']:>8.1f}{r['GFLOPs']:>9.1f}"
                   f"{100 * r['roofline_frac']:>9.1f}%{sp:>10}")
    return "\n".join(out)
