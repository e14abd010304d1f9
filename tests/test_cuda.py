"""The CUDA backend, on machines without a GPU.

* Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, read at import, so in a
  process of its own: ``tests/cuda_cases.py``) runs every case of
  ``cuda_cases.CASES`` on ``problem.to("cuda")``; each case here runs the
  same calls on the CPU backend and compares.
* The simulator does not type-check (it runs the kernels as Python), so
  ``tests/cuda_ptx.py`` compiles every kernel to PTX for compute
  capabilities 8.0 and 9.0 in another process; it skips, printing why,
  where no NVVM library is found.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbilevel as fb
from conftest import DENSE32_TOL, tol
from cuda_cases import CASES, problem_of, run_case

HERE = os.path.dirname(os.path.abspath(__file__))

# one xdist worker runs this module, so the simulator runs once (conftest
# turns -n's load balancing into loadgroup)
pytestmark = pytest.mark.xdist_group("cuda")


def _run(script, *args, sim):
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    return subprocess.run([sys.executable, os.path.join(HERE, script), *args], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    """The simulator's results for every case (name/key → array)."""
    out = tmp_path_factory.mktemp("cuda") / "gpu.npz"
    p = _run("cuda_cases.py", str(out), sim=True)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    z = np.load(out)
    return {k: z[k] for k in z.files}


def _rel(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-300)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gpu_equals_cpu(gpu, case):
    name = case[0]
    assert f"error/{name}" not in gpu, str(gpu[f"error/{name}"])
    prob, lam = problem_of(case)
    cpu = run_case(prob, lam, case)
    eps = DENSE32_TOL if case[3] == "dense32" else tol(prob, 1e-10)
    for key, want in cpu.items():
        got = gpu[f"{name}/{key}"]
        assert got.shape == np.shape(want), (key, got.shape, np.shape(want))
        if np.asarray(want).dtype.kind == "U":          # an error message
            assert str(got) == str(want), key
        elif key in ("passes", "rows", "diverged") or key.endswith(("/counts", "/tasks")) \
                or case[4] == "draws":                  # counts, indices
            assert np.array_equal(got, want), key
        else:                               # a diverged setting: NaN on both
            nan = np.isnan(np.asarray(want, dtype=float))
            assert np.array_equal(np.isnan(got), nan), key
            assert _rel(got[~nan], np.asarray(want)[~nan]) <= eps, (key, _rel(got, want))
    for key in cpu:                        # the comparison can fail: a nonzero answer
        if key == "grad" or key.endswith("/grad"):
            assert np.nanmax(np.abs(cpu[key])) > 1e-8, key
    if "diverged" in cpu and "diverging" in name:  # exactly the diverging setting
        assert list(cpu["diverged"]) == [False, True, False]
    if case[4] == "meta" and "diverging" in name:  # refused on both devices alike
        assert set(cpu) == {"None/error", "3/error"}
        assert str(cpu["None/error"]).startswith("DivergenceError: the inner loop diverged")
    if case[4] == "meta" and case[5]["method"] == "ufo":   # both kinds of task estimate
        assert 0 < int(cpu["3/counts"][1]) < 3, cpu["3/counts"]
    if "moved" in cpu:                     # FSLA's λ moved from its start
        assert cpu["moved"] > 1e-6


def test_gpu_repeats_bit_for_bit(gpu):
    keys = [k for k in gpu if k.startswith("again/")]
    assert keys
    for k in keys:
        assert np.array_equal(gpu[k], gpu[f"{CASES[0][0]}/{k[len('again/'):]}"]), k


@pytest.mark.parametrize("what", ["sweep_client", "soba"])
def test_gpu_refuses_what_it_does_not_run(gpu, what):
    msg = str(gpu[f"refusal/{what}"])
    assert msg.startswith("DeviceError: ") and "device='cuda'" in msg, msg
    assert "problem.to('cpu')" in msg, msg


def test_gpu_memory_is_checked_before_a_run(gpu):
    msg = str(gpu["refusal/memory"])
    assert msg.startswith("MemoryError: ") and "of GPU memory and 4.00 KiB is free" in msg, msg
    assert "method='checkpointed'" in msg and "chunk_size" in msg, msg


def test_simulator_run_is_small(gpu):
    # its time is printed for the record; the suite's budget is kept by the case sizes
    print(f"simulator: {len(CASES)} cases in {float(gpu['seconds']):.1f} s")
    assert len(CASES) >= 100


