"""Array-to-array copies written as loops.

``dst[:] = src`` (or ``dst[i] = src``) between arrays makes Numba compile a
shape-mismatch message formatted with its string functions: a few seconds of
compilation the first time a process needs it, and that string code is linked
into (and re-optimized with) every kernel that holds such an assignment. The
kernels copy between arrays whose shapes the Python layer has already fixed,
so :func:`assign` is a plain loop with a constant message.
"""
import numpy as np
from numba import types
from numba.extending import overload


def assign(dst, src):
    """``dst[...] = src`` for two arrays of one shape (compiled code only)."""
    raise NotImplementedError("only callable from compiled code")


@overload(assign, jit_options={"cache": True})
def _ol_assign(dst, src):
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.ndim == src.ndim and dst.ndim >= 1):
        return None
    if dst.layout == "C" and src.layout == "C":
        def impl(dst, src):        # contiguous: one flat loop over views
            if dst.shape != src.shape:
                raise ValueError("assign: arrays of different shapes")
            a = dst.reshape(dst.size)
            b = src.reshape(src.size)
            for i in range(a.shape[0]):
                a[i] = b[i]
        return impl

    def strided_impl(dst, src):
        if dst.shape != src.shape:
            raise ValueError("assign: arrays of different shapes")
        for idx in np.ndindex(dst.shape):
            dst[idx] = src[idx]
    return strided_impl


def prange_only():
    """``parallel=`` options for the kernels' parallel entry points: only
    their explicit ``prange`` loops become parallel loops. With plain
    ``parallel=True`` Numba also turns every array expression, ``np.zeros``
    and slice assignment of the entry point into a parallel loop of its own
    (on arrays of one weight's size, where threads do not pay), each an
    outlined function to compile with two wrappers. A new dict per call:
    Numba empties the one it is given."""
    return {"prange": True, "comprehension": False, "reduction": False,
            "inplace_binop": False, "setitem": False, "numpy": False, "stencil": False,
            "fusion": False}
