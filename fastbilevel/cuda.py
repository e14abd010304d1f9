"""The CUDA backend: the data on the GPU once, the passes as ``@cuda.jit``
kernels (:mod:`fastbilevel.kernels.gpu`), the schedule interpreter on the
host driving them.

``BilevelProblem(..., device="cuda")`` or ``problem.to("cuda")`` gives a
problem whose backend is a :class:`CUDABackend`. It implements the backend
methods of :class:`~fastbilevel.backend.CPUBackend` with the same argument
lists (host arrays in, host arrays out), so ``hypergradient`` (every exact
method: reverse, checkpointed, recompute, truncated, forward, implicit),
``solve``, ``minimize`` with those methods, ``sweep`` and ``minimize_many``
(on the batched interpreter: B settings in lockstep) and the oracles run
unchanged.
Inside a run everything stays in device memory: the solver state, the
stored points and snapshots of a schedule, the adjoints, forward tangents,
the implicit solver's vectors and the hypergradient; the host reads one
scalar per pass (the loss, for the divergence check) and copies the results
back at the end.

Minibatch SGD inner loops (``batch_size``), stocBiO and FSLA run on the GPU
too, on the same batches as on the CPU: the counter-based sampler's hash is
compiled as device functions from the CPU's source, so a seed draws the same
rows on either device.

Multi-task problems have a backend of their own on the same helpers
(:mod:`fastbilevel.cuda_meta`).

Not yet on the GPU (each refuses with an error naming ``problem.to("cpu")``):
the stochastic solver family (``minimize(method="soba")`` ...) and
``sweep(client=)`` (Dask).

Summation order is fixed (see :mod:`fastbilevel.kernels.gpu`), so a result
is the same on every run; it differs from the CPU backend's only by
rounding (≤ 1e-10 relative in float64, tested under Numba's simulator).
"""
import math
import time

import numpy as np

from . import config
from ._checks import DeviceError, fmt_bytes  # noqa: F401 (DeviceError: API)
from ._codes import (ADV_STORE, AGD, BIASED_L2, CG, CONVERGED, DIVERGED, FEATURE_L2,
                     FINISH, GD, INIT, INIT_ADJ, L2, MAX_STEPS, NEUMANN, NO_CURVATURE,
                     RESTORE, REV_BUF, REV_STATE, SAMPLE_WEIGHTS, SNAP)
from ._interrupt import _PROGRESS
from ._parallel import fixed_nchunks, nchunks
from .kernels import oracles as _oracles
from .kernels.sampling import STREAM_F, STREAM_G, STREAM_HESS, STREAM_INNER
from .kernels.unroll import value_stride

_SIM_HINT = ("set NUMBA_ENABLE_CUDASIM=1 before Python starts to run the CUDA kernels in "
             "Numba's simulator (slow: for tests), or use device='cpu'")


def _cuda():
    """numba.cuda, once it is known to work here (else a DeviceError)."""
    try:
        from numba import cuda
    except Exception as e:                      # pragma: no cover (numba ships cuda)
        raise DeviceError(f"device='cuda' needs numba's CUDA target ({e}); install "
                          "fastbilevel[cuda]") from e
    if simulated():
        return cuda
    try:
        ok = cuda.is_available()
    except Exception as e:                      # a driver that fails to load
        ok, why = False, str(e)
    else:
        why = "numba.cuda.is_available() is False"
    if not ok:
        raise DeviceError(f"device='cuda' needs an NVIDIA GPU with a working driver "
                          f"({why}); install fastbilevel[cuda] on a GPU machine, or "
                          + _SIM_HINT)
    return cuda


def check_available():
    """Raise DeviceError (saying why) unless the CUDA backend can run here."""
    _cuda()


def simulated():
    """Whether Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1)."""
    from numba import config as nconfig
    return bool(getattr(nconfig, "ENABLE_CUDASIM", 0))


def _tpb():
    """Threads per block: 128 on a GPU, 4 in the simulator (every simulated
    thread is a Python thread)."""
    return 4 if simulated() else 128


class _DevData:
    """One design on the device: dense X, or CSR plus its transpose (CSC,
    rows in increasing order within each column) for the column kernel."""

    def __init__(self, cuda, D):
        X, indptr, indices, data, y = D
        self.dense = indptr is None
        self.y = cuda.to_device(np.ascontiguousarray(y, dtype=np.float64))
        self.n = y.shape[0]
        if self.dense:
            self.X = cuda.to_device(X)
            self.d = X.shape[1]
        else:
            self.d = None          # set by the caller (a CSR triple has no width)
            self._host = (indptr, indices, data)

    def finish_csr(self, cuda, d):
        import scipy.sparse as sp
        indptr, indices, data = self._host
        self.d = d
        self.indptr = cuda.to_device(indptr)
        self.indices = cuda.to_device(indices)
        self.data = cuda.to_device(data)
        T = sp.csr_matrix((data, indices, indptr), shape=(self.n, d)).tocsc()
        T.sort_indices()
        self.cptr = cuda.to_device(T.indptr.astype(np.int64))
        self.crow = cuda.to_device(T.indices.astype(np.int64))
        self.cval = cuda.to_device(T.data)
        del self._host


