"""Dense row kernels: one pass over rows lo..hi of a C-contiguous X.

Rows are taken in blocks of 8 and weight rows in pairs: an 8×2 register tile
(10 loads per 16 FMAs) in which every weight fetched from cache serves 8 rows
and every accumulator G[k, j] is read and written once per 8 rows. X is read
from memory once per pass: the block stays in cache between the dot products
and the accumulation. (Measured on Zen 4, one core, d = 784, c = 10: 4×1 tile
18, 4×2 26, 8×2 31.5 GFLOP/s.)

With c ≥ 5 classes, each half of the block goes through a 4×5 tile instead
(9 loads per 20 FMAs), classes in groups of 5: a half is 25 KB at d = 784,
so it stays in L1 across the groups, where the whole block (50 KB) did not
on a 48 KB L1. Measured on an Ice Lake Xeon, one core, d = 784, c = 10,
dots and accumulation of a pass, GFLOP/s, 4×5 against 8×2: float64 40.4
against 31.5 on rows in cache and 29.3 against 24.4 streaming from memory;
float32 89 against 78 and 58 against 54. Its sums come out the same bit for
bit as the 8×2 tile's: each dot is one accumulator over j either way, and
LLVM turns the accumulation's sum over the block's rows into the same chain
of FMAs into G whether it has 8 terms or two groups of 4.
"""
import numpy as np
from numba import njit, types
from numba.extending import overload

from .. import config
from ._arrays import assign
from ._rowmath import BLOCK, MULTINOMIAL, row_coefs, softmax_block, softmax_scratch, weight_of

_FM = set(config.FASTMATH)
RB = BLOCK  # rows per block
K5 = 5  # classes per 4×5 tile (models with c ≥ 5)
FLUSH = 64  # blocks between flushes of float32 sums into the float64 results


# ---- the tiles' arithmetic follows the data: float32 rows are multiplied and
# summed in float32 (twice the SIMD lanes), float64 rows in float64. Each
# call's float32 sums go into the float64 results every FLUSH blocks, so no
# float32 sum runs over more than 512 rows; iterates stay float64.
def _arith(X, W):
    """W in the tiles' arithmetic dtype for rows X (a float32 copy for float32 X)."""


@overload(_arith, inline="always")
def _arith_ol(X, W):
    if X.dtype == types.float32:
        return lambda X, W: W.astype(np.float32)
    return lambda X, W: W


def _zero(w):
    """A zero of w's dtype (a dot's accumulator)."""


@overload(_zero, inline="always")
def _zero_ol(w):
    if w.dtype == types.float32:
        return lambda w: np.float32(0.0)
    return lambda w: 0.0


def _coef(x, A):
    """The coefficient x in the dtype of the sums A it scales rows into."""


@overload(_coef, inline="always")
def _coef_ol(x, A):
    if A.dtype == types.float32:
        return lambda x, A: np.float32(x)
    return lambda x, A: x


def _sums(X, G):
    """Where a call's row sums go: G itself (float64 rows) or a float32 buffer
    of G's shape (float32 rows), emptied into G by ``_flush``."""


@overload(_sums, inline="always")
def _sums_ol(X, G):
    if X.dtype == types.float32:
        return lambda X, G: np.zeros(G.shape, np.float32)
    return lambda X, G: G


def _flush(G, S):
    """G += S and S = 0 when S is a float32 buffer; nothing when S is G."""


@overload(_flush, inline="always")
def _flush_ol(G, S):
    if S.dtype == types.float32:
        def flush(G, S):
            for k in range(G.shape[0]):
                for j in range(G.shape[1]):
                    G[k, j] += S[k, j]
                    S[k, j] = 0.0
        return flush
    return lambda G, S: None


@njit(cache=True, fastmath=_FM, inline="always")
def _col8(X, i, j):
    """Column j of the 8-row block starting at row i."""
    return (X[i, j], X[i + 1, j], X[i + 2, j], X[i + 3, j],
            X[i + 4, j], X[i + 5, j], X[i + 6, j], X[i + 7, j])


