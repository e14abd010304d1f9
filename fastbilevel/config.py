"""Numeric policy shared by every kernel.

``FASTMATH`` allows reassociation (so dot products vectorize) and FMA
contraction, but never ``nnan``/``ninf``: kernels rely on IEEE NaN/inf
semantics for divergence detection and saturated sigmoids.
"""

FASTMATH = frozenset({"reassoc", "contract", "nsz"})

# Forward mode and stored trajectories refuse to allocate more than this.
MAX_TRAJECTORY_BYTES = 8 * 1024**3

# The inner loop is declared divergent when g(w_t) is not finite or exceeds
# g(w_0) by more than: DIVERGENCE_GROWTH_GD · |g(w_0)| for full-batch gd
# (gd with a step below 2/L never raises g: the tolerance is for rounding);
# DIVERGENCE_GROWTH · |g(w_0)| for heavy_ball and agd (momentum may raise g
# for a while: agd's bound is 2·g(w_0)); DIVERGENCE_GROWTH_MINIBATCH ·
# (|g(w_0)| + 1) for minibatch steps (g_t is then the loss of step t's
# batch, which varies by itself). Read when the kernels are compiled. A step
# size at or above the stability bound is refused before the loop runs
# (``check_step``).
DIVERGENCE_GROWTH_GD = 1e-8
DIVERGENCE_GROWTH = 1.0
DIVERGENCE_GROWTH_MINIBATCH = 1e6

# g(w_t) values kept in ``stats["inner_values"]``: at most this many (every
# ⌈T / MAX_INNER_VALUES⌉-th step beyond it).
MAX_INNER_VALUES = 100_000

# Row chunks per parallel pass; 0 means one per Numba thread.
NCHUNKS = 0

# Chunks for the stochastic methods (minibatch SGD, stocBiO, FSLA, meta-
# learning) when NCHUNKS is 0: a constant, so that their results are
# bit-identical for a given seed whatever the thread count.
STOCHASTIC_NCHUNKS = 16


def _reset():
    """Restore the defaults (used by tests that patch this module)."""
    global FASTMATH, MAX_TRAJECTORY_BYTES, NCHUNKS, STOCHASTIC_NCHUNKS, MAX_INNER_VALUES
    FASTMATH = frozenset({"reassoc", "contract", "nsz"})
    MAX_INNER_VALUES = 100_000
    MAX_TRAJECTORY_BYTES = 8 * 1024**3
    NCHUNKS = 0
    STOCHASTIC_NCHUNKS = 16
