"""The CUDA backend: the data on the GPU once, the passes as ``@cuda.jit``
kernels (:mod:`fastbilevel.kernels.gpu`), the schedule interpreter on the
host driving them.

``BilevelProblem(..., device="cuda")`` or ``problem.to("cuda")`` gives a
problem whose backend is a :class:`CUDABackend`. It implements the backend
methods of :class:`~fastbilevel.backend.CPUBackend` with the same argument
lists (host arrays in, host arrays out), so ``hypergradient`` (every exact
method: reverse, checkpointed, recompute, truncated, forward, implicit),
``solve``, ``minimize`` with those methods, ``sweep`` (setting by setting)
and the oracles run unchanged.
Inside a run everything stays in device memory: the solver state, the
stored points and snapshots of a schedule, the adjoints, forward tangents,
the implicit solver's vectors and the hypergradient; the host reads one
scalar per pass (the loss, for the divergence check) and copies the results
back at the end.

Minibatch SGD inner loops (``batch_size``), stocBiO and FSLA run on the GPU
too, on the same batches as on the CPU: the counter-based sampler's hash is
compiled as device functions from the CPU's source, so a seed draws the same
rows on either device.

Not yet on the GPU (each refuses with an error naming ``problem.to("cpu")``):
the stochastic solver family (``minimize(method="soba")`` ...), the batched
sweep kernels (``sweep(strategy="rows")``, and ``client=``) and the
multi-task problems.

Summation order is fixed (see :mod:`fastbilevel.kernels.gpu`), so a result
is the same on every run; it differs from the CPU backend's only by
rounding (≤ 1e-10 relative in float64, tested under Numba's simulator).
"""
import math
import time

import numpy as np

from . import config
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


class DeviceError(RuntimeError):
    """``device="cuda"`` was asked for where no usable GPU is, or a method
    that does not run on the GPU yet was called on a GPU problem."""


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


def not_on_gpu(what):
    """The error for a method that does not run on the CUDA backend yet."""
    return DeviceError(f"{what} does not run on device='cuda' yet: call it on "
                       f"problem.to('cpu')")


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


