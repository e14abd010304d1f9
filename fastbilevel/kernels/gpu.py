"""``@cuda.jit`` kernels: the fused oracle pass and the O(dim w) vector work
of the schedule interpreter, on an NVIDIA GPU (or Numba's CUDA simulator).

Imported only by :mod:`fastbilevel.cuda` (``device="cuda"``): the CPU
install never imports ``numba.cuda``.

The per-row math is the CPU's: :func:`device_twin` compiles the Python
function behind an ``@njit`` function of ``_rowmath`` (``row_coefs``,
``row_derivs``, ``sigmoid``, ...) as a CUDA device function, with the
``@njit`` functions it calls replaced by their own twins, so a model is
written once.

A pass over the rows has two kernels, each writing every output from one
thread in a fixed order (no float atomics, so a result is the same on every
run and every GPU):

* rows: a thread per row (grid-stride) computes the dots z = W x_i and
  u = V x_i over the row's features (dense) or nonzeros (CSR), applies the
  row math and writes the row's coefficients ``CG[i] = a_i ℓ'(z)/n``,
  ``CH[i] = a_i ℓ''(z)u/n``, its weighted loss and its cross term;
* columns: G = Σ_i CG[i] ⊗ x_i. Dense: a thread per feature within a tile
  of ``ROW_TILE`` rows (neighbouring threads read neighbouring entries of
  X), the tiles' partial sums added in tile order by a second kernel. CSR:
  a thread per feature walks the stored transpose (CSC) of X, in row order.

Sums over rows (the loss) and dot products are two kernels: strided
per-thread partial sums, then one thread adding them in order.

This first version has no shared-memory tiles and no warp reductions: it
is written to be right and deterministic, and has not been timed on a GPU.

Every kernel is made by a factory keyed on the class count ``C`` and the
threads per block ``TPB`` (both compile-time constants for the local and
shared arrays): ``kernels(C, TPB)``. ``py_kernels(C, TPB)`` gives the same
kernels as plain Python functions, for ``numba.cuda.compile_ptx``.
"""
import functools
import types as _pytypes

import numpy as np

from numba import boolean, cuda, float32, float64, int32, int64

from . import _rowmath
from . import sampling as _sampling
from .._codes import BIASED_L2, FEATURE_L2, GD, HEAVY_BALL, L2

# rows per tile of the dense column kernel: partial sums per tile, added in order
ROW_TILE = 256


def _rebind(fn, **deps):
    """A copy of the Python function behind ``fn`` (an ``@njit`` function or a
    plain one) whose globals ``deps`` are replaced."""
    py = getattr(fn, "py_func", fn)
    g = dict(py.__globals__)
    g.update(deps)
    return _pytypes.FunctionType(py.__code__, g, py.__name__, py.__defaults__,
                                 py.__closure__)


def device_twin(fn, **deps):
    """``fn``'s Python source compiled as a CUDA device function (the
    functions it calls given as ``deps``). A device function is compiled for
    the current GPU's compute capability (Numba asks the driver), so
    compiling a kernel to PTX on a machine without a GPU needs that
    capability supplied (``tests/cuda_ptx.py`` does)."""
    return cuda.jit(device=True)(_rebind(fn, **deps))


def _fmax(a, b):
    return a if a > b else b


@functools.lru_cache(maxsize=None)
def row_math():
    """The device twins of the row math: (row_coefs, weight_of)."""
    sig = device_twin(_rowmath.sigmoid)
    # the builtin max(float, float) fails to type in Numba 0.68's CUDA target
    sp = device_twin(_rowmath.softplus, max=cuda.jit(device=True)(_fmax))
    spp = device_twin(_rowmath.sigmoid_prime)
    rd = device_twin(_rowmath.row_derivs, sigmoid=sig, softplus=sp, sigmoid_prime=spp)
    rc = device_twin(_rowmath.row_coefs, row_derivs=rd)
    return rc, device_twin(_rowmath.weight_of)


