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

* rows: a thread per row computes the dots z = W x_i and u = V x_i over
  the row's features (dense) or nonzeros (CSR), applies the row math and
  writes the row's coefficients ``CG[i] = a_i ℓ'(z)/n``,
  ``CH[i] = a_i ℓ''(z)u/n``, its weighted loss and its cross term. Dense:
  a block takes a tile of rows (one per thread, grid-stride over tiles)
  and stages it through shared memory a chunk of features at a time: the
  block reads the chunk of its rows coalesced (neighbouring threads read
  neighbouring entries of a row) and the matching panel of W and V, then
  each thread adds its row's dots over the chunk, in feature order;
* columns: G = Σ_i CG[i] ⊗ x_i. Dense: a thread per feature within a tile
  of ``ROW_TILE`` rows (neighbouring threads read neighbouring entries of
  X), the tiles' partial sums added in tile order by a second kernel. CSR:
  a thread per feature walks the stored transpose (CSC) of X, in row order.

The pass kernels take a leading settings axis: B settings (a sweep's
hyperparameters, each with its own W, sample weights, ridge diagonal and
step size) run in lockstep, one grid row of blocks per setting, each pass
serving all of them; a single setting is B = 1. The O(dim w) vector
kernels work on flat views of (B, c, d) arrays with per-setting scalars
given as arrays.

Sums over rows (the loss) and dot products are two kernels: strided
per-thread partial sums per setting, then a thread per setting adding its
partial sums in order.

Minibatches are drawn on the device by the CPU's counter-based sampler
(:mod:`.sampling`, compiled as device functions the same way), so a seed
draws the same rows on either device.

CSR rows take a warp each (``LANES`` threads: 32 on a GPU, for up to 12
classes): the lanes read the row's nonzeros coalesced and their partial
dots are added by a fixed tree in shared memory, so the sum's order does
not depend on timing. Nothing here has been timed on a GPU yet.

