"""The hypergradient as a JAX or PyTorch user writes it, for
``fastbilevel bench --peers jax,torch``.

Reverse mode through T gradient-descent steps of the inner problem

    g(W, λ) = (1/n) Σ_i a_i ℓ(x_iᵀW; y_i) + ½ Σ_j r_j ‖W_j − P_j‖²,

from W₀, then the outer loss f(W_T) = (1/m) Σ_i ℓ(x_iᵀW_T; y_i) on the
validation rows, with λ → (a, r, P, W₀) as the problem's map (sample
weights a = σ(λ); ridge r = e^λ per feature or for all; prior P = λ; start
W₀ = λ; the others fixed at the problem's ``reg``):

* JAX: the T steps W ← W − γ ∇_W g (``jax.grad``) in ``lax.scan`` and f at
  the end, under ``jax.jit(jax.value_and_grad(...))``; CSR data as a
  ``jax.experimental.sparse.BCOO``. A float64 problem turns on
  ``jax_enable_x64`` (JAX computes in float32 otherwise).
* PyTorch: the same steps unrolled eagerly, each gradient taken with
  ``create_graph=True``, then ``torch.autograd.grad`` of f; CSR data as a
  sparse CSR tensor.

Both run in the problem's dtype on the CPU, with W laid out (d, c) as a
user of either would. Neither package is a dependency of fastbilevel: they
are imported when a peer is asked for, and :class:`PeerMissing` (an
ImportError naming the package) is raised where one is not installed.
"""
import importlib
import warnings

import numpy as np

PEERS = ("jax", "torch")


class PeerMissing(ImportError):
    """The peer package asked for is not installed."""


def _import(name):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise PeerMissing(f"peer {name!r} needs the package {name}, which is not installed "
                          f"here (pip install {name})") from e


def _host_data(problem):
    """(X, Xv): dense arrays, or scipy CSR matrices, in the problem's dtype."""
    import scipy.sparse as sp
    out = []
    for D, rows in ((problem.train, problem.n), (problem.val, problem.m)):
        if D.indptr is None:
            out.append(np.asarray(D.X))
        else:
            out.append(sp.csr_matrix((D.data, D.indices, D.indptr), shape=(rows, problem.d)))
    return out


def _labels(problem, y):
    """Labels as the loss takes them: class indices (int) for multinomial."""
    return y.astype(np.int64) if problem.model == "multinomial" else y.astype(problem.dtype)


def _map(problem, lm, sigmoid, exp, full):
    """(a, r, P, W0) of λ = ``lm`` in either framework: sample weights a
    (or 1), ridge r of shape (d, 1), prior P (or 0) and start W0 (or None:
    zeros), W laid out (d, c); ``sigmoid``, ``exp`` and ``full(shape, v)``
    are the framework's."""
    d, c = problem.d, problem.c
    reg = 0.0 if problem.reg is None else float(problem.reg)
    a, r, P, W0 = full((), 1.0), full((d, 1), reg), full((), 0.0), None
    if problem.hyper == "sample_weights":
        a = sigmoid(lm)
    elif problem.hyper == "l2":
        r = exp(lm) * full((d, 1), 1.0)
    elif problem.hyper == "feature_l2":
        r = exp(lm)[:, None]
    elif problem.hyper == "biased_l2":
        P = lm.reshape(d, c)
    else:
        W0 = lm.reshape(d, c)
    return a, r, P, W0


def hypergradient(peer, problem, lam, steps, step_size):
    """A zero-argument callable computing (grad, value) of reverse mode
    through ``steps`` GD steps of size ``step_size`` from W₀ = 0 (the map's
    W₀ for ``init``) with ``peer`` ("jax" or "torch"); grad has λ's shape."""
    if peer not in PEERS:
        raise ValueError(f"peer={peer!r} is not one of {PEERS}")
    return (_jax if peer == "jax" else _torch)(problem, lam, steps, step_size)