@functools.lru_cache(maxsize=None)
def sampler_math():
    """The device twins of the counter-based sampler: (key, randint, fill_rows)."""
    mix = device_twin(_sampling.mix64)
    key = device_twin(_sampling.key, mix64=mix)
    u01 = device_twin(_sampling.uniform01, mix64=mix)
    rint = device_twin(_sampling.randint, uniform01=u01)
    return key, rint, device_twin(_sampling.fill_rows, randint=rint)


def _py_sampler_kernels():
    """Minibatch draws on the device, the same rows as the CPU's
    ``sampling.draw_rows`` for the same (seed, stream, step)."""
    key, randint, fill_rows = sampler_math()

    def draw_replace(seed, stream, step, n, out):
        """out[i] = the i-th of b independent uniform rows: a thread per draw."""
        i = cuda.grid(1)
        if i < out.shape[0]:
            out[i] = randint(key(seed, stream, step), i, n)

    def draw_shuffle(seed, stream, step, n, perm, out):
        """out = the first b rows of the partial Fisher–Yates shuffle (one
        thread: each swap depends on the last); ``perm`` (0..n−1) is restored."""
        if cuda.grid(1) == 0:
            fill_rows(key(seed, stream, step), n, out.shape[0], False, perm, out)

    def rank_sort(src, dst):
        """dst = src sorted (stable rank sort: a thread per entry counts the
        entries before it; O(b²) work, b = a minibatch)."""
        i = cuda.grid(1)
        b = src.shape[0]
        if i < b:
            v = src[i]
            r = 0
            for j in range(b):
                w = src[j]
                if w < v or (w == v and j < i):
                    r += 1
            dst[r] = v

    return {"draw_replace": draw_replace, "draw_shuffle": draw_shuffle,
            "rank_sort": rank_sort}


