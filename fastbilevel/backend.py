"""The seam between the Python layer and the compiled work.

Every module of the Python layer (problem oracles, hypergradients, implicit
solves, stochastic estimators, meta-learning, the bench) asks its problem's
``backend`` for a fused pass, the schedule interpreter, forward mode, an
implicit solve, a minibatch pass or a stochastic run, and never calls
``fastbilevel.kernels`` itself. A backend takes the data as
:class:`~fastbilevel.kernels.data.Data` tuples and the settings as arrays
and scalars, with the argument lists of the CPU kernels, and returns what
they return (NumPy arrays on the host). The long runs are stoppable with
Ctrl-C (a KeyboardInterrupt at the next step).

``CPUBackend`` is Numba's ``@njit`` kernels; another backend (a GPU one)
implements the same methods.
"""
from . import kernels as K
from ._interrupt import run_kernel
from ._parallel import fixed_nchunks, nchunks
from .kernels import batched as _batched
from .kernels import implicit as _implicit
from .kernels import meta as _meta
from .kernels import oracles as _oracles
from .kernels import stochastic as _stochastic
from .kernels import unroll as _unroll


def _stoppable(kernel):
    """``kernel`` run by :func:`~fastbilevel._interrupt.run_kernel`: Ctrl-C
    stops it at its next step."""
    def call(*args):
        return run_kernel(kernel, *args)
    call.__name__ = kernel.__name__
    call.__doc__ = f"``{kernel.__name__}``, stoppable with Ctrl-C."
    return staticmethod(call)


class CPUBackend:
    """The compiled work on the CPU: the ``fastbilevel.kernels`` functions."""

    name = "cpu"

    # one pass over the data, and the regularizer's O(dim w) parts
    oracle_pass = staticmethod(K.oracle_pass)
    oracle_pass_rows = staticmethod(_oracles.oracle_pass_rows)
    # the same pass on the calling thread (bit-identical): small one-off passes
    oracle_pass_serial = staticmethod(_oracles.oracle_pass_serial)
    reg_value = staticmethod(K.reg_value)
    reg_grad_add = staticmethod(K.reg_grad_add)
    reg_hvp_add = staticmethod(K.reg_hvp_add)
    cross_add = staticmethod(K.cross_add)

    # chunks per pass: results depend on these counts, never on the threads
    nchunks = staticmethod(nchunks)
    fixed_nchunks = staticmethod(fixed_nchunks)

    run_schedule = _stoppable(_unroll.run_schedule)
    forward_mode = _stoppable(_unroll.forward_mode)
    implicit_solve = _stoppable(_implicit.implicit_solve)
    meta_gradient = _stoppable(_meta.meta_gradient)
    task_pass = staticmethod(_meta.task_pass)

    # B settings in lockstep, every pass shared (sweep's batched kernels)
    run_schedule_multi = _stoppable(_batched.run_schedule_multi)
    implicit_solve_multi = _stoppable(_batched.implicit_solve_multi)

    stocbio_run = staticmethod(_stochastic.stocbio_run)
    fsla_run = staticmethod(_stochastic.fsla_run)


CPU = CPUBackend()


class OnDevice:
    """``device``, ``to`` and device selection for a problem class whose GPU
    backend is ``_GPU_BACKEND`` (module, class name), built from the problem."""

    _GPU_BACKEND = ("fastbilevel.cuda", "CUDABackend")

    def _set_device(self, device):
        from . import _checks
        device = _checks.check_choice("device", device, ("cpu", "cuda"))
        if device == "cpu":
            self.backend = CPU
        else:
            import importlib
            module, name = self._GPU_BACKEND
            self.backend = getattr(importlib.import_module(module), name)(self)

    @property
    def device(self):
        """Where the passes run: "cpu" or "cuda"."""
        return self.backend.name

    def to(self, device):
        """This problem on ``device`` ("cpu" or "cuda"): a new problem sharing
        the host arrays, whose passes run there (for "cuda", its data is
        copied to the GPU once, here). Every method takes and returns NumPy
        arrays on either device. ``device="cuda"`` without a usable GPU raises
        :class:`fastbilevel.DeviceError`."""
        import copy
        other = copy.copy(self)
        other._set_device(device)
        return other
