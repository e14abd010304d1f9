"""``fastbilevel bench`` and ``fastbilevel info``: option parsing only; the
work is done by :mod:`fastbilevel.bench` and the public API."""
import json
import platform
import time

import click
import numba
import numpy as np
import scipy

from .. import datasets
from .._cache import PACKAGE_DIR, clear_stale, resolved_cache_dir, stale_cache_dirs
from .._version import __version__
from ..bench import (METHODS, PROBLEMS, SIZES, bench_dataset, default_lam, format_table,
                     float32_against_float64, machine_peaks, peak_rss_mb, run_bench, run_gpu_bench,
                     run_gpu_sweep_bench, run_peer_bench, run_sweep_bench)
from ..cuda import DeviceError, check_available


def _data_options(f):
    """--data, --model, --val-fraction: the user's own data instead of a
    built-in problem."""
    f = click.option("--val-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     default=0.2, show_default=True,
                     help="With --data and no validation part in the file: the share of "
                          "samples held out for validation (seeded by --seed).")(f)
    f = click.option("--model", type=click.Choice(["auto", "linear", "logistic", "multinomial"]),
                     default="auto", show_default=True,
                     help="With --data: the model (auto: 2 label values → logistic, up to "
                          "1000 integer values → multinomial, else linear).")(f)
    f = click.option("--data", "data_path", type=click.Path(dir_okay=False), default=None,
                     help="Your data instead of a built-in problem: .npz with X, y [X_val, "
                          "y_val] (dense, or sparse in SciPy's layout: "
                          "fastbilevel.datasets.save_npz writes both) or svmlight/libsvm "
                          "text (needs scikit-learn).")(f)
    return f


def _load(data_path, model, hyper, val_fraction, seed, dtype="float64"):
    """The user's file as a Dataset; a file that cannot be used is a usage
    error naming the file and the problem."""
    try:
        return datasets.load_file(data_path, model=model, hyper=hyper or "l2",
                                  val_fraction=val_fraction, seed=seed, dtype=dtype)
    except (ValueError, ImportError) as e:
        raise click.BadParameter(str(e), param_hint="--data") from None


def _write_plot(fig_fn, path):
    try:
        fig_fn(path)
    except ImportError as e:
        raise click.UsageError(str(e)) from None
    click.echo(f"wrote {path}")


@click.group()
@click.version_option(package_name="fastbilevel")
def cli():
    """fastbilevel: hypergradients of bilevel problems with fused Numba kernels."""


@cli.command()
@click.option("--problem", type=click.Choice(PROBLEMS), default="hypercleaning", show_default=True,
              help="Built-in problem (fastbilevel.datasets).")
@click.option("--methods", default="reverse,numpy", show_default=True,
              help="Comma-separated: reverse, checkpointed, recompute, truncated, forward, "
                   "implicit_cg, implicit_neumann, implicit_hb (fused kernels), solve (the inner "
                   "loop alone), numpy (NumPy/BLAS reference); stocbio (one estimate: T SGD "
                   "steps, Q=10, batches of 1000 rows), fsla (T iterations, batches of 1000), "
                   "and numpy_stocbio, numpy_fsla (the same on the same batches in NumPy/SciPy).")
@click.option("--hyper", type=click.Choice(["sample_weights", "feature_l2", "l2", "biased_l2", "init"]),
              default=None, help="Override the problem's hyperparameter map.")
@click.option("--solver", type=click.Choice(["gd", "heavy_ball", "agd"]), default="gd", show_default=True)
@click.option("--momentum", type=float, default=None, help="β for heavy_ball/agd [from κ].")
@click.option("--snapshots", type=click.IntRange(1), default=None, help="checkpointed: snapshots [⌈√T⌉].")
@click.option("--schedule", type=click.Choice(["revolve", "uniform"]), default="revolve", show_default=True)
@click.option("-K", "K", type=click.IntRange(0), default=None,
              help="truncated: reverse steps [T/10]; implicit: linear-solver steps [100].")
