"""Sweeps on a Dask cluster (the ``[distributed]`` extra).

The problem (its arrays, and for CSR data the transposes the batched
kernels use) is sent to every worker once with ``Client.scatter(...,
broadcast=True)``; each chunk of settings is a task that runs the batched
kernels on the worker holding it; the results are gathered in the order of
the settings. Workers load the compiled kernels from the same on-disk cache
as this process when they share its file system (see ``fastbilevel info``).
"""
import math

import numpy as np

from ._chunks import chunk_bounds, progress_bar, slice_opts


def _dask():
    try:
        import distributed
    except ImportError:
        raise ImportError("client= runs the sweep on a Dask cluster, which needs Dask: "
                          "pip install 'fastbilevel[distributed]'") from None
    return distributed


def run_on_client(client, problem, lams, strat, opts, chunk_size, progress, run_chunk):
    """The chunks of a sweep as Dask tasks, each ``run_chunk(problem, lams,
    strat, opts)`` on a worker: a list of its results, in order."""
    distributed = _dask()
    if not isinstance(client, distributed.Client):
        raise TypeError(f"client={client!r} must be a dask.distributed.Client")
    B = lams.shape[0]
    nworkers = max(1, len(client.scheduler_info().get("workers", {})))
    if chunk_size is None:
        chunk_size = math.ceil(B / nworkers)
    [remote] = client.scatter([problem], broadcast=True, hash=False)
    w_ndim = len(problem.w_shape)
    bounds = chunk_bounds(B, chunk_size)
    futures = [client.submit(run_chunk, remote, np.ascontiguousarray(lams[lo:hi]), strat,
                             slice_opts(opts, lo, hi, w_ndim), pure=False)
               for lo, hi in bounds]
    bar = progress_bar(progress, len(bounds), f"sweep of {B} settings")
    try:
        if bar is not None:
            for _ in distributed.as_completed(futures):
                bar.update(1)
        return client.gather(futures)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        if bar is not None:
            bar.close()
