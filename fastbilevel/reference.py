"""Plain-NumPy reverse-mode hypergradient: what people write today.

Two BLAS calls per step (Z = X W, then Xᵀ R), iterates kept in a list. It is
the baseline ``fastbilevel bench`` times against the fused kernels, and it
handles every model × map × format the package does (scipy.sparse for CSR).
"""
import numpy as np
import scipy.sparse as sp

from .kernels.sampling import STREAM_F, STREAM_G, STREAM_HESS, STREAM_INNER, batch


def _dloss(model, Z, y, U=None):
    """ℓ'(Z) row-wise and, given U, ℓ''(Z)U (Z, U of shape (n, c))."""
    if model == "linear":
        return Z - y[:, None], U
    if model == "logistic":
        t = -y * Z[:, 0]
        s = np.exp(-np.logaddexp(0.0, -t))          # σ(t)
        d = (-y * s)[:, None]
        if U is None:
            return d, None
        q = np.exp(-np.logaddexp(0.0, Z[:, 0]) - np.logaddexp(0.0, -Z[:, 0]))
        return d, q[:, None] * U
    P = Z - Z.max(axis=1, keepdims=True)
    np.exp(P, out=P)
    P /= P.sum(axis=1, keepdims=True)
    HU = None if U is None else P * (U - np.sum(P * U, axis=1, keepdims=True))
    P[np.arange(len(y)), y.astype(np.int64)] -= 1.0
    return P, HU


def _matrix(data, shape):
    X, indptr, indices, vals, _ = data
    if X is None:
        return sp.csr_matrix((vals, indices, indptr), shape=shape)
    return X


def numpy_reverse(problem, lam, steps, step_size, w0=None, dtype=np.float64):
    """(grad, value, w_T) of reverse-mode differentiation through ``steps`` GD
    steps, in NumPy/SciPy with stored iterates.

    ``dtype`` is the dtype of the iterates and adjoints: float64 (default)
    for an accurate reference, or the data's dtype, as a float32 PyTorch or
    JAX user would run it (float64 iterates would make every BLAS call copy
    float32 X to float64, which no one benchmarking float32 would do).
    """
    p = problem
    hp = p._lam_in(lam)
    X = _matrix(p.train, (p.n, p.d))
    Xv = _matrix(p.val, (p.m, p.d))
    dt = np.dtype(dtype)
    y, yv = p.y.astype(dt), p.y_val.astype(dt)
    a = (hp.a if hp.a.shape[0] else np.ones(p.n)).astype(dt)
    rd = hp.rdiag[:, None].astype(dt)
    P = hp.prior.T.astype(dt) if hp.prior.shape[0] else dt.type(0)
    if p.hyper == "init":
        W = hp.W0.T.astype(dt)
    elif w0 is None:
        W = np.zeros((p.d, p.c), dtype=dt)
    else:
        W = p._w_in("w0", w0).T.astype(dt)
    g = dt.type(step_size)
    traj = []
    for _ in range(steps):
        traj.append(W)
        D, _ = _dloss(p.model, X @ W, y)
        W = W - g * (X.T @ (a[:, None] * D) / p.n + rd * (W - P))
    Zv = Xv @ W
    D, _ = _dloss(p.model, Zv, yv)
    alpha = Xv.T @ D / p.m
    value = _outer_value(p.model, Zv, yv)
    h = np.zeros(p.dim_lam)
    c = p.c
    for Wt in reversed(traj):
        ZU = X @ np.hstack([Wt, alpha])              # one BLAS call for z and u
        D, HU = _dloss(p.model, ZU[:, :c], y, ZU[:, c:])
        HV = X.T @ (a[:, None] * HU) / p.n + rd * alpha
        if p.hyper == "sample_weights":
            h -= g * hp.da * np.sum(D * ZU[:, c:], axis=1) / p.n
        elif p.hyper == "feature_l2":
            h -= g * hp.rdiag * np.sum(Wt * alpha, axis=1)
        elif p.hyper == "l2":
            h -= g * hp.rdiag[0] * np.sum(Wt * alpha)
        elif p.hyper == "biased_l2":
            h += g * (rd * alpha).T.ravel()
        alpha = alpha - g * HV
    if p.hyper == "init":
        h += alpha.T.ravel()
    return p._lam_out(h), float(value), p._w_out(W.T.astype(np.float64))


