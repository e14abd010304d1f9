"""Dense row kernels: one pass over rows lo..hi of a C-contiguous X.

Rows are taken in blocks of 4 and weight rows in pairs (a 4×2 register
tile: 6 loads per 8 FMAs): each weight W[k, j] fetched from cache serves 4 rows, and each accumulator G[k, j] is read and
written once per 4 rows. The 4 rows of X (4·d values) stay in L1 between the
dot products and the accumulation, so X is read from memory once per pass.
"""
import numpy as np
from numba import njit

from .. import config
from ._rowmath import row_coefs, weight_of

_FM = set(config.FASTMATH)


@njit(cache=True, fastmath=_FM)
def _dot4x2(X, i, wa, wb):
    """The 8 dots X[i + r] · wa and X[i + r] · wb, r = 0..3 (a 4×2 register tile:
    6 loads per 8 FMAs)."""
    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = 0.0
    for j in range(wa.shape[0]):
        u = wa[j]
        v = wb[j]
        e0 = X[i, j]
        e1 = X[i + 1, j]
        e2 = X[i + 2, j]
        e3 = X[i + 3, j]
        a0 += e0 * u
        a1 += e1 * u
        a2 += e2 * u
        a3 += e3 * u
        b0 += e0 * v
        b1 += e1 * v
        b2 += e2 * v
        b3 += e3 * v
    return a0, a1, a2, a3, b0, b1, b2, b3


@njit(cache=True, fastmath=_FM)
def _dot4x1(X, i, wa):
    """The 4 dots X[i + r] · wa, r = 0..3."""
    a0 = a1 = a2 = a3 = 0.0
    for j in range(wa.shape[0]):
        u = wa[j]
        a0 += X[i, j] * u
        a1 += X[i + 1, j] * u
        a2 += X[i + 2, j] * u
        a3 += X[i + 3, j] * u
    return a0, a1, a2, a3


@njit(cache=True, fastmath=_FM)
def _put4(Z, k, s0, s1, s2, s3):
    Z[0, k] = s0
    Z[1, k] = s1
    Z[2, k] = s2
    Z[3, k] = s3


@njit(cache=True, fastmath=_FM)
def _dots4_dense(X, i, W, Z):
    """Z[r, k] = W[k] · X[i + r] for r = 0..3, classes taken in pairs."""
    c = W.shape[0]
    k = 0
    while k + 2 <= c:
        a0, a1, a2, a3, b0, b1, b2, b3 = _dot4x2(X, i, W[k], W[k + 1])
        _put4(Z, k, a0, a1, a2, a3)
        _put4(Z, k + 1, b0, b1, b2, b3)
        k += 2
    if k < c:
        a0, a1, a2, a3 = _dot4x1(X, i, W[k])
        _put4(Z, k, a0, a1, a2, a3)


@njit(cache=True, fastmath=_FM)
def _dots4_pair_dense(X, i, W, V, Z, U):
    """Z[r, k] = W[k] · X[i + r] and U[r, k] = V[k] · X[i + r] in one sweep."""
    for k in range(W.shape[0]):
        a0, a1, a2, a3, b0, b1, b2, b3 = _dot4x2(X, i, W[k], V[k])
        _put4(Z, k, a0, a1, a2, a3)
        _put4(U, k, b0, b1, b2, b3)


@njit(cache=True, fastmath=_FM)
def _axpy4_dense(X, i, C, A):
    """A[k] += Σ_{r<4} C[r, k] X[i + r] for every class k, classes in pairs."""
    c, d = A.shape
    k = 0
    while k + 2 <= c:
        a0, a1, a2, a3 = C[0, k], C[1, k], C[2, k], C[3, k]
        b0, b1, b2, b3 = C[0, k + 1], C[1, k + 1], C[2, k + 1], C[3, k + 1]
        for j in range(d):
            e0 = X[i, j]
            e1 = X[i + 1, j]
            e2 = X[i + 2, j]
            e3 = X[i + 3, j]
            A[k, j] += a0 * e0 + a1 * e1 + a2 * e2 + a3 * e3
            A[k + 1, j] += b0 * e0 + b1 * e1 + b2 * e2 + b3 * e3
        k += 2
    if k < c:
        a0, a1, a2, a3 = C[0, k], C[1, k], C[2, k], C[3, k]
        for j in range(d):
            A[k, j] += a0 * X[i, j] + a1 * X[i + 1, j] + a2 * X[i + 2, j] + a3 * X[i + 3, j]


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
def _axpy_dense(X, i, coef, A):
    """A[k] += coef[k] * X[i] for every class k."""
    c, d = A.shape
    for k in range(c):
        ck = coef[k]
        if ck != 0.0:
            for j in range(d):
                A[k, j] += ck * X[i, j]


@njit(cache=True, fastmath=_FM)
def rows_dense(X, lo, hi, y, a, model, W, V, want_grad, want_hvp, inv_n, G,
               HV, cross):
    """Accumulate over rows lo..hi: returns Σ (a_i/n) ℓ(z_i);
    G += Σ (a_i/n) ℓ'(z_i) ⊗ x_i (if want_grad);
    HV += Σ (a_i/n) ℓ''(z_i) u_i ⊗ x_i and cross[i] = ℓ'(z_i)·u_i / n
    (if want_hvp; cross only when it has length n)."""
    c = W.shape[0]
    Z = np.empty((4, c))
    U = np.zeros((4, c))
    CG = np.zeros((4, c))
    CH = np.zeros((4, c))
    dl = np.empty(c)
    hu = np.empty(c)
    val = 0.0
    i = lo
    while i + 4 <= hi:
        if want_hvp:
            _dots4_pair_dense(X, i, W, V, Z, U)
        else:
            _dots4_dense(X, i, W, Z)
        for r in range(4):
            val += row_coefs(model, y[i + r], Z[r], U[r], weight_of(a, i + r, inv_n),
                             inv_n, want_grad, want_hvp, CG[r], CH[r], cross,
                             i + r, dl, hu)
        if want_grad:
            _axpy4_dense(X, i, CG, G)
        if want_hvp:
            _axpy4_dense(X, i, CH, HV)
        i += 4
    for i in range(i, hi):
        _dots_dense(X, i, W, Z[0])
        if want_hvp:
            _dots_dense(X, i, V, U[0])
        val += row_coefs(model, y[i], Z[0], U[0], weight_of(a, i, inv_n), inv_n,
                         want_grad, want_hvp, CG[0], CH[0], cross, i, dl, hu)
        if want_grad:
            _axpy_dense(X, i, CG[0], G)
        if want_hvp:
            _axpy_dense(X, i, CH[0], HV)
    return val