def _jax(problem, lam, steps, step_size):
    jax = _import("jax")
    if problem.dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from jax.experimental import sparse as jsparse

    p = problem
    dt = jnp.dtype(p.dtype)
    X, Xv = (jsparse.BCOO.from_scipy_sparse(A) if hasattr(A, "tocoo") else jnp.asarray(A)
             for A in _host_data(p))
    y, yv = jnp.asarray(_labels(p, p.y)), jnp.asarray(_labels(p, p.y_val))
    gamma = jnp.asarray(step_size, dt)

    def loss(Z, lab):
        if p.model == "linear":
            return 0.5 * (Z[:, 0] - lab) ** 2
        if p.model == "logistic":
            return jnp.logaddexp(0.0, -lab * Z[:, 0])
        return -jnp.take_along_axis(jax.nn.log_softmax(Z, axis=1), lab[:, None], axis=1)[:, 0]

    def params(lm):
        a, r, P, W0 = _map(p, lm, jax.nn.sigmoid, jnp.exp, lambda sh, v: jnp.full(sh, v, dt))
        return a, r, P, jnp.zeros((p.d, p.c), dt) if W0 is None else W0

    def inner(W, lm):
        a, r, P, _ = params(lm)
        return jnp.mean(a * loss(X @ W, y)) + 0.5 * jnp.sum(r * (W - P) ** 2)

    grad_w = jax.grad(inner)

    def outer(lm):
        def step(W, _):
            return W - gamma * grad_w(W, lm), None
        W, _ = jax.lax.scan(step, params(lm)[3], None, length=steps)
        return jnp.mean(loss(Xv @ W, yv))

    f = jax.jit(jax.value_and_grad(outer))
    lam_j = jnp.asarray(np.asarray(lam, dtype=p.dtype))

    def run():
        v, h = f(lam_j)
        h.block_until_ready()
        return np.asarray(h, dtype=np.float64), float(v)
    return run


def _torch(problem, lam, steps, step_size):
    torch = _import("torch")
    p = problem
    dt = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}[p.dtype]
    with warnings.catch_warnings():          # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        X, Xv = (torch.sparse_csr_tensor(torch.from_numpy(A.indptr.astype(np.int64)),
                                         torch.from_numpy(A.indices.astype(np.int64)),
                                         torch.from_numpy(A.data), A.shape,
                                         check_invariants=False)
                 if hasattr(A, "tocoo") else torch.from_numpy(A) for A in _host_data(p))
    y, yv = torch.from_numpy(_labels(p, p.y)), torch.from_numpy(_labels(p, p.y_val))

    def loss(Z, lab):
        if p.model == "linear":
            return 0.5 * (Z[:, 0] - lab) ** 2
        if p.model == "logistic":
            return torch.nn.functional.softplus(-lab * Z[:, 0])
        return torch.nn.functional.cross_entropy(Z, lab, reduction="none")

    def params(lm):
        a, r, P, W0 = _map(p, lm, torch.sigmoid, torch.exp,
                           lambda sh, v: torch.full(sh, v, dtype=dt))
        if W0 is None:           # the unrolled steps differentiate through W: track it
            W0 = torch.zeros((p.d, p.c), dtype=dt, requires_grad=True)
        return a, r, P, W0

    lam_t = torch.from_numpy(np.array(lam, dtype=p.dtype))

    def run():
        lm = lam_t.clone().requires_grad_(True)
        a, r, P, W = params(lm)
        for _ in range(steps):
            g = torch.mean(a * loss(X @ W, y)) + 0.5 * torch.sum(r * (W - P) ** 2)
            G, = torch.autograd.grad(g, W, create_graph=True)
            W = W - step_size * G
        F = torch.mean(loss(Xv @ W, yv))
        h, = torch.autograd.grad(F, lm)
        return h.detach().numpy().astype(np.float64), float(F.detach())
    return run
