"""Plain-NumPy reverse-mode hypergradient: what people write today.

Two BLAS calls per step (Z = X W, then Xᵀ R), iterates kept in a list. It is
the baseline ``fastbilevel bench`` times against the fused kernels, and it
handles every model × map × format the package does (scipy.sparse for CSR).
"""
import numpy as np
import scipy.sparse as sp


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
    X, indptr, indices, vals = data
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


def _outer_value(model, Z, y):
    if model == "linear":
        return 0.5 * np.mean((Z[:, 0] - y) ** 2)
    if model == "logistic":
        return np.mean(np.logaddexp(0.0, -y * Z[:, 0]))
    m = Z.max(axis=1)
    lse = m + np.log(np.sum(np.exp(Z - m[:, None]), axis=1))
    return np.mean(lse - Z[np.arange(len(y)), y.astype(np.int64)])