def _py_kernels(C, TPB):
    """The kernels for C classes and TPB threads per block, as Python functions."""
    row_coefs, weight_of = row_math()

    def rows_dense(X, rows, r0, r1, y, a, model, W, V, want_grad, want_hvp, inv_n, CG, CH,
                   LV, CR):
        """Row coefficients of positions r0..r1−1: row p, or row rows[p] of a
        minibatch (``rows`` not empty); outputs by position (see the module
        docstring)."""
        z = cuda.local.array(C, float64)
        u = cuda.local.array(C, float64)
        dl = cuda.local.array(C, float64)
        hu = cuda.local.array(C, float64)
        d = X.shape[1]
        want_u = want_hvp or CR.shape[0] > 0
        for p in range(r0 + cuda.grid(1), r1, cuda.gridsize(1)):
            i = rows[p] if rows.shape[0] > 0 else p
            for k in range(C):
                z[k] = 0.0
                u[k] = 0.0
            for j in range(d):
                x = X[i, j]
                for k in range(C):
                    z[k] += W[k, j] * x
                if want_u:
                    for k in range(C):
                        u[k] += V[k, j] * x
            LV[p] = row_coefs(model, y[i], z, u, weight_of(a, i, inv_n), inv_n, want_grad,
                              want_hvp, CG[p], CH[p], CR, p, dl, hu)

    def rows_csr(indptr, indices, data, rows, r0, r1, y, a, model, W, V, want_grad,
                 want_hvp, inv_n, CG, CH, LV, CR):
        """Row coefficients of positions r0..r1−1 of a CSR design (as
        ``rows_dense``)."""
        z = cuda.local.array(C, float64)
        u = cuda.local.array(C, float64)
        dl = cuda.local.array(C, float64)
        hu = cuda.local.array(C, float64)
        want_u = want_hvp or CR.shape[0] > 0
        for p in range(r0 + cuda.grid(1), r1, cuda.gridsize(1)):
            i = rows[p] if rows.shape[0] > 0 else p
            for k in range(C):
                z[k] = 0.0
                u[k] = 0.0
            for q in range(indptr[i], indptr[i + 1]):
                j = indices[q]
                x = data[q]
                for k in range(C):
                    z[k] += W[k, j] * x
                if want_u:
                    for k in range(C):
                        u[k] += V[k, j] * x
            LV[p] = row_coefs(model, y[i], z, u, weight_of(a, i, inv_n), inv_n, want_grad,
                              want_hvp, CG[p], CH[p], CR, p, dl, hu)

    def cols_dense(X, rows, CG, CH, want_grad, want_hvp, PG, PH):
        """PG[t, k, j] = Σ_{p in tile t} CG[p, k] X[i_p, j] (PH likewise from
        CH), i_p = p or rows[p]: grid (feature blocks, position tiles)."""
        j = cuda.blockIdx.x * TPB + cuda.threadIdx.x
        t = cuda.blockIdx.y
        d = X.shape[1]
        n = rows.shape[0] if rows.shape[0] > 0 else X.shape[0]
        if j >= d:
            return
        ag = cuda.local.array(C, float64)
        ah = cuda.local.array(C, float64)
        for k in range(C):
            ag[k] = 0.0
            ah[k] = 0.0
        end = (t + 1) * ROW_TILE
        for p in range(t * ROW_TILE, n if n < end else end):
            x = X[rows[p] if rows.shape[0] > 0 else p, j]
            if want_grad:
                for k in range(C):
                    ag[k] += CG[p, k] * x
            if want_hvp:
                for k in range(C):
                    ah[k] += CH[p, k] * x
        for k in range(C):
            if want_grad:
                PG[t, k, j] = ag[k]
            if want_hvp:
                PH[t, k, j] = ah[k]

    def cols_csc(cptr, crow, cval, CG, CH, want_grad, want_hvp, G, HV):
        """G[k, j] = Σ_i CG[i, k] X[i, j] over column j's nonzeros in row order
        (HV likewise): a thread per feature."""
        j = cuda.grid(1)
        if j >= cptr.shape[0] - 1:
            return
        ag = cuda.local.array(C, float64)
        ah = cuda.local.array(C, float64)
        for k in range(C):
            ag[k] = 0.0
            ah[k] = 0.0
        for p in range(cptr[j], cptr[j + 1]):
            i = crow[p]
            x = cval[p]
            if want_grad:
                for k in range(C):
                    ag[k] += CG[i, k] * x
            if want_hvp:
                for k in range(C):
                    ah[k] += CH[i, k] * x
        for k in range(C):
            if want_grad:
                G[k, j] = ag[k]
            if want_hvp:
                HV[k, j] = ah[k]

    def scatter_runs(rows, CG, CH, want_grad, want_hvp, RG, RH):
        """RG[i, k] = Σ_{p: rows[p] = i} CG[p, k] (RH likewise from CH) for a
        sorted minibatch: the thread at the first position of each run of
        equal rows adds the run in order (other rows of RG are left alone)."""
        p = cuda.grid(1)
        b = rows.shape[0]
        if p < b and (p == 0 or rows[p - 1] != rows[p]):
            i = rows[p]
            for k in range(C):
                sg = 0.0
                sh = 0.0
                q = p
                while q < b and rows[q] == i:
                    sg += CG[q, k]
                    sh += CH[q, k]
                    q += 1
                if want_grad:
                    RG[i, k] = sg
                if want_hvp:
                    RH[i, k] = sh

    def row_axpy_dense(X, i, coef, CG, out):
        """out[k, :] += coef · CG[i, k] · x_i (one dense row)."""
        j = cuda.grid(1)
        if j < X.shape[1]:
            x = X[i, j]
            for k in range(C):
                out[k, j] += coef * CG[i, k] * x

    def row_axpy_csr(indptr, indices, data, i, coef, CG, out):
        """out[k, :] += coef · CG[i, k] · x_i (one CSR row)."""
        q = cuda.grid(1)
        p = indptr[i] + q
        if p < indptr[i + 1]:
            x = data[p]
            for k in range(C):
                out[k, indices[p]] += coef * CG[i, k] * x

    def cross_feature(h, scale, rdiag, W, V):
        """h[j] += scale · rdiag[j] · ⟨W[:, j], V[:, j]⟩ (feature_l2's J·v)."""
        j = cuda.grid(1)
        if j < W.shape[1]:
            s = 0.0
            for k in range(C):
                s += W[k, j] * V[k, j]
            h[j] += scale * rdiag[j] * s

    return {"rows_dense": rows_dense, "rows_csr": rows_csr, "cols_dense": cols_dense,
            "cols_csc": cols_csc, "scatter_runs": scatter_runs,
            "row_axpy_dense": row_axpy_dense,
            "row_axpy_csr": row_axpy_csr, "cross_feature": cross_feature}


