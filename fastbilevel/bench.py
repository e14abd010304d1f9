"""Timing, machine peaks and roofline accounting for ``fastbilevel bench``.

The roofline bound of a run is max(bytes / peak read bandwidth,
flops / peak compute rate: NumPy's GEMM, or for float64 our own FMA loop
where that is higher), with the bytes and flops the method must move:
every pass reads X once (dense: n·d·itemsize; CSR: nnz·(itemsize + 4) +
(n + 1)·8), a gradient pass does 4·nnz·c flops (dots and accumulation), an
HVP pass 6·nnz·c (two dots, one accumulation). Both peaks are measured in the
same run, on the same machine, as the timings.
"""
import os
import time

import numpy as np
from numba import njit, prange

from . import config, datasets
from ._checks import resolve_step_size
from ._parallel import nchunks
from .hypergrad import hypergradient, solve
from .reference import numpy_fsla, numpy_reverse, numpy_reverse_sweep, numpy_stocbio
from .stochastic import fsla, hessian_batch_sizes, stocbio

_FM = set(config.FASTMATH)


# the built-in problems of ``fastbilevel bench``, the methods it times, and
# (full size, --quick size, default T) of each problem
PROBLEMS = ("hypercleaning", "text", "ridge", "binary", "toy")
METHODS = ("reverse", "checkpointed", "recompute", "truncated", "forward", "implicit_cg",
           "implicit_neumann", "implicit_hb", "solve", "numpy", "stocbio", "numpy_stocbio",
           "fsla", "numpy_fsla")
SIZES = {
    "hypercleaning": (dict(n=20000, m=5000, d=784, c=10), dict(n=5000, m=1000, d=784, c=10), 100),
    "text": (dict(n=11314, m=7532, d=101631), dict(n=2000, m=1000, d=20000), 100),
    "ridge": (dict(n=20000, m=5000, d=500), dict(n=2000, m=500, d=200), 100),
    "binary": (dict(n=20000, m=5000, d=784), dict(n=5000, m=1000, d=784), 100),
    "toy": ({}, {}, 100),
}


def bench_dataset(name, quick, seed, dtype):
    """The built-in dataset ``name`` at its bench size (``SIZES``)."""
    full, small, _ = SIZES[name]
    kw = dict(small if quick else full)
    if name == "hypercleaning":
        return datasets.hypercleaning(seed=seed, dtype=dtype, **kw)
    if name == "text":
        return datasets.text(seed=seed, dtype=dtype, **kw)
    if name == "ridge":
        return datasets.ridge(seed=seed, dtype=dtype, **kw)
    if name == "binary":
        return datasets.binary(seed=seed, dtype=dtype, **kw)
    return datasets.shaban_toy()


def spec_dataset(spec):
    """The dataset of a child process's spec: the user's file (``data``) or
    a built-in problem."""
    if spec.get("data"):
        return datasets.load_file(spec["data"], model=spec["model"],
                                  hyper=spec["hyper"] or "l2",
                                  val_fraction=spec["val_fraction"], seed=spec["seed"],
                                  dtype=spec["dtype"])
    return bench_dataset(spec["problem"], spec["quick"], spec["seed"], spec["dtype"])


def default_lam(prob):
    """λ the bench times at: 0, or −2 per feature for ``feature_l2``."""
    return np.zeros(prob.lam_shape) if prob.hyper != "feature_l2" else np.full(prob.d, -2.0)


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


FMA_CHAINS = 128        # independent multiply-add chains per thread: 16 vectors of 8 doubles


@njit(cache=True, fastmath={"contract", "reassoc", "nsz", "arcp"})
def _fma_chains(n, x, y):
    """a_k ← a_k·x + y, n times, for FMA_CHAINS independent a_k held in
    vector registers (no memory traffic); returns Σ_k a_k."""
    acc = np.empty(FMA_CHAINS)
    for k in range(FMA_CHAINS):
        acc[k] = 1.0 + k * 1e-3
    for _ in range(n):
        for k in range(FMA_CHAINS):
            acc[k] = acc[k] * x + y
    s = 0.0
    for k in range(FMA_CHAINS):
        s += acc[k]
    return s


