"""CSR row kernels, twins of ``dense.py``: one pass over rows lo..hi.

X is given as (indptr, indices, data) in canonical form (sorted, no
duplicates; checked once in the Python layer). Each nonzero is read once from
memory: the gathers z_i = W[:, idx] · x_i bring the row into L1 and the
scatters G[:, idx] += coef ⊗ x_i reuse it.
"""
import numpy as np
from numba import njit

from .. import config
from ._arrays import lower_bound
from ._rowmath import LINEAR, LOGISTIC, derivs1, row_coefs, weight_of

_FM = set(config.FASTMATH)


# The dots are written without reassociation, in four interleaved partial
# sums: with it, LLVM vectorizes them with gather instructions, which on
# some x86 machines (microcode that slows gathers down) ran 1.8x slower than
# these scalar loads on the text problem (2.1 against 3.9 ms per dot pass).
_FM_DOTS = _FM - {"reassoc"}


@njit(cache=True, fastmath=_FM_DOTS)
def _dots_csr(indptr, indices, data, i, W, out):
    """out[k] = W[k] · x_i for the sparse row i (``_dot4`` per class)."""
    # 0-based slices: loops over range(p0, p1) keep Numba's negative-index
    # wraparound check on every access
    idx = indices[indptr[i]:indptr[i + 1]]
    val = data[indptr[i]:indptr[i + 1]]
    for k in range(W.shape[0]):
        out[k] = _dot4(idx, val, W[k])


@njit(cache=True, fastmath=_FM_DOTS)
def _dot4(idx, val, w):
    """Σ_q val[q] w[idx[q]] in four partial sums (q ≡ 0, 1, 2, 3 mod 4, the
    rest into the first), added as (s0 + s1) + (s2 + s3)."""
    m = idx.shape[0]
    s0 = s1 = s2 = s3 = 0.0
    q = 0
    while q + 4 <= m:
        s0 += val[q] * w[idx[q]]
        s1 += val[q + 1] * w[idx[q + 1]]
        s2 += val[q + 2] * w[idx[q + 2]]
        s3 += val[q + 3] * w[idx[q + 3]]
        q += 4
    while q < m:
        s0 += val[q] * w[idx[q]]
        q += 1
    return (s0 + s1) + (s2 + s3)


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


@njit(cache=True, fastmath=_FM_DOTS)
def _dots1_csr(idx, val, w, v, both):
    """w · x and, if ``both``, v · x for one row of a single-output model, in
    one walk over its nonzeros; each sum in the order of ``_dot4``."""
    if not both:
        return _dot4(idx, val, w), 0.0
    m = idx.shape[0]
    a0 = a1 = a2 = a3 = 0.0
    b0 = b1 = b2 = b3 = 0.0
    q = 0
    while q + 4 <= m:
        j0, j1, j2, j3 = idx[q], idx[q + 1], idx[q + 2], idx[q + 3]
        x0, x1, x2, x3 = val[q], val[q + 1], val[q + 2], val[q + 3]
        a0 += x0 * w[j0]
        a1 += x1 * w[j1]
        a2 += x2 * w[j2]
        a3 += x3 * w[j3]
        b0 += x0 * v[j0]
        b1 += x1 * v[j1]
        b2 += x2 * v[j2]
        b3 += x3 * v[j3]
        q += 4
    while q < m:
        a0 += val[q] * w[idx[q]]
        b0 += val[q] * v[idx[q]]
        q += 1
    return (a0 + a1) + (a2 + a3), (b0 + b1) + (b2 + b3)


@njit(cache=True, fastmath=_FM)
def _axpy1_csr(idx, val, cg, g, do_g, ch, hv, do_h):
    """g[idx] += cg·x (if do_g) and hv[idx] += ch·x (if do_h) in one walk
    over the row: each entry gets the update of ``_axpy_csr``."""
    if do_g and do_h:
        for q in range(idx.shape[0]):
            j = idx[q]
            x = val[q]
            g[j] += cg * x
            hv[j] += ch * x
    elif do_g:
        for q in range(idx.shape[0]):
            g[idx[q]] += cg * val[q]
    elif do_h:
        for q in range(idx.shape[0]):
            hv[idx[q]] += ch * val[q]


@njit(cache=True)
def _rows_csr1(indptr, indices, data, lo, hi, y, a, model, w, v, want_grad, want_hvp,
               inv_n, g, hv, cross):
    """``rows_csr`` for a single-output model (linear or logistic; w, v, g,
    hv the weight rows): the row's dots in one walk, its derivatives as
    scalars, its updates in one walk. Every value, sum and update is the
    generic kernel's, operation for operation, so the results are the same
    bit for bit; it saves the per-row work of c-length scratch arrays."""
    need_u = want_hvp or cross.shape[0] > 0
    val = 0.0
    for i in range(lo, hi):
        idx = indices[indptr[i]:indptr[i + 1]]
        x = data[indptr[i]:indptr[i + 1]]
        z, u = _dots1_csr(idx, x, w, v, need_u)        # u = 0.0 without need_u
        li, d1, h1 = derivs1(model, y[i], z, u, want_hvp)
        wi = weight_of(a, i, inv_n)
        cg = wi * d1
        ch = wi * h1
        if cross.shape[0] > 0:
            s = 0.0             # the generic kernel's sum from 0.0 (−0.0 becomes +0.0)
            s += d1 * u
            cross[i] = s * inv_n
        _axpy1_csr(idx, x, cg, g, want_grad and cg != 0.0, ch, hv, want_hvp and ch != 0.0)
        val += wi * li
    return val


@njit(cache=True)
def rows_csr(indptr, indices, data, lo, hi, y, a, model, W, V, want_grad,
             want_hvp, inv_n, G, HV, cross):
    """Same contract as ``dense.rows_dense`` for a CSR matrix."""
    return rows_csr_body(indptr, indices, data, lo, hi, y, a, model, W, V, want_grad,
                         want_hvp, inv_n, G, HV, cross)


@njit(inline="always")
def rows_csr_body(indptr, indices, data, lo, hi, y, a, model, W, V, want_grad,
                  want_hvp, inv_n, G, HV, cross):
    """The body of ``rows_csr`` (inlined as ``dense.rows_dense_body``)."""
    c = W.shape[0]
    if c == 1 and (model == LINEAR or model == LOGISTIC):
        w = W[0]
        return _rows_csr1(indptr, indices, data, lo, hi, y, a, model, w,
                          V[0] if V.shape[0] > 0 else w, want_grad, want_hvp, inv_n,
                          G[0] if want_grad else w, HV[0] if want_hvp else w, cross)
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
        q0 = lower_bound(idx, j0)
        q1 = lower_bound(idx, j1)
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
