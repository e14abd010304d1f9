"""The registries of models and hyperparameter maps: one entry per concept.

A model is its code (the row derivatives in ``kernels/_rowmath.py`` switch on
it), the curvature bound sup‖ℓ''‖ that the smoothness estimate uses, and the
encoding of its labels. A hyperparameter map is its code, the shape of λ, the
translation of λ into the arrays every kernel takes (:class:`HyperParams`),
and the order in which the kernels lay out its hypergradient. The kernels'
own parts of a map (its cross term J·v in ``kernels/oracles.cross_add`` and
``kernels/unroll.forward_mode``, and ``kernels/stochastic.set_hyper_params``,
the compiled twin of :meth:`HyperMap.kernel_params` that FSLA runs in its
loop) switch on the code. docs/math.md §10 lists the places a new entry
touches.
"""
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import _codes


def sigmoid(x):
    """σ(x) elementwise without overflow."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ------------------------------------------------------------------ models
def _real_labels(name, y):
    return y


def _pm1_labels(name, y):
    """±1 as is; {0, 1} mapped to {−1, +1}."""
    vals = set(np.unique(y).tolist())
    if vals <= {-1.0, 1.0}:
        return y
    if vals <= {0.0, 1.0}:
        return 2.0 * y - 1.0
    raise ValueError(f"{name}: logistic labels must be in {{-1, +1}} or {{0, 1}}, got "
                     f"values {sorted(vals)[:5]}")


def _class_labels(name, y):
    """Class indices 0, 1, ... as floats (the class count is checked later,
    over the training and validation labels together)."""
    if np.any(y != np.round(y)) or np.any(y < 0):
        raise ValueError(f"{name}: multinomial labels must be integers 0..n_classes-1")
    return y


@dataclass(frozen=True)
class Model:
    """A loss ℓ(z; y) (docs/math.md §2)."""
    name: str
    code: int
    curvature: float                   # sup over z of the largest eigenvalue of ℓ''(z)
    labels: Callable                   # (name, float64 labels) -> encoded labels
    multiclass: bool = False


MODELS = {m.name: m for m in (
    Model("linear", _codes.LINEAR, 1.0, _real_labels),
    Model("logistic", _codes.LOGISTIC, 0.25, _pm1_labels),
    Model("multinomial", _codes.MULTINOMIAL, 0.5, _class_labels, multiclass=True),
)}

MODEL_BY_CODE = {m.code: m for m in MODELS.values()}


# --------------------------------------------------------- hyperparameter maps
class HyperParams:
    """λ translated into what the kernels take: per-sample weights ``a`` and
    σ'(λ) ``da`` (empty unless ``sample_weights``), the per-feature ridge
    diagonal ``rdiag`` (length d), the prior ``P`` (c, d) of ``biased_l2``
    (shape (0, 0) otherwise) and the start ``W0`` of ``init`` (else None)."""

    __slots__ = ("a", "da", "rdiag", "prior", "W0")

    def __init__(self, a, da, rdiag, prior, W0):
        self.a, self.da, self.rdiag, self.prior, self.W0 = a, da, rdiag, prior, W0


def _weights_params(problem, lam):
    s = sigmoid(lam)
    return HyperParams(s, s * sigmoid(-lam), np.full(problem.d, problem.reg), np.empty((0, 0)), None)


def _exp_ridge_params(problem, lam):
    with np.errstate(over="ignore"):
        rd = np.exp(lam) * np.ones(problem.d)
    if not np.all(np.isfinite(rd)):
        raise ValueError("lam is too large: e^lam overflows")
    return HyperParams(np.empty(0), np.empty(0), rd, np.empty((0, 0)), None)


def _w_like(problem, lam):
    """λ of w's shape, (d,) or (d, c), in the kernels' (c, d) layout."""
    return np.ascontiguousarray(np.asarray(lam, float).reshape(problem.d, problem.c).T)


def _prior_params(problem, lam):
    return HyperParams(np.empty(0), np.empty(0), np.full(problem.d, problem.reg), _w_like(problem, lam),
                       None)


def _start_params(problem, lam):
    return HyperParams(np.empty(0), np.empty(0), np.full(problem.d, problem.reg), np.empty((0, 0)),
                       _w_like(problem, lam))


@dataclass(frozen=True)
class HyperMap:
    """What λ is (docs/math.md §3)."""
    name: str
    code: int
    lam_shape: Callable                # problem -> shape of λ
    kernel_params: Callable            # (problem, checked λ) -> HyperParams
    w_shaped: bool = False             # λ has w's shape: kernels order it (c, d)
    default_reg: Optional[float] = None    # C or μ; None: the strength is e^λ
    reg_may_be_zero: bool = True

    def to_kernel_order(self, problem, x):
        """λ-shaped ``x`` as the flat vector in the kernels' order."""
        if self.w_shaped:
            return _w_like(problem, x).ravel()
        return np.array(x, dtype=float).ravel()

    def from_kernel_order(self, problem, h):
        """Kernel-order flat ``h`` (a hypergradient) → shape of λ."""
        if self.w_shaped:
            return h.reshape(problem.c, problem.d).T.reshape(self.lam_shape(problem)).copy()
        return h.reshape(self.lam_shape(problem)).copy()


MAPS = {h.name: h for h in (
    HyperMap("sample_weights", _codes.SAMPLE_WEIGHTS, lambda p: (p.n,), _weights_params,
             default_reg=1e-3),
    HyperMap("feature_l2", _codes.FEATURE_L2, lambda p: (p.d,), _exp_ridge_params),
    HyperMap("l2", _codes.L2, lambda p: (), _exp_ridge_params),
    HyperMap("biased_l2", _codes.BIASED_L2, lambda p: p.w_shape, _prior_params,
             w_shaped=True, default_reg=1.0, reg_may_be_zero=False),
    HyperMap("init", _codes.INIT, lambda p: p.w_shape, _start_params, w_shaped=True,
             default_reg=1e-3),
)}