@njit(cache=True, parallel=True)
def _fma_all(n, x, y, nch):
    """``_fma_chains`` on each of nch chunks at once; the sum of the results."""
    out = np.empty(nch)
    for c in prange(nch):
        out[c] = _fma_chains(n, x, y)
    return out.sum()


def fma_rate(quick=False):
    """Peak float64 multiply-add rate (GFLOP/s) of Numba-compiled code on all
    threads: FMA_CHAINS independent chains per thread in vector registers.
    A compute peak of our own, which no BLAS setting of the environment can
    lower (compare NumPy's GEMM)."""
    nch = nchunks()
    n = 200_000 if quick else 1_000_000
    _fma_all(10, 0.999999, 1e-6, nch)
    best = min(median_time(lambda: _fma_all(n, 0.999999, 1e-6, nch), 1)[0]
               for _ in range(3 if quick else 5))
    return 2.0 * FMA_CHAINS * n * nch / best / 1e9


def gemm_rate(k, reps, dtype="float64"):
    """GEMM rate (GFLOP/s) of NumPy's BLAS in this process in ``dtype``: the
    best of ``reps`` k×k products."""
    A = np.random.default_rng(0).standard_normal((k, k)).astype(dtype)
    A @ A
    best = min(median_time(lambda: A @ A, 1)[0] for _ in range(reps))
    return 2 * k ** 3 / best / 1e9