def test_every_kernel_compiles_to_ptx():
    p = _run("cuda_ptx.py", sim=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    if p.stdout.startswith("NO_NVVM"):
        pytest.skip(p.stdout.strip())
    from fastbilevel.kernels import gpu as G
    n_c = len(G.py_kernels(1, 128)) - len(G.C_INDEPENDENT)
    want = 2 * (2 * n_c + len(G.C_INDEPENDENT))   # 2 cc × (C ∈ {1, 3}, and the C-free kernels)
    assert f"COMPILED {want} kernels" in p.stdout, p.stdout[-2000:]
    for cc in ("sm_80", "sm_90"):
        assert p.stdout.count(f"ok {cc} ") == want // 2


def test_device_cuda_without_a_gpu_says_so():
    from numba import cuda
    if os.environ.get("NUMBA_ENABLE_CUDASIM") or cuda.is_available():
        pytest.skip("a GPU (or the simulator) is present here")
    X = np.ones((4, 2))
    with pytest.raises(fb.DeviceError, match="NUMBA_ENABLE_CUDASIM=1"):
        fb.BilevelProblem("linear", "l2", X, np.ones(4), X, np.ones(4), device="cuda")
    prob = fb.BilevelProblem("linear", "l2", X, np.ones(4), X, np.ones(4))
    with pytest.raises(fb.DeviceError, match="no|GPU"):
        prob.to("cuda")
    assert prob.device == "cpu" and prob.to("cpu").device == "cpu"


def test_device_argument_is_checked():
    X = np.ones((4, 2))
    with pytest.raises(ValueError, match="device='tpu' is not one of"):
        fb.BilevelProblem("linear", "l2", X, np.ones(4), X, np.ones(4), device="tpu")


def test_bench_device_cuda_rows(tmp_path):
    # last in the module: the CPU rows' kernels are in the disk cache by now
    out = tmp_path / "b.json"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    p = subprocess.run([sys.executable, "-m", "fastbilevel.cli.main", "bench", "--problem",
                        "toy", "--device", "cuda", "--methods", "reverse,implicit_cg,numpy",
                        "-T", "3", "--repeats", "1", "--quick", "--sweep", "2", "--hyper",
                        "l2", "--json",
                        str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "GPU: simulator, memory bandwidth unknown" in p.stdout
    import json
    rows = {r["method"]: r for r in json.load(open(out))["results"]}
    assert set(rows) >= {"reverse", "implicit_cg", "numpy", "reverse@cuda", "implicit_cg@cuda",
                         "sweep[2]", "singles[2]", "numpy_sweep[2]", "sweep[2]@cuda"}
    g, c = rows["sweep[2]@cuda"], rows["sweep[2]"]
    assert g["device"] == "simulator" and g["passes"] == c["passes"] and g["settings"] == 2
    assert g["speedup_vs_cpu"] == pytest.approx(c["median_s"] / g["median_s"])
    assert g["speedup_vs_singles"] == pytest.approx(rows["singles[2]"]["median_s"]
                                                    / g["median_s"])
    for m in ("reverse", "implicit_cg"):
        g, c = rows[m + "@cuda"], rows[m]
        assert g["device"] == "simulator" and g["roofline_frac"] is None
        assert g["passes"] == c["passes"] and g["bytes"] == c["bytes"] > 0
        assert g["speedup_vs_cpu"] == pytest.approx(c["median_s"] / g["median_s"])
        assert "@cuda" in p.stdout


def test_bench_device_cuda_without_a_gpu_is_a_usage_error():
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU is present here")
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    p = subprocess.run([sys.executable, "-m", "fastbilevel.cli.main", "bench", "--device",
                        "cuda"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "NUMBA_ENABLE_CUDASIM=1" in p.stderr, p.stderr[-2000:]


def test_sweep_cli_on_the_gpu_equals_the_cpu(tmp_path):
    import json
    rng = np.random.default_rng(3)
    X, Xv = rng.standard_normal((12, 4)), rng.standard_normal((6, 4))
    y, yv = np.sign(rng.standard_normal(12)), np.sign(rng.standard_normal(6))
    data = tmp_path / "tiny.npz"
    fb.datasets.save_npz(str(data), X, y, Xv, yv)
    outs = {}
    for device, sim in (("cpu", False), ("cuda", True)):
        env = dict(os.environ)
        env.pop("NUMBA_ENABLE_CUDASIM", None)
        if sim:
            env["NUMBA_ENABLE_CUDASIM"] = "1"
        out = tmp_path / f"{device}.json"
        p = subprocess.run([sys.executable, "-m", "fastbilevel.cli.main", "sweep", "--data",
                            str(data), "--hyper", "l2", "--lams=-2:0:3", "-T", "3",
                            "--device", device, "--json", str(out)], env=env,
                           capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
        assert ("on simulator" in p.stdout) == sim
        outs[device] = json.load(open(out))
    cpu, gpu = outs["cpu"], outs["cuda"]
    assert gpu["best"] == cpu["best"] and not any(gpu["diverged"])
    for key in ("outer_value", "hypergradient"):
        a, b = np.array(gpu[key], dtype=float), np.array(cpu[key], dtype=float)
        assert np.max(np.abs(a - b)) <= 1e-10 * np.max(np.abs(b)) and np.max(np.abs(b)) > 0


def test_sweep_cli_device_cuda_without_a_gpu_is_a_usage_error(tmp_path):
    from numba import cuda
    if cuda.is_available():
        pytest.skip("a GPU is present here")
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    p = subprocess.run([sys.executable, "-m", "fastbilevel.cli.main", "sweep", "--quick",
                        "--device", "cuda"], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and "NUMBA_ENABLE_CUDASIM=1" in p.stderr, p.stderr[-2000:]


def test_multitask_problem_names_its_device():
    from numba import cuda
    ds = fb.datasets.few_shot(n_tasks=4, shots=3, test_shots=3, d=4, seed=0)
    mt = ds.problem(reg=0.1)
    assert mt.device == "cpu" and mt.to("cpu").device == "cpu" and mt.to("cpu") is not mt
    with pytest.raises(ValueError, match="device='tpu' is not one of"):
        mt.to("tpu")
    with pytest.raises(ValueError, match="device='tpu' is not one of"):
        fb.MultiTaskProblem("logistic", ds.X, ds.y, ds.X_test, ds.y_test, device="tpu")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") or cuda.is_available():
        return
    with pytest.raises(fb.DeviceError, match="NUMBA_ENABLE_CUDASIM=1"):
        mt.to("cuda")
    with pytest.raises(fb.DeviceError, match="NUMBA_ENABLE_CUDASIM=1"):
        fb.MultiTaskProblem("logistic", ds.X, ds.y, ds.X_test, ds.y_test, device="cuda")