class CUDABackend:
    """The backend methods of :class:`~fastbilevel.backend.CPUBackend` on an
    NVIDIA GPU, for one problem's data (uploaded at construction)."""

    name = "cuda"

    reg_value = staticmethod(_oracles.reg_value)          # host oracles: O(dim w)
    reg_grad_add = staticmethod(_oracles.reg_grad_add)
    reg_hvp_add = staticmethod(_oracles.reg_hvp_add)
    cross_add = staticmethod(_oracles.cross_add)
    nchunks = staticmethod(nchunks)
    fixed_nchunks = staticmethod(fixed_nchunks)

    def __init__(self, problem):
        self.cuda = cuda = _cuda()
        from .kernels import gpu
        self._gpu = gpu
        self.d = problem.d
        self.c = problem.c
        self.tpb = _tpb()
        self.vtpb = 4 if simulated() else 256
        self.V = gpu.vector_kernels()
        self._parts = cuda.device_array(4 if simulated() else 1024)
        self._data = {}
        self._relabel = None
        for D in (problem.train, problem.val):
            self._device(D)
        self._scal = cuda.device_array(4)
        self._empty = cuda.to_device(np.empty(0))
        self._noidx = cuda.to_device(np.empty(0, dtype=np.int64))
        self._scratch = {}
        self.device_name = "simulator" if simulated() else _gpu_name(cuda)
        if simulated():
            # the simulator runs the sampler's hash on NumPy uint64 scalars,
            # which warn on the wrap-around the hash relies on
            import warnings
            warnings.filterwarnings("ignore", message="overflow encountered in scalar",
                                    category=RuntimeWarning)

    def __repr__(self):
        return f"CUDABackend({self.device_name})"

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

    def _k(self, c):
        """The pass kernels for c outputs (c = 1 also serves a multinomial
        problem's data_sq_norm)."""
        return self._gpu.kernels(c, self.tpb)

    def _buffers(self, dense, nb, c):
        """Scratch for a pass over nb positions (rows, or minibatch entries):
        row coefficients and the dense tile partials, grown as needed and
        shared by every pass with c outputs (views of the first nb rows)."""
        key = (dense, c)
        s = self._scratch.get(key)
        if s is None or s["cap"] < nb:
            cuda, d = self.cuda, self.d
            cap = max(nb, 1)
            ntiles = max(1, -(-cap // self._gpu.ROW_TILE)) if dense else 1
            s = {
                "cap": cap,
                "CG": cuda.device_array((cap, c)), "CH": cuda.device_array((cap, c)),
                "LV": cuda.device_array(cap),
                "PG": cuda.device_array((ntiles, c, d) if dense else (1, 1, 1)),
                "PH": cuda.device_array((ntiles, c, d) if dense else (1, 1, 1)),
            }
            self._scratch[key] = s
        return s

    def _row_sums(self, n, c):
        """(n, c) scratch pair for a CSR minibatch's per-row coefficients."""
        key = ("rows", n, c)
        s = self._scratch.get(key)
        if s is None:
            s = (self.cuda.device_array((n, c)), self.cuda.device_array((n, c)))
            self._scratch[key] = s
        return s

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

    # ----------------------------------------------------------- launches
    def _vgrid(self, n):
        return (max(1, -(-n // self.vtpb)), self.vtpb)

    def _ew(self, kernel, n, *args):
        g, b = self._vgrid(n)
        kernel[g, b](*args)

    def _rows_grid(self, n):
        """(blocks, threads) of a rows kernel: a thread per row."""
        return (max(1, min(-(-n // self.tpb), 65535)), self.tpb)

    def _scalar(self, slot=0):
        return float(self._scal[slot:slot + 1].copy_to_host()[0])

    def _sum(self, v):
        """Σ v (device vector) on the host, in a fixed order."""
        if v.shape[0] == 0:
            return 0.0
        np_ = self._parts.shape[0]
        self._ew(self.V.partial_sums, np_, v, self._parts)
        self.V.sum_parts[1, 1](self._parts, self._scal, 0)
        return self._scalar(0)

    def _dot(self, x, y):
        """⟨x, y⟩ of two device (c, d) arrays, in a fixed order."""
        self._ew(self.V.partial_dots, self._parts.shape[0], _flat(x), _flat(y), self._parts)
        self.V.sum_parts[1, 1](self._parts, self._scal, 1)
        return self._scalar(1)

    def _copy(self, dst, src):
        self._ew(self.V.copy, _size(dst), _flat(dst), _flat(src))

    def _fill(self, dst, value):
        self._ew(self.V.fill, _size(dst), _flat(dst), float(value))

    def dpass(self, dev, a, model, W, V, want_grad, want_hvp, G, HV, cross, rows=None):
        """One pass over the device design ``dev`` at W (direction V), all
        device arrays; returns the data part of the objective (host float).
        G, HV and ``cross`` (empty or length n) as in ``oracle_pass``; with
        ``rows`` (a sorted device minibatch, repeats allowed) as in
        ``oracle_pass_rows``: weights 1/|B|, ``cross`` by batch position.

        A CSR minibatch's Xᵀr half walks the whole stored transpose, the rows
        outside the batch weighing 0 (no float atomics: a fixed order)."""
        c = W.shape[0]
        n = dev.n if rows is None else rows.shape[0]
        s = self._buffers(dev.dense, n, c)
        K = self._k(c)
        idx = self._noidx if rows is None else rows
        if n == 0:
            if want_grad:
                self._fill(G, 0.0)
            if want_hvp:
                self._fill(HV, 0.0)
            return 0.0
        grid, tpb = self._rows_grid(n)
        CG, CH = s["CG"][:n], s["CH"][:n]
        args = (dev.y, a, model, W, V, want_grad, want_hvp, 1.0 / n, CG, CH, s["LV"], cross)
        if dev.dense:
            K.rows_dense[grid, tpb](dev.X, idx, 0, n, *args)
        else:
            K.rows_csr[grid, tpb](dev.indptr, dev.indices, dev.data, idx, 0, n, *args)
        if want_grad or want_hvp:
            if dev.dense:
                nt = max(1, -(-n // self._gpu.ROW_TILE))
                fb = -(-self.d // self.tpb)
                # one tile writes G and HV directly; more write partials, added in order
                PG = s["PG"][:nt] if nt > 1 else G.reshape((1,) + G.shape)
                PH = s["PH"][:nt] if nt > 1 else HV.reshape((1,) + HV.shape)
                K.cols_dense[(fb, nt), self.tpb](dev.X, idx, CG, CH, want_grad, want_hvp,
                                                 PG, PH)
                if nt > 1:
                    if want_grad:
                        self._ew(self.V.sum_tiles, _size(G), PG.reshape((nt, _size(G))),
                                 _flat(G))
                    if want_hvp:
                        self._ew(self.V.sum_tiles, _size(HV), PH.reshape((nt, _size(HV))),
                                 _flat(HV))
            else:
                if rows is not None:        # coefficients by row: 0 outside the batch
                    RG, RH = self._row_sums(dev.n, c)
                    for Rk, want in ((RG, want_grad), (RH, want_hvp)):
                        if want:
                            self._fill(Rk, 0.0)
                    self._ew(K.scatter_runs, n, rows, CG, CH, want_grad, want_hvp, RG, RH)
                    CG, CH = RG, RH
                g, b = self._vgrid(self.d)
                K.cols_csc[g, b](dev.cptr, dev.crow, dev.cval, CG, CH, want_grad, want_hvp,
                                 G, HV)
        return self._sum(s["LV"][:n])

    def _row_grad_axpy(self, dev, model, W, i, coef, out):
        """out += coef · ℓ'(W x_i; y_i) ⊗ x_i for the single row i."""
        K = self._k(W.shape[0])
        s = self._buffers(dev.dense, dev.n, W.shape[0])
        args = (dev.y, self._empty, model, W, W, True, False, 1.0, s["CG"], s["CH"],
                s["LV"], self._empty)
        if dev.dense:
            K.rows_dense[1, 1](dev.X, self._noidx, i, i + 1, *args)
            self._ew(K.row_axpy_dense, self.d, dev.X, i, coef, s["CG"], out)
        else:
            K.rows_csr[1, 1](dev.indptr, dev.indices, dev.data, self._noidx, i, i + 1,
                             *args)
            g, b = self._vgrid(max(1, self.d))
            K.row_axpy_csr[g, b](dev.indptr, dev.indices, dev.data, i, coef,
                                      s["CG"], out)

    def _reg_value(self, rdiag, prior, W, tmp):
        self._ew(self.V.reg_terms, _size(W), rdiag, _flat(prior), _flat(W), _flat(tmp),
                 self.d)
        return 0.5 * self._sum(_flat(tmp))

    def _cross_add(self, hyper, rdiag, rdiag_host, da, W, V, cross, scale, h, rows=None):
        """h += scale · J(W)V on the device (``cross`` from the pass, by batch
        position when the pass had ``rows``)."""
        if hyper == SAMPLE_WEIGHTS:
            if rows is None:
                self._ew(self.V.cross_sw, cross.shape[0], h, scale, da, cross)
            else:
                self._ew(self.V.cross_sw_rows, rows.shape[0], h, scale, da, rows, cross)
        elif hyper == FEATURE_L2:
            g, b = self._vgrid(self.d)
            self._k(W.shape[0]).cross_feature[g, b](h, scale, rdiag, W, V)
        elif hyper == L2:
            self._dot(W, V)
            self.V.add_scalar[1, 1](h, 0, scale * float(rdiag_host[0]), self._scal, 1)
        elif hyper == BIASED_L2:
            self._ew(self.V.cross_biased, _size(V), h, scale, rdiag, _flat(V), self.d)

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

    # ------------------------------------------------------- backend API
    def oracle_pass(self, D, a, model, W, V, want_grad, want_hvp, G, HV, cross, nchunks):
        cuda = self.cuda
        dev = self._device(D)
        dW = cuda.to_device(W)
        dV = dW if V is W else cuda.to_device(V)
        dG = cuda.device_array(W.shape)
        dH = cuda.device_array(W.shape)
        dC = cuda.device_array(cross.shape[0])
        v = self.dpass(dev, cuda.to_device(a), model, dW, dV, want_grad, want_hvp, dG, dH,
                       dC)
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
        cuda = self.cuda
        dev = self._device(D)
        dW = cuda.to_device(W)
        dV = dW if V is W else cuda.to_device(V)
        dG = cuda.device_array(W.shape)
        dH = cuda.device_array(W.shape)
        dC = cuda.device_array(cross.shape[0])
        drows = cuda.to_device(np.ascontiguousarray(rows, dtype=np.int64))
        v = self.dpass(dev, cuda.to_device(a), model, dW, dV, want_grad, want_hvp, dG, dH,
                       dC, drows)
        if want_grad:
            dG.copy_to_host(G)
        if want_hvp:
            dH.copy_to_host(HV)
        if cross.shape[0]:
            dC.copy_to_host(cross)
        return v

    def _batch_of(self, sampler, n, t):
        """Step t's minibatch on the device (None: full batch)."""
        if sampler is None:
            return None
        return self._draw(int(sampler[2]), STREAM_INNER, t, n, int(sampler[0]),
                          sampler[1] != 0)

    def run_schedule(self, train, a, da, model, hyper, rdiag, prior, val, solver, gamma, beta,
                     W0, T, actions, nslots, buf_len, gvals, h, nchunks, sampler):
        """The schedule interpreter of ``kernels.unroll.run_schedule`` with
        the same actions and results, driving the device kernels
        (``sampler``: minibatch SGD, the batches drawn on the device)."""
        cuda = self.cuda
        dev, vdev = self._device(train), self._device(val)
        c, d = W0.shape
        ns = 1 if solver == GD else 2
        tick = self._progress()
        a_d, da_d, rd_d = cuda.to_device(a), cuda.to_device(da), cuda.to_device(rdiag)
        pr_d = cuda.to_device(np.ascontiguousarray(prior).reshape(-1))
        S = cuda.to_device(np.broadcast_to(W0, (ns, c, d)).copy())
        Sn = cuda.device_array((ns, c, d))
        snaps = cuda.device_array((max(nslots, 1), ns, c, d))
        snap_t = np.zeros(max(nslots, 1), dtype=np.int64)
        buf = cuda.device_array((max(buf_len, 1), c, d))
        G, HP, Yt, tmp = (cuda.device_array((c, d)) for _ in range(4))
        P = cuda.to_device(np.zeros((c, d)))
        Q = cuda.to_device(np.zeros((c, d)))
        WT = cuda.to_device(W0)
        GF = cuda.to_device(np.zeros((c, d)))
        hd = cuda.to_device(h)
        nb = y_len(train) if sampler is None else max(y_len(train), int(sampler[0]))
        cross = cuda.device_array(nb if hyper == SAMPLE_WEIGHTS else 0)
        no_cross = self._empty
        fval = math.nan
        counts = np.zeros(4, dtype=np.int64)
        used = np.zeros(max(nslots, 1), dtype=np.bool_)
        g0 = 0.0
        tlast = -1
        stride = value_stride(T, gvals.shape[0])
        base = t = 0
        tr = T - 1

        def point(St):
            return St[1] if solver == AGD else St[0]

        def finish(status, value):
            hd.copy_to_host(h)
            tick(counts[0] + counts[1], True)
            return WT.copy_to_host(), value, status, counts, GF.copy_to_host()

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
                continue
            if op == FINISH:
                if tr == -1 and hyper == INIT:
                    self._ew(self.V.w0_adjoint, c * d, solver, beta, _flat(P), _flat(Q), hd)
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
                        self._ew(self.V.adjoint_pre, c * d, beta, _flat(P), _flat(Q),
                                 _flat(Yt))
                    rows = self._batch_of(sampler, dev.n, tr)
                    self.dpass(dev, a_d, model, p, P, False, True, HP, HP, cross, rows)
                    counts[1] += 1
                    self._cross_add(hyper, rd_d, rdiag, da_d, p, P, cross, -gamma, hd, rows)
                    self._ew(self.V.reg_hvp_add, c * d, rd_d, _flat(P), _flat(HP), d)
                    self._ew(self.V.adjoint_post, c * d, solver, gamma, beta, _flat(P),
                             _flat(Q), _flat(HP), _flat(Yt))
                    tr -= 1
                    continue
                St = Sn if op == INIT_ADJ else S
                p = point(St)
                if op == ADV_STORE:
                    self._copy(buf[t - base], p)
                v = self.dpass(dev, a_d, model, p, p, True, False, G, G, no_cross,
                               self._batch_of(sampler, dev.n, t))
                counts[0] += 1
                v += self._reg_value(rd_d, pr_d, p, tmp)
                if t > tlast:
                    tlast = t
                    if t % stride == 0:
                        gvals[t // stride] = v
                    if t == 0:
                        g0 = v
                    if _diverged(sampler, solver, v, g0):
                        return finish(t, v)
                self._ew(self.V.reg_grad_add, c * d, rd_d, pr_d, _flat(p), _flat(G), d)
                self._step(solver, gamma, beta, St, G)
                if op != INIT_ADJ:
                    t += 1
            if op == INIT_ADJ:
                self._copy(WT, Sn[0] if arg == 1 else S[0])
                fval = self.dpass(vdev, self._empty, model, WT, WT, True, False, P, P,
                                  no_cross)
                counts[2] += 1
                self._copy(GF, P)
                self._fill(Q, 0.0)
        return finish(-1, fval)

    def _step(self, solver, gamma, beta, St, G):
        A = _flat(St[0])
        B = _flat(St[1]) if St.shape[0] > 1 else A
        self._ew(self.V.solver_step, _size(A), solver, gamma, beta, A, B, _flat(G))

    def forward_mode(self, train, a, da, model, hyper, rdiag, prior, val, solver, gamma, beta,
                     W0, T, gvals, h, nchunks, sampler):
        """Forward mode (``kernels.unroll.forward_mode``) on the device."""
        cuda = self.cuda
        dev, vdev = self._device(train), self._device(val)
        c, d = W0.shape
        m = h.shape[0]
        ns = 1 if solver == GD else 2
        tick = self._progress()
        a_d, rd_d = cuda.to_device(a), cuda.to_device(rdiag)
        pr_d = cuda.to_device(np.ascontiguousarray(prior).reshape(-1))
        S = cuda.to_device(np.broadcast_to(W0, (ns, c, d)).copy())
        Zh = np.zeros((max(m, 1), ns, c, d))
        if hyper == INIT:
            for k in range(c):
                for j in range(d):
                    Zh[k * d + j, :, k, j] = 1.0
        Z = cuda.to_device(Zh)
        del Zh
        G, HV, tmp = (cuda.device_array((c, d)) for _ in range(3))
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
                vj = self.dpass(dev, a_d, model, p, Zp, j == 0, m > 0, G, HV, no_cross,
                                rows)
                if j == 0:
                    v = vj
                if m == 0:
                    break
                counts[1] += 1
                self._ew(self.V.reg_hvp_add, c * d, rd_d, _flat(Zp), _flat(HV), d)
                if hyper == SAMPLE_WEIGHTS:
                    wj = inv_n if rows is None else (
                        (np.searchsorted(rows_h, j, "right") - np.searchsorted(rows_h, j))
                        / rows_h.shape[0])
                    coef = float(da[j]) * wj
                    if coef != 0.0:
                        self._row_grad_axpy(dev, model, p, j, coef, HV)
                elif hyper in (FEATURE_L2, L2, BIASED_L2):
                    self._ew(self.V.tangent_extra, c * d, hyper, j, d, rd_d, _flat(p),
                             _flat(HV))
                self._step(solver, gamma, beta, Z[j], HV)
            counts[0] += 1
            v += self._reg_value(rd_d, pr_d, p, tmp)
            if t % stride == 0:
                gvals[t // stride] = v
            if t == 0:
                g0 = v
            if _diverged(sampler, solver, v, g0):
                tick(t, True)
                return S[0].copy_to_host(), v, t, counts, G.copy_to_host()
            self._ew(self.V.reg_grad_add, c * d, rd_d, pr_d, _flat(p), _flat(G), d)
            self._step(solver, gamma, beta, S, G)
        WT = cuda.device_array((c, d))
        self._copy(WT, S[0])
        fval = self.dpass(vdev, self._empty, model, WT, WT, True, False, G, G, no_cross)
        counts[2] += 1
        for j in range(m):
            h[j] += self._dot(G, Z[j, 0])
        tick(T, True)
        return WT.copy_to_host(), fval, -1, counts, G.copy_to_host()

    def implicit_solve(self, train, a, model, rdiag, W, b, v0, solver, K, tol, eta, alpha,
                       beta, nchunks):
        """``kernels.implicit.implicit_solve`` on the device: the same steps,
        the scalars (dots, norms) read back to the host for the control flow."""
        cuda = self.cuda
        dev = self._device(train)
        c, d = W.shape
        tick = self._progress()
        a_d, rd_d = cuda.to_device(a), cuda.to_device(rdiag)
        Wd, bd = cuda.to_device(W), cuda.to_device(b)
        v, vprev = cuda.to_device(v0), cuda.to_device(v0)
        Hx = cuda.device_array((c, d))
        r = cuda.to_device(np.zeros((c, d)))
        p = cuda.to_device(np.zeros((c, d)))
        nxt = cuda.device_array((c, d))
        n = c * d
        thresh = tol * math.sqrt(self._dot(bd, bd))
        r0 = rr = 0.0
        it = 0
        fv, fr, fp, fH = _flat(v), _flat(r), _flat(p), _flat(Hx)
        while True:
            tick(it)
            x = p if (solver == CG and it > 0) else v
            self.dpass(dev, a_d, model, Wd, x, False, True, Hx, Hx, self._empty)
            self._ew(self.V.reg_hvp_add, n, rd_d, _flat(x), fH, d)
            if solver == CG and it > 0:
                pHp = self._dot(p, Hx)
                if not pHp > 0.0:
                    return v.copy_to_host(), math.sqrt(rr), it, NO_CURVATURE
                step = rr / pHp
                self._ew(self.V.lincomb, n, fv, 1.0, fv, step, fp)
                self._ew(self.V.lincomb, n, fr, 1.0, fr, -step, fH)
                rn = math.sqrt(self._dot(r, r))
            else:
                self._ew(self.V.lincomb, n, fr, 1.0, _flat(bd), -1.0, fH)
                rn = math.sqrt(self._dot(r, r))
                if it == 0:
                    r0 = rn
                    if solver == CG:
                        self._copy(p, r)
            if not math.isfinite(rn) or rn > 1e6 * r0:
                return v.copy_to_host(), rn, it, DIVERGED
            if rn <= thresh:
                return v.copy_to_host(), rn, it, CONVERGED
            if it == K:
                return v.copy_to_host(), rn, it, MAX_STEPS
            if solver == CG:
                if it > 0:
                    self._ew(self.V.lincomb, n, fp, rn * rn / rr, fp, 1.0, fr)
                rr = rn * rn
            elif solver == NEUMANN:
                self._ew(self.V.lincomb, n, fv, 1.0, fv, eta, fr)
            else:
                # nxt = v + α r + β (v − vprev); vprev = v; v = nxt
                self._ew(self.V.lincomb, n, _flat(nxt), 1.0 + beta, fv, alpha, fr)
                self._ew(self.V.lincomb, n, _flat(nxt), 1.0, _flat(nxt), -beta,
                         _flat(vprev))
                self._copy(vprev, v)
                self._copy(v, nxt)
            it += 1

    # ------------------------------------------- not on the GPU yet
    def meta_gradient(self, *args, **kw):
        raise not_on_gpu("meta-learning")

    def task_pass(self, *args, **kw):
        raise not_on_gpu("meta-learning")

    # ------------------------------------------- stochastic estimators
    def stocbio_run(self, train, a, da, model, hyper, rdiag, prior, val, W0, D, gamma, S,
                    eta, hsizes, df, dg, replace, seed, h, nchunks):
        """``kernels.stochastic.stocbio_run`` on the device: the same steps on
        the same batches (drawn on the device from the same seed)."""
        cuda = self.cuda
        dev, vdev = self._device(train), self._device(val)
        c, d = W0.shape
        size = c * d
        Q = hsizes.shape[0]
        a_d, da_d, rd_d = cuda.to_device(a), cuda.to_device(da), cuda.to_device(rdiag)
        pr_d = cuda.to_device(np.ascontiguousarray(prior).reshape(-1))
        W = cuda.to_device(W0)
        G, tmp = cuda.device_array((c, d)), cuda.device_array((c, d))
        R, acc, VQ = (cuda.to_device(np.zeros((c, d))) for _ in range(3))
        hd = cuda.to_device(h)
        sw = hyper == SAMPLE_WEIGHTS
        cross = cuda.device_array(dg if sw else 0)
        counts = np.zeros(2, dtype=np.int64)
        fval = math.nan
        g0 = 0.0
        for st in range(D + Q + 2):
            if st == D:                 # v_0 = r_Q on D_F
                rows = self._draw(seed, STREAM_F, 0, vdev.n, df, replace)
                fval = self.dpass(vdev, self._empty, model, W, W, True, False, R, R,
                                  self._empty, rows)
                counts[1] += df
                self._copy(acc, R)
                continue
            if st < D:
                stream, step, b, V, grad = STREAM_INNER, st, S, W, True
            elif st <= D + Q:
                i = Q - (st - D - 1)
                stream, step, b, V, grad = STREAM_HESS, i, int(hsizes[i - 1]), R, False
            else:
                self._ew(self.V.lincomb, size, _flat(VQ), eta, _flat(acc), 0.0, _flat(acc))
                if not sw:
                    self._cross_add(hyper, rd_d, rdiag, da_d, W, VQ, self._empty, -1.0, hd)
                    break
                stream, step, b, V, grad = STREAM_G, 0, dg, VQ, False
            rows = self._draw(seed, stream, step, dev.n, b, replace)
            v = self.dpass(dev, a_d, model, W, V, grad, not grad, G, G,
                           cross if st > D + Q else self._empty, rows)
            counts[0] += b
            if st < D:
                v += self._reg_value(rd_d, pr_d, W, tmp)
                if st == 0:
                    g0 = v
                if _diverged(True, GD, v, g0):
                    return W.copy_to_host(), fval, st, counts
                self._ew(self.V.reg_grad_add, size, rd_d, pr_d, _flat(W), _flat(G), d)
                self._step(GD, gamma, 0.0, W.reshape((1, c, d)), G)
            elif st <= D + Q:
                self._ew(self.V.reg_hvp_add, size, rd_d, _flat(R), _flat(G), d)
                self._ew(self.V.lincomb, size, _flat(R), 1.0, _flat(R), -eta, _flat(G))
                self._ew(self.V.lincomb, size, _flat(acc), 1.0, _flat(acc), 1.0, _flat(R))
            else:
                self._cross_add(hyper, rd_d, rdiag, da_d, W, VQ, cross, -1.0, hd, rows)
        hd.copy_to_host(h)
        return W.copy_to_host(), fval, -1, counts

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
            return all(math.isfinite(self._dot(A, zero)) for A in arrays)

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
            self.dpass(vdev, self._empty, model, Wd, Wd, True, False, P, P, self._empty,
                       rows)
            counts[1] += b_val
            for sp in range(4):     # the passes of kernels.stochastic.fsla_run, in order
                if init and sp < 3:
                    if sp == 0:     # v_0 = β_0 ∂_ωF
                        self._ew(self.V.lincomb, size, _flat(Vd), beta, _flat(P), 0.0,
                                 _flat(P))
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
                    self._ew(self.V.reg_grad_add, size, rd_d, pr_d, _flat(Wd), _flat(G1), d)
                elif sp == 2:
                    self._ew(self.V.reg_hvp_add, size, rd_d, _flat(Vd), _flat(HV), d)
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
