"""fastbilevel: hypergradients of bilevel problems with fused Numba kernels."""
from . import config, datasets, kernels
from .hypergrad import HypergradientResult, hypergradient, plan, solve
from .minimize import History, MinimizeResult, minimize
from .problem import BilevelProblem

__version__ = "0.1.0"

__all__ = ["BilevelProblem", "hypergradient", "HypergradientResult", "solve", "plan",
           "minimize", "MinimizeResult", "History",
           "datasets", "kernels", "config", "__version__"]
