"""Where compiled kernels are cached: a directory keyed by the package's sources.

Numba's own cache sits in ``__pycache__`` beside each module and is keyed on
the file of the entry point alone. fastbilevel's entry points inline code from
other modules (the per-row math, the row kernels, the fused pass), so after an
edit of one of those, or an upgrade of an editable install, Numba could load a
stale kernel; and a cache written inside an installed package survives
``pip uninstall`` (the files are not in its record), which leaves an empty
``fastbilevel`` folder that shadows a later editable install.

So every function of this package compiled with ``cache=True`` is cached in

    <root>/<version>-<hash of the package's name, its .py files and numba's version>/

with ``<root>`` = ``$NUMBA_CACHE_DIR/fastbilevel`` when that variable is set,
else the user's cache folder (``$XDG_CACHE_HOME/fastbilevel`` or
``~/.cache/fastbilevel``; ``%LOCALAPPDATA%\\fastbilevel`` on Windows,
``~/Library/Caches/fastbilevel`` on macOS), and a temporary folder if that
cannot be written. Any change of any source file gives a new folder: a stale
kernel cannot be loaded, and nothing is ever written inside the package.

This module must be imported before any module that defines a cached kernel
(``fastbilevel/__init__.py`` does it first).
"""
import hashlib
import os
import sys
import tempfile

import numba
from numba.core import caching, config as numba_config
from numba.core import event as _event

from ._version import __version__

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _source_hash():
    """sha256 of the package's import name, numba's version and every .py file
    of the package (path and bytes). The name keeps a renamed copy of the same
    sources (``bench/ab_kernels.py`` imports one) out of the folder: its
    cache index would name the other module."""
    h = hashlib.sha256(__name__.rpartition(".")[0].encode())
    h.update(numba.__version__.encode())
    for dirpath, dirnames, filenames in os.walk(PACKAGE_DIR):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, PACKAGE_DIR).replace(os.sep, "/").encode())
                with open(path, "rb") as fh:
                    h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


SOURCE_HASH = _source_hash()


def _user_cache_root():
    if numba_config.CACHE_DIR:
        return os.path.join(numba_config.CACHE_DIR, "fastbilevel")
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser("~")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Caches")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "fastbilevel")


def cache_dir(root=None):
    """The folder this version of the package caches its kernels in."""
    return os.path.join(root or _user_cache_root(), f"{__version__}-{SOURCE_HASH[:16]}")


def _writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


_RESOLVED = []


def resolved_cache_dir():
    """:func:`cache_dir`, or a per-user temporary folder if that is not writable."""
    if not _RESOLVED:
        path = cache_dir()
        if not _writable(path):
            user = os.environ.get("USER") or os.environ.get("USERNAME") or "user"
            path = cache_dir(os.path.join(tempfile.gettempdir(), f"fastbilevel-{user}"))
        _RESOLVED.append(path)
    return _RESOLVED[0]


class KernelCacheLocator(caching._CacheLocator):
    """Numba cache locator for this package's functions (see the module docstring)."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        sub = os.path.dirname(os.path.relpath(py_file, PACKAGE_DIR))
        self._cache_path = os.path.join(resolved_cache_dir(), sub or "_top")

    def get_cache_path(self):
        return self._cache_path

    def get_source_stamp(self):
        return SOURCE_HASH

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        path = os.path.abspath(py_file)
        if os.path.commonpath([path, PACKAGE_DIR]) != PACKAGE_DIR:
            return None
        self = cls(py_func, path)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


def stale_cache_dirs():
    """The cache folders of other versions or sources of the package beside
    the current one (same root): what :func:`clear_stale` removes."""
    current = resolved_cache_dir()
    root = os.path.dirname(current)
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    return [os.path.join(root, n) for n in names
            if os.path.join(root, n) != current and os.path.isdir(os.path.join(root, n))
            and "-" in n]


def clear_stale():
    """Remove :func:`stale_cache_dirs`; returns (folders removed, bytes freed)."""
    import shutil
    removed, freed = 0, 0
    for path in stale_cache_dirs():
        for dirpath, _, files in os.walk(path):
            for f in files:
                try:
                    freed += os.path.getsize(os.path.join(dirpath, f))
                except OSError:
                    pass
        shutil.rmtree(path, ignore_errors=True)
        removed += 1
    return removed, freed


def install():
    """Put :class:`KernelCacheLocator` first in Numba's list of locators."""
    classes = caching.CacheImpl._locator_classes
    if KernelCacheLocator not in classes:
        classes.insert(0, KernelCacheLocator)


