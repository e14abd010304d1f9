"""fastbilevel: hypergradients of bilevel problems with fused Numba kernels."""
from . import config, datasets, kernels
from .hypergrad import HypergradientResult, hypergradient, plan, solve
from .problem import BilevelProblem

__version__ = "0.1.0"

__all__ = ["BilevelProblem", "hypergradient", "HypergradientResult", "solve", "plan",
           "datasets", "kernels", "config", "__version__"]
