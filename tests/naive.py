"""Slow, obviously correct NumPy references (no code shared with the kernels).

Weights are in the public layout: (d,) for c = 1 (handled as (d, 1)), (d, c)
for multinomial.
"""
import numpy as np
from scipy.special import expit, logsumexp, softmax


class Spec:
    """A problem as plain dense arrays, built from a BilevelProblem's inputs."""

    def __init__(self, model, hyper, X, y, X_val, y_val, reg=None, c=1):
        self.model, self.hyper, self.reg, self.c = model, hyper, reg, c
        dense = lambda A: np.asarray(A.toarray() if hasattr(A, "toarray") else A, dtype=np.float64)
        self.X, self.Xv = dense(X), dense(X_val)
        y, y_val = np.asarray(y, float), np.asarray(y_val, float)
        if model == "logistic":  # each label vector in {0, 1} means {-1, +1}
            y = 2 * y - 1 if set(np.unique(y)) <= {0.0, 1.0} else y
            y_val = 2 * y_val - 1 if set(np.unique(y_val)) <= {0.0, 1.0} else y_val
        self.y, self.yv = y, y_val
        self.n, self.d = self.X.shape

    def W(self, w):
        return np.asarray(w, float).reshape(self.d, self.c)


def row_losses(model, Z, y):
    if model == "linear":
        return 0.5 * (Z[:, 0] - y) ** 2
    if model == "logistic":
        return np.logaddexp(0.0, -y * Z[:, 0])
    return logsumexp(Z, axis=1) - Z[np.arange(len(y)), y.astype(int)]


def row_dlosses(model, Z, y):
    if model == "linear":
        return Z - y[:, None]
    if model == "logistic":
        return (-y * expit(-y * Z[:, 0]))[:, None]
    P = softmax(Z, axis=1)
    P[np.arange(len(y)), y.astype(int)] -= 1.0
    return P


def weights(s, lam):
    return expit(lam) if s.hyper == "sample_weights" else np.ones(s.n)


def reg_value(s, W, lam):
    h = s.hyper
    if h in ("sample_weights", "init"):
        return 0.5 * s.reg * np.sum(W ** 2)
    if h == "feature_l2":
        return 0.5 * np.sum(np.exp(lam)[:, None] * W ** 2)
    if h == "l2":
        return 0.5 * np.exp(float(lam)) * np.sum(W ** 2)
    return 0.5 * s.reg * np.sum((W - s.W(lam)) ** 2)


def reg_grad(s, W, lam):
    h = s.hyper
    if h in ("sample_weights", "init"):
        return s.reg * W
    if h == "feature_l2":
        return np.exp(lam)[:, None] * W
    if h == "l2":
        return np.exp(float(lam)) * W
    return s.reg * (W - s.W(lam))


def inner_value(s, w, lam):
    W = s.W(w)
    return np.mean(weights(s, lam) * row_losses(s.model, s.X @ W, s.y)) + reg_value(s, W, lam)


def inner_grad(s, w, lam):
    W = s.W(w)
    D = row_dlosses(s.model, s.X @ W, s.y) * weights(s, lam)[:, None]
    return (s.X.T @ D / s.n + reg_grad(s, W, lam)).reshape(np.shape(w))


def outer_value(s, w):
    return np.mean(row_losses(s.model, s.Xv @ s.W(w), s.yv))


def gd(s, lam, T, gamma, w0=None, solver="gd", beta=0.0):
    """w_T (y_T for agd) of the inner solver (w0 = λ for ``init``)."""
    if s.hyper == "init":
        w = np.array(lam, float)
    else:
        w = np.zeros((s.d,) if s.c == 1 else (s.d, s.c)) if w0 is None else np.array(w0, float)
    prev = w.copy()        # heavy ball: w_{-1} = w_0;  agd: y_0 = s_0 = w_0
    for _ in range(T):
        if solver == "gd":
            w = w - gamma * inner_grad(s, w, lam)
        elif solver == "heavy_ball":
            w, prev = w - gamma * inner_grad(s, w, lam) + beta * (w - prev), w
        else:  # agd: w holds y_t, prev holds s_t
            y_new = prev - gamma * inner_grad(s, prev, lam)
            prev = y_new + beta * (y_new - w)
            w = y_new
    return w


def phi(s, lam, T, gamma, solver="gd", beta=0.0):
    """Φ(λ) = f(w_T(λ))."""
    return outer_value(s, gd(s, lam, T, gamma, solver=solver, beta=beta))


def central_diff(fun, x, eps=1e-6):
    """Central finite differences of a scalar function of an array."""
    x = np.array(x, dtype=float)
    g = np.zeros_like(x)
    flat, gf = x.reshape(-1), g.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        fp = fun(x.reshape(np.shape(x)))
        flat[k] = old - eps
        fm = fun(x.reshape(np.shape(x)))
        flat[k] = old
        gf[k] = (fp - fm) / (2 * eps)
    return g


def rel_err(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def batch_grad(s, w, lam, rows):
    """∇_w of the minibatch inner loss (1/|B|) Σ_{i∈B} a_i ℓ_i + r (rows may repeat)."""
    W = s.W(w)
    Xb = s.X[rows]
    D = row_dlosses(s.model, Xb @ W, s.y[rows]) * weights(s, lam)[rows][:, None]
    return (Xb.T @ D / len(rows) + reg_grad(s, W, lam)).reshape(np.shape(w))


def sgd(s, lam, batches, gamma):
    """w_T of minibatch SGD from 0 (λ for ``init``) over the given batches."""
    w = np.array(lam, float) if s.hyper == "init" else \
        np.zeros((s.d,) if s.c == 1 else (s.d, s.c))
    for rows in batches:
        w = w - gamma * batch_grad(s, w, lam, rows)
    return w


def batch_outer_grad(s, w, rows):
    W = s.W(w)
    Xb = s.Xv[rows]
    return (Xb.T @ row_dlosses(s.model, Xb @ W, s.yv[rows]) / len(rows)).reshape(np.shape(w))


def batch_hvp(s, w, lam, rows, v, eps=1e-6):
    """H_B v by central differences of the minibatch gradient."""
    return (batch_grad(s, w + eps * v, lam, rows) - batch_grad(s, w - eps * v, lam, rows)) / (2 * eps)


def batch_cross(s, w, lam, rows, v):
    """J_B v = ∇_λ ⟨∇_w g_B(w, λ), v⟩ by central differences over λ."""
    return central_diff(lambda l: float(np.sum(batch_grad(s, w, l, rows) * v)), lam)