@click.option("--rss", is_flag=True, help="Also run each method in a fresh process and report its peak RSS.")
@click.option("--steps", "-T", type=click.IntRange(1), default=None,
              help="Inner steps T [default: 100, or 20 with --quick].")
@click.option("--dtype", type=click.Choice(["float64", "float32", "both"]), default="float64",
              show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=None, help="Timed calls per method [5; 3 with --quick].")
@click.option("--quick", is_flag=True, help="Small sizes, T=20: finishes in under a minute.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write the results (and machine peaks) to this JSON file.")
@click.option("--sweep", "sweep_B", type=click.IntRange(1), default=None,
              help="Also time a reverse sweep of B settings: batched kernels, B single calls, "
                   "and the NumPy batched reference (also without this environment's "
                   "OpenBLAS override, in a child process).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: also time the methods that run on the GPU backend (rows "
                   "<method>@cuda, with the fraction of the GPU's memory bandwidth and the "
                   "speed-up over the CPU row).")
@click.option("--peers", default="", metavar="jax,torch",
              help="Also time the reverse hypergradient written the way a JAX "
                   "(jit(value_and_grad) through lax.scan) or PyTorch (create_graph=True "
                   "unroll) user would, for each of these that is installed: rows with the "
                   "peer's name, its relative difference from fastbilevel's result and "
                   "fastbilevel's reverse speed-up over it.")
@_data_options
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also draw the time per method with its roofline bound, and memory "
                   "against time (needs matplotlib: fastbilevel[plot]).")
