"""CSR row kernels, twins of ``dense.py``: one pass over rows lo..hi.

X is given as (indptr, indices, data) in canonical form (sorted, no
duplicates; checked once in the Python layer). Each nonzero is read once from
memory: the gathers z_i = W[:, idx] · x_i bring the row into L1 and the
scatters G[:, idx] += coef ⊗ x_i reuse it.
"""
from numba import njit

from .. import config

_FM = set(config.FASTMATH)


@njit(cache=True, fastmath=_FM)
def _dots_csr(indptr, indices, data, i, W, out):
    """out[k] = W[k] · x_i for the sparse row i."""
    c = W.shape[0]
    p0 = indptr[i]
    p1 = indptr[i + 1]
    for k in range(c):
        s = 0.0
        for p in range(p0, p1):
            s += data[p] * W[k, indices[p]]
        out[k] = s


@njit(cache=True, fastmath=_FM)
def _axpy_row_csr(indptr, indices, data, i, coef, A):
    """A[k, idx] += coef[k] * x_i for the sparse row i."""
    c = A.shape[0]
    p0 = indptr[i]
    p1 = indptr[i + 1]
    for k in range(c):
        ck = coef[k]
        if ck != 0.0:
            for p in range(p0, p1):
                A[k, indices[p]] += ck * data[p]
