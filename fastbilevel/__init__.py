"""fastbilevel: hypergradients of bilevel problems with fused Numba kernels."""
from . import config, datasets, kernels
from .hypergrad import HypergradientResult, hypergradient
from .problem import BilevelProblem

__version__ = "0.1.0"

__all__ = ["BilevelProblem", "hypergradient", "HypergradientResult",
           "datasets", "kernels", "config", "__version__"]
