"""The data a kernel reads, bundled in one named tuple.

``Data(X, indptr, indices, data, y)``: a dense design as ``Data(X, None,
None, None, y)`` with X (n, d) C-contiguous float32/float64, or a CSR
design as ``Data(None, indptr, indices, data, y)`` with a canonical CSR
triple (indptr int64, indices int32); ``y`` the float64 labels (±1 for
logistic, class indices for multinomial). Numba passes a named tuple as one
argument and types each field, so the format is still chosen at typing
time (``indptr`` is None: dense) and each format and dtype is its own
compiled specialization. ``BilevelProblem.train`` and ``.val`` are these.
"""
from collections import namedtuple

Data = namedtuple("Data", ["X", "indptr", "indices", "data", "y"])


def dense_data(X, y):
    """A dense design (n, d) and its labels."""
    return Data(X, None, None, None, y)


def csr_data(indptr, indices, data, y):
    """A canonical CSR design and its labels."""
    return Data(None, indptr, indices, data, y)