def _dloss_settings(model, Z, y, U=None):
    """:func:`_dloss` for B settings at once: Z, U of shape (n, B, c)."""
    if model == "linear":
        return Z - y[:, None, None], U
    if model == "logistic":
        t = -y[:, None] * Z[..., 0]
        d = (-y[:, None] * np.exp(-np.logaddexp(0.0, -t)))[..., None]
        if U is None:
            return d, None
        q = np.exp(-np.logaddexp(0.0, Z[..., 0]) - np.logaddexp(0.0, -Z[..., 0]))
        return d, q[..., None] * U
    P = Z - Z.max(axis=2, keepdims=True)
    np.exp(P, out=P)
    P /= P.sum(axis=2, keepdims=True)
    HU = None if U is None else P * (U - np.sum(P * U, axis=2, keepdims=True))
    P[np.arange(len(y)), :, y.astype(np.int64)] -= 1.0
    return P, HU


def numpy_reverse_sweep(problem, lams, steps, step_size):
    """(grads (B, ·), values (B,)) of ``numpy_reverse`` for B settings of
    ``l2``, ``feature_l2`` or ``sample_weights`` at once, the way a NumPy
    user batches a sweep: the B weight vectors are the columns of one
    (d, B·c) panel, so each pass is one matrix product with B·c (2·B·c in
    the reverse sweep) columns. Shared step size, float64 iterates."""
    p = problem
    if p.hyper not in ("l2", "feature_l2", "sample_weights"):
        raise ValueError("numpy_reverse_sweep covers hyper='l2', 'feature_l2' and "
                         f"'sample_weights', not {p.hyper!r}")
    B, n, d, c = len(lams), p.n, p.d, p.c
    hps = [p._lam_in(lam) for lam in lams]
    X = _matrix(p.train, (n, d))
    Xv = _matrix(p.val, (p.m, d))
    a = np.stack([hp.a for hp in hps]).T[:, :, None] if p.hyper == "sample_weights" \
        else np.ones((n, 1, 1))
    rd = np.stack([hp.rdiag for hp in hps]).T[:, :, None]          # (d, B, 1)
    g = float(step_size)
    W = np.zeros((d, B, c))
    traj = []
    for _ in range(steps):
        traj.append(W)
        D, _ = _dloss_settings(p.model, (X @ W.reshape(d, B * c)).reshape(n, B, c), p.y)
        W = W - g * ((X.T @ (a * D).reshape(n, B * c)).reshape(d, B, c) / n + rd * W)
    Zv = (Xv @ W.reshape(d, B * c)).reshape(p.m, B, c)
    D, _ = _dloss_settings(p.model, Zv, p.y_val)
    alpha = (Xv.T @ D.reshape(p.m, B * c)).reshape(d, B, c) / p.m
    values = np.array([_outer_value(p.model, Zv[:, b], p.y_val) for b in range(B)])
    H = np.zeros((B,) + ((n,) if p.hyper == "sample_weights" else
                         (d,) if p.hyper == "feature_l2" else ()))
    for Wt in reversed(traj):
        ZU = (X @ np.concatenate([Wt, alpha], axis=2).reshape(d, 2 * B * c)).reshape(n, B, 2 * c)
        D, HU = _dloss_settings(p.model, ZU[..., :c], p.y, ZU[..., c:])
        HV = (X.T @ (a * HU).reshape(n, B * c)).reshape(d, B, c) / n + rd * alpha
        if p.hyper == "sample_weights":
            da = np.stack([hp.da for hp in hps])
            H -= g * da * np.sum(D * ZU[..., c:], axis=2).T / n
        elif p.hyper == "feature_l2":
            H -= g * rd[:, :, 0].T * np.sum(Wt * alpha, axis=2).T
        else:
            H -= g * rd[0, :, 0] * np.sum(Wt * alpha, axis=(0, 2))
        alpha = alpha - g * HV
    return H, values


