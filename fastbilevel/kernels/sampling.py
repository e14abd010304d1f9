"""Seeded minibatch sampling inside compiled code.

A counter-based generator: every draw is a pure function of
(seed, stream, step, position), hashed with the SplitMix64 finalizer, so

- the same seed gives bit-identical batches in every run, in any thread
  count, and whatever was drawn before (no hidden generator state);
- a reverse sweep, or a recompute/checkpoint schedule, regenerates the batch
  of step t on demand instead of storing it;
- independent streams (inner steps, Hessian batches, D_F, D_G, tasks,
  Bernoulli coins) come from the ``stream`` argument.

Batches are drawn with replacement (b independent uniform rows) or without
(a partial Fisher–Yates shuffle of a scratch permutation that is undone
afterwards, so the scratch array is the identity between draws). Rows come
back sorted, so a pass over the batch walks X forwards.
"""
import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2^-53

# stream ids used by the package (any int64 works)
STREAM_INNER = 1      # inner SGD steps S_t
STREAM_HESS = 2       # Hessian batches B_j of stocBiO
STREAM_F = 3          # outer batch D_F
STREAM_G = 4          # cross-term batch D_G
STREAM_TASKS = 5      # meta-batches of tasks
STREAM_COIN = 6       # UFO-BLO Bernoulli coins
STREAM_TRUNC = 7      # random truncation of a Neumann series (TTSA, BSA)
STREAM_LIN = 8        # linear-system SGD steps (AmIGO)
STREAM_CORR = 9      # recursive-correction batches (VRBO)


@njit(cache=True)
def mix64(x):
    """SplitMix64 finalizer: a bijective avalanche hash of a uint64."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@njit(cache=True)
def key(seed, stream, step):
    """The uint64 key of draw (seed, stream, step); all three are int64."""
    k = mix64(np.uint64(seed) + _GOLDEN)
    k = mix64(k ^ (np.uint64(stream) * _GOLDEN))
    return mix64(k + np.uint64(step) * _M1)


@njit(cache=True)
def uniform01(k, i):
    """The i-th uniform number in [0, 1) under key k (53 random bits)."""
    r = mix64(k + np.uint64(i) * _GOLDEN)
    return float(r >> _S11) * _INV53


@njit(cache=True)
def randint(k, i, n):
    """The i-th uniform integer in [0, n) under key k."""
    j = int(uniform01(k, i) * n)
    return j if j < n else n - 1


@njit(cache=True)
def fill_rows(k, n, b, replace, perm, out):
    """Fill out[:b] with the minibatch drawn under key k (in draw order, not
    sorted): b independent uniform rows (``replace``), or the first b of a
    partial Fisher–Yates shuffle of ``perm`` (scratch of length n holding
    0..n−1, restored before returning; then b ≤ n)."""
    if replace:
        for i in range(b):
            out[i] = randint(k, i, n)
    else:
        for i in range(b):
            j = i + randint(k, i, n - i)
            out[i] = perm[j]
            perm[j] = perm[i]
            perm[i] = out[i]
        for i in range(b - 1, -1, -1):       # undo the swaps: perm is 0..n−1 again
            j = i + randint(k, i, n - i)
            perm[i] = perm[j]
            perm[j] = out[i]


@njit(cache=True)
def draw_rows(seed, stream, step, n, b, replace, perm, out):
    """Fill out[:b] with a uniform minibatch of b of the rows 0..n−1, sorted.

    ``perm`` is scratch of length n holding 0..n−1 (it is restored before
    returning); it is only touched when ``replace`` is False (then b ≤ n)."""
    fill_rows(key(seed, stream, step), n, b, replace, perm, out)
    out[:b].sort()
    return out[:b]


@njit(cache=True)
def identity_perm(n):
    return np.arange(n, dtype=np.int64)


@njit(cache=True)
def coin(seed, stream, step, q):
    """A Bernoulli(q) draw for (seed, stream, step)."""
    return uniform01(key(seed, stream, step), 0) < q


@njit(cache=True)
def derive(seed, k):
    """An independent seed for outer iteration k of a driver seeded ``seed``."""
    return np.int64(mix64(np.uint64(seed) * _M2 + np.uint64(k) + _GOLDEN) >> np.uint64(1))


def batch(seed, stream, step, n, b, replace=False):
    """The batch ``draw_rows`` gives for (seed, stream, step), as a new array
    (for Python callers: references, tests)."""
    return draw_rows(seed, stream, step, n, b, replace, np.arange(n, dtype=np.int64),
                     np.empty(b, dtype=np.int64)).copy()
