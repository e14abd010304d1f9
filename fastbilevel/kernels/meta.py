"""Multi-task ``init`` problems (MAML on linear/logistic/softmax tasks; thesis
Alg. 6-7, UFO-BLO Sec. 2.4): every task i has its own train set
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
from .control import stop_requested
from .dense import rows_dense
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


@njit(cache=True)
def task_gradient(Xtr, ytr, Xte, yte, model, reg, theta, r, alpha, method, fire, q, out,
                  ctrl):
    """One task's meta-gradient estimate into ``out``; returns (test loss at
    φ_r, train steps run). ``fire``: the UFO coin (exact correction taken).
    When the inner GD diverges (its train loss is not finite or rises above
    its start: GD with a stable step never raises it) or the host asks to
    stop (``ctrl``), returns NaN at once."""
    c, d = theta.shape
    phi = theta.copy()
    G = np.empty((c, d))
    HV = np.empty((c, d))
    buf = np.empty((r if method == REVERSE else 0, c, d))
    g0 = 0.0
    for j in range(r):
        if stop_requested(ctrl):
            return math.nan, j
        if method == REVERSE:
            buf[j] = phi
        v = task_grad(Xtr, ytr, model, reg, phi, G)
        if j == 0:
            g0 = v
        if not math.isfinite(v) or v - g0 > _GROWTH_GD * abs(g0):
            return math.nan, j
        phi -= alpha * G
    steps = r
    fo = np.empty((c, d))
    val = task_grad(Xte, yte, model, 0.0, phi, fo)
    if method == FIRST_ORDER or (method == UFO and not fire):
        out[:] = fo
        return val, steps
    b = fo.copy()
    for j in range(r - 1, -1, -1):
        if method == REVERSE:
            p = buf[j]
        else:                        # recompute φ_j from θ
            if stop_requested(ctrl):
                return math.nan, steps
            phi[:] = theta
            for _ in range(j):
                if stop_requested(ctrl):
                    return math.nan, steps
                task_grad(Xtr, ytr, model, reg, phi, G)
                phi -= alpha * G
            steps += j
            p = phi
        task_hvp(Xtr, ytr, model, reg, p, b, HV)
        b -= alpha * HV
    if method == UFO:
        out[:] = fo + (b - fo) / q
    else:
        out[:] = b
    return val, steps


@njit(cache=True, parallel=True, nogil=True)
def meta_gradient(Xtr, ytr, Xte, yte, model, reg, theta, r, alpha, method, q,
                  meta_batch, seed, grad, ctrl):
    """Mean over a meta-batch of the per-task estimates, into ``grad`` (c, d).

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
    vals = np.empty(meta_batch)
    steps = np.zeros(meta_batch, dtype=np.int64)
    fired = np.zeros(meta_batch, dtype=np.bool_)
    if method == UFO:
        for k in range(meta_batch):
            fired[k] = coin(seed, STREAM_COIN, k, q)
    for k in prange(meta_batch):
        i = tasks[k]
        vals[k], steps[k] = task_gradient(Xtr[i], ytr[i], Xte[i], yte[i], model, reg, theta,
                                          r, alpha, method, fired[k], q, outs[k], ctrl)
    grad[:] = 0.0
    for k in range(meta_batch):
        grad += outs[k]
    grad /= meta_batch
    return _mean_in_order(vals), tasks, fired.sum(), steps.sum()


@njit(cache=True)
def _mean_in_order(v):
    """Mean in index order (serial: inline in a parallel kernel it would be a
    reduction ordered by the threads)."""
    s = 0.0
    for k in range(v.shape[0]):
        s += v[k]
    return s / v.shape[0]
