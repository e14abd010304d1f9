"""Compiled kernels. Every function here takes arrays and scalars only and can
be called from user ``@njit`` code (see the README for an example).

Data layout: ``(X, indptr, indices, data)``, either ``(X, None, None, None)``
with X dense (n, d) C-contiguous, or ``(None, indptr, indices, data)``, a
canonical CSR triple (``indptr`` int64, ``indices`` int32). Each layout and
dtype is its own compiled specialization. Weights W have shape (c, d).
"""
from ._rowmath import (BIASED_L2, FEATURE_L2, INIT, L2, LINEAR, LOGISTIC,
                       MULTINOMIAL, SAMPLE_WEIGHTS, sigmoid, sigmoid_prime,
                       softplus)
from .oracles import (cross_add, oracle_pass, reg_grad_add, reg_hvp_add,
                      reg_value)
from .unroll import (ADV, ADV_STORE, AGD, FINISH, GD, HEAVY_BALL, INIT_ADJ,
                     RESTORE, REV_BUF, REV_STATE, SNAP, forward_mode,
                     run_schedule)

__all__ = [
    "LINEAR", "LOGISTIC", "MULTINOMIAL",
    "SAMPLE_WEIGHTS", "FEATURE_L2", "L2", "BIASED_L2", "INIT",
    "sigmoid", "sigmoid_prime", "softplus",
    "oracle_pass", "reg_value", "reg_grad_add", "reg_hvp_add", "cross_add",
    "GD", "HEAVY_BALL", "AGD",
    "ADV", "ADV_STORE", "SNAP", "RESTORE", "INIT_ADJ", "REV_STATE", "REV_BUF", "FINISH",
    "run_schedule", "forward_mode",
]
