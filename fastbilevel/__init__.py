"""fastbilevel: hypergradients of bilevel problems with fused Numba kernels."""
from . import config, datasets, kernels
from .hypergrad import HypergradientResult, hypergradient, plan, solve
from .meta import MultiTaskProblem, meta_hypergradient
from .minimize import History, MinimizeResult, minimize
from .problem import BilevelProblem
from .stochastic import fsla, hessian_batch_sizes, stocbio

__version__ = "0.1.0"

__all__ = ["BilevelProblem", "hypergradient", "HypergradientResult", "solve", "plan",
           "minimize", "MinimizeResult", "History",
           "MultiTaskProblem", "meta_hypergradient", "stocbio", "fsla", "hessian_batch_sizes",
           "datasets", "kernels", "config", "__version__"]
