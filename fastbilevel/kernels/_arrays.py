"""Array-to-array copies written as loops.

``dst[:] = src`` (or ``dst[i] = src``) between arrays makes Numba compile a
shape-mismatch message formatted with its string functions: a few seconds of
compilation the first time a process needs it, and that string code is linked
into (and re-optimized with) every kernel that holds such an assignment. The
kernels copy between arrays whose shapes the Python layer has already fixed,
so :func:`assign` is a plain loop with a constant message.
"""
from numba import types
from numba.extending import overload


def assign(dst, src):
    """``dst[...] = src`` for two arrays of one shape (compiled code only)."""
    raise NotImplementedError("only callable from compiled code")


@overload(assign, jit_options={"cache": True})
def _ol_assign(dst, src):
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.ndim == src.ndim and 1 <= dst.ndim <= 4):
        return None
    nd = dst.ndim

    if nd == 1:
        def impl(dst, src):
            if dst.shape != src.shape:
                raise ValueError("assign: arrays of different shapes")
            for i in range(dst.shape[0]):
                dst[i] = src[i]
    elif nd == 2:
        def impl(dst, src):
            if dst.shape != src.shape:
                raise ValueError("assign: arrays of different shapes")
            for i in range(dst.shape[0]):
                for j in range(dst.shape[1]):
                    dst[i, j] = src[i, j]
    elif nd == 3:
        def impl(dst, src):
            if dst.shape != src.shape:
                raise ValueError("assign: arrays of different shapes")
            for i in range(dst.shape[0]):
                for j in range(dst.shape[1]):
                    for k in range(dst.shape[2]):
                        dst[i, j, k] = src[i, j, k]
    else:
        def impl(dst, src):
            if dst.shape != src.shape:
                raise ValueError("assign: arrays of different shapes")
            for i in range(dst.shape[0]):
                for j in range(dst.shape[1]):
                    for k in range(dst.shape[2]):
                        for m in range(dst.shape[3]):
                            dst[i, j, k, m] = src[i, j, k, m]
    return impl