def bench(problem, methods, hyper, solver, momentum, snapshots, schedule, K, rss, steps, dtype,
          repeats, quick, seed, json_path, sweep_B, device, peers, data_path, model,
          val_fraction, plot_path):
    """Time hypergradient methods on a built-in problem, with the roofline
    fraction (peak bandwidth and GEMM rate measured in the same run)."""
    meths = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in meths if m not in METHODS]
    if bad or not meths:
        raise click.BadParameter(f"unknown method(s) {bad}; choose from {list(METHODS)}",
                                 param_hint="--methods")
    from ..peers import PEERS
    peer_list = [p.strip() for p in peers.split(",") if p.strip()]
    if any(p not in PEERS for p in peer_list):
        raise click.BadParameter(f"unknown peer(s) {[p for p in peer_list if p not in PEERS]}; "
                                 f"choose from {list(PEERS)}", param_hint="--peers")
    T = steps or (20 if quick else (100 if data_path else SIZES[problem][2]))
    reps = repeats or (3 if quick else 5)
    if device == "cuda":
        try:
            check_available()
        except DeviceError as e:
            raise click.UsageError(str(e)) from None
    t0 = time.perf_counter()
    peaks = machine_peaks(quick=quick)
    click.echo(f"machine: read {peaks['read_GBps']:.1f} GB/s, GEMM {peaks['gemm_GFLOPs']:.1f} GFLOP/s "
               f"float64 / {peaks['gemm32_GFLOPs']:.1f} float32, FMA loop "
               f"{peaks['fma_GFLOPs']:.1f} GFLOP/s float64 (float64 rooflines use the higher), "
               f"{_threads()} threads")
    if peaks["gemm_GFLOPs_free"] is not None:
        over = ", ".join(f"{k}={v}" for k, v in peaks["blas_overrides"].items())
        click.echo(f"  NumPy GEMM: {peaks['gemm_GFLOPs_process']:.1f} / "
                   f"{peaks['gemm32_GFLOPs_process']:.1f} GFLOP/s (float64 / float32) in this "
                   f"process ({over}), {peaks['gemm_GFLOPs_free']:.1f} / "
                   f"{peaks['gemm32_GFLOPs_free']:.1f} without that override (a child "
                   "process); the roofline uses the higher")
    dtypes = ["float64", "float32"] if dtype == "both" else [dtype]
    rows = []
    probs = {}
    for dt in dtypes:
        if data_path:
            ds = _load(data_path, model, hyper, val_fraction, seed, dt)
            name = ds.name
        else:
            ds = bench_dataset(problem, quick, seed, dt)
            name = problem
        prob = ds.problem(hyper=hyper, dtype=dt)
        probs[dt] = prob
        click.echo(f"problem: {name} {prob}")
        opts = dict(solver=solver, momentum=momentum, snapshots=snapshots, schedule=schedule, K=K)
        spec = {"problem": problem, "hyper": hyper, "quick": quick, "seed": seed,
                "dtype": dt, "data": data_path, "model": model, "val_fraction": val_fraction}
        new = run_bench(prob, default_lam(prob), meths, T, reps, peaks, spec=spec, **opts)
        if sweep_B:
            srows = run_sweep_bench(prob, sweep_B, T, reps, peaks, spec)
            new += srows
            s, one = srows[0], srows[1]
            np_best = min(r["median_s"] for r in srows if r["method"].startswith("numpy"))
            click.echo(f"sweep of {sweep_B} settings ({dt}): {s['settings_per_s']:.1f} "
                       f"settings·steps/s, {one['median_s'] / s['median_s']:.2f}x the "
                       f"throughput of {sweep_B} single calls, "
                       f"{np_best / s['median_s']:.2f}x the best NumPy batched reference")
        if peer_list:
            prows, notes = run_peer_bench(prob, default_lam(prob), peer_list, T, reps, new, peaks)
            for note in notes:
                click.echo(f"  {note}: no row")
            for r in prows:
                click.echo(f"peer {r['method']} ({dt}): {r['median_s']:.4g} s (first call "
                           f"{r['first_call_s']:.3g} s), hypergradient within "
                           f"{r['peer_rel_err']:.1e} of fastbilevel's"
                           + (f"; fastbilevel reverse {r['reverse_speedup']:.2f}x faster"
                              if r["reverse_speedup"] else ""))
            new += prows
        if device == "cuda":
            try:
                grows, gname, gbw = run_gpu_bench(prob, default_lam(prob), meths, T, reps, new,
                                                  **opts)
                if sweep_B:
                    grows.append(run_gpu_sweep_bench(prob, sweep_B, T, reps, new, peaks, gbw))
            except DeviceError as e:
                raise click.UsageError(str(e)) from None
            click.echo(f"GPU: {gname}, memory bandwidth "
                       + (f"{gbw:.0f} GB/s (from the device's attributes)" if gbw else
                          "unknown (no roofline fraction)"))
            for r in grows:
                if r["speedup_vs_cpu"]:
                    click.echo(f"  {r['method']}: {r['speedup_vs_cpu']:.2f}x the CPU")
            new += grows
        if rss:
            for r in [r for r in new if "@" not in r["method"]]:
                r["rss_before_MB"], r["rss_MB"] = peak_rss_mb(
                    {"problem": problem, "hyper": hyper, "quick": quick, "seed": seed,
                     "dtype": dt, "method": r["method"], "steps": T, "opts": opts,
                     "data": data_path, "model": model, "val_fraction": val_fraction})
        rows += new
    click.echo(format_table(rows))
    f32_err = f32 = None
    if len(probs) == 2:
        f32 = float32_against_float64(probs["float64"], probs["float32"], T, reps)
        f32_err = f32["rel_err"]
        click.echo(f"float32 against float64 data: reverse hypergradient relative error "
                   f"{f32_err:.2e} (T={T}, same λ and step size); float32 "
                   f"{f32['speedup']:.2f}x faster (median of {f32['pairs']} alternating "
                   f"pairs of calls, range {f32['speedup_min']:.2f}-{f32['speedup_max']:.2f}x; "
                   f"the table's rows time all float64 calls first)")
    click.echo(f"total {time.perf_counter() - t0:.1f} s")
    if plot_path:
        from ..plot import plot_bench
        _write_plot(lambda p: plot_bench(rows, p, title=f"fastbilevel bench: "
                                         f"{data_path or problem}, T={T}"), plot_path)
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"problem": problem, "quick": quick, "machine": peaks,
                       "threads": _threads(), "float32_rel_err": f32_err,
                       "float32_against_float64": f32, "results": rows},
                      fh, indent=2)
        click.echo(f"wrote {json_path}")


