"""CSR row kernels, twins of ``dense.py``: one pass over rows lo..hi.

X is given as (indptr, indices, data) in canonical form (sorted, no
duplicates; checked once in the Python layer). Each nonzero is read once from
memory: the gathers z_i = W[:, idx] · x_i bring the row into L1 and the
scatters G[:, idx] += coef ⊗ x_i reuse it.
"""
import numpy as np
from numba import njit

from .. import config
from ._rowmath import row_coefs, weight_of

_FM = set(config.FASTMATH)


@njit(cache=True, fastmath=_FM)
def _dots_csr(indptr, indices, data, i, W, out):
    """out[k] = W[k] · x_i for the sparse row i."""
    # 0-based slices: loops over range(p0, p1) keep Numba's negative-index
    # wraparound check on every access
    idx = indices[indptr[i]:indptr[i + 1]]
    val = data[indptr[i]:indptr[i + 1]]
    for k in range(W.shape[0]):
        wk = W[k]
        s = 0.0
        for q in range(idx.shape[0]):
            s += val[q] * wk[idx[q]]
        out[k] = s


@njit(cache=True, fastmath=_FM)
def _axpy_csr(indptr, indices, data, i, coef, A):
    """A[k, idx] += coef[k] * x_i for the sparse row i."""
    idx = indices[indptr[i]:indptr[i + 1]]
    val = data[indptr[i]:indptr[i + 1]]
    for k in range(A.shape[0]):
        ck = coef[k]
        if ck != 0.0:
            ak = A[k]
            for q in range(idx.shape[0]):
                ak[idx[q]] += ck * val[q]


@njit(cache=True, inline="always")
def _csr_row(indptr, indices, data, i, pos, y, a, model, W, V, want_grad, want_hvp, inv_n,
             G, HV, cross, z, u, cg, ch, dl, hu):
    """One row of a pass: dots, coefficients (cross at ``pos``), accumulation."""
    _dots_csr(indptr, indices, data, i, W, z)
    if want_hvp or cross.shape[0] > 0:
        _dots_csr(indptr, indices, data, i, V, u)
    v = row_coefs(model, y[i], z, u, weight_of(a, i, inv_n), inv_n, want_grad, want_hvp,
                  cg, ch, cross, pos, dl, hu)
    if want_grad:
        _axpy_csr(indptr, indices, data, i, cg, G)
    if want_hvp:
        _axpy_csr(indptr, indices, data, i, ch, HV)
    return v


@njit(cache=True)
def rows_csr(indptr, indices, data, lo, hi, y, a, model, W, V, want_grad,
             want_hvp, inv_n, G, HV, cross):
    """Same contract as ``dense.rows_dense`` for a CSR matrix."""
    c = W.shape[0]
    z, u, cg, ch, dl, hu = np.empty(c), np.zeros(c), np.zeros(c), np.zeros(c), \
        np.empty(c), np.empty(c)
    val = 0.0
    for i in range(lo, hi):
        val += _csr_row(indptr, indices, data, i, i, y, a, model, W, V, want_grad, want_hvp,
                        inv_n, G, HV, cross, z, u, cg, ch, dl, hu)
    return val


@njit(cache=True)
def rows_csr_idx(indptr, indices, data, rows, lo, hi, y, a, model, W, V, want_grad,
                 want_hvp, inv_n, G, HV, cross):
    """``rows_csr`` over the gathered rows rows[lo..hi] (a minibatch); cross
    is indexed by batch position."""
    c = W.shape[0]
    z, u, cg, ch, dl, hu = np.empty(c), np.zeros(c), np.zeros(c), np.zeros(c), \
        np.empty(c), np.empty(c)
    val = 0.0
    for k in range(lo, hi):
        val += _csr_row(indptr, indices, data, rows[k], k, y, a, model, W, V, want_grad,
                        want_hvp, inv_n, G, HV, cross, z, u, cg, ch, dl, hu)
    return val


@njit(cache=True)
def csr_row_coefs(indptr, indices, data, rows, lo, hi, y, a, model, W, V, want_grad,
                  want_hvp, inv_n, CG, CH, losses, cross):
    """First phase of a column-split minibatch pass: for batch positions
    lo..hi, the dots of row rows[k] with W (and V) and its coefficients
    CG[k] = (a_i/|B|) ℓ'(z), CH[k] = (a_i/|B|) ℓ''(z)u, losses[k] and
    cross[k] (as in ``rows_csr_idx``); nothing is accumulated."""
    c = W.shape[0]
    z = np.empty(c)
    u = np.zeros(c)
    dl = np.empty(c)
    hu = np.empty(c)
    for k in range(lo, hi):
        i = rows[k]
        _dots_csr(indptr, indices, data, i, W, z)
        if want_hvp or cross.shape[0] > 0:
            _dots_csr(indptr, indices, data, i, V, u)
        losses[k] = row_coefs(model, y[i], z, u, weight_of(a, i, inv_n), inv_n, want_grad,
                              want_hvp, CG[k], CH[k], cross, k, dl, hu)


@njit(cache=True, fastmath=_FM)
def csr_scatter_cols(indptr, indices, data, rows, CG, CH, want_grad, want_hvp, j0, j1, G,
                     HV):
    """Second phase: G[:, j] += Σ_k CG[k] x_{rows[k], j} (and HV with CH) for
    the columns j0 ≤ j < j1 only, rows in batch order. Each column is owned
    by one caller, so column blocks run in parallel without buffers, and
    every entry sums its terms in the same order whatever the blocks."""
    c = G.shape[0]
    for k in range(rows.shape[0]):
        i = rows[k]
        idx = indices[indptr[i]:indptr[i + 1]]
        val = data[indptr[i]:indptr[i + 1]]
        q0 = np.searchsorted(idx, j0)
        q1 = np.searchsorted(idx, j1)
        for kk in range(c):
            if want_grad:
                cg = CG[k, kk]
                gk = G[kk]
                for q in range(q0, q1):
                    gk[idx[q]] += cg * val[q]
            if want_hvp:
                ch = CH[k, kk]
                hk = HV[kk]
                for q in range(q0, q1):
                    hk[idx[q]] += ch * val[q]
