"""Threading layer and the number of row chunks the parallel kernels use.

Threading layer: Numba's default on Linux is GNU OpenMP when TBB is absent,
and a process that has run a GNU OpenMP parallel region cannot ``fork()``: the
child aborts ("fork() called from a process already using GNU OpenMP") and a
``multiprocessing`` pool (fork is Linux's default), joblib or an older Dask
setup started after any kernel call hangs. fastbilevel therefore asks Numba
for the ``safe`` layer (TBB: safe under fork and with concurrent calls from
several threads) when TBB is installed (``tbb`` is a dependency on x86-64)
and the user has not chosen a layer (``NUMBA_THREADING_LAYER``, or
``numba.config.THREADING_LAYER`` set before fastbilevel is imported).
"""
import os

import numba

from . import config


def _tbb_available():
    """Whether Numba can load its TBB layer (the checks Numba itself makes)."""
    try:
        from numba.np.ufunc.parallel import _check_tbb_version_compatible
        _check_tbb_version_compatible()       # loads libtbb, or raises
        from numba.np.ufunc import tbbpool    # noqa: F401
        return True
    except Exception:                         # ImportError, OSError, version too old
        return False


def _choose_threading_layer():
    if "NUMBA_THREADING_LAYER" in os.environ or numba.config.THREADING_LAYER != "default":
        return
    if _tbb_available():
        numba.config.THREADING_LAYER = "safe"


_choose_threading_layer()


def nchunks():
    """``config.NCHUNKS`` if set, else the current Numba thread count.

    Results depend on the chunk count (summation order), not on the thread
    count: fix ``config.NCHUNKS`` for bit-identical results across machines.
    """
    return config.NCHUNKS if config.NCHUNKS else numba.get_num_threads()


def fixed_nchunks():
    """Chunk count of the stochastic methods: ``config.NCHUNKS`` if set, else
    ``config.STOCHASTIC_NCHUNKS`` (never the thread count), so that a seed
    gives the same bits on any number of threads."""
    return config.NCHUNKS if config.NCHUNKS else config.STOCHASTIC_NCHUNKS
