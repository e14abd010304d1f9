"""Numeric policy shared by every kernel.

``FASTMATH`` allows reassociation (so dot products vectorize) and FMA
contraction, but never ``nnan``/``ninf``: kernels rely on IEEE NaN/inf
semantics for divergence detection and saturated sigmoids.
"""

FASTMATH = frozenset({"reassoc", "contract", "nsz"})

# Forward mode and stored trajectories refuse to allocate more than this.
MAX_TRAJECTORY_BYTES = 8 * 1024**3

# The inner loop is declared divergent when g(w_t) is not finite or exceeds
# g(w_0) by more than DIVERGENCE_GROWTH · (|g(w_0)| + 1).
DIVERGENCE_GROWTH = 1e6

# Row chunks per parallel pass; 0 means one per Numba thread.
NCHUNKS = 0

# Chunks for the stochastic methods (minibatch SGD, stocBiO, FSLA, meta-
# learning) when NCHUNKS is 0: a constant, so that their results are
# bit-identical for a given seed whatever the thread count.
STOCHASTIC_NCHUNKS = 16


def _reset():
    """Restore the defaults (used by tests that patch this module)."""
    global FASTMATH, MAX_TRAJECTORY_BYTES, NCHUNKS, STOCHASTIC_NCHUNKS
    FASTMATH = frozenset({"reassoc", "contract", "nsz"})
    MAX_TRAJECTORY_BYTES = 8 * 1024**3
    NCHUNKS = 0
    STOCHASTIC_NCHUNKS = 16