@njit(cache=True, fastmath=_FM)
def _dot8x2(X, i, wa, wb, ZA, ka, ZB, kb):
    """ZA[r, ka] = X[i + r] · wa and ZB[r, kb] = X[i + r] · wb, r = 0..7."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _zero(wa)
    b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = _zero(wa)
    for j in range(wa.shape[0]):
        u = wa[j]
        v = wb[j]
        e0, e1, e2, e3, e4, e5, e6, e7 = _col8(X, i, j)
        a0 += e0 * u
        a1 += e1 * u
        a2 += e2 * u
        a3 += e3 * u
        a4 += e4 * u
        a5 += e5 * u
        a6 += e6 * u
        a7 += e7 * u
        b0 += e0 * v
        b1 += e1 * v
        b2 += e2 * v
        b3 += e3 * v
        b4 += e4 * v
        b5 += e5 * v
        b6 += e6 * v
        b7 += e7 * v
    _put8(ZA, ka, a0, a1, a2, a3, a4, a5, a6, a7)
    _put8(ZB, kb, b0, b1, b2, b3, b4, b5, b6, b7)


@njit(cache=True, fastmath=_FM)
def _dot8x1(X, i, wa, ZA, ka):
    """ZA[r, ka] = X[i + r] · wa, r = 0..7."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _zero(wa)
    for j in range(wa.shape[0]):
        u = wa[j]
        e0, e1, e2, e3, e4, e5, e6, e7 = _col8(X, i, j)
        a0 += e0 * u
        a1 += e1 * u
        a2 += e2 * u
        a3 += e3 * u
        a4 += e4 * u
        a5 += e5 * u
        a6 += e6 * u
        a7 += e7 * u
    _put8(ZA, ka, a0, a1, a2, a3, a4, a5, a6, a7)


@njit(cache=True, fastmath=_FM)
def _put8(Z, k, s0, s1, s2, s3, s4, s5, s6, s7):
    Z[0, k] = s0
    Z[1, k] = s1
    Z[2, k] = s2
    Z[3, k] = s3
    Z[4, k] = s4
    Z[5, k] = s5
    Z[6, k] = s6
    Z[7, k] = s7


@njit(cache=True, fastmath=_FM)
def _axpy8x2(X, i, C, ka, kb, A):
    """A[ka] += Σ_{r<8} C[r, ka] X[i + r] and the same for kb."""
    a0, a1, a2, a3 = _coef(C[0, ka], A), _coef(C[1, ka], A), _coef(C[2, ka], A), _coef(C[3, ka], A)
    a4, a5, a6, a7 = _coef(C[4, ka], A), _coef(C[5, ka], A), _coef(C[6, ka], A), _coef(C[7, ka], A)
    b0, b1, b2, b3 = _coef(C[0, kb], A), _coef(C[1, kb], A), _coef(C[2, kb], A), _coef(C[3, kb], A)
    b4, b5, b6, b7 = _coef(C[4, kb], A), _coef(C[5, kb], A), _coef(C[6, kb], A), _coef(C[7, kb], A)
    ga = A[ka]
    gb = A[kb]
    for j in range(ga.shape[0]):
        e0, e1, e2, e3, e4, e5, e6, e7 = _col8(X, i, j)
        ga[j] += (a0 * e0 + a1 * e1 + a2 * e2 + a3 * e3
                  + a4 * e4 + a5 * e5 + a6 * e6 + a7 * e7)
        gb[j] += (b0 * e0 + b1 * e1 + b2 * e2 + b3 * e3
                  + b4 * e4 + b5 * e5 + b6 * e6 + b7 * e7)


@njit(cache=True, fastmath=_FM)
def _axpy8x1(X, i, C, ka, A):
    """A[ka] += Σ_{r<8} C[r, ka] X[i + r]."""
    a0, a1, a2, a3 = _coef(C[0, ka], A), _coef(C[1, ka], A), _coef(C[2, ka], A), _coef(C[3, ka], A)
    a4, a5, a6, a7 = _coef(C[4, ka], A), _coef(C[5, ka], A), _coef(C[6, ka], A), _coef(C[7, ka], A)
    ga = A[ka]
    for j in range(ga.shape[0]):
        e0, e1, e2, e3, e4, e5, e6, e7 = _col8(X, i, j)
        ga[j] += (a0 * e0 + a1 * e1 + a2 * e2 + a3 * e3
                  + a4 * e4 + a5 * e5 + a6 * e6 + a7 * e7)