def machine_peaks(quick=False):
    """Measured peak read bandwidth (GB/s, all threads, an array far larger
    than the caches) and GEMM rates (GFLOP/s, NumPy's BLAS): ``gemm_*`` in
    float64, ``gemm32_*`` in float32 (the compute peak of float32 rows,
    whose tiles multiply in float32).

    Where the environment overrides OpenBLAS's kernel choice
    (``BLAS_OVERRIDES``, e.g. an older core type that halves the rate), the
    GEMM is also timed in a child process without the override
    (``gemm_GFLOPs_free``; ``gemm_GFLOPs_process`` is this process's rate)
    and ``gemm_GFLOPs`` is the higher of the two: what the machine can do,
    not what the override lets NumPy do. ``fma_GFLOPs`` is our own float64
    FMA loop (:func:`fma_rate`); float64 rows are bounded by the higher of
    it and ``gemm_GFLOPs`` (:func:`compute_peak`)."""
    nbytes = (256 if quick else 1024) * 2**20
    a = np.ones(nbytes // 8)
    nch = nchunks()
    _read_all(a, nch)
    best = min(median_time(lambda: _read_all(a, nch), 1)[0] for _ in range(5 if quick else 10))
    bw = nbytes / best / 1e9
    del a
    k, reps = (1500, 3) if quick else (3000, 5)
    overridden = any(v in os.environ for v in BLAS_OVERRIDES)
    out = {"read_GBps": bw}
    for key, dt in (("gemm", "float64"), ("gemm32", "float32")):
        here = gemm_rate(k, reps, dt)
        free = _without_override({"gemm": k, "reps": reps, "dtype": dt}) if overridden else None
        out.update({f"{key}_GFLOPs": max(here, free or 0.0), f"{key}_GFLOPs_process": here,
                    f"{key}_GFLOPs_free": free})
    out["fma_GFLOPs"] = fma_rate(quick)
    out["blas_overrides"] = {v: os.environ[v] for v in BLAS_OVERRIDES if v in os.environ}
    return out


def compute_peak(peaks, dtype):
    """The compute rate (GFLOP/s) that bounds a run on ``dtype`` data:
    NumPy's float32 GEMM for float32; for float64 the higher of NumPy's GEMM
    and our FMA loop."""
    if str(dtype) == "float32":
        return peaks["gemm32_GFLOPs"]
    return max(peaks["gemm_GFLOPs"], peaks.get("fma_GFLOPs") or 0.0)


def _without_override(spec):
    """``python -m fastbilevel.bench SPEC`` in a child process with the BLAS
    override variables removed from its environment: the float it prints
    (a GEMM rate or a median time)."""
    import json
    import subprocess
    import sys
    env = {key: v for key, v in os.environ.items() if key not in BLAS_OVERRIDES}
    out = subprocess.run([sys.executable, "-m", "fastbilevel.bench", json.dumps(spec)],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def _method_time(spec):
    prob = spec_dataset(spec).problem(hyper=spec["hyper"], dtype=spec["dtype"])
    lam = default_lam(prob)
    fun = method_call(prob, lam, spec["time"], spec["steps"], resolve_step_size(prob, lam, None),
                      **spec["opts"])
    fun()
    return median_time(fun, spec["repeats"])[0]


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


def method_cost(problem, stats):
    """(bytes, flops) a run must move, from the passes it made: a gradient pass
    does 4·nnz·c flops, an H·v pass 6·nnz·c (a forward-mode pass shared with
    the gradient 8·nnz·c), each reads X once; validation passes read X_val."""
    b_tr, b_va = pass_costs(problem)
    c = problem.c
    if stats["method"] == "forward":   # T·dim λ passes, the first of each step shared
        flops = stats["steps"] * (8 + 6 * (problem.dim_lam - 1)) * problem.nnz * c
    else:
        flops = (4 * stats["gradient_passes"] + 6 * stats["hvp_passes"]) * problem.nnz * c
    flops += 4 * stats["val_passes"] * problem.nnz_val * c
    return stats["passes"] * b_tr + stats["val_passes"] * b_va, flops


STOCHASTIC_BATCH = 1000
STOCHASTIC_Q = 10


def _stochastic_call(problem, lam, method, steps):
    """stocBiO (D = steps SGD steps, Q = 10, batches of ≤ 1000 rows, decaying
    Hessian batches with the largest 1000) or ``steps`` FSLA iterations, fused
    or in NumPy/SciPy on the same batches; the stats count rows read as
    fractions of a pass."""
    n, m = problem.n, problem.m
    S, Q = min(n, STOCHASTIC_BATCH), STOCHASTIC_Q
    eta = 1.0 / problem.lipschitz(lam, per_sample=True)
    sw = problem.hyper == "sample_weights"
    bv = min(m, S)
    if method in ("stocbio", "numpy_stocbio"):
        sizes = hessian_batch_sizes(S / Q, Q, eta, problem.strong_convexity(lam), n=n)
        grad, hvp, val = steps * S / n, (sizes.sum() + S * sw) / n, bv / m
        if method == "stocbio":
            run = lambda: stocbio(problem, lam, steps, eta, Q=Q, eta=eta, batch_size=S,
                                  hessian_sizes=sizes, outer_batch=bv, cross_batch=S)
        else:
            run = lambda: numpy_stocbio(problem, lam, steps, eta, Q, eta, S, sizes, bv, S)
    else:
        kw = dict(delta=1.0, c_tau=eta, c_beta=eta, c_eta=1.0)
        grad, hvp, val = steps * S / n, steps * S * (1 + 2 * sw) / n, steps * bv / m
        if method == "fsla":
            run = lambda: fsla(problem, lam, steps, batch_size=S, outer_batch=bv,
                               eval_every=steps, **kw)
        else:
            run = lambda: numpy_fsla(problem, lam, steps, kw["delta"], kw["c_tau"],
                                     kw["c_beta"], kw["c_eta"], S, bv, S)
    stats = {"method": method, "steps": steps, "gradient_passes": grad, "hvp_passes": hvp,
             "val_passes": val, "passes": round(grad + hvp, 2), "trajectory_bytes": 0}

    def call():
        run()
        return stats
    return call


def method_call(problem, lam, method, steps, gamma, solver="gd", momentum=None,
                snapshots=None, schedule="revolve", K=None):
    """A zero-argument callable running ``method`` once; returns its stats
    (``numpy``: the NumPy reference reverse sweep; ``solve``: the inner loop
    alone; ``stocbio``/``fsla`` and their ``numpy_`` twins: see
    :func:`_stochastic_call`)."""
    if method in ("stocbio", "numpy_stocbio", "fsla", "numpy_fsla"):
        return _stochastic_call(problem, lam, method, steps)
    if method == "numpy":
        def run():
            numpy_reverse(problem, lam, steps, gamma, dtype=problem.dtype)
            return {"method": "numpy", "steps": steps, "passes": 2 * steps, "gradient_passes": steps,
                    "hvp_passes": steps, "val_passes": 1, "trajectory_bytes": steps * problem.dim_w * 8}
        return run
    if method == "solve":
        return lambda: solve(problem, lam, solver, steps, gamma, momentum=momentum).stats
    if method.startswith("implicit_"):
        ls = {"implicit_cg": "cg", "implicit_neumann": "neumann", "implicit_hb": "heavy_ball"}[method]
        return lambda: hypergradient(problem, lam, "implicit", solver, steps=steps, step_size=gamma,
                                     momentum=momentum, linear_solver=ls,
                                     K=K if K is not None else 100).stats
    kw = {"snapshots": snapshots, "schedule": schedule} if method == "checkpointed" else \
        {"K": K if K is not None else max(1, steps // 10)} if method == "truncated" else {}
    return lambda: hypergradient(problem, lam, method, solver, steps=steps, step_size=gamma,
                                 momentum=momentum, **kw).stats


def float32_against_float64(p64, p32, steps, repeats, clock=time.perf_counter):
    """The reverse hypergradient on float32 data against float64 data (the
    same λ and step size: the float64 problem's default; T = ``steps``):
    its relative error ‖h₃₂ − h₆₄‖/‖h₆₄‖, and how much faster float32 runs,
    timed in ``repeats`` pairs of calls that alternate between the two
    (ABBA order), so that a change in the machine's load slows both alike.
    Returns {"rel_err", "speedup" (the median of the per-pair ratios),
    "speedup_min", "speedup_max", "pairs", "float64_s", "float32_s" (the
    medians)}. ``clock``: the timer (seconds)."""
    lam = default_lam(p64)
    gamma = resolve_step_size(p64, lam, None)
    calls = [lambda p=p: hypergradient(p, lam, "reverse", steps=steps, step_size=gamma)
             for p in (p64, p32)]
    h64, h32 = (call().grad for call in calls)          # compiled or loaded, and warm
    ts = ([], [])
    for k in range(repeats):
        for j in ((0, 1) if k % 2 == 0 else (1, 0)):
            t0 = clock()
            calls[j]()
            ts[j].append(clock() - t0)
    ratios = [a / b for a, b in zip(*ts)]
    return {"rel_err": float(np.linalg.norm(h32 - h64) / np.linalg.norm(h64)),
            "speedup": float(np.median(ratios)), "speedup_min": min(ratios),
            "speedup_max": max(ratios), "pairs": repeats,
            "float64_s": float(np.median(ts[0])), "float32_s": float(np.median(ts[1]))}


def _timed(fun, repeats):
    """(stats of the first call, its time, median of ``repeats`` more, their times)."""
    t0 = time.perf_counter()
    st = fun()
    first = time.perf_counter() - t0
    med, ts = median_time(fun, repeats)
    return st, first, med, ts


def run_bench(problem, lam, methods, steps, repeats, peaks, step_size=None, spec=None,
              **opts):
    """Time each method on (problem, lam) in this process; one dict per method.
    ``opts``: solver, momentum, snapshots, schedule, K. Where the environment
    overrides OpenBLAS's kernel choice and ``spec`` says how to rebuild the
    problem (at ``default_lam``), each NumPy method is also timed in a
    child process without the override (``<method>_free``), and the
    speed-ups are taken against the faster of the two."""
    gamma = resolve_step_size(problem, lam, step_size)
    rows = []
    for m in methods:
        st, first, med, ts = _timed(method_call(problem, lam, m, steps, gamma, **opts),
                                    repeats)
        nbytes, flops = method_cost(problem, st)
        bound = max(nbytes / (peaks["read_GBps"] * 1e9),
                    flops / (compute_peak(peaks, problem.dtype) * 1e9))
        rows.append({
            "method": m, "dtype": str(problem.dtype), "steps": steps,
            "first_call_s": first, "median_s": med, "times_s": ts,
            "passes": st["passes"],
            "bytes": nbytes, "flops": flops,
            "GBps": nbytes / med / 1e9, "GFLOPs": flops / med / 1e9,
            "roofline_s": bound, "roofline_frac": bound / med,
            "trajectory_bytes": int(st["trajectory_bytes"]),
        })
    if spec is not None and any(v in os.environ for v in BLAS_OVERRIDES):
        for r in [r for r in rows if r["method"].startswith("numpy")]:
            med = _without_override(dict(spec, time=r["method"], steps=steps, repeats=repeats,
                                     opts=opts))
            free = dict(r, method=r["method"] + "_free", median_s=med, times_s=[med],
                        first_call_s=float("nan"), GBps=r["bytes"] / med / 1e9,
                        GFLOPs=r["flops"] / med / 1e9, roofline_frac=r["roofline_s"] / med)
            rows.append(free)
    base = {}
    for r in rows:                  # a NumPy method: the faster of with / without override
        if r["method"].startswith("numpy"):
            key = (r["dtype"], r["method"].removesuffix("_free"))
            base[key] = min(base.get(key, np.inf), r["median_s"])
    for r in rows:     # stocbio and fsla against their own NumPy twins, the rest against numpy
        twin = "numpy_" + r["method"] if r["method"] in ("stocbio", "fsla") else "numpy"
        key = (r["dtype"], r["method"] if r["method"].startswith("numpy_") else twin)
        r["speedup_vs_numpy"] = base[key] / r["median_s"] if key in base else None
    return rows


def run_peer_bench(problem, lam, peers, steps, repeats, rows, peaks, step_size=None):
    """Time the reverse-mode hypergradient written the way a JAX or PyTorch
    user would (:mod:`fastbilevel.peers`) on the same problem, λ, step size
    and T as the ``reverse`` row: one row per installed peer (``method`` is
    the peer's name) with its relative difference from fastbilevel's
    reverse hypergradient (``peer_rel_err``), fastbilevel's speed-up over it
    (``reverse_speedup``, where ``rows`` hold a reverse row) and the usual
    roofline columns for the passes the method makes. Returns (rows, notes):
    a peer that is not installed gives a note instead of a row."""
    from . import peers as P
    gamma = resolve_step_size(problem, lam, step_size)
    ours = hypergradient(problem, lam, "reverse", steps=steps, step_size=gamma).grad
    dt = str(problem.dtype)
    rev = {r["method"]: r["median_s"] for r in rows if r["dtype"] == dt}
    out, notes = [], []
    for name in peers:
        try:
            fun = P.hypergradient(name, problem, lam, steps, gamma)
        except P.PeerMissing as e:
            notes.append(str(e))
            continue
        got = {}

        def call():
            got["grad"], got["value"] = fun()
            return {"method": name, "steps": steps, "passes": 2 * steps,
                    "gradient_passes": steps, "hvp_passes": steps, "val_passes": 1}
        st, first, med, ts = _timed(call, repeats)
        nbytes, flops = method_cost(problem, st)
        bound = max(nbytes / (peaks["read_GBps"] * 1e9),
                    flops / (compute_peak(peaks, problem.dtype) * 1e9))
        out.append({
            "method": name, "dtype": dt, "steps": steps, "first_call_s": first,
            "median_s": med, "times_s": ts, "passes": st["passes"], "bytes": nbytes,
            "flops": flops, "GBps": nbytes / med / 1e9, "GFLOPs": flops / med / 1e9,
            "roofline_s": bound, "roofline_frac": bound / med,
            "trajectory_bytes": steps * problem.dim_w * problem.dtype.itemsize,
            "peer_rel_err": float(np.linalg.norm(got["grad"] - ours)
                                  / max(np.linalg.norm(ours), 1e-300)),
            "reverse_speedup": med / rev["reverse"] if "reverse" in rev else None,
            "speedup_vs_numpy": (min(t for m, t in rev.items() if m.startswith("numpy")
                                     and m.removesuffix("_free") == "numpy") / med
                                 if "numpy" in rev else None),
        })
    return out, notes


# the methods ``bench --device cuda`` also times on the GPU backend
GPU_METHODS = ("reverse", "checkpointed", "recompute", "truncated", "forward", "implicit_cg",
               "implicit_neumann", "implicit_hb", "solve", "stocbio", "fsla")


def gpu_bandwidth(backend):
    """Peak memory bandwidth of the backend's GPU in GB/s, from its
    attributes (2 × memory clock × bus width), or None (the simulator)."""
    try:
        dev = backend.cuda.get_current_device()
        return 2.0 * dev.MEMORY_CLOCK_RATE * 1e3 * dev.GLOBAL_MEMORY_BUS_WIDTH / 8 / 1e9
    except Exception:
        return None


def run_gpu_bench(problem, lam, methods, steps, repeats, cpu_rows, step_size=None, **opts):
    """Time ``methods`` (those of ``GPU_METHODS``) on ``problem.to("cuda")``
    with the CPU rows' step size: one row per method, ``<method>@cuda``, with
    the fraction of the GPU's memory bandwidth the bytes the method must
    move take (``roofline_frac``; None where the bandwidth is unknown) and
    the speed-up over the same method on the CPU (``speedup_vs_cpu``).
    Returns (rows, the GPU's name, its bandwidth in GB/s or None)."""
    g = problem.to("cuda")
    bw = gpu_bandwidth(g.backend)
    gamma = resolve_step_size(problem, lam, step_size)
    base = {r["method"]: r["median_s"] for r in cpu_rows if r["dtype"] == str(problem.dtype)}
    numpy_s = min((t for m, t in base.items() if m.startswith("numpy") and "_" not in
                   m.removesuffix("_free")), default=None)
    rows = []
    for m in methods:
        if m not in GPU_METHODS:
            continue
        st, first, med, ts = _timed(method_call(g, lam, m, steps, gamma, **opts), repeats)
        nbytes, flops = method_cost(problem, st)
        bound = nbytes / (bw * 1e9) if bw else None
        rows.append({
            "method": m + "@cuda", "device": g.backend.device_name, "dtype": str(problem.dtype),
            "steps": steps, "first_call_s": first, "median_s": med, "times_s": ts,
            "passes": st["passes"], "bytes": nbytes, "flops": flops,
            "GBps": nbytes / med / 1e9, "GFLOPs": flops / med / 1e9,
            "roofline_s": bound, "roofline_frac": bound / med if bound else None,
            "trajectory_bytes": int(st["trajectory_bytes"]),
            "speedup_vs_numpy": numpy_s / med if numpy_s else None,
            "speedup_vs_cpu": base[m] / med if m in base else None,
        })
    return rows, g.backend.device_name, bw


# the BLAS override of some environments (OpenBLAS pinned to an older core
# type): the NumPy baseline of a sweep is also timed in a child process
# without it, so that no baseline is slowed by the environment
BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def sweep_lams(problem, B):
    """B settings for ``--sweep``: an l2 grid from −4 to 0, or the default λ
    plus B evenly spaced shifts in [−1, 1]."""
    if problem.hyper == "l2":
        return np.linspace(-4.0, 0.0, B)
    shifts = np.linspace(-1.0, 1.0, B) if B > 1 else np.zeros(1)
    return np.stack([default_lam(problem) + s for s in shifts])


def run_sweep_bench(problem, B, steps, repeats, peaks, spec=None):
    """Time a reverse-mode sweep of B settings three (or four) ways: the
    batched kernels (``sweep``), B single ``hypergradient`` calls
    (``singles``) and the NumPy/SciPy batched reference (``numpy_sweep``:
    one matrix product with B columns per pass), plus, when this
    environment overrides OpenBLAS's kernel choice and ``spec`` says how to
    rebuild the problem, the same reference in a child process without the
    override (``numpy_sweep_free``). One shared step size (the smallest 1/L
    over the settings). Rows as :func:`run_bench`, with ``settings``,
    ``settings_per_s`` (settings × steps per second) and
    ``speedup_vs_singles``."""
    from .sweep import sweep
    lams = sweep_lams(problem, B)
    gamma = min(resolve_step_size(problem, lam, None) for lam in lams)
    b_tr, b_va = pass_costs(problem)
    c = problem.c
    one_flops = (4 * steps + 6 * steps) * problem.nnz * c + 4 * problem.nnz_val * c
    calls = {
        "sweep": lambda: sweep(problem, lams, steps=steps, step_size=gamma,
                               strategy="rows").stats["passes"],
        "singles": lambda: sum(hypergradient(problem, lam, steps=steps, step_size=gamma)
                               .stats["passes"] for lam in lams),
        "numpy_sweep": lambda: (numpy_reverse_sweep(problem, lams, steps, gamma), 2 * steps)[1],
    }
    rows = []
    for name, fun in calls.items():
        t0 = time.perf_counter()
        passes = fun()
        first = time.perf_counter() - t0
        med, ts = median_time(fun, repeats)
        rows.append(_sweep_row(problem, name, B, steps, passes, first, med, ts, b_tr, b_va,
                               one_flops, peaks))
    if spec is not None and any(k in os.environ for k in BLAS_OVERRIDES):
        med = _without_override(dict(spec, B=B, steps=steps, repeats=repeats))
        rows.append(_sweep_row(problem, "numpy_sweep_free", B, steps, 2 * steps, float("nan"),
                               med, [med], b_tr, b_va, one_flops, peaks))
    base = min(r["median_s"] for r in rows if r["method"].startswith("numpy"))
    singles = next(r["median_s"] for r in rows if r["method"].startswith("singles"))
    for r in rows:
        r["speedup_vs_numpy"] = base / r["median_s"]
        r["speedup_vs_singles"] = singles / r["median_s"]
    return rows


def run_gpu_sweep_bench(problem, B, steps, repeats, cpu_rows, peaks, bandwidth):
    """Time the batched sweep of :func:`run_sweep_bench` on
    ``problem.to("cuda")`` (same settings and step size): one row,
    ``sweep[B]@cuda``, with the fraction of the GPU's memory bandwidth
    (``bandwidth`` GB/s, None: unknown) and the speed-ups over the CPU's
    batched sweep (``speedup_vs_cpu``) and its B single calls."""
    from .sweep import sweep
    g = problem.to("cuda")
    lams = sweep_lams(problem, B)
    gamma = min(resolve_step_size(problem, lam, None) for lam in lams)
    passes, first, med, ts = _timed(
        lambda: sweep(g, lams, steps=steps, step_size=gamma, strategy="rows").stats["passes"],
        repeats)
    b_tr, b_va = pass_costs(problem)
    c = problem.c
    one_flops = (4 * steps + 6 * steps) * problem.nnz * c + 4 * problem.nnz_val * c
    row = _sweep_row(problem, "sweep", B, steps, passes, first, med, ts, b_tr, b_va, one_flops,
                     peaks)
    bound = row["bytes"] / (bandwidth * 1e9) if bandwidth else None
    cpu = {r["method"]: r["median_s"] for r in cpu_rows if r["dtype"] == str(problem.dtype)}
    row.update(method=f"sweep[{B}]@cuda", device=g.backend.device_name, roofline_s=bound,
               roofline_frac=bound / med if bound else None,
               speedup_vs_cpu=cpu[f"sweep[{B}]"] / med if f"sweep[{B}]" in cpu else None,
               speedup_vs_singles=cpu[f"singles[{B}]"] / med if f"singles[{B}]" in cpu
               else None)
    np_best = [t for m, t in cpu.items() if m.startswith("numpy_sweep") and m.endswith(f"[{B}]")]
    row["speedup_vs_numpy"] = min(np_best) / med if np_best else None
    return row


def _sweep_row(problem, name, B, steps, passes, first, med, ts, b_tr, b_va, one_flops, peaks):
    # a batched pass reads X once for all B settings; single calls read it B times
    nbytes = passes * b_tr + (B if name == "singles" else 1) * b_va
    flops = B * one_flops
    bound = max(nbytes / (peaks["read_GBps"] * 1e9),
                flops / (compute_peak(peaks, problem.dtype) * 1e9))
    return {"method": f"{name}[{B}]", "dtype": str(problem.dtype), "steps": steps,
            "first_call_s": first, "median_s": med, "times_s": ts, "passes": passes,
            "bytes": nbytes, "flops": flops, "GBps": nbytes / med / 1e9,
            "GFLOPs": flops / med / 1e9, "roofline_s": bound, "roofline_frac": bound / med,
            "trajectory_bytes": B * steps * problem.dim_w * 8, "settings": B,
            "settings_per_s": B * steps / med}


def _numpy_sweep_time(spec):
    prob = spec_dataset(spec).problem(hyper=spec["hyper"], dtype=spec["dtype"])
    lams = sweep_lams(prob, spec["B"])
    gamma = min(resolve_step_size(prob, lam, None) for lam in lams)
    fun = lambda: numpy_reverse_sweep(prob, lams, spec["steps"], gamma)
    fun()
    return median_time(fun, spec["repeats"])[0]


def format_table(rows):
    head = (f"{'method':<17}{'dtype':<9}{'T':>5}{'first s':>9}{'median s':>10}"
            f"{'passes':>8}{'GB/s':>8}{'GFLOP/s':>9}{'roofline':>10}{'vs numpy':>10}{'traj MB':>9}"
            + (f"{'RSS MB':>8}{'+run MB':>9}" if any("rss_MB" in r for r in rows) else ""))
    out = [head, "-" * len(head)]
    for r in rows:
        sp = f"{r['speedup_vs_numpy']:.2f}x" if r["speedup_vs_numpy"] else "-"
        rf = f"{100 * r['roofline_frac']:>9.1f}%" if r["roofline_frac"] is not None \
            else f"{'-':>10}"
        out.append(f"{r['method']:<17}{r['dtype']:<9}{r['steps']:>5}{r['first_call_s']:>9.3f}"
                   f"{r['median_s']:>10.4f}{r['passes']:>8}{r['GBps']:>8.1f}{r['GFLOPs']:>9.1f}"
                   f"{rf}{sp:>10}{r['trajectory_bytes'] / 1e6:>9.2f}"
                   + (f"{r['rss_MB']:>8.0f}{r['rss_MB'] - r['rss_before_MB']:>9.1f}"
                      if "rss_MB" in r else ""))
    return "\n".join(out)


def peak_rss_mb(spec):
    """(resident MB before the run, peak resident MB during it) of a fresh
    process that builds the problem in ``spec`` and runs one method once:
    see ``python -m fastbilevel.bench``. The peak is reset after the problem
    is built (Linux ``/proc/self/clear_refs``), so it is the method's own
    peak above what the data already holds; where the reset is not
    available it is the process's peak."""
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "fastbilevel.bench", json.dumps(spec)],
                         capture_output=True, text=True, check=True)
    before, peak = out.stdout.strip().splitlines()[-1].split()
    return float(before), float(peak)


def _proc_status_mb(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0
    raise OSError(field)


def _rss_child(spec):
    import gc
    import resource

    ds = spec_dataset(spec)
    prob = ds.problem(hyper=spec["hyper"], dtype=spec["dtype"])
    del ds
    lam = default_lam(prob)
    gamma = resolve_step_size(prob, lam, None)
    run = method_call(prob, lam, spec["method"], spec["steps"], gamma, **spec["opts"])
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")          # reset the peak-RSS mark (VmHWM)
        before = _proc_status_mb("VmRSS")
        run()
        return before, _proc_status_mb("VmHWM")
    except OSError:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        run()
        return before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


if __name__ == "__main__":
    import json
    import sys
    _spec = json.loads(sys.argv[1])
    if "gemm" in _spec:
        print(gemm_rate(_spec["gemm"], _spec["reps"], _spec.get("dtype", "float64")))
    elif "time" in _spec:
        print(_method_time(_spec))
    elif "B" in _spec:
        print(_numpy_sweep_time(_spec))
    else:
        print(*_rss_child(_spec))