def _threads():
    return numba.get_num_threads()


def _parse_lams(spec):
    """"a:b:k" (k values from a to b) or "v1,v2,..." → a float64 array."""
    try:
        if ":" in spec:
            a, b, k = spec.split(":")
            k = int(k)
            if k < 1:
                raise ValueError
            return np.linspace(float(a), float(b), k)
        vals = np.array([float(v) for v in spec.split(",") if v.strip()])
        if not vals.size:
            raise ValueError
        return vals
    except ValueError:
        raise click.BadParameter(f"{spec!r}: give START:STOP:COUNT (e.g. -6:2:64, COUNT ≥ 1) "
                                 "or a comma-separated list of values",
                                 param_hint="--lams") from None


@cli.command("sweep")
@click.option("--problem", type=click.Choice(["hypercleaning", "text", "ridge", "binary"]),
              default="ridge", show_default=True, help="Built-in problem (fastbilevel.datasets).")
@click.option("--hyper", type=click.Choice(["sample_weights", "feature_l2", "l2", "biased_l2",
                                            "init"]),
              default="l2", show_default=True,
              help="Hyperparameter map; each setting is λ = v·1 (every entry v).")
@click.option("--lams", "lams_spec", default="-6:2:17", show_default=True,
              help="The values v: START:STOP:COUNT or a comma-separated list "
                   "(write --lams=-6:2:64 for a negative start).")
@click.option("--method", type=click.Choice(["reverse", "checkpointed", "recompute", "truncated",
                                             "forward", "implicit", "solve"]),
              default="reverse", show_default=True)
@click.option("--solver", type=click.Choice(["gd", "heavy_ball", "agd"]), default="gd",
              show_default=True)
@click.option("--steps", "-T", type=click.IntRange(0), default=50, show_default=True)
@click.option("--step-size", type=float, default=None, help="Shared γ [per setting 1/L].")
@click.option("-K", "K", type=click.IntRange(0), default=None, help="truncated: reverse steps.")
@click.option("--quick", is_flag=True, help="The small size of the problem (as bench --quick).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--scheduler", default=None,
              help="Address of a Dask scheduler (tcp://host:8786): run the settings there "
                   "(needs fastbilevel[distributed]).")
@click.option("--chunk-size", type=click.IntRange(1), default=None,
              help="Settings per kernel call [all, or split over the Dask workers].")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar over chunks [on a terminal, when tqdm is installed].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also write λ values, outer values, hypergradients and flags to this file.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="cuda: run the sweep on the GPU backend (its batched kernels: every "
                   "setting in lockstep).")
@_data_options
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also draw the outer value against λ with the hypergradients as slopes "
                   "(needs matplotlib: fastbilevel[plot]).")
