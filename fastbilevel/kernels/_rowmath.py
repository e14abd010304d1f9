"""Per-row loss derivatives, evaluated in the numerically stable way.

Model codes and hyperparameter-map codes are plain integers so that kernels
take scalars only. ``z`` is the margin (c = 1) or the logit vector (c > 1).
"""
import math

from numba import njit

from .._codes import (BIASED_L2, FEATURE_L2, INIT, L2, LINEAR, LOGISTIC,  # noqa: F401
                      MULTINOMIAL, SAMPLE_WEIGHTS)

# No fast-math here: these loops over c are short, and with reassociation
# LLVM vectorized the same softmax differently in different inlined copies
# of a chunk kernel (one copy per position in a thread's share of a parallel
# loop), so a chunk's result depended on which thread ran it.


@njit(cache=True)
def sigmoid(t):
    """σ(t) without overflow for any finite t."""
    if t >= 0.0:
        return 1.0 / (1.0 + math.exp(-t))
    e = math.exp(t)
    return e / (1.0 + e)


@njit(cache=True)
def softplus(t):
    """log(1 + e^t) without overflow: max(t, 0) + log1p(e^{-|t|})."""
    return max(t, 0.0) + math.log1p(math.exp(-abs(t)))


@njit(cache=True)
def sigmoid_prime(t):
    """σ(t)σ(-t) = e^{-|t|} / (1 + e^{-|t|})², finite and accurate for |t| large."""
    e = math.exp(-abs(t))
    q = 1.0 + e
    return e / (q * q)


@njit(cache=True, inline="always")
def row_derivs(model, yi, z, u, want_h, dl, hu):
    """Loss ℓ(z; y) of one row; fills dl = ℓ'(z) and, if want_h, hu = ℓ''(z) u.

    linear: ½(z−y)²; logistic (y = ±1): log(1+e^{−yz});
    multinomial (y = class index): logsumexp(z) − z_y.
    """
    if model == LINEAR:
        r = z[0] - yi
        dl[0] = r
        if want_h:
            hu[0] = u[0]
        return 0.5 * r * r
    elif model == LOGISTIC:
        t = -yi * z[0]
        dl[0] = -yi * sigmoid(t)
        if want_h:
            hu[0] = sigmoid_prime(z[0]) * u[0]
        return softplus(t)
    else:
        c = z.shape[0]
        zmax = z[0]
        for k in range(1, c):
            if z[k] > zmax:
                zmax = z[k]
        s = 0.0
        for k in range(c):
            e = math.exp(z[k] - zmax)
            dl[k] = e
            s += e
        inv = 1.0 / s
        ky = int(yi)
        pu = 0.0
        for k in range(c):
            dl[k] *= inv
            pu += dl[k] * u[k]
        if want_h:
            for k in range(c):
                hu[k] = dl[k] * (u[k] - pu)
        loss = zmax + math.log(s) - z[ky]
        dl[ky] -= 1.0
        return loss


@njit(cache=True, inline="always")
def derivs1(model, yi, z, u, want_h):
    """``row_derivs`` of a single-output model on scalars: (ℓ, ℓ', ℓ''u)."""
    if model == LINEAR:
        r = z - yi
        li = 0.5 * r * r
        return li, r, u if want_h else 0.0
    t = -yi * z
    return softplus(t), -yi * sigmoid(t), sigmoid_prime(z) * u if want_h else 0.0


@njit(cache=True, inline="always")
def weight_of(a, i, inv_n):
    """a_i / n, where an empty ``a`` means all weights are one."""
    if a.shape[0] == 0:
        return inv_n
    return a[i] * inv_n


@njit(cache=True, inline="always")
def row_coefs(model, yi, z, u, wi, inv_n, want_grad, want_hvp, cg, ch, cross, i,
              dl, hu):
    """From the dots z = W x_i, u = V x_i of one row: returns the weighted
    loss wi·ℓ(z) and fills the accumulation coefficients cg = wi·ℓ'(z) (if
    want_grad), ch = wi·ℓ''(z)u (if want_hvp) and cross[i] = ℓ'(z)·u/n (if
    cross has rows: the J·v term, with or without the H·v one). ``dl``,
    ``hu`` are scratch of length c."""
    c = z.shape[0]
    li = row_derivs(model, yi, z, u, want_hvp, dl, hu)
    if want_grad:
        for k in range(c):
            cg[k] = wi * dl[k]
    if want_hvp:
        for k in range(c):
            ch[k] = wi * hu[k]
    if cross.shape[0] > 0:
        s = 0.0
        for k in range(c):
            s += dl[k] * u[k]
        cross[i] = s * inv_n
    return wi * li
