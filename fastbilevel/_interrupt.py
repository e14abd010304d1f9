"""Run a long compiled kernel so that Ctrl-C stops it.

A compiled loop never returns to the interpreter, so Python cannot deliver a
KeyboardInterrupt while it runs. The long kernels are compiled with
``nogil=True`` and take a ``ctrl`` array (``kernels.control``): here the
kernel runs in a helper thread while the main thread waits; on Ctrl-C the
main thread sets ``ctrl[0]``, the kernel returns at its next step (one pass
over the data), and the KeyboardInterrupt is raised in the caller. A second
Ctrl-C while waiting for that step gives up on the kernel at once (its
thread ends by itself at the next step). Off the main thread, which never
receives Ctrl-C, the kernel runs directly.

While waiting, the main thread reads the steps done (``ctrl[1]``) and hands
them to the progress callback set with :func:`reporting` (a progress bar),
so a bar moves during one long kernel call without splitting the call: the
results are those of the uninterrupted kernel, bit for bit.
"""
import contextlib
import contextvars
import threading

import numpy as np

from ._codes import STOPPED

__all__ = ["run_kernel", "STOPPED"]

_POLL_S = 0.05
_PROGRESS = contextvars.ContextVar("fastbilevel_progress", default=None)


@contextlib.contextmanager
def reporting(callback):
    """Within the block, kernels run by :func:`run_kernel` report the steps
    they have done (passes over the data) to ``callback(done, finished)``
    every 0.05 s, and once more with ``finished=True`` when they return."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def run_kernel(kernel, *args):
    """``kernel(*args, ctrl)``, stoppable by Ctrl-C (KeyboardInterrupt)."""
    ctrl = np.zeros(2, dtype=np.int64)
    report = _PROGRESS.get()
    if threading.current_thread() is not threading.main_thread():
        out = kernel(*args, ctrl)
        if report is not None:
            report(int(ctrl[1]), True)
        return out
    out = []

    def target():
        try:
            out.append((True, kernel(*args, ctrl)))
        except BaseException as e:          # re-raised in the caller's thread
            out.append((False, e))

    worker = threading.Thread(target=target, name="fastbilevel-kernel", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(_POLL_S)
            if report is not None and worker.is_alive():
                report(int(ctrl[1]), False)
    except KeyboardInterrupt:
        ctrl[0] = 1
        worker.join()                        # one step; a second Ctrl-C leaves it
        raise
    if report is not None:
        report(int(ctrl[1]), True)
    ok, value = out[0]
    if not ok:
        raise value
    return value
