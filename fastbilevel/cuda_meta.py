"""Multi-task problems (MAML, ANIL) on the GPU: the backend of
``MultiTaskProblem(..., device="cuda")``.

The tasks' arrays go to the GPU once. A meta-gradient runs the meta-batch's
tasks in lockstep, one grid row of blocks per task (the task axis is the
kernels' settings axis, each task with its own rows ``X[i]``): every inner
GD step is one launch of the row kernel and one of the column kernel for
all tasks, the stored inner iterates (``reverse``) and the backward sweep's
vectors stay in device memory, and the host reads one loss per task per
step, for the same divergence test as the CPU. ``feature_map`` (ANIL)
embeds the tasks' rows once per call (X Pᵀ, in the data's dtype, as on the
CPU) and forms the head's gradients and ∂_P terms with small kernels of its
own (a thread per output entry).

The meta-batch and UFO's coins are drawn on the host by the CPU's
counter-based sampler (O(meta-batch) work), so a seed gives the same tasks
and the same coins on either device; with ``ufo`` only the tasks whose coin
fired run the backward sweep. The per-task estimates are averaged on the
host in meta-batch order, as on the CPU.

Results equal the CPU backend's to rounding (≤ 1e-10 relative in float64,
tested under Numba's simulator).
"""
import numpy as np

from . import config
from ._codes import META_FIRST_ORDER, META_REVERSE, META_UFO
from .cuda import _Device
from .kernels.sampling import STREAM_COIN, STREAM_TASKS, coin, draw_rows


