"""fastbilevel: hypergradients of bilevel problems with fused Numba kernels."""
from ._version import __version__

from . import _cache  # noqa: E402  (before any module that defines a cached kernel)

_cache.install()
_cache.install_compile_notice()
_cache.install_unswitch_limit()

from . import _parallel  # noqa: E402  (threading layer, before any parallel kernel runs)
from . import config, datasets, kernels  # noqa: E402
from .hypergrad import HypergradientResult, hypergradient, plan, solve
from .meta import MultiTaskProblem, meta_hypergradient
from .minimize import History, MinimizeResult, MultiStartResult, minimize, minimize_many
from .problem import BilevelProblem
from .stochastic import fsla, hessian_batch_sizes, stocbio
from .sweep import SweepResult, sweep
from ._checks import DivergenceError
from .cuda import DeviceError
from ._results import MinimizeInterrupted

__all__ = ["BilevelProblem", "hypergradient", "HypergradientResult", "solve", "plan",
           "minimize", "MinimizeResult", "History",
           "MultiTaskProblem", "meta_hypergradient", "stocbio", "fsla", "hessian_batch_sizes",
           "sweep", "SweepResult", "DivergenceError", "DeviceError", "MinimizeInterrupted", "minimize_many", "MultiStartResult",
           "datasets", "kernels", "config", "__version__"]