def sweep_cmd(problem, hyper, lams_spec, method, solver, steps, step_size, K, quick, seed,
              scheduler, chunk_size, progress, json_path, device, data_path, model,
              val_fraction, plot_path):
    """Hypergradients (or, with --method solve, outer values) of many settings
    of λ at once, on a built-in problem; the best setting is marked."""
    from ..sweep import CSR_ROWS_MIN_SETTINGS, sweep
    values = _parse_lams(lams_spec)
    if data_path:
        ds = _load(data_path, model, hyper, val_fraction, seed)
        problem = ds.name
    else:
        ds = bench_dataset(problem, quick, seed, "float64")
    prob = ds.problem(hyper=hyper)
    if device == "cuda":
        if scheduler:
            raise click.UsageError("--scheduler runs the settings on Dask workers' CPUs: "
                                   "drop it or --device cuda")
        try:
            prob = prob.to("cuda")
        except DeviceError as e:
            raise click.UsageError(str(e)) from None
    lams = values.reshape((-1,) + (1,) * len(prob.lam_shape)) * np.ones(prob.lam_shape)
    B = len(values)
    if progress is None:
        progress = _tty() and _has_tqdm() and B > 1
    if progress and chunk_size is None and scheduler is None:
        # about ten steps of the bar, in chunks the batched CSR pass still pays on
        chunk_size = max(CSR_ROWS_MIN_SETTINGS, -(-B // 10))
    client = None
    if scheduler:
        try:
            from dask.distributed import Client
        except ImportError:
            raise click.UsageError("--scheduler needs Dask: pip install "
                                   "'fastbilevel[distributed]'") from None
        client = Client(scheduler)
    kw = {"K": K} if K is not None else {}
    click.echo(f"problem: {problem} {prob}; {B} settings, method={method}, T={steps}"
               + (f", on {prob.backend.device_name}" if device == "cuda" else ""))
    try:
        r = sweep(prob, lams, method=method, solver=solver, steps=steps, step_size=step_size,
                  chunk_size=chunk_size, client=client, progress=progress, **kw)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    finally:
        if client is not None:
            client.close()
    best = r.best
    gcol = "hypergradient" if prob.lam_shape == () else "|hypergradient|"
    click.echo(f"{'':2}{'v':>10}{'outer value':>16}" + ("" if r.grad is None else f"{gcol:>18}"))
    for b in range(B):
        mark = "*" if b == best else " "
        if r.stats["diverged"][b]:
            click.echo(f"{mark:2}{values[b]:>10.4g}{'diverged at step ' + str(r.stats['diverged_at'][b]):>34}")
            continue
        g = "" if r.grad is None else \
            f"{(float(r.grad[b]) if prob.lam_shape == () else float(np.linalg.norm(r.grad[b]))):>18.6g}"
        click.echo(f"{mark:2}{values[b]:>10.4g}{r.value[b]:>16.8g}{g}")
    click.echo(("best: none (every setting diverged)" if best is None else
                f"best: v={values[best]:.6g}, outer value {r.value[best]:.8g}")
               + f"; {r.stats['time_s']:.3f} s, {r.stats['passes']} passes, "
               f"strategy {r.stats['strategy']}")
    if json_path:
        out = {"problem": problem, "hyper": hyper, "method": method, "steps": steps,
               "values": values.tolist(), "outer_value": _nan_to_none(r.value),
               "diverged": r.stats["diverged"].tolist(), "best": best,
               "time_s": r.stats["time_s"], "passes": r.stats["passes"]}
        if r.grad is not None:
            out["hypergradient"] = [_nan_to_none(np.atleast_1d(g)) for g in r.grad]
        with open(json_path, "w") as fh:
            json.dump(out, fh, indent=2)
        click.echo(f"wrote {json_path}")
    if plot_path:
        _write_plot(lambda p: r.plot(p), plot_path)


def _nan_to_none(a):
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, float).ravel()]


def _tty():
    import sys
    return sys.stdout.isatty()


def _has_tqdm():
    try:
        import tqdm  # noqa: F401
        return True
    except ImportError:
        return False


@cli.command()
def info():
    """Versions, threads, the threading layer and the kernel cache location."""
    click.echo(f"fastbilevel {__version__} ({PACKAGE_DIR})")
    click.echo(f"python {platform.python_version()}, numpy {np.__version__}, "
               f"scipy {scipy.__version__}, numba {numba.__version__}")
    layer = numba.threading_layer() if _has_layer() else "not started"
    click.echo(f"threads {numba.get_num_threads()} (threading layer {layer}; "
               f"requested {numba.config.THREADING_LAYER!r})")
    click.echo(f"kernel cache: {resolved_cache_dir()} (keyed by the package's sources; "
               "root from NUMBA_CACHE_DIR if set)")
    stale = stale_cache_dirs()
    if stale:
        click.echo(f"stale kernel caches: {len(stale)} folders of other versions or sources "
                   "(`fastbilevel clear-cache` removes them)")


@cli.command("clear-cache")
def clear_cache():
    """Remove the kernel caches of other versions or sources of fastbilevel
    (every edit or upgrade compiles into a new folder); the current one stays."""
    removed, freed = clear_stale()
    click.echo(f"removed {removed} stale kernel cache folders ({freed / 2**20:.1f} MiB); "
               f"kept {resolved_cache_dir()}")


def _has_layer():
    try:
        numba.threading_layer()
        return True
    except ValueError:
        return False



@cli.command("minimize")
@click.option("--problem", type=click.Choice(["hypercleaning", "text", "ridge", "binary"]),
              default="ridge", show_default=True,
              help="Built-in problem (ignored with --data).")
@_data_options
@click.option("--hyper", type=click.Choice(["sample_weights", "feature_l2", "l2", "biased_l2",
                                            "init"]),
              default=None, help="Hyperparameter map [l2 with --data, else the problem's].")
@click.option("--method", type=click.Choice(["implicit", "reverse", "checkpointed", "recompute",
                                             "truncated", "forward", "stocbio", "fsla"]),
              default="implicit", show_default=True, help="Hypergradient estimator.")
@click.option("--outer", type=click.Choice(["adam", "sgd", "nesterov", "hoag"]), default=None,
              help="Outer update [adam; fsla has its own].")
@click.option("--iters", type=click.IntRange(1), default=50, show_default=True,
              help="Outer iterations.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True,
              help="Outer step size.")
@click.option("--steps", "-T", type=click.IntRange(0), default=100, show_default=True,
              help="Inner steps per outer iteration (warm-started).")
@click.option("--solver", type=click.Choice(["gd", "heavy_ball", "agd"]), default="gd",
              show_default=True)
@click.option("--lam0", type=float, default=0.0, show_default=True,
              help="Starting λ: every entry this value.")
@click.option("--quick", is_flag=True, help="The small size of a built-in problem.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--progress/--no-progress", default=None,
              help="Progress bar with the outer value [on a terminal, when tqdm is installed].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the learned λ and the history here: .json or .npz (by the suffix). "
                   "On Ctrl-C the iterations done are written.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Also draw the outer value and hypergradient norm against time and "
                   "passes (needs matplotlib: fastbilevel[plot]).")