# ----------------------------------------------------------- vector kernels
# (C-independent; flat views of (c, d) arrays, ``d`` the feature count)

def _partial_sums(v, part):
    """part[t] = Σ_{e ≡ t (mod len(part))} v[e], in increasing e."""
    t = cuda.grid(1)
    if t < part.shape[0]:
        s = 0.0
        for e in range(t, v.shape[0], part.shape[0]):
            s += v[e]
        part[t] = s


def _partial_dots(x, y, part):
    """part[t] = Σ_{e ≡ t (mod len(part))} x[e] y[e], in increasing e."""
    t = cuda.grid(1)
    if t < part.shape[0]:
        s = 0.0
        for e in range(t, x.shape[0], part.shape[0]):
            s += x[e] * y[e]
        part[t] = s


def _sum_parts(part, out, slot):
    """out[slot] = Σ part, in order (one thread)."""
    if cuda.grid(1) == 0:
        s = 0.0
        for t in range(part.shape[0]):
            s += part[t]
        out[slot] = s


def _copy(dst, src):
    """dst = src."""
    e = cuda.grid(1)
    if e < dst.shape[0]:
        dst[e] = src[e]


def _fill(dst, value):
    """dst = value."""
    e = cuda.grid(1)
    if e < dst.shape[0]:
        dst[e] = value


def _sum_tiles(P, out):
    """out[e] = Σ_t P[t, e], in tile order."""
    e = cuda.grid(1)
    if e < out.shape[0]:
        s = P[0, e]
        for t in range(1, P.shape[0]):
            s += P[t, e]
        out[e] = s


def _solver_step(code, gamma, beta, A, B, G):
    """S → S' given G (gd: A only; heavy_ball: A = w_t, B = w_{t−1};
    agd: A = y_t, B = s_t)."""
    e = cuda.grid(1)
    if e < A.shape[0]:
        if code == GD:
            A[e] -= gamma * G[e]
        elif code == HEAVY_BALL:
            a = A[e]
            A[e] = a - gamma * G[e] + beta * (a - B[e])
            B[e] = a
        else:
            ynew = B[e] - gamma * G[e]
            B[e] = ynew + beta * (ynew - A[e])
            A[e] = ynew


def _adjoint_pre(beta, P, Q, Yt):
    """agd before the pass: Yt = −βQ, P += (1+β)Q."""
    e = cuda.grid(1)
    if e < P.shape[0]:
        Yt[e] = -beta * Q[e]
        P[e] += (1.0 + beta) * Q[e]


def _adjoint_post(code, gamma, beta, P, Q, HP, Yt):
    """The adjoint update after the pass, HP = ∇²g(p_t)P."""
    e = cuda.grid(1)
    if e < P.shape[0]:
        if code == GD:
            P[e] -= gamma * HP[e]
        elif code == HEAVY_BALL:
            p = P[e]
            P[e] = (1.0 + beta) * p - gamma * HP[e] - beta * Q[e]
            Q[e] = p
        else:
            Q[e] = P[e] - gamma * HP[e]
            P[e] = Yt[e]


def _w0_adjoint(code, beta, P, Q, h):
    """h += adjoint of w_0: P (gd), P − βQ (heavy_ball), P + Q (agd)."""
    e = cuda.grid(1)
    if e < P.shape[0]:
        if code == GD:
            h[e] += P[e]
        elif code == HEAVY_BALL:
            h[e] += P[e] - beta * Q[e]
        else:
            h[e] += P[e] + Q[e]


