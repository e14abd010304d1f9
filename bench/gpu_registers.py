"""Registers, stack and spills of every CUDA kernel, from ``ptxas -v``.

    python bench/gpu_registers.py [--cc 8.0] [--classes 1,10] [--dtype float32]

Compiles each kernel of ``fastbilevel.kernels.gpu`` to PTX for the given
compute capability (no GPU needed: the capability is supplied, as in
``tests/cuda_ptx.py``), assembles it with ``ptxas -v`` and prints one row
per kernel: registers per thread, stack frame bytes, spill stores/loads and
shared memory. Needs an NVVM library (a CUDA toolkit or fastbilevel[cuda])
and ``ptxas`` on PATH; says which is missing otherwise.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def ptxas_report(ptx, cc):
    """(registers, stack bytes, spill stores, spill loads, shared bytes) of the
    one kernel in ``ptx``."""
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as fh:
            fh.write(ptx)
        out = subprocess.run(["ptxas", "-v", f"--gpu-name=sm_{cc[0]}{cc[1]}", src, "-o",
                              os.path.join(d, "k.cubin")], capture_output=True, text=True,
                             check=True).stderr
    regs = int(re.search(r"Used (\d+) registers", out).group(1))
    m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                  out)
    smem = re.search(r"(\d+) bytes smem", out)
    return (regs, int(m.group(1)), int(m.group(2)), int(m.group(3)),
            int(smem.group(1)) if smem else 0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cc", default="8.0", help="compute capability, e.g. 8.0 or 9.0")
    ap.add_argument("--classes", default="1,10", help="class counts C to compile for")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    a = ap.parse_args(argv)
    if shutil.which("ptxas") is None:
        print("ptxas not found on PATH (it comes with a CUDA toolkit)")
        return 1
    from numba import cuda
    import cuda_ptx
    from fastbilevel.kernels import gpu
    cc = tuple(int(x) for x in a.cc.split("."))
    cuda_ptx._supply_capability()
    cuda_ptx._Target.compute_capability = cc
    print(f"{'kernel':<16}{'C':>4}{'regs':>6}{'stack B':>9}{'spill st':>10}{'spill ld':>10}"
          f"{'smem B':>8}")
    for C in (int(x) for x in a.classes.split(",")):
        fns = gpu.py_kernels(C, 128)
        sigs = gpu.ptx_signatures(C, np.dtype(a.dtype))
        for name in sorted(fns):
            if C != int(a.classes.split(",")[0]) and name in gpu.C_INDEPENDENT:
                continue
            ptx, _ = cuda.compile_ptx(fns[name], sigs[name], cc=cc)
            r = ptxas_report(ptx, cc)
            cl = "-" if name in gpu.C_INDEPENDENT else C
            print(f"{name:<16}{cl:>4}{r[0]:>6}{r[1]:>9}{r[2]:>10}{r[3]:>10}{r[4]:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
