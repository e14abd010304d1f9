"""Compiled kernels. Every function here takes arrays, scalars and
:class:`Data` tuples only and can be called from user ``@njit`` code (see
the README for an example).

Data: ``Data(X, indptr, indices, data, y)``, either ``Data(X, None, None,
None, y)`` with X dense (n, d) C-contiguous, or ``Data(None, indptr,
indices, data, y)``, a canonical CSR triple (``indptr`` int64, ``indices``
int32); ``BilevelProblem.train`` and ``.val`` are these. Each layout and
dtype is its own compiled specialization. Weights W have shape (c, d).
"""
from .._codes import (ADV, ADV_STORE, AGD, BIASED_L2, FEATURE_L2, FINISH, GD, HEAVY_BALL,
                      INIT, INIT_ADJ, L2, LINEAR, LOGISTIC, MULTINOMIAL, RESTORE, REV_BUF,
                      REV_STATE, SAMPLE_WEIGHTS, SNAP, STOPPED)
from ._rowmath import sigmoid, sigmoid_prime, softplus
from .data import Data, csr_data, dense_data
from .batched import implicit_solve_multi, oracle_pass_multi, run_schedule_multi
from .implicit import implicit_solve
from .oracles import (cross_add, oracle_pass, oracle_pass_rows, oracle_pass_serial,
                      reg_grad_add, reg_hvp_add, reg_value)
from .unroll import forward_mode, run_schedule

__all__ = [
    "Data", "dense_data", "csr_data",
    "LINEAR", "LOGISTIC", "MULTINOMIAL",
    "SAMPLE_WEIGHTS", "FEATURE_L2", "L2", "BIASED_L2", "INIT",
    "sigmoid", "sigmoid_prime", "softplus",
    "oracle_pass", "oracle_pass_rows", "oracle_pass_serial", "reg_value", "reg_grad_add",
    "reg_hvp_add", "cross_add",
    "GD", "HEAVY_BALL", "AGD",
    "ADV", "ADV_STORE", "SNAP", "RESTORE", "INIT_ADJ", "REV_STATE", "REV_BUF", "FINISH",
    "STOPPED",
    "run_schedule", "forward_mode", "implicit_solve",
    "oracle_pass_multi", "run_schedule_multi", "implicit_solve_multi",
]