def _reg_terms(rdiag, prior, W, out, d):
    """out[e] = rdiag_j (W − prior)², j = e mod d (prior empty: 0)."""
    e = cuda.grid(1)
    if e < W.shape[0]:
        w = W[e] - prior[e] if prior.shape[0] > 0 else W[e]
        out[e] = rdiag[e % d] * w * w


def _reg_grad_add(rdiag, prior, W, G, d):
    """G += rdiag ⊙ (W − prior)."""
    e = cuda.grid(1)
    if e < W.shape[0]:
        w = W[e] - prior[e] if prior.shape[0] > 0 else W[e]
        G[e] += rdiag[e % d] * w


def _reg_hvp_add(rdiag, V, HV, d):
    """HV += rdiag ⊙ V."""
    e = cuda.grid(1)
    if e < V.shape[0]:
        HV[e] += rdiag[e % d] * V[e]


def _cross_sw(h, scale, da, cross):
    """sample_weights: h[i] += scale σ'(λ_i) cross[i]."""
    i = cuda.grid(1)
    if i < cross.shape[0]:
        h[i] += scale * da[i] * cross[i]


def _cross_biased(h, scale, rdiag, V, d):
    """biased_l2: h[e] −= scale · rdiag_j V[e]."""
    e = cuda.grid(1)
    if e < V.shape[0]:
        h[e] -= scale * rdiag[e % d] * V[e]


def _add_scalar(h, i, coef, src, slot):
    """h[i] += coef · src[slot] (one thread)."""
    if cuda.grid(1) == 0:
        h[i] += coef * src[slot]


def _lincomb(out, a, x, b, y):
    """out = a x + b y (out may be x or y)."""
    e = cuda.grid(1)
    if e < out.shape[0]:
        out[e] = a * x[e] + b * y[e]


def _tangent_extra(hyper, j, d, rdiag, p, HV):
    """The map's ∂_{λ_j}∇_w g part of a forward tangent (not sample_weights):
    feature_l2 HV[:, j] += rdiag_j p[:, j]; l2 HV += rdiag_0 p;
    biased_l2 HV[j] −= rdiag_{j mod d}."""
    e = cuda.grid(1)
    if e < HV.shape[0]:
        if hyper == FEATURE_L2:
            if e % d == j:
                HV[e] += rdiag[j] * p[e]
        elif hyper == L2:
            HV[e] += rdiag[0] * p[e]
        elif hyper == BIASED_L2:
            if e == j:
                HV[e] -= rdiag[j % d]


def _cross_sw_rows(h, scale, da, rows, cross):
    """sample_weights on a sorted minibatch: h[i] += scale σ'(λ_i) Σ_{p:
    rows[p] = i} cross[p] (a thread per run of equal rows)."""
    p = cuda.grid(1)
    b = rows.shape[0]
    if p < b and (p == 0 or rows[p - 1] != rows[p]):
        i = rows[p]
        s = 0.0
        q = p
        while q < b and rows[q] == i:
            s += cross[q]
            q += 1
        h[i] += scale * da[i] * s


def _fsla_state(W, V, G, P, HV, tau, beta):
    """FSLA's state step: W −= τG; V += β(P − HV)."""
    e = cuda.grid(1)
    if e < W.shape[0]:
        W[e] -= tau * G[e]
        V[e] += beta * (P[e] - HV[e])


VECTOR_KERNELS = {
    "copy": _copy, "fill": _fill, "sum_tiles": _sum_tiles, "partial_sums": _partial_sums,
    "partial_dots": _partial_dots, "sum_parts": _sum_parts,
    "solver_step": _solver_step, "adjoint_pre": _adjoint_pre,
    "adjoint_post": _adjoint_post, "w0_adjoint": _w0_adjoint, "reg_terms": _reg_terms,
    "reg_grad_add": _reg_grad_add, "reg_hvp_add": _reg_hvp_add, "cross_sw": _cross_sw,
    "cross_biased": _cross_biased, "add_scalar": _add_scalar, "lincomb": _lincomb,
    "tangent_extra": _tangent_extra, "cross_sw_rows": _cross_sw_rows,
    "fsla_state": _fsla_state,
}