@njit(cache=True, fastmath=_FM)
def _dot4x5(X, i, W, k, Z, r0):
    """Z[r0 + r, k + q] = X[i + r] · W[k + q], r = 0..3, q = 0..4: a 4×5 tile
    (9 loads per 20 FMAs), whose 4 rows stay in L1 across the class groups."""
    x0, x1, x2, x3 = X[i], X[i + 1], X[i + 2], X[i + 3]
    w0, w1, w2, w3, w4 = W[k], W[k + 1], W[k + 2], W[k + 3], W[k + 4]
    a00 = a01 = a02 = a03 = a04 = _zero(w0)
    a10 = a11 = a12 = a13 = a14 = _zero(w0)
    a20 = a21 = a22 = a23 = a24 = _zero(w0)
    a30 = a31 = a32 = a33 = a34 = _zero(w0)
    for j in range(w0.shape[0]):
        e0, e1, e2, e3 = x0[j], x1[j], x2[j], x3[j]
        u0, u1, u2, u3, u4 = w0[j], w1[j], w2[j], w3[j], w4[j]
        a00 += e0 * u0
        a01 += e0 * u1
        a02 += e0 * u2
        a03 += e0 * u3
        a04 += e0 * u4
        a10 += e1 * u0
        a11 += e1 * u1
        a12 += e1 * u2
        a13 += e1 * u3
        a14 += e1 * u4
        a20 += e2 * u0
        a21 += e2 * u1
        a22 += e2 * u2
        a23 += e2 * u3
        a24 += e2 * u4
        a30 += e3 * u0
        a31 += e3 * u1
        a32 += e3 * u2
        a33 += e3 * u3
        a34 += e3 * u4
    _put5(Z, r0, k, a00, a01, a02, a03, a04)
    _put5(Z, r0 + 1, k, a10, a11, a12, a13, a14)
    _put5(Z, r0 + 2, k, a20, a21, a22, a23, a24)
    _put5(Z, r0 + 3, k, a30, a31, a32, a33, a34)


@njit(cache=True, fastmath=_FM)
def _put5(Z, r, k, s0, s1, s2, s3, s4):
    Z[r, k] = s0
    Z[r, k + 1] = s1
    Z[r, k + 2] = s2
    Z[r, k + 3] = s3
    Z[r, k + 4] = s4


@njit(cache=True, fastmath=_FM)
def _axpy4x5(X, i, C, r0, k, A):
    """A[k + q] += Σ_{r<4} C[r0 + r, k + q] X[i + r], q = 0..4."""
    x0, x1, x2, x3 = X[i], X[i + 1], X[i + 2], X[i + 3]
    c00, c10 = _coef(C[r0, k], A), _coef(C[r0 + 1, k], A)
    c20, c30 = _coef(C[r0 + 2, k], A), _coef(C[r0 + 3, k], A)
    c01, c11 = _coef(C[r0, k + 1], A), _coef(C[r0 + 1, k + 1], A)
    c21, c31 = _coef(C[r0 + 2, k + 1], A), _coef(C[r0 + 3, k + 1], A)
    c02, c12 = _coef(C[r0, k + 2], A), _coef(C[r0 + 1, k + 2], A)
    c22, c32 = _coef(C[r0 + 2, k + 2], A), _coef(C[r0 + 3, k + 2], A)
    c03, c13 = _coef(C[r0, k + 3], A), _coef(C[r0 + 1, k + 3], A)
    c23, c33 = _coef(C[r0 + 2, k + 3], A), _coef(C[r0 + 3, k + 3], A)
    c04, c14 = _coef(C[r0, k + 4], A), _coef(C[r0 + 1, k + 4], A)
    c24, c34 = _coef(C[r0 + 2, k + 4], A), _coef(C[r0 + 3, k + 4], A)
    g0, g1, g2, g3, g4 = A[k], A[k + 1], A[k + 2], A[k + 3], A[k + 4]
    for j in range(g0.shape[0]):
        e0, e1, e2, e3 = x0[j], x1[j], x2[j], x3[j]
        g0[j] += c00 * e0 + c10 * e1 + c20 * e2 + c30 * e3
        g1[j] += c01 * e0 + c11 * e1 + c21 * e2 + c31 * e3
        g2[j] += c02 * e0 + c12 * e1 + c22 * e2 + c32 * e3
        g3[j] += c03 * e0 + c13 * e1 + c23 * e2 + c33 * e3
        g4[j] += c04 * e0 + c14 * e1 + c24 * e2 + c34 * e3