class _Device:
    """What every GPU backend shares: the kernels, launch shapes, scratch
    arrays, small uploads and the per-setting reductions in a fixed order."""

    name = "cuda"

    def __init__(self):
        self.cuda = cuda = _cuda()
        from .kernels import gpu
        self._gpu = gpu
        self.tpb = _tpb()
        self.vtpb = 4 if simulated() else 256
        self.nparts = 4 if simulated() else 1024     # partial sums per setting
        self.V = gpu.vector_kernels()
        self._empty = cuda.to_device(np.empty(0))
        self._noidx = cuda.to_device(np.empty(0, dtype=np.int64))
        self._scratch = {}
        self._consts = {}
        self.device_name = "simulator" if simulated() else _gpu_name(cuda)
        if simulated():
            # the simulator runs the sampler's hash on NumPy uint64 scalars,
            # which warn on the wrap-around the hash relies on
            import warnings
            warnings.filterwarnings("ignore", message="overflow encountered in scalar",
                                    category=RuntimeWarning)

    def __repr__(self):
        return f"{type(self).__name__}({self.device_name})"

    def _k(self, c):
        """The pass kernels for c outputs (c = 1 also serves a multinomial
        problem's data_sq_norm)."""
        return self._gpu.kernels(c, self.tpb)

    def _grown(self, key, shapes, need):
        """Scratch arrays ``shapes(cap)`` kept under ``key``, reallocated
        when fewer than ``need`` positions fit."""
        s = self._scratch.get(key)
        if s is None or s[0] < need:
            cap = max(need, 1)
            s = (cap,) + tuple(self.cuda.device_array(sh) for sh in shapes(cap))
            self._scratch[key] = s
        return s

    # ----------------------------------------------------------- launches
    def _vgrid(self, n):
        return (max(1, -(-n // self.vtpb)), self.vtpb)

    def _ew(self, kernel, n, *args):
        g, b = self._vgrid(n)
        kernel[g, b](*args)

    def _blocks(self, n):
        """Blocks along the positions of a pass kernel (grid-stride beyond)."""
        return max(1, min(-(-n // self.tpb), 65535))

    def _free_memory(self):
        """Free device memory in bytes (inf in the simulator)."""
        return self.cuda.current_context().get_memory_info()[0]

    def _check_memory(self, nbytes, what, fix):
        """Refuse, before allocating, a run whose device arrays (about
        ``nbytes``) exceed the GPU's free memory: a MemoryError saying what
        to change (``fix``)."""
        free = self._free_memory()
        if nbytes > free:
            raise MemoryError(f"{what} needs about {fmt_bytes(nbytes)} of GPU memory and "
                              f"{fmt_bytes(free)} is free on {self.device_name}: {fix}")

    def _arr(self, values):
        """A small host vector (per-setting scalars: step sizes, scales,
        coefficients) on the device, read-only to the kernels. The same
        values come back as the same device array without a new upload: a
        run passes the same few vectors on every step."""
        a = np.ascontiguousarray(values, dtype=np.float64)
        key = a.tobytes()
        dev = self._consts.get(key)
        if dev is None:
            if len(self._consts) >= 256:
                self._consts.clear()
            dev = self._consts[key] = self.cuda.to_device(a)
        return dev

    def _reduce(self, B, launch):
        """Per-setting sums: ``launch(parts)`` writes B·nparts partial sums
        (partial_sums or partial_dots), added per setting in a fixed order;
        a device (B,) array (valid until the next reduction)."""
        _, parts, out = self._grown(("reduce", B), lambda cap: ((cap,), (B,)),
                                    B * self.nparts)
        launch(parts[:B * self.nparts])
        self._ew(self.V.sum_parts, B, parts, out, self.nparts)
        return out

    def _sums(self, v, per, stride):
        """Σ of the first ``per`` entries of each setting's row of v (B, ≥per),
        rows ``stride`` apart: host (B,)."""
        B = v.shape[0]
        if per == 0:
            return np.zeros(B)
        return self._reduce(B, lambda parts: self._ew(
            self.V.partial_sums, parts.shape[0], _flat(v), parts, per, stride,
            self.nparts)).copy_to_host()

    def _dots_dev(self, x, y):
        """⟨x_s, y_s⟩ per setting of two device (B, ...) arrays: device (B,)."""
        B = x.shape[0]
        return self._reduce(B, lambda parts: self._ew(
            self.V.partial_dots, parts.shape[0], _flat(x), _flat(y), parts, _size(x) // B,
            self.nparts))

    def _dots(self, x, y):
        return self._dots_dev(x, y).copy_to_host()

    def _dot(self, x, y):
        """⟨x, y⟩ of two device arrays of one setting, in a fixed order."""
        return float(self._dots(_one(x), _one(y))[0])

    def _copy(self, dst, src):
        self._ew(self.V.copy, _size(dst), _flat(dst), _flat(src))

    def _fill(self, dst, value):
        self._ew(self.V.fill, _size(dst), _flat(dst), float(value))

    def _lc(self, out, a, x, b, y):
        """out = a_s x + b_s y per setting (a, b: host scalars or (B,) arrays)."""
        B = out.shape[0]
        self._ew(self.V.lincomb, _size(out), _flat(out), self._arr(np.broadcast_to(a, B)),
                 _flat(x), self._arr(np.broadcast_to(b, B)), _flat(y), _size(out) // B)

class CUDABackend(_Device):
    """The backend methods of :class:`~fastbilevel.backend.CPUBackend` on an
    NVIDIA GPU, for one problem's data (uploaded at construction).

    Every run is written for B settings in lockstep (``run_schedule_multi``,
    ``implicit_solve_multi``: a sweep's batched kernels); the single-setting
    methods run them with B = 1."""

    reg_value = staticmethod(_oracles.reg_value)          # host oracles: O(dim w)
    reg_grad_add = staticmethod(_oracles.reg_grad_add)
    reg_hvp_add = staticmethod(_oracles.reg_hvp_add)
    cross_add = staticmethod(_oracles.cross_add)
    nchunks = staticmethod(nchunks)
    fixed_nchunks = staticmethod(fixed_nchunks)

    def __init__(self, problem):
        super().__init__()
        self.d = problem.d
        self.c = problem.c
        self._data = {}
        self._relabel = None
        for D in (problem.train, problem.val):
            self._device(D)

    # ----------------------------------------------------------- data
    def _device(self, D):
        """The device copy of the design D (uploaded on first use, keyed on
        the identity of its arrays; a changed ``y`` alone uploads only y)."""
        key = id(D.X) if D.indptr is None else id(D.data)
        dd = self._data.get(key)
        if dd is None or dd[0] is not (D.X if D.indptr is None else D.data):
            dev = _DevData(self.cuda, D)
            if not dev.dense:
                dev.finish_csr(self.cuda, self.d)
            dd = (D.X if D.indptr is None else D.data, dev, D.y)
            self._data[key] = dd
        host, dev, y = dd
        if y is not D.y:            # the same design with other labels (data_sq_norm)
            if self._relabel is None or self._relabel[0] is not D.y \
                    or self._relabel[1] is not dev:
                import copy
                other = copy.copy(dev)
                other.y = self.cuda.to_device(np.ascontiguousarray(D.y, dtype=np.float64))
                self._relabel = (D.y, dev, other)
            return self._relabel[2]
        return dev

    def _buffers(self, dense, B, nb, c):
        """Scratch for a pass of B settings over nb positions (rows, or
        minibatch entries): (cap, CG, CH (B, cap, c), LV (B, cap), PG, PH
        (B, tiles, c, d): the dense tile partials), grown as needed."""
        d, tile = self.d, self._gpu.ROW_TILE

        def shapes(cap):
            nt = max(1, -(-cap // tile)) if dense else 1
            part = (B, nt, c, d) if dense else (1, 1, 1, 1)
            return (B, cap, c), (B, cap, c), (B, cap), part, part
        return self._grown(("pass", dense, B, c), shapes, nb)

    def _draw(self, seed, stream, step, n, b, replace):
        """The minibatch of (seed, stream, step): b of the rows 0..n−1,
        sorted, drawn on the device by the CPU's counter-based sampler (the
        same rows as ``sampling.draw_rows``). A device view, valid until the
        next draw."""
        cap = self._scratch.get("draw")
        if cap is None or cap[0].shape[0] < b:
            cap = (self.cuda.device_array(max(b, 1), dtype=np.int64),
                   self.cuda.device_array(max(b, 1), dtype=np.int64))
            self._scratch["draw"] = cap
        raw, out = cap[0][:b], cap[1][:b]
        if replace:
            self._ew(self.V.draw_replace, b, seed, stream, step, n, raw)
        else:
            perm = self._scratch.get(("perm", n))
            if perm is None:
                perm = self.cuda.to_device(np.arange(n, dtype=np.int64))
                self._scratch[("perm", n)] = perm
            self.V.draw_shuffle[1, 1](seed, stream, step, n, perm, raw)
        self._ew(self.V.rank_sort, b, raw, out)
        return out

    def _pass_bytes(self, dev, B, c):
        """Device bytes of the pass scratch for B settings over ``dev``."""
        n, d = dev.n, self.d
        tiles = max(1, -(-n // self._gpu.ROW_TILE)) if dev.dense else 0
        return 8 * B * (3 * n * c + 2 * tiles * c * d + (0 if dev.dense else 2 * n * c))

    # ----------------------------------------------------------- passes
    def dpass_multi(self, dev, A, model, W, V, want_grad, want_hvp, G, HV, cross, rows=None):
        """One pass over the device design ``dev`` for B settings at W
        (direction V), all device arrays: A (B, n) or (B, 0); W, V, G, HV
        (B, c, d); cross (B, n) or (B, 0). Returns each setting's data part
        of the objective (host (B,)). With ``rows`` (a sorted device
        minibatch, repeats allowed) as ``oracle_pass_rows``: weights 1/|B|,
        ``cross`` by batch position.

        A CSR minibatch's Xᵀr half walks the whole stored transpose, the rows
        outside the batch weighing 0 (no float atomics: a fixed order)."""
        B, c = W.shape[0], W.shape[1]
        n = dev.n if rows is None else rows.shape[0]
        cap, CG, CH, LV, PG, PH = self._buffers(dev.dense, B, n, c)
        K = self._k(c)
        idx = self._noidx if rows is None else rows
        if n == 0:
            for out, want in ((G, want_grad), (HV, want_hvp)):
                if want:
                    self._fill(out, 0.0)
            return np.zeros(B)
        grid = (self._blocks(n), B)
        args = (dev.y, A, model, W, V, want_grad, want_hvp, 1.0 / n, CG, CH, LV, cross)
        if dev.dense:
            K.rows_dense[grid, self.tpb](dev.X, idx, 0, n, *args)
        else:
            K.rows_csr[grid, self.tpb](dev.indptr, dev.indices, dev.data, idx, 0, n, *args)
        if want_grad or want_hvp:
            if dev.dense:
                nt = max(1, -(-n // self._gpu.ROW_TILE))
                fb = -(-self.d // self.tpb)
                # one tile writes G and HV directly; more write partials, added in order
                P1 = PG if nt > 1 else G.reshape((B, 1) + G.shape[1:])
                P2 = PH if nt > 1 else HV.reshape((B, 1) + HV.shape[1:])
                K.cols_dense[(fb, nt, B), self.tpb](dev.X, idx, n, CG, CH, want_grad,
                                                   want_hvp, P1, P2)
                if nt > 1:
                    per = c * self.d
                    for P, out, want in ((PG, G, want_grad), (PH, HV, want_hvp)):
                        if want:
                            self._ew(self.V.sum_tiles, B * per, _flat(P), _flat(out), nt,
                                     P.shape[1], per)
            else:
                if rows is not None:        # coefficients by row: 0 outside the batch
                    _, RG, RH = self._grown(("rows", B, c),
                                            lambda cap: ((B, cap, c), (B, cap, c)), dev.n)
                    for Rk, want in ((RG, want_grad), (RH, want_hvp)):
                        if want:
                            self._fill(Rk, 0.0)
                    K.scatter_runs[(self._blocks(n), B), self.tpb](rows, CG, CH, want_grad,
                                                                  want_hvp, RG, RH)
                    CG, CH = RG, RH
                K.cols_csc[(-(-self.d // self.vtpb), B), self.vtpb](
                    dev.cptr, dev.crow, dev.cval, CG, CH, want_grad, want_hvp, G, HV)
        return self._sums(LV, n, cap)

    def dpass(self, dev, a, model, W, V, want_grad, want_hvp, G, HV, cross, rows=None):
        """``dpass_multi`` for one setting: a (n,) or (0,), W, V, G, HV (c, d),
        cross (n,) or (0,); returns a host float."""
        return float(self.dpass_multi(dev, _one(a), model, _one(W), _one(V), want_grad,
                                      want_hvp, _one(G), _one(HV), _one(cross), rows)[0])

    def _row_grad_axpy(self, dev, model, W, i, coef, out):
        """out += coef · ℓ'(W x_i; y_i) ⊗ x_i for the single row i (one setting)."""
        c = W.shape[0]
        K = self._k(c)
        _, CG, CH, LV, _, _ = self._buffers(dev.dense, 1, dev.n, c)
        none = _one(self._empty)
        args = (dev.y, none, model, _one(W), _one(W), True, False, 1.0, CG, CH, LV, none)
        if dev.dense:               # one block (its first thread or lane group: row i)
            K.rows_dense[(1, 1), self.tpb](dev.X, self._noidx, i, i + 1, *args)
            self._ew(K.row_axpy_dense, self.d, dev.X, i, coef, CG[0], out)
        else:
            K.rows_csr[(1, 1), self.tpb](dev.indptr, dev.indices, dev.data, self._noidx, i,
                                         i + 1, *args)
            g, b = self._vgrid(max(1, self.d))
            K.row_axpy_csr[g, b](dev.indptr, dev.indices, dev.data, i, coef, CG[0], out)

    # ------------------------------------------------ O(dim w) per setting
    def _reg_values(self, RD, PR, W, tmp):
        """½ Σ rdiag (W − prior)² per setting: host (B,)."""
        B = W.shape[0]
        per = _size(W) // B
        self._ew(self.V.reg_terms, B * per, _flat(RD), _flat(PR), _flat(W), _flat(tmp),
                 self.d, per)
        return 0.5 * self._sums(tmp.reshape((B, per)), per, per)

    def _reg_grad_add(self, RD, PR, W, G):
        per = _size(W) // W.shape[0]
        self._ew(self.V.reg_grad_add, _size(W), _flat(RD), _flat(PR), _flat(W), _flat(G),
                 self.d, per)

    def _reg_hvp_add(self, RD, V, HV):
        per = _size(V) // V.shape[0]
        self._ew(self.V.reg_hvp_add, _size(V), _flat(RD), _flat(V), _flat(HV), self.d, per)

    def _step(self, solver, gammas, betas, St, G):
        """The solver step of every setting: St (1 or 2, B, c, d), G (B, c, d);
        gammas, betas device (B,)."""
        A = _flat(St[0])
        Bp = _flat(St[1]) if St.shape[0] > 1 else A
        self._ew(self.V.solver_step, _size(A), solver, gammas, betas, A, Bp, _flat(G),
                 _size(G) // G.shape[0])

    def _cross_multi(self, hyper, RD, RD_host, DA, W, V, cross, scales, H, rows=None):
        """H[s] += scales[s] · J_s(W_s)V_s on the device (``cross`` (B, ·) from
        the pass, by batch position when the pass had ``rows``; one setting
        then). RD_host: the host (B, d) ridge diagonals."""
        B = W.shape[0]
        scales = np.asarray(scales, dtype=np.float64)
        if hyper == SAMPLE_WEIGHTS:
            if rows is None:
                per = cross.shape[1]
                self._ew(self.V.cross_sw, B * per, _flat(H), self._arr(scales), _flat(DA),
                         _flat(cross), per)
            else:
                self._ew(self.V.cross_sw_rows, rows.shape[0], H[0], float(scales[0]), DA[0],
                         rows, cross[0])
        elif hyper == FEATURE_L2:
            self._k(W.shape[1]).cross_feature[(-(-self.d // self.vtpb), B), self.vtpb](
                H, self._arr(scales), RD, W, V)
        elif hyper == L2:
            coef = scales * np.asarray(RD_host, dtype=np.float64).reshape(B, -1)[:, 0]
            self._ew(self.V.add_scaled, B, _flat(H), H.shape[1], self._arr(coef),
                     self._dots_dev(W, V))
        elif hyper == BIASED_L2:
            self._ew(self.V.cross_biased, _size(V), _flat(H), self._arr(scales), _flat(RD),
                     _flat(V), self.d, _size(V) // B)

    def _cross_add(self, hyper, rd, rd_host, da, W, V, cross, scale, h, rows=None):
        """``_cross_multi`` for one setting (h 1-D)."""
        self._cross_multi(hyper, _one(rd), np.reshape(rd_host, (1, -1)), _one(da), _one(W),
                          _one(V), _one(cross), [scale], _one(h), rows)

    def _progress(self):
        """A callable reporting passes done to the progress callback (if any)."""
        report = _PROGRESS.get()
        last = [0.0]

        def tick(done, finished=False):
            if report is None:
                return
            now = time.perf_counter()
            if finished or now - last[0] >= 0.05:
                last[0] = now
                report(int(done), finished)
        return tick

    def _params(self, B, A, DA, RD, PRIOR):
        """The per-setting kernel parameters on the device: A, DA (B, n) or
        (B, 0); RD (B, d); PRIOR flat (B·c·d) or empty."""
        cuda = self.cuda

        def rows_of(M):
            return cuda.to_device(np.ascontiguousarray(M) if M.shape[0] else np.empty((B, 0)))
        return (rows_of(A), rows_of(DA), cuda.to_device(np.ascontiguousarray(RD)),
                cuda.to_device(np.ascontiguousarray(PRIOR).reshape(-1)))

    # ------------------------------------------------------- backend API
    def oracle_pass(self, D, a, model, W, V, want_grad, want_hvp, G, HV, cross, nchunks,
                    rows=None):
        """``oracle_pass`` (or ``oracle_pass_rows`` with ``rows``) with host
        arrays in and out."""
        cuda = self.cuda
        dev = self._device(D)
        dW = cuda.to_device(W)
        dV = dW if V is W else cuda.to_device(V)
        dG = cuda.device_array(W.shape)
        dH = cuda.device_array(W.shape)
        dC = cuda.device_array(cross.shape[0])
        drows = None if rows is None else cuda.to_device(
            np.ascontiguousarray(rows, dtype=np.int64))
        v = self.dpass(dev, cuda.to_device(a), model, dW, dV, want_grad, want_hvp, dG, dH,
                       dC, drows)
        if want_grad:
            dG.copy_to_host(G)
        if want_hvp:
            dH.copy_to_host(HV)
        if cross.shape[0]:
            dC.copy_to_host(cross)
        return v

    def oracle_pass_rows(self, rows, D, a, model, W, V, want_grad, want_hvp, G, HV, cross,
                         nchunks):
        """``oracle_pass`` over the sorted minibatch ``rows`` (host int64)."""
        return self.oracle_pass(D, a, model, W, V, want_grad, want_hvp, G, HV, cross, nchunks,
                                rows)

    # the CPU backend's one-thread pass for small data: on the GPU the same pass
    oracle_pass_serial = oracle_pass

    def _batch_of(self, sampler, n, t):
        """Step t's minibatch on the device (None: full batch)."""
        if sampler is None:
            return None
        return self._draw(int(sampler[2]), STREAM_INNER, t, n, int(sampler[0]),
                          sampler[1] != 0)

    def run_schedule(self, train, a, da, model, hyper, rdiag, prior, val, solver, gamma, beta,
                     W0, T, actions, nslots, buf_len, gvals, h, nchunks, sampler):
        """``kernels.unroll.run_schedule``: ``run_schedule_multi`` with one
        setting (``sampler``: minibatch SGD, the batches drawn on the device)."""
        WT, fv, status, counts, GF = self.run_schedule_multi(
            train, None, a.reshape(1, -1), da.reshape(1, -1), model, hyper,
            rdiag.reshape(1, -1), prior.reshape((1,) + prior.shape) if prior.size else prior,
            val, None, solver, np.array([gamma]), np.array([beta]), W0[None], T, actions,
            nslots, buf_len, gvals.reshape(1, -1), h.reshape(1, -1), nchunks, sampler=sampler)
        return WT[0], fv[0], int(status[0]), counts, GF[0]

    def run_schedule_multi(self, train, trainT, A, DA, model, hyper, RD, PRIOR, val, valT,
                           solver, gammas, betas, W0, T, actions, nslots, buf_len, gvals, H,
                           nchunks, sampler=None):
        """``kernels.batched.run_schedule_multi`` on the device: the schedule
        interpreter for B settings in lockstep (W0 (B, c, d); gammas, betas
        (B,); gvals (B, nv), H (B, dim λ) accumulated into), every pass
        serving all B. Returns (W_T, f(W_T), status, counts, ∇_w f(W_T)) as
        the CPU's; a diverged setting's state is zeroed and it is skipped
        (its outputs are meaningless; the others are unaffected).
        ``trainT``, ``valT`` (the CPU's transposes) are not used."""
        cuda = self.cuda
        dev, vdev = self._device(train), self._device(val)
        B, c, d = W0.shape
        ns = 1 if solver == GD else 2
        vec = 8 * B * c * d
        self._check_memory(
            (max(nslots, 1) * ns + max(buf_len, 1) + 3 * ns + 8) * vec
            + self._pass_bytes(dev, B, c) + self._pass_bytes(vdev, B, c),
            f"a schedule of {T} steps for {B} setting(s) (method's stored points "
            f"{max(buf_len, 1)}, snapshots {max(nslots, 1)})",
            "use method='checkpointed' (fewer stored states), or run fewer settings at a "
            "time (sweep(chunk_size=...))")
        tick = self._progress()
        A_d, DA_d, RD_d, PR_d = self._params(B, A, DA, RD, PRIOR)
        gam_d, bet_d = self._arr(gammas), self._arr(betas)
        S = cuda.to_device(np.broadcast_to(W0, (ns, B, c, d)).copy())
        Sn = cuda.device_array((ns, B, c, d))
        snaps = cuda.device_array((max(nslots, 1), ns, B, c, d))
        snap_t = np.zeros(max(nslots, 1), dtype=np.int64)
        buf = cuda.device_array((max(buf_len, 1), B, c, d))
        G, HP, Yt, tmp = (cuda.device_array((B, c, d)) for _ in range(4))
        P, Q, GF = (cuda.to_device(np.zeros((B, c, d))) for _ in range(3))
        WT = cuda.to_device(W0)
        Hd = cuda.to_device(H)
        n = y_len(train)
        nb = n if sampler is None else max(n, int(sampler[0]))
        cross = cuda.device_array((B, nb) if hyper == SAMPLE_WEIGHTS else (B, 0))
        no_cross = no_a = cuda.device_array((B, 0))
        fvals = np.full(B, np.nan)
        status = np.full(B, -1, dtype=np.int64)
        alive = np.ones(B, dtype=np.bool_)
        g0 = np.zeros(B)
        neg_g = -np.asarray(gammas, dtype=np.float64)
        counts = np.zeros(4, dtype=np.int64)
        used = np.zeros(max(nslots, 1), dtype=np.bool_)
        tlast = -1
        stride = value_stride(T, gvals.shape[1])
        base = t = 0
        tr = T - 1

        def point(St):
            return St[1] if solver == AGD else St[0]

        def kill(St):
            """Zero the diverged settings' state."""
            for b in np.flatnonzero(~alive):
                for k in range(St.shape[0]):
                    self._fill(St[k, b], 0.0)

        def finish():
            Hd.copy_to_host(H)
            tick(counts[0] + counts[1], True)
            return WT.copy_to_host(), fvals, status, counts, GF.copy_to_host()

        for q in range(actions.shape[0]):
            op, arg = int(actions[q, 0]), int(actions[q, 1])
            if op == SNAP:
                self._copy(snaps[arg], S)
                snap_t[arg] = t
                if not used[arg]:
                    used[arg] = True
                    counts[3] += 1
                continue
            if op == RESTORE:
                self._copy(S, snaps[arg])
                t = snap_t[arg]
                kill(S)
                continue
            if op == FINISH:
                if tr == -1 and hyper == INIT:      # dead settings: P = Q = 0 add nothing
                    self._ew(self.V.w0_adjoint, B * c * d, solver, bet_d, _flat(P), _flat(Q),
                             _flat(Hd), c * d)
                continue
            rev = op in (REV_STATE, REV_BUF)
            if op == ADV_STORE:
                base = t
            if op == INIT_ADJ:
                self._copy(Sn, S)
            nrep = 1 if op == REV_STATE else arg
            for _ in range(nrep):
                tick(counts[0] + counts[1])
                if rev:
                    p = point(S) if op == REV_STATE else buf[tr - base]
                    if solver == AGD:
                        self._ew(self.V.adjoint_pre, B * c * d, bet_d, _flat(P), _flat(Q),
                                 _flat(Yt), c * d)
                    rows = self._batch_of(sampler, dev.n, tr)
                    self.dpass_multi(dev, A_d, model, p, P, False, True, HP, HP, cross, rows)
                    counts[1] += 1
                    self._cross_multi(hyper, RD_d, RD, DA_d, p, P, cross, neg_g, Hd, rows)
                    self._reg_hvp_add(RD_d, P, HP)
                    self._ew(self.V.adjoint_post, B * c * d, solver, gam_d, bet_d, _flat(P),
                             _flat(Q), _flat(HP), _flat(Yt), c * d)
                    for b in np.flatnonzero(~alive):
                        self._fill(P[b], 0.0)
                        self._fill(Q[b], 0.0)
                    tr -= 1
                    continue
                St = Sn if op == INIT_ADJ else S
                p = point(St)
                if op == ADV_STORE:
                    self._copy(buf[t - base], p)
                v = self.dpass_multi(dev, A_d, model, p, p, True, False, G, G, no_cross,
                                     self._batch_of(sampler, dev.n, t))
                counts[0] += 1
                v += self._reg_values(RD_d, PR_d, p, tmp)
                if t > tlast:
                    tlast = t
                    for b in np.flatnonzero(alive):
                        if t % stride == 0:
                            gvals[b, t // stride] = v[b]
                        if t == 0:
                            g0[b] = v[b]
                        if _diverged(sampler, solver, v[b], g0[b]):
                            alive[b] = False
                            status[b] = t
                            fvals[b] = v[b]
                    if not alive.any():
                        return finish()
                self._reg_grad_add(RD_d, PR_d, p, G)
                self._step(solver, gam_d, bet_d, St, G)
                kill(St)
                if op != INIT_ADJ:
                    t += 1
            if op == INIT_ADJ:
                self._copy(WT, Sn[0] if arg == 1 else S[0])
                v = self.dpass_multi(vdev, no_a, model, WT, WT, True, False, P, P, no_cross)
                counts[2] += 1
                fvals[alive] = v[alive]
                self._copy(GF, P)
                self._fill(Q, 0.0)
        return finish()

    def forward_mode(self, train, a, da, model, hyper, rdiag, prior, val, solver, gamma, beta,
                     W0, T, gvals, h, nchunks, sampler):
        """Forward mode (``kernels.unroll.forward_mode``) on the device, one
        setting."""
        cuda = self.cuda
        dev, vdev = self._device(train), self._device(val)
        c, d = W0.shape
        m = h.shape[0]
        ns = 1 if solver == GD else 2
        self._check_memory((max(m, 1) + 1) * ns * 8 * c * d + 4 * 8 * c * d
                           + self._pass_bytes(dev, 1, c),
                           f"forward mode's {m} tangents", "use method='reverse' or "
                           "'checkpointed' (one adjoint instead of a tangent per entry of λ)")
        tick = self._progress()
        a_d, rd_d = cuda.to_device(a), cuda.to_device(rdiag)
        pr_d = cuda.to_device(np.ascontiguousarray(prior).reshape(-1))
        gam_d, bet_d = self._arr([gamma]), self._arr([beta])
        S = cuda.to_device(np.broadcast_to(W0, (ns, 1, c, d)).copy())
        Zh = np.zeros((max(m, 1), ns, 1, c, d))
        if hyper == INIT:
            for k in range(c):
                for j in range(d):
                    Zh[k * d + j, :, 0, k, j] = 1.0
        Z = cuda.to_device(Zh)
        del Zh
        G, HV, tmp = (cuda.device_array((1, c, d)) for _ in range(3))
        no_cross = self._empty
        counts = np.zeros(4, dtype=np.int64)
        inv_n = 1.0 / y_len(train)
        g0 = 0.0
        stride = value_stride(T, gvals.shape[0])

        def point(St):
            return St[1] if solver == AGD else St[0]

        for t in range(T):
            tick(t)
            p = point(S)
            v = 0.0
            rows = self._batch_of(sampler, dev.n, t)
            if rows is not None and hyper == SAMPLE_WEIGHTS:
                rows_h = rows.copy_to_host()        # the batch weights of the rows j
            for j in range(max(m, 1)):
                Zp = point(Z[j])
                vj = self.dpass(dev, a_d, model, p[0], Zp[0], j == 0, m > 0, G[0], HV[0],
                                no_cross, rows)
                if j == 0:
                    v = vj
                if m == 0:
                    break
                counts[1] += 1
                self._reg_hvp_add(rd_d, Zp, HV)
                if hyper == SAMPLE_WEIGHTS:
                    wj = inv_n if rows is None else (
                        (np.searchsorted(rows_h, j, "right") - np.searchsorted(rows_h, j))
                        / rows_h.shape[0])
                    coef = float(da[j]) * wj
                    if coef != 0.0:
                        self._row_grad_axpy(dev, model, p[0], j, coef, HV[0])
                elif hyper in (FEATURE_L2, L2, BIASED_L2):
                    self._ew(self.V.tangent_extra, c * d, hyper, j, d, rd_d, _flat(p),
                             _flat(HV))
                self._step(solver, gam_d, bet_d, Z[j], HV)
            counts[0] += 1
            v += float(self._reg_values(rd_d, pr_d, p, tmp)[0])
            if t % stride == 0:
                gvals[t // stride] = v
            if t == 0:
                g0 = v
            if _diverged(sampler, solver, v, g0):
                tick(t, True)
                return S[0, 0].copy_to_host(), v, t, counts, G[0].copy_to_host()
            self._reg_grad_add(rd_d, pr_d, p, G)
            self._step(solver, gam_d, bet_d, S, G)
        WT = cuda.device_array((c, d))
        self._copy(WT, S[0, 0])
        fval = self.dpass(vdev, self._empty, model, WT, WT, True, False, G[0], G[0], no_cross)
        counts[2] += 1
        for j in range(m):
            h[j] += self._dot(G[0], Z[j, 0, 0])
        tick(T, True)
        return WT.copy_to_host(), fval, -1, counts, G[0].copy_to_host()

    def implicit_solve(self, train, a, model, rdiag, W, b, v0, solver, K, tol, eta, alpha,
                       beta, nchunks):
        """``kernels.implicit.implicit_solve``: the linear solve of
        ``implicit_solve_multi`` for one setting (no J·v term)."""
        dev = self._device(train)
        A_d, _, RD_d, _ = self._params(1, a.reshape(1, -1), a.reshape(1, -1),
                                       rdiag.reshape(1, -1), np.empty(0))
        v, resid, steps, status = self._linear_solve(
            dev, A_d, model, RD_d, self.cuda.to_device(W[None]), b[None], v0[None], solver, K,
            tol, np.array([eta]), np.array([alpha]), np.array([beta]))
        return v[0].copy_to_host(), float(resid[0]), int(steps[0]), int(status[0])

    def implicit_solve_multi(self, train, trainT, A, DA, model, hyper, RD, W, Bv, V0, solver,
                             K, tol, etas, alphas, betas, H, nchunks):
        """``kernels.batched.implicit_solve_multi`` on the device: B linear
        solves in lockstep, each setting stopping at its own tolerance, then
        H[b] −= J_b(W[b]) v[b]. Returns (v, residuals, steps, status)."""
        B = W.shape[0]
        dev = self._device(train)
        A_d, DA_d, RD_d, _ = self._params(B, A, DA, RD, np.empty(0))
        Wd = self.cuda.to_device(W)
        v, resid, steps, status = self._linear_solve(dev, A_d, model, RD_d, Wd, Bv, V0, solver,
                                                     K, tol, etas, alphas, betas)
        Hd = self.cuda.to_device(H)
        cross = self.cuda.device_array((B, dev.n) if hyper == SAMPLE_WEIGHTS else (B, 0))
        if hyper == SAMPLE_WEIGHTS:
            Hx = self.cuda.device_array(W.shape)
            self.dpass_multi(dev, A_d, model, Wd, v, False, False, Hx, Hx, cross)
        self._cross_multi(hyper, RD_d, RD, DA_d, Wd, v, cross, -np.ones(B), Hd)
        Hd.copy_to_host(H)
        return v.copy_to_host(), resid, steps, status

    def _linear_solve(self, dev, A_d, model, RD_d, Wd, Bv, V0, solver, K, tol, etas, alphas,
                      betas):
        """H_b(W_b) v_b = Bv_b for B settings by CG, Neumann or heavy ball,
        with ``kernels.implicit.implicit_solve``'s steps per setting; the
        per-setting scalars (dots, norms) read back for the control flow.
        ``dev``, the sample weights A_d, ridges RD_d and points Wd are on the
        device already. Returns (v on the device, residuals, steps, status)
        (host (B,))."""
        cuda = self.cuda
        B, c, d = Wd.shape
        self._check_memory(9 * 8 * B * c * d + self._pass_bytes(dev, B, c),
                           f"the linear solves of {B} setting(s)",
                           "run fewer settings at a time (sweep(chunk_size=...))")
        tick = self._progress()
        bd = cuda.to_device(Bv)
        v, vprev = cuda.to_device(V0), cuda.to_device(V0)
        Hx, nxt = cuda.device_array((B, c, d)), cuda.device_array((B, c, d))
        r, p = cuda.to_device(np.zeros((B, c, d))), cuda.to_device(np.zeros((B, c, d)))
        no_cross = cuda.device_array((B, 0))
        thresh = tol * np.sqrt(self._dots(bd, bd))
        r0 = np.zeros(B)
        rr = np.zeros(B)
        resid = np.full(B, np.nan)
        steps = np.zeros(B, dtype=np.int64)
        status = np.full(B, -1, dtype=np.int64)
        active = np.ones(B, dtype=np.bool_)
        ones = np.ones(B)
        it = 0

        def stop(b, code, rn):
            status[b], resid[b], steps[b], active[b] = code, rn, it, False

        while True:
            tick(it)
            x = p if (solver == CG and it > 0) else v
            self.dpass_multi(dev, A_d, model, Wd, x, False, True, Hx, Hx, no_cross)
            self._reg_hvp_add(RD_d, x, Hx)
            if solver == CG and it > 0:
                pHp = self._dots(p, Hx)
                for b in np.flatnonzero(active):
                    if not pHp[b] > 0.0:
                        stop(b, NO_CURVATURE, math.sqrt(rr[b]))
                step = np.where(active, rr / np.where(active, pHp, 1.0), 0.0)
                self._lc(v, ones, v, step, p)
                self._lc(r, ones, r, -step, Hx)
            else:
                self._lc(r, ones, bd, -ones, Hx)
            rn = np.sqrt(self._dots(r, r))
            if it == 0:
                r0[:] = rn
                if solver == CG:
                    self._copy(p, r)
            for b in np.flatnonzero(active):
                if not math.isfinite(rn[b]) or rn[b] > 1e6 * r0[b]:
                    stop(b, DIVERGED, rn[b])
                elif rn[b] <= thresh[b]:
                    stop(b, CONVERGED, rn[b])
                elif it == K:
                    stop(b, MAX_STEPS, rn[b])
            if not active.any():
                return v, resid, steps, status
            if solver == CG:
                if it > 0:
                    self._lc(p, np.where(active, rn * rn / np.where(rr > 0, rr, 1.0), 1.0), p,
                             ones, r)
                rr = np.where(active, rn * rn, rr)
            elif solver == NEUMANN:
                self._lc(v, ones, v, np.where(active, etas, 0.0), r)
            else:
                # nxt = v + α r + β (v − vprev); vprev = v; v = nxt (still: nxt = v)
                al, be = np.where(active, alphas, 0.0), np.where(active, betas, 0.0)
                self._lc(nxt, 1.0 + be, v, al, r)
                self._lc(nxt, ones, nxt, -be, vprev)
                self._copy(vprev, v)
                self._copy(v, nxt)
            it += 1

    # ------------------------------------------- stochastic estimators
    def stocbio_run(self, train, a, da, model, hyper, rdiag, prior, val, W0, D, gamma, S,
                    eta, hsizes, df, dg, replace, seed, h, nchunks):
        """``kernels.stochastic.stocbio_run`` on the device: the same steps on
        the same batches (drawn on the device from the same seed)."""
        cuda = self.cuda
        dev, vdev = self._device(train), self._device(val)
        c, d = W0.shape
        Q = hsizes.shape[0]
        a_d, da_d, rd_d = cuda.to_device(a), cuda.to_device(da), cuda.to_device(rdiag)
        pr_d = cuda.to_device(np.ascontiguousarray(prior).reshape(-1))
        gam_d = self._arr([gamma])
        W = cuda.to_device(W0[None])
        G, tmp = cuda.device_array((1, c, d)), cuda.device_array((1, c, d))
        R, acc, VQ = (cuda.to_device(np.zeros((1, c, d))) for _ in range(3))
        hd = cuda.to_device(h)
        sw = hyper == SAMPLE_WEIGHTS
        cross = cuda.device_array(dg if sw else 0)
        counts = np.zeros(2, dtype=np.int64)
        fval = math.nan
        g0 = 0.0
        for st in range(D + Q + 2):
            if st == D:                 # v_0 = r_Q on D_F
                rows = self._draw(seed, STREAM_F, 0, vdev.n, df, replace)
                fval = self.dpass(vdev, self._empty, model, W[0], W[0], True, False, R[0],
                                  R[0], self._empty, rows)
                counts[1] += df
                self._copy(acc, R)
                continue
            if st < D:
                stream, step, b, V, grad = STREAM_INNER, st, S, W, True
            elif st <= D + Q:
                i = Q - (st - D - 1)
                stream, step, b, V, grad = STREAM_HESS, i, int(hsizes[i - 1]), R, False
            else:
                self._lc(VQ, eta, acc, 0.0, acc)
                if not sw:
                    self._cross_add(hyper, rd_d, rdiag, da_d, W[0], VQ[0], self._empty, -1.0,
                                    hd)
                    break
                stream, step, b, V, grad = STREAM_G, 0, dg, VQ, False
            rows = self._draw(seed, stream, step, dev.n, b, replace)
            v = self.dpass(dev, a_d, model, W[0], V[0], grad, not grad, G[0], G[0],
                           cross if st > D + Q else self._empty, rows)
            counts[0] += b
            if st < D:
                v += float(self._reg_values(rd_d, pr_d, W, tmp)[0])
                if st == 0:
                    g0 = v
                if _diverged(True, GD, v, g0):          # the minibatch rule
                    return W[0].copy_to_host(), fval, st, counts
                self._reg_grad_add(rd_d, pr_d, W, G)
                self._step(GD, gam_d, gam_d, _one(W), G)
            elif st <= D + Q:
                self._reg_hvp_add(rd_d, R, G)
                self._lc(R, 1.0, R, -eta, G)
                self._lc(acc, 1.0, acc, 1.0, R)
            else:
                self._cross_add(hyper, rd_d, rdiag, da_d, W[0], VQ[0], cross, -1.0, hd, rows)
        hd.copy_to_host(h)
        return W[0].copy_to_host(), fval, -1, counts

    def fsla_run(self, train, model, hyper, reg, val, lam, W, V, dmom, a, da, rdiag, prior,
                 k0, iters, delta, c_tau, c_beta, c_eta, b_inner, b_val, b_cross, replace,
                 seed, lo, hi, nchunks):
        """``kernels.stochastic.fsla_run`` on the device: ω, v and the passes
        on the GPU, on the same batches; λ, its kernel parameters and the
        STORM direction d (O(dim λ)) on the host, by the CPU's own functions,
        the parameters uploaded when λ moves."""
        from .kernels.stochastic import _storm, set_hyper_params, step_lam
        cuda = self.cuda
        dev, vdev = self._device(train), self._device(val)
        c, d = W.shape
        size = c * d
        sw = hyper == SAMPLE_WEIGHTS
        a_d, da_d, rd_d = cuda.to_device(a), cuda.to_device(da), cuda.to_device(rdiag)
        pr_d = cuda.to_device(np.ascontiguousarray(prior).reshape(-1))
        Wd, Vd = cuda.to_device(W), cuda.to_device(V)
        G1, HV, P = (cuda.device_array((c, d)) for _ in range(3))
        zero = cuda.to_device(np.zeros((c, d)))
        ed = cuda.device_array(dmom.shape[0])
        e_new = np.zeros(dmom.shape[0])
        e_old = np.zeros(dmom.shape[0])
        cross = cuda.device_array(b_cross if sw else 0)
        counts = np.zeros(2, dtype=np.int64)
        changed = np.zeros(lam.shape[0], dtype=np.bool_)

        def e_of(out, rows, cr):
            """out = −J(ω)v on the host (e at the current state; ∂_λF = 0)."""
            self._fill(ed, 0.0)
            self._cross_add(hyper, rd_d, rdiag, da_d, Wd, Vd, cr, -1.0, ed, rows)
            ed.copy_to_host(out)

        def finite(*arrays):        # Σ 0·x is NaN iff some x is not finite
            return all(math.isfinite(self._dot(X, zero)) for X in arrays)

        def done(status):
            Wd.copy_to_host(W)
            Vd.copy_to_host(V)
            return status, counts

        ok = True
        for k in range(-1 if k0 == 0 else k0, k0 + iters):
            init = k == -1
            step = 0 if init else k + 1
            alpha = delta / math.sqrt(max(k, 0) + 1.0)
            tau, beta, etak = c_tau * alpha, c_beta * alpha, min(1.0, c_eta * alpha)
            rows = self._draw(seed, STREAM_F, step, vdev.n, b_val, replace)
            self.dpass(vdev, self._empty, model, Wd, Wd, True, False, P, P, self._empty, rows)
            counts[1] += b_val
            for sp in range(4):     # the passes of kernels.stochastic.fsla_run, in order
                if init and sp < 3:
                    if sp == 0:     # v_0 = β_0 ∂_ωF
                        self._lc(_one(Vd), beta, _one(P), 0.0, _one(P))
                    continue
                if sp == 0 and not sw:
                    e_of(e_old, None, self._empty)
                    continue
                if sp == 1:
                    step_lam(lam, dmom, alpha, lo, hi, changed)
                    set_hyper_params(hyper, lam, reg, a, da, rdiag, prior, changed)
                    for host, devarr in ((a, a_d), (da, da_d), (rdiag, rd_d)):
                        devarr.copy_to_device(host)
                    pr_d.copy_to_device(np.ascontiguousarray(prior).reshape(-1))
                if sp == 3 and not sw:
                    e_of(e_new, None, self._empty)
                    break
                if sp == 0 or sp == 3:
                    stream, b, grad, out = STREAM_G, b_cross, False, HV
                elif sp == 1:
                    stream, b, grad, out = STREAM_INNER, b_inner, True, G1
                else:
                    stream, b, grad, out = STREAM_HESS, b_inner, False, HV
                rows = self._draw(seed, stream, step, dev.n, b, replace)
                self.dpass(dev, a_d, model, Wd, Wd if grad else Vd, grad, not grad, out, out,
                           cross if sp in (0, 3) else self._empty, rows)
                counts[0] += b
                if sp == 0:
                    e_of(e_old, rows, cross)
                elif sp == 1:
                    self._reg_grad_add(rd_d, pr_d, _one(Wd), _one(G1))
                elif sp == 2:
                    self._reg_hvp_add(rd_d, _one(Vd), _one(HV))
                    self._ew(self.V.fsla_state, size, _flat(Wd), _flat(Vd), _flat(G1),
                             _flat(P), _flat(HV), tau, beta)
                    ok = finite(Wd, Vd)
                else:
                    e_of(e_new, rows, cross)
            if init:
                dmom[:] = e_new
                ok = finite(Vd) and bool(np.all(np.isfinite(dmom)))
            else:
                ok = _storm(dmom, e_new, e_old, etak) and ok
            if not ok:
                return done(k)
        return done(-1)


def _gpu_name(cuda):
    try:
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:                              # pragma: no cover
        return "cuda"


def _flat(A):
    """A contiguous device array as a 1-D view."""
    return A.reshape(_size(A))


def _one(A):
    """A device array as a batch of one setting (a leading axis of 1)."""
    return A.reshape((1,) + tuple(A.shape))


def _size(A):
    s = 1
    for k in A.shape:
        s *= k
    return s


def y_len(D):
    return D.y.shape[0]


def _diverged(sampler, solver, v, g0):
    """The divergence test of ``kernels.unroll`` (see ``config``): full batch,
    or minibatch (``sampler`` not None: a batch's loss varies by itself)."""
    if sampler is not None:
        return not math.isfinite(v) or v - g0 > config.DIVERGENCE_GROWTH_MINIBATCH * (
            abs(g0) + 1.0)
    lim = config.DIVERGENCE_GROWTH_GD if solver == GD else config.DIVERGENCE_GROWTH
    return not math.isfinite(v) or v - g0 > lim * abs(g0)
