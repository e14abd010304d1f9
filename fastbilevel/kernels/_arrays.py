"""Array-to-array copies written as loops.

``dst[:] = src`` (or ``dst[i] = src``) between arrays makes Numba compile a
shape-mismatch message formatted with its string functions: a few seconds of
compilation the first time a process needs it, and that string code is linked
into (and re-optimized with) every kernel that holds such an assignment. The
kernels copy between arrays whose shapes the Python layer has already fixed,
so :func:`assign` is a plain loop with a constant message.
"""
import numpy as np
from numba import njit, types
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


# Elementwise updates as loops over C-contiguous arrays of one shape. In a
# parallel entry point an array expression (``v += a * p``) compiles to a
# subroutine of its own with a temporary; these compile once, allocate
# nothing, and give the array expression's values bit for bit.
@njit(cache=True)
def add_scaled(y, a, x):
    """y += a·x."""
    yf = y.reshape(y.size)
    xf = x.reshape(x.size)
    for i in range(yf.shape[0]):
        yf[i] += a * xf[i]


@njit(cache=True)
def scale_into(dst, a, x):
    """dst = a·x."""
    df = dst.reshape(dst.size)
    xf = x.reshape(x.size)
    for i in range(df.shape[0]):
        df[i] = a * xf[i]


@njit(cache=True)
def sub_into(dst, x, y):
    """dst = x − y."""
    df = dst.reshape(dst.size)
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    for i in range(df.shape[0]):
        df[i] = xf[i] - yf[i]


@njit(cache=True)
def momentum_step(v, vprev, r, alpha, beta):
    """(v, vprev) ← (v + α·r + β·(v − vprev), v)."""
    vf = v.reshape(v.size)
    pf = vprev.reshape(vprev.size)
    rf = r.reshape(r.size)
    for i in range(vf.shape[0]):
        nxt = vf[i] + alpha * rf[i] + beta * (vf[i] - pf[i])
        pf[i] = vf[i]
        vf[i] = nxt


@njit(cache=True)
def lower_bound(a, v):
    """The first i with a[i] >= v in the sorted a (len(a) if none):
    ``np.searchsorted(a, v)``, whose compiled form is a few times larger."""
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True)
def upper_bound(a, v):
    """The first i with a[i] > v in the sorted a (len(a) if none):
    ``np.searchsorted(a, v, side="right")``."""
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo
