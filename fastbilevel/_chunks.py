"""Splitting a sweep's settings into chunks: shared by the local and the
Dask paths of :func:`fastbilevel.sweep`."""
import numpy as np


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


def progress_bar(progress, nchunks, B):
    """A tqdm bar over ``nchunks`` chunks when ``progress``, else None."""
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install 'fastbilevel[progress]'") \
            from None
    return tqdm(total=nchunks, unit="chunk", desc=f"sweep of {B} settings")
