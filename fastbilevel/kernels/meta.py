"""Multi-task problems: MAML (``init``: thesis Alg. 6-7, UFO-BLO Sec. 2.4) and
ANIL (``feature_map``: thesis Alg. 8, Prop. 10) on linear/logistic/softmax
tasks. Every task i has its own train set
(Xtr[i], ytr[i]) and test set (Xte[i], yte[i]) in one batched dense layout;
the inner loop is r steps of GD on the task's train loss (+ (C/2)‖φ‖²) from
φ_0 = θ, the outer loss the task's test loss at φ_r. Tasks of a meta-batch
run in parallel, one task per iteration of the parallel loop, each with its
own buffers; the per-task results are averaged in meta-batch order, so the
result does not depend on the thread count.
"""
import math

import numpy as np
from numba import njit, prange

from .. import config
from ._arrays import assign, prange_only
from .control import stop_requested
from .dense import _FM, rows_dense
from .sampling import STREAM_COIN, STREAM_TASKS, coin, draw_rows

from .._codes import META_FIRST_ORDER as FIRST_ORDER  # FO-BLO, Alg. 2: ∇L_out(φ_r)
from .._codes import META_RECOMPUTE as RECOMPUTE      # UFO-BLO Alg. 5: O(1) memory, O(r²)
from .._codes import META_REVERSE as REVERSE          # UFO-BLO Alg. 4: store φ_0..φ_{r−1}
from .._codes import META_UFO as UFO                  # UFO-BLO Alg. 3: FO + (ξ/q)(exact − FO)

_GROWTH_GD = config.DIVERGENCE_GROWTH_GD


@njit(cache=True)
def task_grad(X, y, model, reg, W, G):
    """G = ∇L(W) + reg·W on one task's rows; returns L(W) + (reg/2)‖W‖²."""
    G[:] = 0.0
    v = rows_dense(X, 0, y.shape[0], y, np.empty(0), model, W, W, True, False,
                   1.0 / y.shape[0], G, G, np.empty(0))
    G += reg * W
    return v + 0.5 * reg * np.sum(W * W)


@njit(cache=True)
def task_hvp(X, y, model, reg, W, V, HV):
    """HV = ∇²L(W) V + reg·V on one task's rows."""
    HV[:] = 0.0
    rows_dense(X, 0, y.shape[0], y, np.empty(0), model, W, V, False, True,
               1.0 / y.shape[0], HV, HV, np.empty(0))
    HV += reg * V


@njit(cache=True, fastmath=_FM)
def embed(X, P, E):
    """E = X Pᵀ: the k embedded features of each row (E is (s, k))."""
    k, d = P.shape
    for i in range(X.shape[0]):
        for a in range(k):
            acc = 0.0
            for j in range(d):
                acc += X[i, j] * P[a, j]
            E[i, a] = acc


@njit(cache=True)
def task_pass(X, y, model, reg, P, W, V, want_hvp, G, HV, C):
    """One pass over a task's rows X (s, d) for the head W (c, k) on the
    embedding P (k, d) — the model's weights are U = W P (c, d):

    - G = ∇_W L(W, P) + reg·W (c, k);
    - without ``want_hvp``: C = ∇_P L(W, P) = Wᵀ Gx (k, d);
    - with ``want_hvp``: HV = ∇²_W L · V + reg·V (c, k) and
      C = ∂_P ⟨∇_W L(W, P), V⟩ = Vᵀ Gx + Wᵀ Hx (k, d),

    where Gx = ∇_U L and Hx = ∇²_U L · (V P) (c, d) are the gradient and the
    Hessian-vector product of the plain model at U, both from one read of X.
    Returns L(W, P) + (reg/2)‖W‖²; L is the mean row loss."""
    c, k = W.shape
    d = P.shape[1]
    U = np.zeros((c, d))
    VP = np.zeros((c, d))
    for r in range(c):
        for a in range(k):
            w = W[r, a]
            v = V[r, a] if want_hvp else 0.0
            for j in range(d):
                U[r, j] += w * P[a, j]
                VP[r, j] += v * P[a, j]
    Gx = np.zeros((c, d))
    Hx = np.zeros((c, d))
    val = rows_dense(X, 0, y.shape[0], y, np.empty(0), model, U, VP, True, want_hvp,
                     1.0 / y.shape[0], Gx, Hx, np.empty(0))
    for r in range(c):
        for a in range(k):
            g = 0.0
            h = 0.0
            for j in range(d):
                g += Gx[r, j] * P[a, j]
                h += Hx[r, j] * P[a, j]
            G[r, a] = g + reg * W[r, a]
            if want_hvp:
                HV[r, a] = h + reg * V[r, a]
    C[:] = 0.0
    for a in range(k):
        for r in range(c):
            w = W[r, a]
            v = V[r, a] if want_hvp else 0.0
            for j in range(d):
                C[a, j] += w * (Hx[r, j] if want_hvp else Gx[r, j])
                if want_hvp:
                    C[a, j] += v * Gx[r, j]
    return val + 0.5 * reg * np.sum(W * W)


@njit(cache=True, inline="always")
def _descend(F, y, model, reg, phi, r, alpha, buf, store, ctrl):
    """r GD steps on phi in place over the task's rows F (its features, or
    their embedding), storing φ_0..φ_{r−1} in buf if ``store``. Returns the
    steps done: fewer than r when the host asks to stop (``ctrl``) or the
    train loss is not finite or rises above its start (GD with a stable
    step never raises it)."""
    G = np.empty_like(phi)
    g0 = 0.0
    for j in range(r):
        if stop_requested(ctrl):
            return j
        if store:
            assign(buf[j], phi)
        v = task_grad(F, y, model, reg, phi, G)
        if j == 0:
            g0 = v
        if not math.isfinite(v) or v - g0 > _GROWTH_GD * abs(g0):
            return j
        phi -= alpha * G
    return r