# the kernels that do not depend on C (compiled once, whatever the class count)
C_INDEPENDENT = frozenset(VECTOR_KERNELS) | {"draw_replace", "draw_shuffle", "rank_sort"}


def py_kernels(C, TPB):
    """Every kernel for C classes and TPB threads per block, as Python
    functions (name → function), for ``numba.cuda.compile_ptx``."""
    out = dict(_py_kernels(C, TPB))
    out.update(VECTOR_KERNELS)
    out.update(_py_sampler_kernels())
    return out


@functools.lru_cache(maxsize=None)
def vector_kernels():
    """The C-independent kernels, as CUDA kernels (each compiled on its
    first launch)."""
    ks = dict(VECTOR_KERNELS)
    ks.update(_py_sampler_kernels())
    return _pytypes.SimpleNamespace(**{k: cuda.jit(f) for k, f in ks.items()})


@functools.lru_cache(maxsize=None)
def kernels(C, TPB):
    """The pass kernels for C classes and TPB threads per block."""
    return _pytypes.SimpleNamespace(**{k: cuda.jit(f)
                                       for k, f in _py_kernels(C, TPB).items()})


def ptx_signatures(C, xdtype):
    """Argument types of every kernel (name → tuple), as the backend
    launches them, for ``numba.cuda.compile_ptx``; ``xdtype`` is the data's
    float type (float32 or float64)."""
    f1, f2, f3 = float64[::1], float64[:, ::1], float64[:, :, ::1]
    x = {np.float32: float32, np.float64: float64}[np.dtype(xdtype).type]
    X, xv, i1 = x[:, ::1], x[::1], int64[::1]
    B, I, F = boolean, int64, float64
    rows = (i1, int64, int64, f1, f1, I, f2, f2, B, B, F, f2, f2, f1, f1)
    return {
        "rows_dense": (X,) + rows,
        "rows_csr": (i1, int32[::1], xv) + rows,
        "cols_dense": (X, i1, f2, f2, B, B, f3, f3),
        "cols_csc": (i1, i1, xv, f2, f2, B, B, f2, f2),
        "scatter_runs": (i1, f2, f2, B, B, f2, f2),
        "draw_replace": (I, I, I, I, i1), "draw_shuffle": (I, I, I, I, i1, i1),
        "rank_sort": (i1, i1), "cross_sw_rows": (f1, F, f1, i1, f1),
        "fsla_state": (f1, f1, f1, f1, f1, F, F),
        "row_axpy_dense": (X, I, F, f2, f2),
        "row_axpy_csr": (i1, int32[::1], xv, I, F, f2, f2),
        "cross_feature": (f1, F, f1, f2, f2),
        "partial_sums": (f1, f1), "partial_dots": (f1, f1, f1), "sum_parts": (f1, f1, I),
        "copy": (f1, f1), "fill": (f1, F), "sum_tiles": (f2, f1),
        "solver_step": (I, F, F, f1, f1, f1), "adjoint_pre": (F, f1, f1, f1),
        "adjoint_post": (I, F, F, f1, f1, f1, f1), "w0_adjoint": (I, F, f1, f1, f1),
        "reg_terms": (f1, f1, f1, f1, I), "reg_grad_add": (f1, f1, f1, f1, I),
        "reg_hvp_add": (f1, f1, f1, I), "cross_sw": (f1, F, f1, f1),
        "cross_biased": (f1, F, f1, f1, I), "add_scalar": (f1, I, F, f1, I),
        "lincomb": (f1, F, f1, F, f1), "tangent_extra": (I, I, I, f1, f1, f1),
    }
