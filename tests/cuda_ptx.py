"""Compile every CUDA kernel of fastbilevel to PTX for two compute
capabilities (``python tests/cuda_ptx.py``; run by ``test_cuda.py`` in a
process of its own, without the simulator). Prints one line per kernel and
a summary; prints ``NO_NVVM: <reason>`` and exits 0 where no NVVM library
is found (nothing to check there)."""
import sys
import time

import numpy as np


class _Target:
    """Stands in for the current GPU: Numba compiles device functions (the
    row math, and builtins such as max) for the current device's compute
    capability, which a machine without a GPU has none of."""
    compute_capability = (8, 0)


def _supply_capability():
    import numba.cuda.api as api
    import numba.cuda.dispatcher as disp

    def current():
        return _Target
    api.get_current_device = current
    disp.get_current_device = current


def main():
    from numba import cuda
    from fastbilevel.kernels import gpu
    _supply_capability()

    try:
        cuda.compile_ptx(gpu.VECTOR_KERNELS["copy"], gpu.ptx_signatures(1, np.float64)["copy"],
                         cc=(8, 0))
    except Exception as e:                 # no NVVM (no CUDA toolkit, no numba-cuda[cu12])
        print(f"NO_NVVM: {type(e).__name__}: {str(e)[:300]}")
        return 0
    t0 = time.perf_counter()
    done = 0
    for cc in ((8, 0), (9, 0)):
        _Target.compute_capability = cc
        for C, xdt in ((1, np.float64), (3, np.float32)):
            fns = gpu.py_kernels(C, 128)
            sigs = gpu.ptx_signatures(C, xdt)
            assert set(fns) == set(sigs), set(fns) ^ set(sigs)
            for name, fn in sorted(fns.items()):
                if C == 3 and name in gpu.C_INDEPENDENT:
                    continue        # C-independent: compiled once per cc
                ptx, _ = cuda.compile_ptx(fn, sigs[name], cc=cc)
                assert ".entry" in ptx and f"sm_{cc[0]}{cc[1]}" in ptx, name
                print(f"ok sm_{cc[0]}{cc[1]} C={C} {np.dtype(xdt).name} {name} "
                      f"{len(ptx)} chars")
                done += 1
    print(f"COMPILED {done} kernels in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
