"""How many row chunks the parallel kernels split a pass into."""
import numba

from . import config


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
