"""The fused oracle pass: value, ∇_w g, H v and the per-row cross term in one
pass over X, plus the (cheap, O(dim w)) regularizer parts of every oracle.

Data is passed as ``(X, indptr, indices, data)``: a dense problem as
``(X, None, None, None)``, a CSR problem as ``(None, indptr, indices, data)``. Weights are held
as ``W`` of shape (c, d) (c = 1 for linear and logistic models).
"""
import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .. import config
from ._arrays import assign, lower_bound, prange_only
from ._rowmath import BIASED_L2, FEATURE_L2, L2, SAMPLE_WEIGHTS
from .csr import csr_row_coefs, csr_scatter_cols, rows_csr_body, rows_csr_idx
from .dense import rows_dense_body, rows_dense_idx

_FM = set(config.FASTMATH)


@njit(cache=True)
def _row_bounds(n, nchunks):
    """Boundaries of nchunks contiguous chunks of equal rows."""
    b = np.empty(nchunks + 1, dtype=np.int64)
    for t in range(nchunks + 1):
        b[t] = (n * t) // nchunks
    return b


@njit(cache=True)
def _nnz_bounds(indptr, n, nchunks):
    """Boundaries of nchunks contiguous row chunks of equal nonzeros (CSR)."""
    b = np.empty(nchunks + 1, dtype=np.int64)
    b[0] = 0
    b[nchunks] = n
    nnz = indptr[n]
    for t in range(1, nchunks):
        r = lower_bound(indptr, (nnz * t) // nchunks)
        b[t] = min(max(r, b[t - 1]), n)
    return b


@njit(cache=True)
def _buffers(nchunks, c, d, want_grad, want_hvp):
    """Per-chunk accumulators (no two threads ever write the same one)."""
    gb = np.zeros((nchunks, c, d) if want_grad else (nchunks, 0, 0))
    hb = np.zeros((nchunks, c, d) if want_hvp else (nchunks, 0, 0))
    return gb, hb, np.zeros(nchunks)


@njit(cache=True)
def _merge(gb, hb, vals, want_grad, want_hvp, G, HV):
    """Serial merge of the per-chunk buffers, in chunk order."""
    if want_grad:
        _sum_buffers(gb, G)
    if want_hvp:
        _sum_buffers(hb, HV)
    return _sum_in_order(vals)


def rows_pass(X, indptr, indices, data, lo, hi, y, a, model, W, V, want_grad, want_hvp,
              inv_n, G, HV, cross):
    """``dense.rows_dense`` (``indptr`` None) or ``csr.rows_csr`` (``X``
    None) over rows lo..hi: the leaf kernel of every full pass (compiled
    code only). The format is chosen when it compiles, so a specialization
    holds one format's body, inlined: a call of ``rows_dense`` would be one
    more compiled module holding every tile."""
    raise NotImplementedError("only callable from compiled code")


@overload(rows_pass, jit_options={"cache": True})
def _ol_rows_pass(X, indptr, indices, data, lo, hi, y, a, model, W, V, want_grad, want_hvp,
                  inv_n, G, HV, cross):
    if isinstance(indptr, types.NoneType):
        def dense_impl(X, indptr, indices, data, lo, hi, y, a, model, W, V, want_grad,
                       want_hvp, inv_n, G, HV, cross):
            return rows_dense_body(X, lo, hi, y, a, model, W, V, want_grad, want_hvp, inv_n,
                                   G, HV, cross)
        return dense_impl

    def csr_impl(X, indptr, indices, data, lo, hi, y, a, model, W, V, want_grad, want_hvp,
                 inv_n, G, HV, cross):
        return rows_csr_body(indptr, indices, data, lo, hi, y, a, model, W, V, want_grad,
                             want_hvp, inv_n, G, HV, cross)
    return csr_impl


def _chunk_bounds(indptr, n, nchunks):
    """Row boundaries of the chunks: equal rows (dense, ``indptr`` None) or
    equal nonzeros (CSR)."""
    raise NotImplementedError("only callable from compiled code")


@overload(_chunk_bounds, inline="always")
def _ol_chunk_bounds(indptr, n, nchunks):
    if isinstance(indptr, types.NoneType):
        return lambda indptr, n, nchunks: _row_bounds(n, nchunks)
    return lambda indptr, n, nchunks: _nnz_bounds(indptr, n, nchunks)


@njit(inline="always")
def _pass(X, indptr, indices, data, y, a, model, W, V, want_grad, want_hvp,
          G, HV, cross, nchunks):
    """Body of :func:`oracle_pass`, inlined into every parallel entry point.

    Numba cannot safely cache a function that *calls* a ``parallel=True``
    function (from the cache such a caller ran the pass serially, or
    segfaulted: measured with numba 0.68), so each parallel entry point
    (oracle_pass, run_schedule, forward_mode) inlines this body and its prange
    becomes that entry point's own parallel loop; everything it calls is a
    serial, cached leaf kernel (``rows_pass``, which holds the format). The
    body is a plain inlined function, not an overload chosen by type: Numba
    compiles an inlined overload's body once on its own just to type it, a
    module holding every tile each time."""
    n = y.shape[0]
    c, d = W.shape
    nch = max(1, min(nchunks, n))
    bounds = _chunk_bounds(indptr, n, nch)
    gb, hb, vals = _buffers(nch, c, d, want_grad, want_hvp)
    inv_n = 1.0 / n
    for t in prange(nch):
        vals[t] = rows_pass(X, indptr, indices, data, bounds[t], bounds[t + 1], y, a, model,
                            W, V, want_grad, want_hvp, inv_n, gb[t], hb[t], cross)
    return _merge(gb, hb, vals, want_grad, want_hvp, G, HV)


@njit(cache=True)
def _zero_outputs(want_grad, want_hvp, G, HV):
    if want_grad:
        G[:] = 0.0
    if want_hvp:
        HV[:] = 0.0


@njit(cache=True)
def dense_batch_chunks(b, nchunks):
    """Chunks of a dense minibatch pass over b rows: one per 32 rows (enough
    work to pay for a chunk's (c, d) buffer), at most ``nchunks``. A function
    of the batch alone, so a fixed ``nchunks`` gives the same summation
    order on any machine."""
    return max(1, min(nchunks, b // 32))


def _pass_rows(rows, X, indptr, indices, data, y, a, model, W, V, want_grad,
               want_hvp, G, HV, cross, nchunks):
    """``_pass`` over all rows (``rows`` is None: chosen at typing time) or
    over the minibatch ``rows`` (int64 array, sorted, may repeat), with
    weights 1/|B| instead of 1/n and ``cross`` indexed by batch position."""
    raise NotImplementedError("only callable from compiled code")


@overload(_pass_rows, inline="always")
def _ol_pass_rows(rows, X, indptr, indices, data, y, a, model, W, V, want_grad,
                  want_hvp, G, HV, cross, nchunks):
    if isinstance(rows, types.NoneType):
        def full_impl(rows, X, indptr, indices, data, y, a, model, W, V, want_grad,
                      want_hvp, G, HV, cross, nchunks):
            return _pass(X, indptr, indices, data, y, a, model, W, V, want_grad,
                         want_hvp, G, HV, cross, nchunks)
        return full_impl
    if isinstance(indptr, types.NoneType):
        def dense_impl(rows, X, indptr, indices, data, y, a, model, W, V, want_grad,
                       want_hvp, G, HV, cross, nchunks):
            b = rows.shape[0]
            c, d = W.shape
            nch = dense_batch_chunks(b, nchunks)
            inv_b = 1.0 / b
            if nch == 1:         # small batch: no per-chunk buffers to allocate
                _zero_outputs(want_grad, want_hvp, G, HV)
                return rows_dense_idx(X, rows, 0, b, y, a, model, W, V, want_grad,
                                      want_hvp, inv_b, G, HV, cross)
            gb, hb, vals = _buffers(nch, c, d, want_grad, want_hvp)
            for t in prange(nch):
                vals[t] = rows_dense_idx(X, rows, (b * t) // nch, (b * (t + 1)) // nch,
                                         y, a, model, W, V, want_grad, want_hvp, inv_b,
                                         gb[t], hb[t], cross)
            return _merge(gb, hb, vals, want_grad, want_hvp, G, HV)
        return dense_impl

    def csr_impl(rows, X, indptr, indices, data, y, a, model, W, V, want_grad,
                 want_hvp, G, HV, cross, nchunks):
        # a sparse batch has about as many nonzeros as W has entries, so
        # per-chunk (c, d) buffers would cost as much as the pass: rows are
        # split for the dots, then columns for the accumulation (no buffers)
        b = rows.shape[0]
        c, d = W.shape
        nch = csr_batch_chunks(indptr, rows, nchunks)
        inv_b = 1.0 / b
        _zero_outputs(want_grad, want_hvp, G, HV)
        if nch == 1:
            return rows_csr_idx(indptr, indices, data, rows, 0, b, y, a, model, W, V,
                                want_grad, want_hvp, inv_b, G, HV, cross)
        CG = np.zeros((b, c))          # per-row coefficients: b·c, small
        CH = np.zeros((b, c))
        losses = np.empty(b)
        for t in prange(nch):
            csr_row_coefs(indptr, indices, data, rows, (b * t) // nch, (b * (t + 1)) // nch,
                          y, a, model, W, V, want_grad, want_hvp, inv_b, CG, CH, losses, cross)
        for t in prange(nch):
            csr_scatter_cols(indptr, indices, data, rows, CG, CH, want_grad, want_hvp,
                             (d * t) // nch, (d * (t + 1)) // nch, G, HV)
        return _sum_in_order(losses)
    return csr_impl


@njit(inline="always")
def _pass_or_full(rows, full, X, indptr, indices, data, y, a, model, W, V, want_grad,
                  want_hvp, G, HV, cross, nchunks):
    """The passes of minibatch steps: :func:`_pass_rows` over the batch
    ``rows``, or the full pass over all rows when ``full`` is true (the
    validation pass). Full-batch steps call :func:`_pass` itself."""
    if full:
        return _pass(X, indptr, indices, data, y, a, model, W, V, want_grad,
                     want_hvp, G, HV, cross, nchunks)
    return _pass_rows(rows, X, indptr, indices, data, y, a, model, W, V, want_grad,
                      want_hvp, G, HV, cross, nchunks)


@njit(cache=True)
def _sum_in_order(v):
    s = 0.0
    for k in range(v.shape[0]):
        s += v[k]
    return s


@njit(cache=True)
def csr_batch_chunks(indptr, rows, nchunks):
    """Row/column blocks of a CSR minibatch pass: one per 65536 nonzeros of
    the batch, at most ``nchunks`` (a function of the batch alone)."""
    nnz = 0
    for k in range(rows.shape[0]):
        nnz += indptr[rows[k] + 1] - indptr[rows[k]]
    return max(1, min(nchunks, nnz // 65536))


@njit(cache=True, parallel=prange_only())
def oracle_pass_rows(rows, D, a, model, W, V, want_grad, want_hvp, G, HV, cross, nchunks):
    """:func:`oracle_pass` restricted to the minibatch ``rows`` (sorted int64
    row indices, repeats allowed): the data part is (1/|B|) Σ_{i∈B} a_i ℓ(z_i)
    and ``cross`` (if of length ≥ |B|) gets ℓ'(z_i)·u_i/|B| at each batch
    position. Only the batch's rows are read. ``D`` is the data
    (:class:`~fastbilevel.kernels.data.Data`)."""
    X, indptr, indices, data, y = D
    return _pass_rows(rows, X, indptr, indices, data, y, a, model, W, V, want_grad,
                      want_hvp, G, HV, cross, nchunks)


def _cross_add_rows(rows, hyper, rdiag, da, W, V, cross, scale, h):
    """``cross_add`` for a full pass (``rows`` None) or a minibatch pass
    (``cross`` by batch position: h[rows[k]] += scale·σ'(λ)·cross[k])."""
    raise NotImplementedError("only callable from compiled code")


@overload(_cross_add_rows, inline="always")
def _ol_cross_add_rows(rows, hyper, rdiag, da, W, V, cross, scale, h):
    if isinstance(rows, types.NoneType):
        def full_impl(rows, hyper, rdiag, da, W, V, cross, scale, h):
            cross_add(hyper, rdiag, da, W, V, cross, scale, h)
        return full_impl

    def batch_impl(rows, hyper, rdiag, da, W, V, cross, scale, h):
        if hyper == SAMPLE_WEIGHTS:
            for k in range(rows.shape[0]):
                h[rows[k]] += scale * da[rows[k]] * cross[k]
        else:
            cross_add(hyper, rdiag, da, W, V, cross, scale, h)
    return batch_impl


@njit(cache=True, fastmath=_FM)
def _sum_buffers(buf, out):
    """out = Σ_t buf[t] (the serial merge of the per-thread buffers)."""
    assign(out, buf[0])
    for t in range(1, buf.shape[0]):
        out += buf[t]


@njit(cache=True, parallel=prange_only())
def oracle_pass(D, a, model, W, V, want_grad, want_hvp, G, HV, cross, nchunks):
    """One parallel pass over the rows of the data ``D``
    (:class:`~fastbilevel.kernels.data.Data`) at the point W (and direction V).

    Returns the data part of the objective, (1/n) Σ a_i ℓ(x_iᵀW; y_i), and
    overwrites, as requested, G with (1/n) Σ a_i ℓ'(z_i) ⊗ x_i, HV with
    (1/n) Σ a_i ℓ''(z_i)(V x_i) ⊗ x_i and cross (if of length n) with
    ℓ'(z_i)·(V x_i)/n. ``a`` holds the per-sample weights a_i (empty: all 1).
    The rows are split into ``nchunks`` contiguous chunks (equal rows, or
    equal nonzeros for CSR) run in parallel, each reducing into its own
    buffer; the buffers are summed in chunk order at the end, so the result
    depends on ``nchunks`` but not on the number of threads running them.
    """
    X, indptr, indices, data, y = D
    return _pass(X, indptr, indices, data, y, a, model, W, V, want_grad,
                 want_hvp, G, HV, cross, nchunks)


@njit(cache=True)
def oracle_pass_serial(D, a, model, W, V, want_grad, want_hvp, G, HV, cross, nchunks):
    """:func:`oracle_pass` with its ``nchunks`` chunks run one after another
    on the calling thread: the same chunks, the same buffers, the same merge
    order, so the same result bit for bit. With no parallel loop to outline
    it compiles in a fraction of the time; the step-size estimate uses it on
    small data, where one thread is fast enough."""
    X, indptr, indices, data, y = D
    return _pass(X, indptr, indices, data, y, a, model, W, V, want_grad,
                 want_hvp, G, HV, cross, nchunks)


@njit(cache=True, fastmath=_FM)
def reg_value(rdiag, prior, W):
    """r(W) = ½ Σ_j rdiag_j ‖W[:, j] − P[:, j]‖² (P = prior, or 0 if empty)."""
    c, d = W.shape
    has_prior = prior.shape[0] > 0
    s = 0.0
    for k in range(c):
        for j in range(d):
            e = W[k, j] - prior[k, j] if has_prior else W[k, j]
            s += rdiag[j] * e * e
    return 0.5 * s


@njit(cache=True, fastmath=_FM)
def reg_grad_add(rdiag, prior, W, G):
    """G += ∇r(W) = rdiag ⊙ (W − P)."""
    c, d = W.shape
    has_prior = prior.shape[0] > 0
    for k in range(c):
        for j in range(d):
            e = W[k, j] - prior[k, j] if has_prior else W[k, j]
            G[k, j] += rdiag[j] * e


@njit(cache=True, fastmath=_FM)
def reg_hvp_add(rdiag, V, HV):
    """HV += ∇²r V = rdiag ⊙ V."""
    c, d = V.shape
    for k in range(c):
        for j in range(d):
            HV[k, j] += rdiag[j] * V[k, j]


@njit(cache=True, fastmath=_FM)
def cross_add(hyper, rdiag, da, W, V, cross, scale, h):
    """h += scale · J(W) V, J(w)v = ∇_λ(∇_w g(w, λ)ᵀ v), for each map:
    sample_weights: σ'(λ_i) ℓ'(z_i)·u_i / n (``cross`` from the pass, ``da`` = σ'(λ));
    feature_l2: e^{λ_j}⟨w_j, v_j⟩; l2: e^λ⟨w, v⟩; biased_l2: −μ v; init: 0.
    """
    c, d = W.shape
    if hyper == SAMPLE_WEIGHTS:
        for i in range(cross.shape[0]):
            h[i] += scale * da[i] * cross[i]
    elif hyper == FEATURE_L2:
        for j in range(d):
            s = 0.0
            for k in range(c):
                s += W[k, j] * V[k, j]
            h[j] += scale * rdiag[j] * s
    elif hyper == L2:
        s = 0.0
        for k in range(c):
            for j in range(d):
                s += W[k, j] * V[k, j]
        h[0] += scale * rdiag[0] * s
    elif hyper == BIASED_L2:
        for k in range(c):
            for j in range(d):
                h[k * d + j] -= scale * rdiag[j] * V[k, j]