# ------------------------------------------------ a notice on the first compile
_NOTICED = set()
# set to False to silence the notice (fastbilevel._cache.COMPILE_NOTICE)
COMPILE_NOTICE = True


def _data_kind(args):
    """'dense float64', 'CSR float32', ... from a kernel's argument types (the
    first Data named tuple among them), or None."""
    from numba.core import types
    for t in args:
        if isinstance(t, types.BaseNamedTuple) and getattr(t, "instance_class", None) is not None \
                and t.instance_class.__name__ == "Data" and len(t.types) == 5:
            X, _, _, data, _ = t.types
            if isinstance(X, types.Array):
                return f"dense {X.dtype}"
            if isinstance(data, types.Array):
                return f"CSR {data.dtype}"
    return None


def _ours(event):
    """Whether a compile event is for a function of this package."""
    disp = event.data.get("dispatcher")
    module = getattr(getattr(disp, "py_func", None), "__module__", "") or ""
    return module.startswith("fastbilevel.")


def _listen(cls):
    """Register one ``cls`` listener for Numba's compile events (once per process)."""
    if not any(isinstance(lst, cls) for lst in _event._registered.get("numba:compile", [])):
        _event.register("numba:compile", cls())


class _CompileNotice(_event.Listener):
    """One line on stderr the first time this process compiles (not loads
    from the cache) a kernel of this package for a format and dtype."""

    def on_start(self, event):
        if not COMPILE_NOTICE:
            return
        if not _ours(event):
            return
        kind = _data_kind(event.data.get("args", ()))
        if kind is None or kind in _NOTICED:
            return
        _NOTICED.add(kind)
        # the process's own stderr: not swallowed by a caller's capture of sys.stderr
        stream = sys.__stderr__ or sys.stderr
        if stream is not None:
            print(f"fastbilevel: compiling kernels for {kind} data; this happens once "
                  f"(later runs load them from {resolved_cache_dir()}; `fastbilevel "
                  "compile` fills the cache ahead of time)", file=stream, flush=True)

    def on_end(self, event):
        pass


def install_compile_notice():
    """Listen for Numba's compile events (once per process)."""
    _listen(_CompileNotice)


# ------------------------------------------------ LLVM's loop unswitching
# At -O3 (Numba's default) LLVM unswitches loops on non-trivial invariant
# conditions: it copies a loop once per outcome of each branch it can hoist.
# The kernels branch at run time on small integer codes (model, map, solver,
# action) inside their loops, so those copies multiplied: measured on a first
# reverse call (dense float64, 2 cores), 42.5 s with LLVM's default cost
# threshold and 25.9 s with unswitching limited to threshold 1, with the same
# run time of the compiled kernels (hyper-cleaning, text, ridge and binary
# reverse and implicit, within this machine's noise). The limit holds only
# while Numba compiles a function of this package (its own callees and
# parallel loops included); every other compile in the process keeps LLVM's
# default. None: never change it.
UNSWITCH_THRESHOLD = 1
_LLVM_UNSWITCH_DEFAULT = 50     # LLVM's own default for -unswitch-threshold


def _set_unswitch(value):
    import llvmlite.binding as llvm
    llvm.set_option("fastbilevel", f"-unswitch-threshold={int(value)}")


class _UnswitchLimit(_event.Listener):
    """Lowers LLVM's unswitching threshold from the start of the outermost
    compile of one of this package's functions to its end (on success or
    error), and restores LLVM's default after it."""

    def __init__(self):
        self.depth = 0
        self.threshold = None

    def on_start(self, event):
        if not _ours(event):
            return
        if self.depth == 0 and UNSWITCH_THRESHOLD is not None:
            self.threshold = UNSWITCH_THRESHOLD
            _set_unswitch(self.threshold)
        self.depth += 1

    def on_end(self, event):
        if not _ours(event):
            return
        self.depth -= 1
        if self.depth == 0 and self.threshold is not None:
            self.threshold = None
            _set_unswitch(_LLVM_UNSWITCH_DEFAULT)


def install_unswitch_limit():
    """Listen for Numba's compile events (once per process)."""
    _listen(_UnswitchLimit)