@njit(cache=True, fastmath=_FM)
def _dots_block(X, i, W, Z):
    """Z[r, k] = W[k] · X[i + r] for the 8 rows of the block: classes in
    groups of 5 on each half of the block (4×5 tiles), the rest in pairs."""
    c = W.shape[0]
    for g in range(c // K5):
        for h in range(2):      # loop variables, not constants: one specialization
            _dot4x5(X, i + 4 * h, W, K5 * g, Z, 4 * h)
    k = K5 * (c // K5)
    while k + 2 <= c:
        _dot8x2(X, i, W[k], W[k + 1], Z, k, Z, k + 1)
        k += 2
    if k < c:
        _dot8x1(X, i, W[k], Z, k)


@njit(cache=True, fastmath=_FM)
def _axpy_block(X, i, C, A):
    """A[k] += Σ_r C[r, k] X[i + r] for the 8 rows of the block: classes in
    groups of 5 from each half of the block (4×5 tiles), the rest in pairs."""
    c = A.shape[0]
    for g in range(c // K5):
        for h in range(2):
            _axpy4x5(X, i + 4 * h, C, 4 * h, K5 * g, A)
    k = K5 * (c // K5)
    while k + 2 <= c:
        _axpy8x2(X, i, C, k, k + 1, A)
        k += 2
    if k < c:
        _axpy8x1(X, i, C, k, A)


@njit(cache=True, fastmath=_FM)
def _dots_zu(X, i, W, V, both, Z, U):
    """The block's dots Z with W and, if ``both``, U with V: with c ≥ 5 each
    through the 4×5 tiles; with fewer classes W[k] and V[k] share each load
    of X in an 8×2 tile."""
    c = W.shape[0]
    if not both:
        _dots_block(X, i, W, Z)
    elif c >= K5:
        _dots_block(X, i, W, Z)
        _dots_block(X, i, V, U)
    else:
        for k in range(c):
            _dot8x2(X, i, W[k], V[k], Z, k, U, k)


@njit(cache=True, fastmath=_FM)
def _dots_dense(X, i, W, out):
    """out[k] = W[k] · X[i] for every class k (rows after the last block)."""
    c, d = W.shape
    for k in range(c):
        s = 0.0
        for j in range(d):
            s += X[i, j] * W[k, j]
        out[k] = s


@njit(cache=True, fastmath=_FM)
def _axpy_dense(X, i, coef, A):
    """A[k] += coef[k] * X[i] for every class k (rows after the last block)."""
    c, d = A.shape
    for k in range(c):
        ck = coef[k]
        if ck != 0.0:
            for j in range(d):
                A[k, j] += ck * X[i, j]


@njit(cache=True, inline="always")
def _block_scratch(c):
    """Per-call scratch of the 8-row kernels: dots Z, U and coefficients CG,
    CH (8, c), two length-c rows, the block's row weights and the softmax
    block's scratch."""
    return (np.empty((RB, c)), np.zeros((RB, c)), np.zeros((RB, c)), np.zeros((RB, c)),
            np.empty(c), np.empty(c), np.empty(RB), softmax_scratch(c))


@njit(cache=True, inline="always")
def _block_rows(model, yb, wb, nb, Z, U, inv_n, want_grad, want_hvp, cross, ci, CG, CH,
                dl, hu, T, val):
    """The row math of a block's first nb rows (labels yb, weights wb, dots
    Z and U; cross entries from index ci on): ``softmax_block`` for the
    multinomial model, ``row_coefs`` row by row for the others (the same
    results bit for bit). Returns val plus their weighted losses."""
    if model == MULTINOMIAL:
        return softmax_block(yb, wb, nb, Z, U, inv_n, want_grad, want_hvp, cross, ci,
                             CG, CH, T, val)
    for r in range(nb):
        val += row_coefs(model, yb[r], Z[r], U[r], wb[r], inv_n, want_grad, want_hvp,
                         CG[r], CH[r], cross, ci + r, dl, hu)
    return val


@njit(cache=True)
def rows_dense(X, lo, hi, y, a, model, W, V, want_grad, want_hvp, inv_n, G,
               HV, cross):
    """Accumulate over rows lo..hi: returns Σ (a_i/n) ℓ(z_i);
    G += Σ (a_i/n) ℓ'(z_i) ⊗ x_i (if want_grad);
    HV += Σ (a_i/n) ℓ''(z_i) u_i ⊗ x_i (if want_hvp); cross[i] = ℓ'(z_i)·u_i / n
    when cross has length n (with or without want_hvp: a J·v pass alone
    skips the HV accumulation)."""
    return rows_dense_body(X, lo, hi, y, a, model, W, V, want_grad, want_hvp, inv_n, G,
                           HV, cross)


@njit(inline="always")
def rows_dense_body(X, lo, hi, y, a, model, W, V, want_grad, want_hvp, inv_n, G,
                    HV, cross):
    """The body of ``rows_dense``, inlined where a kernel chooses the format
    itself (``oracles.rows_pass``): a kernel of its own there would be one
    more compiled module holding all the tiles."""
    c = W.shape[0]
    Z, U, CG, CH, dl, hu, wb, T = _block_scratch(c)
    Wt = _arith(X, W)
    Vt = _arith(X, V)
    GS = _sums(X, G)
    HS = _sums(X, HV)
    val = 0.0
    i = lo
    nb = 0
    while i + RB <= hi:
        _dots_zu(X, i, Wt, Vt, want_hvp or cross.shape[0] > 0, Z, U)
        for r in range(RB):
            wb[r] = weight_of(a, i + r, inv_n)
        val = _block_rows(model, y[i:i + RB], wb, RB, Z, U, inv_n, want_grad, want_hvp,
                          cross, i, CG, CH, dl, hu, T, val)
        if want_grad:
            _axpy_block(X, i, CG, GS)
        if want_hvp:
            _axpy_block(X, i, CH, HS)
        i += RB
        nb += 1
        if nb % FLUSH == 0 or i + RB > hi:
            if want_grad:
                _flush(G, GS)
            if want_hvp:
                _flush(HV, HS)
    for i in range(i, hi):
        _dots_dense(X, i, W, Z[0])
        if want_hvp or cross.shape[0] > 0:
            _dots_dense(X, i, V, U[0])
        val += row_coefs(model, y[i], Z[0], U[0], weight_of(a, i, inv_n), inv_n,
                         want_grad, want_hvp, CG[0], CH[0], cross, i, dl, hu)
        if want_grad:
            _axpy_dense(X, i, CG[0], G)
        if want_hvp:
            _axpy_dense(X, i, CH[0], HV)
    return val


@njit(cache=True)
def rows_dense_idx(X, rows, lo, hi, y, a, model, W, V, want_grad, want_hvp, inv_n,
                   G, HV, cross):
    """``rows_dense`` over the gathered rows rows[lo..hi] (a minibatch):
    blocks of 8 rows are copied into an 8×d tile and run through the same
    register kernels, so each sampled row is read from memory once.
    cross is indexed by batch position (a row drawn twice has two entries)."""
    c, d = W.shape
    Xb = np.empty((RB, d), dtype=X.dtype)
    Z, U, CG, CH, dl, hu, wb, T = _block_scratch(c)
    Wt = _arith(X, W)
    Vt = _arith(X, V)
    GS = _sums(X, G)
    HS = _sums(X, HV)
    yb = np.empty(RB)
    val = 0.0
    k = lo
    while k < hi:
        nb = min(RB, hi - k)
        for r in range(nb):
            assign(Xb[r], X[rows[k + r]])
            yb[r] = y[rows[k + r]]
        for r in range(nb, RB):
            Xb[r] = 0.0
        _dots_zu(Xb, 0, Wt, Vt, want_hvp or cross.shape[0] > 0, Z, U)
        for r in range(nb):
            wb[r] = weight_of(a, rows[k + r], inv_n)
        val = _block_rows(model, yb, wb, nb, Z, U, inv_n, want_grad, want_hvp, cross, k,
                          CG, CH, dl, hu, T, val)
        for r in range(nb, RB):
            CG[r] = 0.0
            CH[r] = 0.0
        if want_grad:
            _axpy_block(Xb, 0, CG, GS)
        if want_hvp:
            _axpy_block(Xb, 0, CH, HS)
        k += RB
        if ((k - lo) // RB) % FLUSH == 0 or k >= hi:
            if want_grad:
                _flush(G, GS)
            if want_hvp:
                _flush(HV, HS)
    return val


@njit(cache=True)
def dense_row_coefs(X, rows, y, a, model, W, V, want_grad, want_hvp, inv_n, CG, CH, losses,
                    cross):
    """Twin of ``csr.csr_row_coefs``: for each batch position k, the dots of
    row rows[k] with W (and V) and its coefficients CG[k] = (a_i·inv_n)ℓ'(z),
    CH[k] = (a_i·inv_n)ℓ''(z)u, losses[k] = (a_i·inv_n)ℓ(z) and cross[k] =
    ℓ'(z)·u·inv_n (if cross has rows); nothing is accumulated."""
    c = W.shape[0]
    z = np.empty(c)
    u = np.zeros(c)
    dl = np.empty(c)
    hu = np.empty(c)
    for k in range(rows.shape[0]):
        i = rows[k]
        _dots_dense(X, i, W, z)
        if want_hvp or cross.shape[0] > 0:
            _dots_dense(X, i, V, u)
        losses[k] = row_coefs(model, y[i], z, u, weight_of(a, i, inv_n), inv_n, want_grad,
                              want_hvp, CG[k], CH[k], cross, k, dl, hu)


@njit(cache=True)
def dense_scatter_rows(X, rows, C, A):
    """A[k] += Σ_q C[q, k] X[rows[q]] (rows in batch order)."""
    for q in range(rows.shape[0]):
        _axpy_dense(X, rows[q], C[q], A)
