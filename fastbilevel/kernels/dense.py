"""Dense row kernels: one pass over rows lo..hi of a C-contiguous X.

Each row x_i is read from memory once: the dot products z_i = W x_i (and
u_i = V x_i) bring it into L1, and the accumulation G += coef ⊗ x_i reuses it
from there.
"""
from numba import njit

from .. import config

_FM = set(config.FASTMATH)


@njit(cache=True, fastmath=_FM)
def _dots_dense(X, i, W, out):
    """out[k] = W[k] · X[i] for every class k."""
    c, d = W.shape
    for k in range(c):
        s = 0.0
        for j in range(d):
            s += X[i, j] * W[k, j]
        out[k] = s


@njit(cache=True, fastmath=_FM)
def _axpy_row_dense(X, i, coef, A):
    """A[k] += coef[k] * X[i] for every class k with a nonzero coefficient."""
    c, d = A.shape
    for k in range(c):
        ck = coef[k]
        if ck != 0.0:
            for j in range(d):
                A[k, j] += ck * X[i, j]
