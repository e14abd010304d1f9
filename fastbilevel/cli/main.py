"""``fastbilevel bench`` and ``fastbilevel info``: option parsing only; the
work is done by :mod:`fastbilevel.bench` and the public API."""
import json
import platform
import time

import click
import numba
import numpy as np
import scipy

from .._cache import PACKAGE_DIR, clear_stale, resolved_cache_dir, stale_cache_dirs
from .._version import __version__
from ..bench import (METHODS, PROBLEMS, SIZES, bench_dataset, default_lam, format_table,
                     machine_peaks, peak_rss_mb, run_bench)


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
def bench(problem, methods, hyper, solver, momentum, snapshots, schedule, K, rss, steps, dtype,
          repeats, quick, seed, json_path):
    """Time hypergradient methods on a built-in problem, with the roofline
    fraction (peak bandwidth and GEMM rate measured in the same run)."""
    meths = [m.strip() for m in methods.split(",") if m.strip()]
    bad = [m for m in meths if m not in METHODS]
    if bad or not meths:
        raise click.BadParameter(f"unknown method(s) {bad}; choose from {list(METHODS)}",
                                 param_hint="--methods")
    T = steps or (20 if quick else SIZES[problem][2])
    reps = repeats or (3 if quick else 5)
    t0 = time.perf_counter()
    peaks = machine_peaks(quick=quick)
    click.echo(f"machine: read {peaks['read_GBps']:.1f} GB/s, GEMM {peaks['gemm_GFLOPs']:.1f} GFLOP/s "
               f"(float64), {_threads()} threads")
    dtypes = ["float64", "float32"] if dtype == "both" else [dtype]
    rows = []
    for dt in dtypes:
        ds = bench_dataset(problem, quick, seed, dt)
        prob = ds.problem(hyper=hyper, dtype=dt)
        click.echo(f"problem: {problem} {prob}")
        opts = dict(solver=solver, momentum=momentum, snapshots=snapshots, schedule=schedule, K=K)
        new = run_bench(prob, default_lam(prob), meths, T, reps, peaks, **opts)
        if rss:
            for r in new:
                r["rss_before_MB"], r["rss_MB"] = peak_rss_mb({"problem": problem, "hyper": hyper, "quick": quick, "seed": seed,
                                           "dtype": dt, "method": r["method"], "steps": T,
                                           "opts": opts})
        rows += new
    click.echo(format_table(rows))
    click.echo(f"total {time.perf_counter() - t0:.1f} s")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"problem": problem, "quick": quick, "machine": peaks,
                       "threads": _threads(), "results": rows}, fh, indent=2)
        click.echo(f"wrote {json_path}")


def _threads():
    return numba.get_num_threads()


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


if __name__ == "__main__":  # pragma: no cover
    cli()