def _outer_value(model, Z, y):
    if model == "linear":
        return 0.5 * np.mean((Z[:, 0] - y) ** 2)
    if model == "logistic":
        return np.mean(np.logaddexp(0.0, -y * Z[:, 0]))
    m = Z.max(axis=1)
    lse = m + np.log(np.sum(np.exp(Z - m[:, None]), axis=1))
    return np.mean(lse - Z[np.arange(len(y)), y.astype(np.int64)])


class _Batched:
    """Minibatch oracles in NumPy/SciPy: rows gathered with fancy indexing
    (a copy of the batch, as ``X[idx]`` in PyTorch or JAX), two BLAS calls
    per gradient, Hessian-vector or cross product. W is (d, c)."""

    def __init__(self, problem):
        p = self.p = problem
        self.X = _matrix(p.train, (p.n, p.d))
        self.Xv = _matrix(p.val, (p.m, p.d))

    def params(self, lam):
        hp = self.p._lam_in(lam)
        a = hp.a if hp.a.shape[0] else np.ones(self.p.n)
        P = hp.prior.T if hp.prior.shape[0] else 0.0
        return a, hp.da, hp.rdiag[:, None], P

    def grad(self, prm, W, rows):
        a, _, rd, P = prm
        Xb = self.X[rows]
        D, _ = _dloss(self.p.model, Xb @ W, self.p.y[rows])
        return Xb.T @ (a[rows, None] * D) / len(rows) + rd * (W - P)

    def hvp(self, prm, W, V, rows):
        a, _, rd, _ = prm
        Xb = self.X[rows]
        ZU = Xb @ np.hstack([W, V])
        c = W.shape[1]
        _, HU = _dloss(self.p.model, ZU[:, :c], self.p.y[rows], ZU[:, c:])
        return Xb.T @ (a[rows, None] * HU) / len(rows) + rd * V

    def outer_grad(self, W, rows):
        Xb = self.Xv[rows]
        D, _ = _dloss(self.p.model, Xb @ W, self.p.y_val[rows])
        return Xb.T @ D / len(rows)

    def cross(self, prm, W, V, rows):
        """J(W)V (kernel order of λ) on the batch (sample_weights) or exactly."""
        p = self.p
        _, da, rd, _ = prm
        h = np.zeros(p.dim_lam)
        if p.hyper == "sample_weights":
            Xb = self.X[rows]
            ZU = Xb @ np.hstack([W, V])
            c = W.shape[1]
            D, _ = _dloss(p.model, ZU[:, :c], p.y[rows])
            np.add.at(h, rows, da[rows] * np.sum(D * ZU[:, c:], axis=1) / len(rows))
        elif p.hyper == "feature_l2":
            h += rd[:, 0] * np.sum(W * V, axis=1)
        elif p.hyper == "l2":
            h += rd[0, 0] * np.sum(W * V)
        elif p.hyper == "biased_l2":
            h -= (rd * V).T.ravel()
        return h


def numpy_stocbio(problem, lam, steps, step_size, Q, eta, batch_size, hessian_sizes,
                  outer_batch, cross_batch, seed=0, w0=None, replace=False):
    """stocBiO (thesis Alg. 4-5) in NumPy/SciPy on the same batches as
    :func:`fastbilevel.stocbio`: returns (grad, w)."""
    p = problem
    B = _Batched(p)
    prm = B.params(lam)
    W = np.zeros((p.d, p.c)) if w0 is None else p._w_in("w0", w0).T.copy()
    for t in range(steps):
        W = W - step_size * B.grad(prm, W, batch(seed, STREAM_INNER, t, p.n, batch_size, replace))
    r = B.outer_grad(W, batch(seed, STREAM_F, 0, p.m, outer_batch, replace))
    acc = r.copy()
    for i in range(Q, 0, -1):
        r = r - eta * B.hvp(prm, W, r, batch(seed, STREAM_HESS, i, p.n, hessian_sizes[i - 1],
                                              replace))
        acc += r
    h = -B.cross(prm, W, eta * acc, batch(seed, STREAM_G, 0, p.n, cross_batch, replace))
    return p._lam_out(h), p._w_out(W.T)