Every kernel is made by a factory keyed on the class count ``C`` and the
threads per block ``TPB`` (both compile-time constants for the local and
shared arrays): ``kernels(C, TPB)``. ``py_kernels(C, TPB)`` gives the same
kernels as plain Python functions, for ``numba.cuda.compile_ptx``.
"""
import functools
import math
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
    # the GPU's own exp (the CPU's exp_neg is written for SIMD lanes)
    rd = device_twin(_rowmath.row_derivs, sigmoid=sig, softplus=sp, sigmoid_prime=spp,
                     exp_neg=math.exp)
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
    """The kernels for C classes and TPB threads per block, as Python functions.

    The pass kernels take a leading settings axis (B settings in lockstep,
    one per grid row: ``blockIdx.y``, or ``blockIdx.z`` for ``cols_dense``):
    W, V (B, C, d); A (B, n) sample weights or (B, 0); CG, CH (B, ≥ n, C);
    LV (B, ≥ n); CR (B, ≥ n) or (B, 0). A single setting is B = 1."""
    row_coefs, weight_of = row_math()
    # features per chunk staged in shared memory: the tile (TPB × (KC+1)) and
    # the W, V panels (C × KC each), float64, within 48 KiB per block; 16
    # float64 = one 128-byte line of a row per chunk, and ~18 KiB per block
    # for TPB = 128 (several blocks per SM)
    KC = max(1, min(16, (49152 - 8 * TPB) // (8 * TPB + 16 * C)))
    KC1 = KC + 1                # a padded row: threads' rows fall in different banks
    # CSR: LANES threads per row (a warp for TPB = 128), while their (TPB, C)
    # partial dots z and u fit in 24 KiB of shared memory (C ≤ 12); a thread
    # per row past that
    LANES = min(32, TPB // 2) if 16 * TPB * C <= 24576 else 1
    SR, SC = (TPB, C) if LANES > 1 else (1, 1)

    def _tile_dots(X, rows, base, r1, W, V, want_u, sX, sW, sV, z, u):
        """The dots of a tile of rows staged through shared memory: the
        block's rows base..base+blockDim−1 (those < r1; row p is X's row p,
        or rows[p] of a minibatch). Each chunk of KC features of the tile's
        rows (read coalesced: neighbouring threads read neighbouring entries
        of a row) and of W, V goes to shared memory; then the thread of row
        base + threadIdx.x adds z = W x, and u = V x if ``want_u`` (else
        u = 0), over the chunk in increasing feature order. Every thread of
        the block calls it (it synchronizes the block)."""
        t = cuda.threadIdx.x
        nt = cuda.blockDim.x
        nrow = r1 - base if r1 - base < nt else nt
        for k in range(C):
            z[k] = 0.0
            u[k] = 0.0
        d = X.shape[1]
        for j0 in range(0, d, KC):
            w = d - j0 if d - j0 < KC else KC
            for e in range(t, nrow * KC, nt):
                r = e // KC
                jj = e - r * KC
                if jj < w:
                    p = base + r
                    sX[r, jj] = X[rows[p] if rows.shape[0] > 0 else p, j0 + jj]
            for e in range(t, C * KC, nt):
                k = e // KC
                jj = e - k * KC
                if jj < w:
                    sW[k, jj] = W[k, j0 + jj]
                    if want_u:
                        sV[k, jj] = V[k, j0 + jj]
            cuda.syncthreads()
            if t < nrow:
                for jj in range(w):
                    x = sX[t, jj]
                    for k in range(C):
                        z[k] += sW[k, jj] * x
                    if want_u:
                        for k in range(C):
                            u[k] += sV[k, jj] * x
            cuda.syncthreads()

    def _col_sums(X, rows, p0, p1, j, CG, CH, want_grad, want_hvp, ag, ah):
        """ag[k] = Σ_{p0 ≤ p < p1} CG[p, k] X[i_p, j] (ah likewise from CH),
        i_p = p or rows[p], in increasing p."""
        for k in range(C):
            ag[k] = 0.0
            ah[k] = 0.0
        for p in range(p0, p1):
            x = X[rows[p] if rows.shape[0] > 0 else p, j]
            if want_grad:
                for k in range(C):
                    ag[k] += CG[p, k] * x
            if want_hvp:
                for k in range(C):
                    ah[k] += CH[p, k] * x

    tile_dots = cuda.jit(device=True)(_tile_dots)
    col_sums = cuda.jit(device=True)(_col_sums)

    def rows_dense(X, rows, r0, r1, y, A, model, W, V, want_grad, want_hvp, inv_n, CG, CH,
                   LV, CR):
        """Row coefficients of positions r0..r1−1 of setting s: row p, or row
        rows[p] of a minibatch (``rows`` not empty); outputs by position (see
        the module docstring). A block takes a tile of blockDim positions at
        a time (grid-stride), staged through shared memory."""
        z = cuda.local.array(C, float64)
        u = cuda.local.array(C, float64)
        dl = cuda.local.array(C, float64)
        hu = cuda.local.array(C, float64)
        sX = cuda.shared.array((TPB, KC1), float64)
        sW = cuda.shared.array((C, KC), float64)
        sV = cuda.shared.array((C, KC), float64)
        s = cuda.blockIdx.y
        Ws, Vs, a, cr = W[s], V[s], A[s], CR[s]
        want_u = want_hvp or cr.shape[0] > 0
        nt = cuda.blockDim.x
        for base in range(r0 + cuda.blockIdx.x * nt, r1, cuda.gridDim.x * nt):
            tile_dots(X, rows, base, r1, Ws, Vs, want_u, sX, sW, sV, z, u)
            p = base + cuda.threadIdx.x
            if p < r1:
                i = rows[p] if rows.shape[0] > 0 else p
                LV[s, p] = row_coefs(model, y[i], z, u, weight_of(a, i, inv_n), inv_n,
                                     want_grad, want_hvp, CG[s, p], CH[s, p], cr, p, dl, hu)

    def rows_tasks(X, xt, rows, y, yt, model, W, V, want_grad, want_hvp, inv_n, CG, CH, LV,
                   E0):
        """Row coefficients of every row of a task, for B tasks in lockstep
        (task s = ``blockIdx.y``): its rows X[xt[s]] (X (N, rows, m)), labels
        y[yt[s]], weights W[s], direction V[s] (C, m), each row weighing
        ``inv_n``; CG, CH (B, ≥ rows, C), LV (B, ≥ rows) by row. ``rows``
        empty; E0: (B, 0). Tiles as ``rows_dense``."""
        z = cuda.local.array(C, float64)
        u = cuda.local.array(C, float64)
        dl = cuda.local.array(C, float64)
        hu = cuda.local.array(C, float64)
        sX = cuda.shared.array((TPB, KC1), float64)
        sW = cuda.shared.array((C, KC), float64)
        sV = cuda.shared.array((C, KC), float64)
        s = cuda.blockIdx.y
        Xs, ys, Ws, Vs, none = X[xt[s]], y[yt[s]], W[s], V[s], E0[s]
        n = Xs.shape[0]
        nt = cuda.blockDim.x
        for base in range(cuda.blockIdx.x * nt, n, cuda.gridDim.x * nt):
            tile_dots(Xs, rows, base, n, Ws, Vs, want_hvp, sX, sW, sV, z, u)
            p = base + cuda.threadIdx.x
            if p < n:
                LV[s, p] = row_coefs(model, ys[p], z, u, inv_n, inv_n, want_grad, want_hvp,
                                     CG[s, p], CH[s, p], none, p, dl, hu)

    def rows_csr(indptr, indices, data, rows, r0, r1, y, A, model, W, V, want_grad,
                 want_hvp, inv_n, CG, CH, LV, CR):
        """Row coefficients of positions r0..r1−1 of a CSR design (as
        ``rows_dense``). LANES threads per row (a warp on a GPU): lane l reads
        the row's nonzeros l, l + LANES, ... (neighbouring lanes read
        neighbouring entries), and the lanes' partial dots are added by a
        fixed tree in shared memory; the first lane applies the row math.
        The block takes blockDim/LANES rows at a time (grid-stride)."""
        z = cuda.local.array(C, float64)
        u = cuda.local.array(C, float64)
        dl = cuda.local.array(C, float64)
        hu = cuda.local.array(C, float64)
        sZ = cuda.shared.array((SR, SC), float64)
        sU = cuda.shared.array((SR, SC), float64)
        s = cuda.blockIdx.y
        Ws, Vs, a, cr = W[s], V[s], A[s], CR[s]
        want_u = want_hvp or cr.shape[0] > 0
        t = cuda.threadIdx.x
        g = t // LANES
        lane = t - g * LANES
        groups = cuda.blockDim.x // LANES
        for base in range(r0 + cuda.blockIdx.x * groups, r1, cuda.gridDim.x * groups):
            p = base + g
            for k in range(C):
                z[k] = 0.0
                u[k] = 0.0
            i = 0
            if p < r1:
                i = rows[p] if rows.shape[0] > 0 else p
                for q in range(indptr[i] + lane, indptr[i + 1], LANES):
                    j = indices[q]
                    x = data[q]
                    for k in range(C):
                        z[k] += Ws[k, j] * x
                    if want_u:
                        for k in range(C):
                            u[k] += Vs[k, j] * x
            if LANES > 1:
                for k in range(C):
                    sZ[t, k] = z[k]
                    sU[t, k] = u[k]
                cuda.syncthreads()
                h = LANES // 2
                while h > 0:
                    if lane < h:
                        for k in range(C):
                            sZ[t, k] += sZ[t + h, k]
                            sU[t, k] += sU[t + h, k]
                    cuda.syncthreads()
                    h //= 2
                for k in range(C):
                    z[k] = sZ[t, k]
                    u[k] = sU[t, k]
            if p < r1 and lane == 0:
                LV[s, p] = row_coefs(model, y[i], z, u, weight_of(a, i, inv_n), inv_n,
                                     want_grad, want_hvp, CG[s, p], CH[s, p], cr, p, dl, hu)

    def cols_dense(X, rows, npos, CG, CH, want_grad, want_hvp, PG, PH):
        """PG[s, t, k, j] = Σ_{p in tile t} CG[s, p, k] X[i_p, j] (PH likewise
        from CH), i_p = p or rows[p], p < npos: grid (feature blocks, position
        tiles, settings)."""
        j = cuda.blockIdx.x * TPB + cuda.threadIdx.x
        t = cuda.blockIdx.y
        s = cuda.blockIdx.z
        if j >= X.shape[1]:
            return
        ag = cuda.local.array(C, float64)
        ah = cuda.local.array(C, float64)
        end = (t + 1) * ROW_TILE
        col_sums(X, rows, t * ROW_TILE, npos if npos < end else end, j, CG[s], CH[s],
                 want_grad, want_hvp, ag, ah)
        for k in range(C):
            if want_grad:
                PG[s, t, k, j] = ag[k]
            if want_hvp:
                PH[s, t, k, j] = ah[k]

    def cols_tasks(X, xt, rows, CG, CH, want_grad, want_hvp, G, HV):
        """G[s, k, j] = Σ_p CG[s, p, k] X[xt[s], p, j] over all rows of task
        s's design in row order (HV likewise from CH): a thread per feature,
        grid (features, tasks); ``rows`` empty."""
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        s = cuda.blockIdx.y
        Xs = X[xt[s]]
        if j >= Xs.shape[1]:
            return
        ag = cuda.local.array(C, float64)
        ah = cuda.local.array(C, float64)
        col_sums(Xs, rows, 0, Xs.shape[0], j, CG[s], CH[s], want_grad, want_hvp, ag, ah)
        for k in range(C):
            if want_grad:
                G[s, k, j] = ag[k]
            if want_hvp:
                HV[s, k, j] = ah[k]

    def cols_csc(cptr, crow, cval, CG, CH, want_grad, want_hvp, G, HV):
        """G[s, k, j] = Σ_i CG[s, i, k] X[i, j] over column j's nonzeros in row
        order (HV likewise): a thread per feature, grid (features, settings)."""
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        s = cuda.blockIdx.y
        if j >= cptr.shape[0] - 1:
            return
        ag = cuda.local.array(C, float64)
        ah = cuda.local.array(C, float64)
        for k in range(C):
            ag[k] = 0.0
            ah[k] = 0.0
        for q in range(cptr[j], cptr[j + 1]):
            i = crow[q]
            x = cval[q]
            if want_grad:
                for k in range(C):
                    ag[k] += CG[s, i, k] * x
            if want_hvp:
                for k in range(C):
                    ah[k] += CH[s, i, k] * x
        for k in range(C):
            if want_grad:
                G[s, k, j] = ag[k]
            if want_hvp:
                HV[s, k, j] = ah[k]

    def scatter_runs(rows, CG, CH, want_grad, want_hvp, RG, RH):
        """RG[s, i, k] = Σ_{p: rows[p] = i} CG[s, p, k] (RH likewise from CH)
        for a sorted minibatch: the thread at the first position of each run
        of equal rows adds the run in order (other rows of RG are left
        alone); grid (positions, settings)."""
        p = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        s = cuda.blockIdx.y
        b = rows.shape[0]
        if p < b and (p == 0 or rows[p - 1] != rows[p]):
            i = rows[p]
            for k in range(C):
                sg = 0.0
                sh = 0.0
                q = p
                while q < b and rows[q] == i:
                    sg += CG[s, q, k]
                    sh += CH[s, q, k]
                    q += 1
                if want_grad:
                    RG[s, i, k] = sg
                if want_hvp:
                    RH[s, i, k] = sh

    def row_axpy_dense(X, i, coef, CG, out):
        """out[k, :] += coef · CG[i, k] · x_i (one dense row, one setting)."""
        j = cuda.grid(1)
        if j < X.shape[1]:
            x = X[i, j]
            for k in range(C):
                out[k, j] += coef * CG[i, k] * x

    def row_axpy_csr(indptr, indices, data, i, coef, CG, out):
        """out[k, :] += coef · CG[i, k] · x_i (one CSR row, one setting)."""
        q = cuda.grid(1)
        p = indptr[i] + q
        if p < indptr[i + 1]:
            x = data[p]
            for k in range(C):
                out[k, indices[p]] += coef * CG[i, k] * x

    def cross_feature(H, scales, RD, W, V):
        """H[s, j] += scales[s] · RD[s, j] · ⟨W[s, :, j], V[s, :, j]⟩
        (feature_l2's J·v): grid (features, settings)."""
        j = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        s = cuda.blockIdx.y
        if j < W.shape[2]:
            acc = 0.0
            for k in range(C):
                acc += W[s, k, j] * V[s, k, j]
            H[s, j] += scales[s] * RD[s, j] * acc

    return {"rows_dense": rows_dense, "rows_csr": rows_csr, "cols_dense": cols_dense,
            "cols_csc": cols_csc, "rows_tasks": rows_tasks, "cols_tasks": cols_tasks, "scatter_runs": scatter_runs,
            "row_axpy_dense": row_axpy_dense,
            "row_axpy_csr": row_axpy_csr, "cross_feature": cross_feature}


# ----------------------------------------------------------- vector kernels
# (C-independent) on flat views of (B, c, d) arrays: ``per`` = c·d entries
# per setting, setting s = e // per; per-setting scalars come as arrays of
# length B (gammas, betas, scales), per-setting feature arrays as flat
# (B·d) views (rdiag), ``d`` the feature count.

def _partial_sums(v, part, per, stride, nparts):
    """part[s·nparts + t] = Σ_{e < per, e ≡ t (mod nparts)} v[s·stride + e],
    in increasing e (setting s's entries start at s·stride)."""
    q = cuda.grid(1)
    if q < part.shape[0]:
        s = q // nparts
        t = q - s * nparts
        acc = 0.0
        for e in range(t, per, nparts):
            acc += v[s * stride + e]
        part[q] = acc


def _partial_dots(x, y, part, per, nparts):
    """part[s·nparts + t] = Σ_{e ≡ t (mod nparts)} x y over setting s, in increasing e."""
    q = cuda.grid(1)
    if q < part.shape[0]:
        s = q // nparts
        t = q - s * nparts
        acc = 0.0
        for e in range(t, per, nparts):
            acc += x[s * per + e] * y[s * per + e]
        part[q] = acc


def _sum_parts(part, out, nparts):
    """out[s] = Σ_t part[s·nparts + t], in order (a thread per setting)."""
    s = cuda.grid(1)
    if s < out.shape[0]:
        acc = 0.0
        for t in range(nparts):
            acc += part[s * nparts + t]
        out[s] = acc


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


def _sum_tiles(P, out, ntiles, cap, per):
    """out[s·per + f] = Σ_{t < ntiles} P[(s·cap + t)·per + f], in tile order
    (P is (B, cap ≥ ntiles, per))."""
    e = cuda.grid(1)
    if e < out.shape[0]:
        s = e // per
        f = e - s * per
        base = s * cap * per + f
        acc = P[base]
        for t in range(1, ntiles):
            acc += P[base + t * per]
        out[e] = acc


def _solver_step(code, gammas, betas, A, B, G, per):
    """S → S' given G (gd: A only; heavy_ball: A = w_t, B = w_{t−1};
    agd: A = y_t, B = s_t)."""
    e = cuda.grid(1)
    if e < A.shape[0]:
        gamma = gammas[e // per]
        if code == GD:
            A[e] -= gamma * G[e]
        elif code == HEAVY_BALL:
            a = A[e]
            A[e] = a - gamma * G[e] + betas[e // per] * (a - B[e])
            B[e] = a
        else:
            ynew = B[e] - gamma * G[e]
            B[e] = ynew + betas[e // per] * (ynew - A[e])
            A[e] = ynew


def _adjoint_pre(betas, P, Q, Yt, per):
    """agd before the pass: Yt = −βQ, P += (1+β)Q."""
    e = cuda.grid(1)
    if e < P.shape[0]:
        beta = betas[e // per]
        Yt[e] = -beta * Q[e]
        P[e] += (1.0 + beta) * Q[e]


def _adjoint_post(code, gammas, betas, P, Q, HP, Yt, per):
    """The adjoint update after the pass, HP = ∇²g(p_t)P."""
    e = cuda.grid(1)
    if e < P.shape[0]:
        gamma = gammas[e // per]
        if code == GD:
            P[e] -= gamma * HP[e]
        elif code == HEAVY_BALL:
            beta = betas[e // per]
            p = P[e]
            P[e] = (1.0 + beta) * p - gamma * HP[e] - beta * Q[e]
            Q[e] = p
        else:
            Q[e] = P[e] - gamma * HP[e]
            P[e] = Yt[e]


def _w0_adjoint(code, betas, P, Q, h, per):
    """h += adjoint of w_0: P (gd), P − βQ (heavy_ball), P + Q (agd)."""
    e = cuda.grid(1)
    if e < P.shape[0]:
        if code == GD:
            h[e] += P[e]
        elif code == HEAVY_BALL:
            h[e] += P[e] - betas[e // per] * Q[e]
        else:
            h[e] += P[e] + Q[e]


def _reg_terms(rdiag, prior, W, out, d, per):
    """out[e] = rdiag_{s, j} (W − prior)², j = e mod d (prior empty: 0)."""
    e = cuda.grid(1)
    if e < W.shape[0]:
        w = W[e] - prior[e] if prior.shape[0] > 0 else W[e]
        out[e] = rdiag[(e // per) * d + e % d] * w * w


def _reg_grad_add(rdiag, prior, W, G, d, per):
    """G += rdiag ⊙ (W − prior)."""
    e = cuda.grid(1)
    if e < W.shape[0]:
        w = W[e] - prior[e] if prior.shape[0] > 0 else W[e]
        G[e] += rdiag[(e // per) * d + e % d] * w


def _reg_hvp_add(rdiag, V, HV, d, per):
    """HV += rdiag ⊙ V."""
    e = cuda.grid(1)
    if e < V.shape[0]:
        HV[e] += rdiag[(e // per) * d + e % d] * V[e]


def _cross_sw(h, scales, da, cross, per):
    """sample_weights: h[s, i] += scales[s] σ'(λ_{s,i}) cross[s, i] (per = n)."""
    e = cuda.grid(1)
    if e < cross.shape[0]:
        h[e] += scales[e // per] * da[e] * cross[e]


def _cross_biased(h, scales, rdiag, V, d, per):
    """biased_l2: h[e] −= scales[s] · rdiag_{s, j} V[e]."""
    e = cuda.grid(1)
    if e < V.shape[0]:
        s = e // per
        h[e] -= scales[s] * rdiag[s * d + e % d] * V[e]


def _add_scaled(h, hper, scales, src):
    """h[s·hper] += scales[s] · src[s] (l2's J·v: a thread per setting)."""
    s = cuda.grid(1)
    if s < scales.shape[0]:
        h[s * hper] += scales[s] * src[s]


def _lincomb(out, a, x, b, y, per):
    """out = a_s x + b_s y per setting (a, b arrays of length B; out may be x or y)."""
    e = cuda.grid(1)
    if e < out.shape[0]:
        s = e // per
        out[e] = a[s] * x[e] + b[s] * y[e]


def _tangent_extra(hyper, j, d, rdiag, p, HV):
    """The map's ∂_{λ_j}∇_w g part of a forward tangent (not sample_weights;
    one setting): feature_l2 HV[:, j] += rdiag_j p[:, j]; l2 HV += rdiag_0 p;
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
    """sample_weights on a sorted minibatch (one setting): h[i] += scale
    σ'(λ_i) Σ_{p: rows[p] = i} cross[p] (a thread per run of equal rows)."""
    p = cuda.grid(1)
    b = rows.shape[0]
    if p < b and (p == 0 or rows[p - 1] != rows[p]):
        i = rows[p]
        acc = 0.0
        q = p
        while q < b and rows[q] == i:
            acc += cross[q]
            q += 1
        h[i] += scale * da[i] * acc


def _fsla_state(W, V, G, P, HV, tau, beta):
    """FSLA's state step: W −= τG; V += β(P − HV)."""
    e = cuda.grid(1)
    if e < W.shape[0]:
        W[e] -= tau * G[e]
        V[e] += beta * (P[e] - HV[e])


# ------------------------------------------------ multi-task kernels
# (C-independent) B tasks in lockstep, each a block of (B, ...) arrays;
# a thread per output entry, its sum in the CPU's order (kernels.meta).

def _entry3_py(e, n1, n2):
    """(s, a, b): the entry e of a C-ordered (·, n1, n2) array."""
    s = e // (n1 * n2)
    r = e - s * n1 * n2
    a = r // n2
    return s, a, r - a * n2


_entry3 = cuda.jit(device=True)(_entry3_py)

def _embed_tasks(X, xt, P, E):
    """E[s, i, a] = Σ_j X[xt[s], i, j] P[a, j] (rounded to E's dtype, the
    data's): the embedded rows of task xt[s]."""
    e = cuda.grid(1)
    B, n, k = E.shape
    if e < B * n * k:
        s, i, a = _entry3(e, n, k)
        Xs = X[xt[s]]
        acc = 0.0
        for j in range(P.shape[1]):
            acc += Xs[i, j] * P[a, j]
        E[s, i, a] = acc


def _task_u(W, V, P, want_v, U, VP):
    """U[s] = W[s] P and VP[s] = V[s] P (0 without ``want_v``): the model's
    weights and direction of a head W (B, c, k) on the embedding P (k, d)."""
    e = cuda.grid(1)
    B, c, d = U.shape
    if e < B * c * d:
        s, r, j = _entry3(e, c, d)
        u = 0.0
        v = 0.0
        for a in range(P.shape[0]):
            u += W[s, r, a] * P[a, j]
            if want_v:
                v += V[s, r, a] * P[a, j]
        U[s, r, j] = u
        VP[s, r, j] = v


def _task_project(Gx, Hx, P, W, V, reg, want_hvp, G, HV):
    """G[s] = Gx[s] Pᵀ + reg W[s] and, with ``want_hvp``, HV[s] = Hx[s] Pᵀ +
    reg V[s]: the head's gradient and Hessian-vector product."""
    e = cuda.grid(1)
    B, c, k = G.shape
    if e < B * c * k:
        s, r, a = _entry3(e, c, k)
        g = 0.0
        h = 0.0
        for j in range(P.shape[1]):
            g += Gx[s, r, j] * P[a, j]
            if want_hvp:
                h += Hx[s, r, j] * P[a, j]
        G[s, r, a] = g + reg * W[s, r, a]
        if want_hvp:
            HV[s, r, a] = h + reg * V[s, r, a]


def _task_cross(Gx, Hx, W, V, want_hvp, Cp):
    """Cp[s, a, j] = Σ_r W[s, r, a] Gx[s, r, j] (the embedding's gradient) or,
    with ``want_hvp``, Σ_r W[s, r, a] Hx[s, r, j] + V[s, r, a] Gx[s, r, j]."""
    e = cuda.grid(1)
    B, k, d = Cp.shape
    if e < B * k * d:
        s, a, j = _entry3(e, k, d)
        acc = 0.0
        for r in range(W.shape[1]):
            if want_hvp:
                acc += W[s, r, a] * Hx[s, r, j]
                acc += V[s, r, a] * Gx[s, r, j]
            else:
                acc += W[s, r, a] * Gx[s, r, j]
        Cp[s, a, j] = acc


TASK_KERNELS = {"embed_tasks": _embed_tasks, "task_u": _task_u,
                "task_project": _task_project, "task_cross": _task_cross}


VECTOR_KERNELS = {
    "copy": _copy, "fill": _fill, "sum_tiles": _sum_tiles, "partial_sums": _partial_sums,
    "partial_dots": _partial_dots, "sum_parts": _sum_parts,
    "solver_step": _solver_step, "adjoint_pre": _adjoint_pre,
    "adjoint_post": _adjoint_post, "w0_adjoint": _w0_adjoint, "reg_terms": _reg_terms,
    "reg_grad_add": _reg_grad_add, "reg_hvp_add": _reg_hvp_add, "cross_sw": _cross_sw,
    "cross_biased": _cross_biased, "add_scaled": _add_scaled, "lincomb": _lincomb,
    "tangent_extra": _tangent_extra, "cross_sw_rows": _cross_sw_rows,
    "fsla_state": _fsla_state,
}

# the kernels that do not depend on C (compiled once, whatever the class count)
C_INDEPENDENT = (frozenset(VECTOR_KERNELS) | frozenset(TASK_KERNELS)
                 | {"draw_replace", "draw_shuffle", "rank_sort"})


def py_kernels(C, TPB):
    """Every kernel for C classes and TPB threads per block, as Python
    functions (name → function), for ``numba.cuda.compile_ptx``."""
    out = dict(_py_kernels(C, TPB))
    out.update(VECTOR_KERNELS)
    out.update(TASK_KERNELS)
    out.update(_py_sampler_kernels())
    return out


@functools.lru_cache(maxsize=None)
def vector_kernels():
    """The C-independent kernels, as CUDA kernels (each compiled on its
    first launch)."""
    ks = dict(VECTOR_KERNELS)
    ks.update(TASK_KERNELS)
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
    f1, f2, f3, f4 = float64[::1], float64[:, ::1], float64[:, :, ::1], float64[:, :, :, ::1]
    x = {np.float32: float32, np.float64: float64}[np.dtype(xdtype).type]
    X, xv, i1, X3 = x[:, ::1], x[::1], int64[::1], x[:, :, ::1]
    B, I, F = boolean, int64, float64
    rows = (i1, int64, int64, f1, f2, I, f3, f3, B, B, F, f3, f3, f2, f2)
    return {
        "rows_dense": (X,) + rows,
        "rows_csr": (i1, int32[::1], xv) + rows,
        "cols_dense": (X, i1, I, f3, f3, B, B, f4, f4),
        "cols_csc": (i1, i1, xv, f3, f3, B, B, f3, f3),
        "rows_tasks": (X3, i1, i1, f2, i1, I, f3, f3, B, B, F, f3, f3, f2, f2),
        "cols_tasks": (X3, i1, i1, f3, f3, B, B, f3, f3),
        "embed_tasks": (X3, i1, f2, X3), "task_u": (f3, f3, f2, B, f3, f3),
        "task_project": (f3, f3, f2, f3, f3, F, B, f3, f3),
        "task_cross": (f3, f3, f3, f3, B, f3),
        "scatter_runs": (i1, f3, f3, B, B, f3, f3),
        "row_axpy_dense": (X, I, F, f2, f2),
        "row_axpy_csr": (i1, int32[::1], xv, I, F, f2, f2),
        "cross_feature": (f2, f1, f2, f3, f3),
        "draw_replace": (I, I, I, I, i1), "draw_shuffle": (I, I, I, I, i1, i1),
        "rank_sort": (i1, i1), "cross_sw_rows": (f1, F, f1, i1, f1),
        "fsla_state": (f1, f1, f1, f1, f1, F, F),
        "partial_sums": (f1, f1, I, I, I), "partial_dots": (f1, f1, f1, I, I),
        "sum_parts": (f1, f1, I),
        "copy": (f1, f1), "fill": (f1, F), "sum_tiles": (f1, f1, I, I, I),
        "solver_step": (I, f1, f1, f1, f1, f1, I), "adjoint_pre": (f1, f1, f1, f1, I),
        "adjoint_post": (I, f1, f1, f1, f1, f1, f1, I), "w0_adjoint": (I, f1, f1, f1, f1, I),
        "reg_terms": (f1, f1, f1, f1, I, I), "reg_grad_add": (f1, f1, f1, f1, I, I),
        "reg_hvp_add": (f1, f1, f1, I, I), "cross_sw": (f1, f1, f1, f1, I),
        "cross_biased": (f1, f1, f1, f1, I, I), "add_scaled": (f1, I, f1, f1),
        "lincomb": (f1, f1, f1, f1, f1, I), "tangent_extra": (I, I, I, f1, f1, f1),
    }