class CUDAMetaBackend(_Device):
    """``meta_gradient`` and ``task_pass`` of
    :class:`~fastbilevel.backend.CPUBackend` on an NVIDIA GPU, for one
    :class:`~fastbilevel.MultiTaskProblem`'s tasks (uploaded at
    construction). Host arrays in, host arrays out."""

    def __init__(self, problem):
        super().__init__()
        cuda = self.cuda
        host = (problem.X, problem.y, problem.X_test, problem.y_test)
        self._check_memory(sum(a.nbytes for a in host), "the tasks' arrays",
                           "use fewer tasks or device='cpu'")
        self._tasks = [(a, cuda.to_device(a)) for a in host]

    def _dev(self, A):
        """The device copy of one of the problem's task arrays (others, e.g.
        from a copied problem, are uploaded)."""
        for host, dev in self._tasks:
            if host is A:
                return dev
        return self.cuda.to_device(np.ascontiguousarray(A))

    # ------------------------------------------------------------- passes
    def _tpass(self, X, xt, y, yt, model, reg, P, W, V, want_hvp, G, HV, Cp):
        """One pass over the rows of B tasks (device arrays): task s has rows
        X[xt[s]] and labels y[yt[s]], head or weights W[s] and direction V[s]
        (B, c, m). Without an embedding (P None) the rows' features are the
        model's: G = ∇L(W) + reg·W and, with ``want_hvp``, HV = ∇²L(W)V +
        reg·V. With P (k, d): the rows are embedded by P, and Cp (B, k, d)
        gets ∂_P L (or, with ``want_hvp``, ∂_P ⟨∇_W L, V⟩) as
        ``kernels.meta.task_pass``. Returns each task's L + (reg/2)‖W‖²
        (host (B,))."""
        VK = self.V
        B, c, m = W.shape
        rows, d = X.shape[1], X.shape[2]
        cap, CG, CH, LV, E0 = self._grown(
            ("task", B, c), lambda cap: ((B, cap, c), (B, cap, c), (B, cap), (B, 0)), rows)
        if P is None:
            Wm, Vm, Gm, Hm = W, V, G, HV
        else:
            _, Wm, Vm, Gm, Hm = self._grown(("embed", B, c, d),
                                            lambda cap: ((B, c, d),) * 4, 1)
            self._ew(VK.task_u, B * c * d, W, V, P, want_hvp, Wm, Vm)
        K = self._k(c)
        K.rows_tasks[(self._blocks(rows), B), self.tpb](X, xt, self._noidx, y, yt, model, Wm,
                                                       Vm, True, want_hvp, 1.0 / rows, CG, CH,
                                                       LV, E0)
        K.cols_tasks[(-(-d // self.tpb), B), self.tpb](X, xt, self._noidx, CG, CH, True,
                                                      want_hvp, Gm, Hm)
        if P is None:
            self._lc(G, 1.0, G, reg, W)
            if want_hvp:
                self._lc(HV, 1.0, HV, reg, V)
        else:
            self._ew(VK.task_project, B * c * m, Gm, Hm, P, W, V, float(reg), want_hvp, G, HV)
            self._ew(VK.task_cross, B * P.shape[0] * d, Gm, Hm, W, V, want_hvp, Cp)
        vals = self._sums(LV, rows, cap)
        return vals + 0.5 * reg * self._dots(W, W)

    def _descend(self, F, ft, y, yt, model, reg, phi, r, alpha, buf):
        """r GD steps on every task's phi (B, c, m) in place over its rows
        F[ft[s]] (features, or their embedding), storing φ_0..φ_{r−1} in
        ``buf`` (r, B, c, m) if given. False as soon as a task's train loss
        is not finite or rises above its start (``kernels.meta``'s test)."""
        G = self.cuda.device_array(phi.shape)
        g0 = None
        for j in range(r):
            if buf is not None:
                self._copy(buf[j], phi)
            v = self._tpass(F, ft, y, yt, model, reg, None, phi, phi, False, G, G, None)
            if g0 is None:
                g0 = v
            with np.errstate(invalid="ignore"):
                bad = ~np.isfinite(v) | (v - g0 > config.DIVERGENCE_GROWTH_GD * np.abs(g0))
            if bad.any():
                return False
            self._lc(phi, 1.0, phi, -alpha, G)
        return True

    # --------------------------------------------------------- backend API
    def meta_gradient(self, Xtr, ytr, Xte, yte, model, reg, theta, P, r, alpha, method, q,
                      meta_batch, seed, grad, gradP):
        """``kernels.meta.meta_gradient`` on the device (same arguments and
        returns; ``ctrl`` is not needed: Ctrl-C stops the host loop)."""
        cuda = self.cuda
        N, s = ytr.shape
        c, m = theta.shape
        B = meta_batch
        feat = P.shape[0] > 0
        if B == N:
            tasks = np.arange(N, dtype=np.int64)
        else:
            tasks = draw_rows(seed, STREAM_TASKS, 0, N, B, False, np.arange(N, dtype=np.int64),
                              np.empty(B, np.int64))
        fired = np.zeros(B, dtype=np.bool_)
        if method == META_UFO:
            for k in range(B):
                fired[k] = coin(seed, STREAM_COIN, k, q)
        d = Xtr.shape[2]
        per = c * max(m, d)
        self._check_memory(
            8 * B * ((r if method == META_REVERSE else 0) * c * m + 12 * per
                     + (3 * c + 1) * max(s, Xte.shape[1]) + (2 * P.size + s * P.shape[0])),
            f"a meta-gradient over {B} tasks of {r} inner steps",
            "use a smaller meta_batch, or method='recompute' (no stored inner iterates)")
        Xtr_d, ytr_d, Xte_d, yte_d = (self._dev(a) for a in (Xtr, ytr, Xte, yte))
        t_d = cuda.to_device(tasks)
        P_d = cuda.to_device(P) if feat else None
        if feat:                       # the train rows' embedding, in the data's dtype
            k = P.shape[0]
            F = cuda.device_array((B, s, k), dtype=Xtr.dtype)
            self._ew(self.V.embed_tasks, B * s * k, Xtr_d, t_d, P_d, F)
            f_d = cuda.to_device(np.arange(B, dtype=np.int64))
        else:
            F, f_d = Xtr_d, t_d
        start = np.broadcast_to(theta, (B, c, m))
        phi = cuda.to_device(np.ascontiguousarray(start))
        buf = cuda.device_array((r, B, c, m)) if method == META_REVERSE else None
        steps = B * r

        def fail():                    # a task's inner loop diverged
            grad[:] = np.nan
            return np.nan, tasks, int(fired.sum()), steps
        if not self._descend(F, f_d, ytr_d, t_d, model, reg, phi, r, alpha, buf):
            return fail()
        fo = cuda.device_array((B, c, m))
        foP = cuda.device_array((B,) + P.shape)       # (B, 0, 0) without an embedding
        vals = self._tpass(Xte_d, t_d, yte_d, t_d, model, 0.0, P_d, phi, phi, False, fo, fo,
                           foP)
        outs = fo.copy_to_host()
        outsP = foP.copy_to_host()
        # the exact estimate's backward sweep: every task, or (ufo) those whose coin fired
        sub = (np.arange(0) if method == META_FIRST_ORDER else
               np.flatnonzero(fired) if method == META_UFO else np.arange(B))
        if sub.size:
            nb = sub.size
            whole = nb == B
            ts_d = t_d if whole else cuda.to_device(tasks[sub])
            if feat:                   # the embedded rows are by batch position
                fs_d = f_d if whole else cuda.to_device(sub.astype(np.int64))
            else:
                fs_d = ts_d
            b = cuda.to_device(np.ascontiguousarray(outs[sub]))
            bP = cuda.to_device(np.ascontiguousarray(outsP[sub]))
            HV, G = cuda.device_array((nb, c, m)), cuda.device_array((nb, c, m))
            CP = cuda.device_array(bP.shape)
            p = cuda.device_array((nb, c, m))
            sub_start = np.ascontiguousarray(start[:nb])
            for j in range(r - 1, -1, -1):
                if buf is not None:
                    p = buf[j]
                else:                  # recompute φ_j from θ
                    p.copy_to_device(sub_start)
                    if not self._descend(F, fs_d, ytr_d, ts_d, model, reg, p, j, alpha, None):
                        return fail()
                    steps += nb * j
                self._tpass(Xtr_d, ts_d, ytr_d, ts_d, model, reg, P_d, p, b, True, G, HV, CP)
                if feat:
                    self._lc(bP, 1.0, bP, -alpha, CP)
                self._lc(b, 1.0, b, -alpha, HV)
            exact, exactP = b.copy_to_host(), bP.copy_to_host()
            if method == META_UFO:
                outs[sub] = outs[sub] + (exact - outs[sub]) / q
                outsP[sub] = outsP[sub] + (exactP - outsP[sub]) / q
            else:
                outs[sub], outsP[sub] = exact, exactP
        grad[:] = 0.0
        gradP[:] = 0.0
        total = 0.0
        for k in range(B):             # in meta-batch order, as on the CPU
            grad += outs[k]
            gradP += outsP[k]
            total += vals[k]
        grad /= B
        gradP /= B
        return total / B, tasks, int(fired.sum()), steps

    def task_pass(self, X, y, model, reg, P, W, V, want_hvp, G, HV, C):
        """``kernels.meta.task_pass`` on the device for one task's rows X
        (s, d) (host arrays in and out; the rows are uploaded per call)."""
        cuda = self.cuda
        one = cuda.to_device(np.zeros(1, dtype=np.int64))
        dW = cuda.to_device(W[None])
        dV = dW if V is W else cuda.to_device(V[None])
        dG, dH = cuda.device_array(dW.shape), cuda.device_array(dW.shape)
        dC = cuda.device_array((1,) + P.shape)
        val = self._tpass(cuda.to_device(np.ascontiguousarray(X)[None]), one,
                          cuda.to_device(np.ascontiguousarray(y, dtype=np.float64)[None]), one,
                          model, reg, cuda.to_device(P), dW, dV, want_hvp, dG, dH, dC)
        G[:] = dG.copy_to_host()[0]
        if want_hvp:
            HV[:] = dH.copy_to_host()[0]
        C[:] = dC.copy_to_host()[0]
        return float(val[0])