def minimize_cmd(problem, data_path, model, val_fraction, hyper, method, outer, iters, lr,
                 steps, solver, lam0, quick, seed, progress, out_path, plot_path):
    """Learn λ: the outer loop (hypergradient descent on the validation
    loss) on a built-in problem or your --data; prints the history and
    writes λ and the history with --out. Ctrl-C stops it and keeps what was
    done."""
    from ..minimize import minimize
    from .._results import MinimizeInterrupted
    if out_path and not out_path.endswith((".json", ".npz")):
        raise click.BadParameter(f"{out_path!r}: give a .json or .npz file name",
                                 param_hint="--out")
    if data_path:
        ds = _load(data_path, model, hyper, val_fraction, seed)
        name = ds.name
    else:
        ds = bench_dataset(problem, quick, seed, "float64")
        name = problem
    prob = ds.problem(hyper=hyper)
    if progress is None:
        progress = _tty() and _has_tqdm()
    lam = np.full(prob.lam_shape, float(lam0))
    kw = dict(method=method, iters=iters, lr=lr, steps=steps, progress=progress)
    if method != "fsla":
        kw.update(outer=outer, solver=solver)
    elif outer is not None:
        raise click.BadParameter("fsla updates λ itself: leave --outer out",
                                 param_hint="--outer")
    if method in ("stocbio", "fsla"):
        kw.pop("solver", None)
        kw["seed"] = seed
    if method == "fsla":
        kw.pop("steps")
    click.echo(f"problem: {name} {prob}; method={method}, {iters} outer iterations")
    interrupted = False
    try:
        res = minimize(prob, lam, **kw)
    except MinimizeInterrupted as e:
        res, interrupted = e.result, True
        click.echo(f"interrupted after {len(res.history)} outer iterations")
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    hist = res.history
    if len(hist):
        click.echo(_thin_table(hist))
        ov = hist.outer_value
        click.echo(f"outer value {ov[0]:.6g} -> {ov[-1]:.6g} (best {np.nanmin(ov):.6g}) in "
                   f"{hist.time_s[-1]:.3f} s, {hist.passes[-1]} passes")
    lam_out = np.asarray(res.lam, dtype=float)
    click.echo("λ: " + (f"{float(lam_out):.6g}" if lam_out.ndim == 0 else
                        f"{lam_out.size} values, mean {lam_out.mean():.4g}, range "
                        f"[{lam_out.min():.4g}, {lam_out.max():.4g}]"))
    if out_path:
        _write_minimize(out_path, name, method, lam_out, hist, interrupted)
        click.echo(f"wrote {out_path}")
    if plot_path and len(hist):
        _write_plot(lambda p: hist.plot(p), plot_path)
    if interrupted:
        raise SystemExit(130)


def _thin_table(hist, rows=20):
    """The history table with at most ``rows`` iterations (evenly spaced,
    the last always shown)."""
    lines = hist.as_table().splitlines()
    body = lines[1:]
    if len(body) <= rows:
        return "\n".join(lines)
    keep = sorted(set(np.linspace(0, len(body) - 1, rows).round().astype(int)))
    return "\n".join([lines[0]] + [body[i] for i in keep])


def _write_minimize(path, name, method, lam, hist, interrupted):
    fields = {f: getattr(hist, f) for f in hist.FIELDS}
    if path.endswith(".npz"):
        np.savez(path, lam=lam, interrupted=interrupted,
                 **{f"history_{k}": np.asarray(v) for k, v in fields.items()})
        return
    out = {"problem": name, "method": method, "interrupted": interrupted,
           "lam": _nan_to_none(lam) if lam.ndim else (None if not np.isfinite(lam)
                                                       else float(lam)),
           "history": {k: (v.tolist() if v.dtype.kind in "bi" else _nan_to_none(v))
                       for k, v in fields.items()}}
    with open(path, "w") as fh:
        json.dump(out, fh, indent=2)


def _csv_choice(value, choices, hint):
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in choices]
    if bad or not items:
        raise click.BadParameter(f"{bad or value!r}: choose from {', '.join(choices)} "
                                 "(comma-separated)", param_hint=hint)
    return tuple(items)


@cli.command("compile")
@click.option("--formats", default="dense,csr", show_default=True,
              help="Data formats: dense, csr (comma-separated).")
@click.option("--dtypes", default="float64,float32", show_default=True,
              help="Data dtypes: float64, float32 (comma-separated).")
def compile_cmd(formats, dtypes):
    """Compile every kernel specialization for these formats and dtypes into
    the cache now (for clusters and container images), one line per kernel
    family with its time: seconds when it compiles, milliseconds when the
    cache already has it."""
    from .._warmup import DTYPES, FORMATS, warm
    fmts = _csv_choice(formats, FORMATS, "--formats")
    dts = _csv_choice(dtypes, DTYPES, "--dtypes")
    click.echo(f"kernel cache: {resolved_cache_dir()}")
    t0 = time.perf_counter()
    done = warm(fmts, dts, echo=click.echo)
    click.echo(f"{len(done)} kernel families ready in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":  # pragma: no cover
    cli()