def numpy_fsla(problem, lam0, iters, delta, c_tau, c_beta, c_eta, batch_size, outer_batch,
               cross_batch, seed=0, replace=False):
    """FSLA (Alg. 1 of Li, Gu & Huang) in NumPy/SciPy on the same batches as
    :func:`fastbilevel.fsla` (no bounds): returns (λ, w, v) after ``iters``."""
    p = problem
    B = _Batched(p)
    lam = p._map.to_kernel_order(p, lam0)
    pub = lambda lk: p._lam_out(lk)
    W = np.zeros((p.d, p.c))
    est = lambda prm, W, V, st: -B.cross(prm, W, V, batch(seed, STREAM_G, st, p.n, cross_batch,
                                                           replace))
    prm = B.params(pub(lam))
    V = delta * c_beta * B.outer_grad(W, batch(seed, STREAM_F, 0, p.m, outer_batch, replace))
    dm = est(prm, W, V, 0)
    for k in range(iters):
        a = delta / np.sqrt(k + 1)
        st = k + 1
        e_old = est(prm, W, V, st)
        lam = lam - a * dm
        prm = B.params(pub(lam))
        P = B.outer_grad(W, batch(seed, STREAM_F, st, p.m, outer_batch, replace))
        G = B.grad(prm, W, batch(seed, STREAM_INNER, st, p.n, batch_size, replace))
        HV = B.hvp(prm, W, V, batch(seed, STREAM_HESS, st, p.n, batch_size, replace))
        W, V = W - c_tau * a * G, V + c_beta * a * (P - HV)
        dm = est(prm, W, V, st) + (1 - min(1.0, c_eta * a)) * (dm - e_old)
    return pub(lam), p._w_out(W.T), p._w_out(V.T)


def _loss_values(model, Z, y):
    """Row losses ℓ(Z; y) (Z of shape (n, c))."""
    if model == "linear":
        return 0.5 * (Z[:, 0] - y) ** 2
    if model == "logistic":
        return np.logaddexp(0.0, -y * Z[:, 0])
    m = Z.max(axis=1)
    return m + np.log(np.exp(Z - m[:, None]).sum(axis=1)) - Z[np.arange(len(y)), y.astype(np.int64)]


def numpy_meta_reverse(problem, theta, steps, step_size):
    """(grad, value) of the exact meta-gradient of a MultiTaskProblem over all
    tasks, by reverse mode with stored inner iterates, in NumPy: MAML
    (``init``) or ANIL (``feature_map``: the inner loop on X Pᵀ; ∂/∂P by
    the thesis' Prop. 10). The baseline the meta-learning bench times."""
    p = problem
    th = np.asarray(theta, dtype=np.float64)
    feat = p.hyper == "feature_map"
    if feat:
        P, W0 = th[:, :p.d], th[:, p.d:]
    else:
        P, W0 = None, th.reshape(p.d, p.c)
    model, reg, a = p.model, p.reg, step_size
    gW, gP, vals = np.zeros_like(W0), None if P is None else np.zeros_like(P), []
    for i in range(p.n_tasks):
        X, y = p.X[i].astype(np.float64), p.y[i]
        Xt, yt = p.X_test[i].astype(np.float64), p.y_test[i]
        E, Et = (X @ P.T, Xt @ P.T) if feat else (X, Xt)
        s, t = len(y), len(yt)
        Ws = [W0]
        for _ in range(steps):
            W = Ws[-1]
            Ws.append(W - a * (E.T @ _dloss(model, E @ W, y)[0] / s + reg * W))
        W = Ws.pop()
        R = _dloss(model, Et @ W, yt)[0] / t
        vals.append(np.mean(_loss_values(model, Et @ W, yt)))
        b = Et.T @ R
        if feat:
            gP += W @ R.T @ Xt
        for W in reversed(Ws):
            Z = E @ W
            D, HB = _dloss(model, Z, y, E @ b)
            if feat:    # ∂_P⟨∇_W L_S, b⟩ = b Dᵀ X / s + W (ℓ''·(E b))ᵀ X / s
                gP -= a * (b @ D.T @ X + W @ HB.T @ X) / s
            b = b - a * (E.T @ HB / s + reg * b)
        gW += b
    n = p.n_tasks
    grad = np.hstack([gP / n, gW / n]) if feat else (gW / n).reshape(np.shape(theta))
    return grad, float(np.mean(vals))
