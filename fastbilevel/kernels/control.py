"""Stop requests and progress between the host and a running kernel.

A long kernel (the schedule interpreter, forward mode, the implicit solve)
takes an optional ``ctrl`` int64 array: the host sets ``ctrl[0]`` to ask it
to stop, and the kernel writes the steps it has done into ``ctrl[1]``. The
kernel looks at ``ctrl[0]`` once per step and returns ``STOPPED`` as its
status. Without ``ctrl`` (None or omitted, chosen at typing time) both are
no-ops, so user ``@njit`` code can leave it out.
"""
from numba import types
from numba.extending import overload

from .._codes import STOPPED  # noqa: F401  (status of a kernel stopped by the host)


def stop_requested(ctrl):
    """Whether the host asked the kernel to stop (compiled code only)."""
    raise NotImplementedError("only callable from compiled code")


@overload(stop_requested, inline="always")
def _ol_stop_requested(ctrl):
    if isinstance(ctrl, (types.NoneType, types.Omitted)):
        return lambda ctrl: False
    return lambda ctrl: ctrl[0] != 0


def report_progress(ctrl, done):
    """Publish the number of steps done (compiled code only)."""
    raise NotImplementedError("only callable from compiled code")


@overload(report_progress, inline="always")
def _ol_report_progress(ctrl, done):
    if isinstance(ctrl, (types.NoneType, types.Omitted)):
        return lambda ctrl, done: None

    def impl(ctrl, done):
        ctrl[1] = done
    return impl
