"""Splitting a sweep's settings into chunks (shared by the local and the
Dask paths of :func:`fastbilevel.sweep`), and the progress bars."""
import contextlib

import numpy as np

from ._interrupt import reporting
from ._results import MinimizeInterrupted, _Best


def chunk_bounds(B, chunk_size):
    """[(lo, hi), ...]: consecutive chunks of ``chunk_size`` settings (one
    chunk of all B when None)."""
    size = B if chunk_size is None else chunk_size
    return [(lo, min(B, lo + size)) for lo in range(0, B, size)]


def slice_opts(opts, lo, hi, w_ndim):
    """The options of settings lo..hi: per-setting ones (a leading axis B)
    sliced, shared ones unchanged."""
    out = dict(opts)
    for name, nd in (("step_size", 1), ("momentum", 1), ("seed", 1), ("w0", w_ndim + 1),
                     ("v0", w_ndim + 1)):
        v = opts[name]
        if v is not None and np.ndim(v) == nd:
            out[name] = np.asarray(v)[lo:hi]
    return out


def progress_bar(progress, total, desc, unit="chunk"):
    """A tqdm bar of ``total`` steps (None: a counter) when ``progress``,
    else None."""
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install 'fastbilevel[progress]'") \
            from None
    return tqdm(total=total, unit=unit, desc=desc)


@contextlib.contextmanager
def pass_progress(progress, desc):
    """Within the block, a bar counting the passes over the data of the
    stoppable kernels (all of them, one call after another) when
    ``progress``; nothing otherwise. Yields ``finish(passes)``, which sets
    the bar to the call's final count."""
    bar = progress_bar(progress, None, desc, unit="pass")
    if bar is None:
        yield lambda passes: None
        return
    finished = [0]                      # passes of the kernels that returned

    def report(done, last):
        bar.update(finished[0] + done - bar.n)
        if last:
            finished[0] += done

    def finish(passes):
        if passes is not None:
            bar.update(int(passes) - bar.n)

    try:
        with reporting(report):
            yield finish
    finally:
        bar.close()


class OuterRun:
    """What an outer loop shares with :func:`outer_run`: ``record`` after
    every outer iteration, and ``partial``, a function returning the result
    of the iterations done (the loop sets it)."""

    def __init__(self, bar, shape):
        self.bar = bar
        self.best = _Best(shape)
        self.partial = None

    def record(self, value, lam, steps=1):
        """One outer iteration (``steps`` iterations for a chunked loop) at
        ``lam`` with outer value ``value`` (arrays over starts allowed)."""
        self.best.see(value, lam)
        if self.bar is not None:
            self.bar.update(steps)
            v = np.asarray(value, dtype=float)
            shown = float(np.nanmin(v)) if np.isfinite(v).any() else float("nan")
            self.bar.set_postfix_str(f"outer {shown:.6g}" + (" (best start)" if v.ndim else ""))


@contextlib.contextmanager
def outer_run(progress, iters, desc, shape=None):
    """An outer loop's progress bar (over ``iters`` iterations, with the
    outer value) and Ctrl-C: a KeyboardInterrupt inside the block becomes
    :class:`MinimizeInterrupted` carrying ``run.partial()`` and the best λ."""
    run = OuterRun(progress_bar(progress, iters, desc, unit="iter"), shape)
    try:
        yield run
    except MinimizeInterrupted:
        raise
    except KeyboardInterrupt:
        if run.partial is None:
            raise
        raise run.best.interrupted(run.partial()) from None
    finally:
        if run.bar is not None:
            run.bar.close()