@njit(cache=True)
def task_gradient(Xtr, ytr, Xte, yte, model, reg, theta, P, r, alpha, method, fire, q, out,
                  outP, ctrl):
    """One task's meta-gradient estimate: w.r.t. the start θ (c, m) into
    ``out`` and, when an embedding P (k, d) is given (k > 0: ANIL, m = k),
    w.r.t. P into ``outP``. Returns (test loss at φ_r, train steps run).
    ``fire``: the UFO coin (exact correction taken). When the inner GD
    diverges or the host asks to stop, returns NaN at once.

    The inner loop runs on the rows F: the train features (MAML) or their
    embedding X Pᵀ, held in the data's dtype (ANIL, thesis Alg. 8; by its
    Prop. 10 the backward sweep adds −α ∂_P⟨∇_w L_S(φ_j, P), b_{j+1}⟩ to
    ∇_P L_D(φ_r, P))."""
    feat = P.shape[0] > 0
    F = Xtr
    if feat:
        F = np.empty((ytr.shape[0], P.shape[0]), dtype=Xtr.dtype)
        embed(Xtr, P, F)
    c, m = theta.shape
    phi = theta.copy()
    buf = np.empty((r if method == REVERSE else 0, c, m))
    steps = _descend(F, ytr, model, reg, phi, r, alpha, buf, method == REVERSE, ctrl)
    if steps < r:
        return math.nan, steps
    fo = np.empty((c, m))
    if feat:
        val = task_pass(Xte, yte, model, 0.0, P, phi, phi, False, fo, fo, outP)
    else:
        val = task_grad(Xte, yte, model, 0.0, phi, fo)
    if method == FIRST_ORDER or (method == UFO and not fire):
        assign(out, fo)
        return val, steps
    foP = outP.copy()
    b = fo.copy()
    HV = np.empty((c, m))
    G = np.empty((c, m))
    CP = np.empty_like(outP)
    for j in range(r - 1, -1, -1):
        if method == REVERSE:
            p = buf[j]
        else:                        # recompute φ_j from θ
            assign(phi, theta)
            if _descend(F, ytr, model, reg, phi, j, alpha, buf, False, ctrl) < j \
                    or stop_requested(ctrl):
                return math.nan, steps
            steps += j
            p = phi
        if feat:
            task_pass(Xtr, ytr, model, reg, P, p, b, True, G, HV, CP)
            outP -= alpha * CP
        else:
            task_hvp(Xtr, ytr, model, reg, p, b, HV)
        b -= alpha * HV
    if method == UFO:
        assign(out, fo + (b - fo) / q)
        assign(outP, foP + (outP - foP) / q)
    else:
        assign(out, b)
    return val, steps


@njit(cache=True, parallel=prange_only(), nogil=True)
def meta_gradient(Xtr, ytr, Xte, yte, model, reg, theta, P, r, alpha, method, q,
                  meta_batch, seed, grad, gradP, ctrl):
    """Mean over a meta-batch of the per-task estimates, into ``grad`` (c, m)
    and, for ANIL (P of shape (k, d), k > 0), ``gradP`` (k, d); MAML passes
    P and gradP of shape (0, 0).

    The meta-batch is ``meta_batch`` tasks drawn without replacement for
    (seed, STREAM_TASKS), or all tasks in order if meta_batch equals their
    number; UFO's coin for the k-th task of the batch is drawn for
    (seed, STREAM_COIN, k). Returns (mean test loss, tasks, fired coins,
    train steps run in all); the mean is NaN when a task's inner loop
    diverged or the host set ``ctrl[0]`` (``kernels.control``)."""
    N = ytr.shape[0]
    c, d = theta.shape
    if meta_batch == N:
        tasks = np.arange(N, dtype=np.int64)
    else:
        tasks = draw_rows(seed, STREAM_TASKS, 0, N, meta_batch, False,
                          np.arange(N, dtype=np.int64), np.empty(meta_batch, np.int64))
    outs = np.empty((meta_batch, c, d))
    outsP = np.zeros((meta_batch,) + P.shape)
    vals = np.empty(meta_batch)
    steps = np.zeros(meta_batch, dtype=np.int64)
    fired = np.zeros(meta_batch, dtype=np.bool_)
    if method == UFO:
        for k in range(meta_batch):
            fired[k] = coin(seed, STREAM_COIN, k, q)
    for k in prange(meta_batch):
        i = tasks[k]
        vals[k], steps[k] = task_gradient(Xtr[i], ytr[i], Xte[i], yte[i], model, reg, theta,
                                          P, r, alpha, method, fired[k], q, outs[k], outsP[k],
                                          ctrl)
    grad[:] = 0.0
    gradP[:] = 0.0
    for k in range(meta_batch):
        grad += outs[k]
        gradP += outsP[k]
    grad /= meta_batch
    gradP /= meta_batch
    return _mean_in_order(vals), tasks, fired.sum(), steps.sum()


@njit(cache=True)
def _mean_in_order(v):
    """Mean in index order (serial: inline in a parallel kernel it would be a
    reduction ordered by the threads)."""
    s = 0.0
    for k in range(v.shape[0]):
        s += v[k]
    return s / v.shape[0]
