"""The CUDA backend's test cases, shared by the simulator run
(``python tests/cuda_cases.py OUT.npz``, with NUMBA_ENABLE_CUDASIM=1: every
case on ``problem.to("cuda")``) and ``test_cuda.py`` (the same cases on the
CPU backend, compared with the saved GPU results).

Small problems (the simulator runs every GPU thread as a Python thread):
every model × map × format for the oracles and reverse mode, and every
method and inner solver on a few of them.
"""
import sys
import time
import traceback

import numpy as np

MODELS = ["linear", "logistic", "multinomial"]
HYPERS = ["sample_weights", "feature_l2", "l2", "biased_l2", "init"]
ORACLES = ["inner_value", "inner_grad", "hvp", "cross", "outer_value", "outer_grad"]
STEP = 0.2          # γ for every case but the one that checks the default (1/L)
META_HYPERS = ["init", "feature_map"]
META_METHODS = ["reverse", "recompute", "first_order", "ufo"]


def _cases():
    # the test tier (conftest.py): with --all-formats every case below runs on
    # its own format; by default CSR cases run on float32 data (whose rows
    # multiply in float64 like float64 ones) and dense float32 only where its
    # own arithmetic (the oracles, reverse mode) is compiled for the CPU anyway
    from conftest import all_formats, tier_formats
    CSR = "csr64" if all_formats() else "csr32"
    out = []
    for m in MODELS:
        for h in HYPERS:
            for f in tier_formats("dense32"):
                out.append((f"oracles-{m}-{h}-{f}", m, h, f, "oracles", {}))
            for f in ("dense64", CSR):
                out.append((f"reverse-{m}-{h}-{f}", m, h, f, "reverse", {}))
        for f in ("dense32", "csr32"):       # (csr32 is CSR's case in the default tier)
            out.append((f"reverse-{m}-feature_l2-{f}", m, "feature_l2", f, "reverse", {}))
    # every method and solver, on a dense and a CSR problem of different maps
    for m, h, f in (("logistic", "sample_weights", "dense64"),
                    ("multinomial", "feature_l2", CSR),
                    ("linear", "biased_l2", "csr32")):
        for solver in ("heavy_ball", "agd"):
            out.append((f"reverse-{solver}-{m}-{h}-{f}", m, h, f, "reverse",
                        {"solver": solver}))
            out.append((f"forward-{solver}-{m}-{h}-{f}", m, h, f, "forward",
                        {"solver": solver}))
        for meth, kw in (("checkpointed", {"snapshots": 2}), ("recompute", {}),
                         ("truncated", {"K": 2}), ("forward", {}), ("solve", {}),
                         ("implicit", {"linear_solver": "cg", "K": 30}),
                         ("implicit", {"linear_solver": "neumann", "K": 8}),
                         ("implicit", {"linear_solver": "heavy_ball", "K": 8})):
            tag = kw.get("linear_solver", "")
            out.append((f"{meth}{tag}-{m}-{h}-{f}", m, h, f, meth, kw))
    # forward mode's per-map tangent terms of the maps not above, one model each
    for m, h in zip(MODELS, ("sample_weights", "l2", "init")):
        out.append((f"forward-{m}-{h}-dense64", m, h, "dense64", "forward", {}))
    # sweep: the GPU runs its batched kernels (3 settings in lockstep, one
    # grid row each) on every model × map × format; every batched method and
    # solver on two problems; setting by setting; one setting diverging
    # (every model × map, the formats alternating: the single-setting cases
    # above run the same batched kernels with B = 1 on both formats)
    for k, (m, h) in enumerate((m, h) for m in MODELS for h in HYPERS):
        f = ("dense64", CSR)[k % 2]
        out.append((f"sweep-{m}-{h}-{f}", m, h, f, "sweep", {}))
    # multi-start outer loops in lockstep on the batched kernels
    out.append((f"many-logistic-feature_l2-{CSR}", "logistic", "feature_l2", CSR, "many", {}))
    for f in ("dense32", "csr32") if all_formats() else ("csr32",):
        out.append((f"sweep-multinomial-feature_l2-{f}", "multinomial", "feature_l2", f,
                    "sweep", {}))
    for m, h, f in (("logistic", "sample_weights", "dense64"),
                    ("multinomial", "feature_l2", CSR)):
        for tag, kw in (("checkpointed", {"method": "checkpointed", "snapshots": 2}),
                        ("recompute", {"method": "recompute"}),
                        ("truncated", {"method": "truncated", "K": 2}),
                        ("solve", {"method": "solve"}),
                        ("implicitcg", {"method": "implicit", "K": 30}),
                        ("implicitneumann", {"method": "implicit", "K": 8,
                                             "linear_solver": "neumann"}),
                        ("implicitheavy_ball", {"method": "implicit", "K": 8,
                                                "linear_solver": "heavy_ball"}),
                        ("heavy_ball", {"solver": "heavy_ball"}), ("agd", {"solver": "agd"}),
                        ("settings", {"strategy": "settings"}),
                        ("diverging", {"step_size": [STEP, 80.0, STEP], "check_step": False})):
            out.append((f"sweep{tag}-{m}-{h}-{f}", m, h, f, "sweep", kw))
    # stochastic estimators, on the same batches as the CPU (the sampler's
    # hash compiled for the device): stocBiO on every model × map × format
    # but init (it does not apply), with and without replacement
    k = 0
    for m in MODELS:
        for h in HYPERS[:-1]:
            for f in ("dense64", CSR):
                out.append((f"stocbio-{m}-{h}-{f}", m, h, f, "stocbio",
                            {"replace": k % 2 == 1}))
                k += 1
    for m, h, f in (("logistic", "sample_weights", "dense64"),
                    ("multinomial", "feature_l2", CSR),
                    ("linear", "l2", CSR), ("logistic", "biased_l2", "dense64")):
        out.append((f"fsla-{m}-{h}-{f}", m, h, f, "fsla", {"replace": f == CSR}))
    # minibatch SGD inner loops, through the schedules and forward mode
    for m, h, f in (("logistic", "sample_weights", "dense64"),
                    ("multinomial", "feature_l2", CSR),
                    ("linear", "sample_weights", CSR)):
        for meth, kw in (("reverse", {"replace": True}), ("checkpointed", {"snapshots": 2}),
                         ("forward", {})):
            out.append((f"sgd-{meth}-{m}-{h}-{f}", m, h, f, meth,
                        dict(kw, solver="sgd", batch_size=5, seed=9)))
    # the backend's minibatch pass (sorted rows with repeats) and the draws
    for f in ("dense64", CSR):
        out.append((f"pass_rows-multinomial-sample_weights-{f}", "multinomial",
                    "sample_weights", f, "pass_rows", {}))
    out.append(("draws", "logistic", "l2", "dense64", "draws", {}))
    # multi-task problems (MAML: init, ANIL: feature_map): every model × map
    # × method, with all tasks and with a drawn meta-batch; the task oracles;
    # float32 tasks; minimize's outer loop; a diverging inner loop
    for m in MODELS:
        for h in META_HYPERS:
            for meth in META_METHODS:
                out.append((f"meta-{meth}-{m}-{h}", m, h, "dense64", "meta", {"method": meth}))
            out.append((f"meta-oracles-{m}-{h}", m, h, "dense64", "meta_oracles", {}))
    for h in META_HYPERS:
        out.append((f"meta-reverse-multinomial-{h}-dense32", "multinomial", h, "dense32",
                    "meta", {"method": "reverse"}))
    out.append(("meta-minimize-logistic-feature_map", "logistic", "feature_map", "dense64",
                "meta_minimize", {}))
    out.append(("meta-diverging-linear-init", "linear", "init", "dense64", "meta",
                {"method": "reverse", "step_size": 50.0, "check_step": False}))
    # the default step size (power iteration on the GPU, c = 1 for multinomial too)
    out.append(("default-step-multinomial-l2-dense64", "multinomial", "l2", "dense64",
                "reverse", {"step_size": None}))
    # one case per name: in the default tier CSR is csr32, so some coincide
    return list({case[0]: case for case in out}.values())


CASES = _cases()


def meta_problem_of(case, device):
    """A small multi-task problem (5 tasks of 4 train and 4 test rows, d = 4;
    ANIL with k = 3) and a θ. Float32 tasks ("dense32") on the GPU are
    compared with the same values in float64 on the CPU (the CPU's float32
    meta kernels would compile for most of a minute, for this case alone)."""
    import fastbilevel as fb
    _, m, h, f, _, _ = case
    ds = fb.datasets.few_shot(n_tasks=5, shots=4, test_shots=4, d=4, model=m, n_classes=3,
                              seed=2, dtype=np.float32 if f == "dense32" else np.float64)
    prob = ds.problem(reg=0.1, hyper=h, k=3 if h == "feature_map" else None,
                      dtype=np.float32 if f == "dense32" and device == "cuda" else np.float64)
    return prob.to(device), 0.4 * np.random.default_rng(4).standard_normal(prob.lam_shape)


def problem_of(case, device="cpu"):
    """The case's problem on ``device`` and its λ."""
    from conftest import make_problem, random_lam
    _, m, h, f, what, _ = case
    if what.startswith("meta"):
        return meta_problem_of(case, device)
    prob, spec = make_problem(m, h, f, n=12, m=5, d=4)
    if not case[0].startswith("default-step"):
        # λ_max(XᵀX/n) for the step-size check, in closed form on both devices
        # (the default-step case runs the 50-pass power iteration on the GPU)
        X = spec.X.toarray() if hasattr(spec.X, "toarray") else np.asarray(spec.X)
        X = X.astype(np.float64)
        prob._data_sq_norm = float(np.linalg.eigvalsh(X.T @ X / X.shape[0])[-1])
    return prob.to(device), random_lam(prob)


def run_case(prob, lam, case):
    """The case's results on ``prob`` (either device): name → array."""
    import fastbilevel as fb
    _, _, _, _, what, kw = case
    rng = np.random.default_rng(7)
    if what == "oracles":
        w = 0.5 * rng.standard_normal(prob.w_shape)
        v = rng.standard_normal(prob.w_shape)
        out = {}
        for o in ORACLES:
            args = {"inner_value": (w, lam), "inner_grad": (w, lam), "hvp": (w, lam, v),
                    "cross": (w, lam, v), "outer_value": (w,), "outer_grad": (w,)}[o]
            out[o] = np.asarray(getattr(prob, o)(*args), dtype=float)
        return out
    if what == "pass_rows":
        hp = prob._lam_in(lam)
        rows = np.sort(rng.integers(0, prob.n, 9)).astype(np.int64)
        W, V = rng.standard_normal((2, prob.c, prob.d))
        G, HV, cr = np.empty_like(W), np.empty_like(W), np.zeros(len(rows))
        val = prob.backend.oracle_pass_rows(rows, prob.train, hp.a, prob._model, W, V, True,
                                            True, G, HV, cr, 2)
        return {"value": np.float64(val), "G": G, "HV": HV, "cross": cr}
    if what == "draws":
        from fastbilevel.kernels import sampling
        out = {}
        for seed, stream, step, n, b, rep in ((0, 1, 0, 12, 5, False), (7, 2, 3, 12, 12, False),
                                              (123, 3, 9, 40, 17, True),
                                              (2 ** 40, 4, 1, 7, 30, True)):
            key = f"{seed}-{stream}-{step}-{n}-{b}-{rep}"
            if prob.device == "cuda":
                out[key] = prob.backend._draw(seed, stream, step, n, b, rep).copy_to_host()
            else:
                out[key] = sampling.batch(seed, stream, step, n, b, rep)
        return out
    kw = dict(kw)
    kw.setdefault("step_size", STEP)
    if what == "meta_oracles":
        w, v = rng.standard_normal((2,) + prob.w_shape)
        out = {}
        for o in ("inner_value", "inner_grad", "hvp", "cross", "outer_value", "outer_grad",
                  "outer_grad_lam"):
            args = (w, lam, v) if o in ("hvp", "cross") else (w, lam)
            out[o] = np.asarray(getattr(prob, o)(3, *args), dtype=float)
        return out
    if what == "meta_minimize":
        r = fb.minimize(prob, lam, method="reverse", iters=2, steps=3, lr=0.3, meta_batch=3,
                        **kw)
        return {"lam": np.asarray(r.lam, dtype=float),
                "outer_value": np.asarray(r.history.outer_value),
                "moved": np.float64(np.max(np.abs(r.lam - lam)))}
    if what == "meta":
        out = {}
        if kw["method"] == "ufo":
            kw["q"] = 0.5
        # a drawn meta-batch (3 of the 5 tasks); reverse also every task in order
        for mb in (None, 3) if kw["method"] == "reverse" else (3,):
            try:
                r = fb.meta_hypergradient(prob, lam, steps=3, meta_batch=mb, seed=5, **kw)
            except fb.DivergenceError as e:
                out[f"{mb}/error"] = np.array(f"DivergenceError: {e}")
                continue
            out.update({f"{mb}/grad": r.grad, f"{mb}/value": np.float64(r.value),
                        f"{mb}/counts": np.array([r.stats["train_steps"],
                                                  r.stats["corrections"]]),
                        f"{mb}/tasks": r.stats["tasks"]})
        return out
    if what == "stocbio":
        r = fb.stocbio(prob, lam, steps=3, batch_size=5, Q=2, outer_batch=4, seed=11, **kw)
        return {"grad": np.asarray(r.grad, dtype=float), "value": np.float64(r.value),
                "w": r.w, "rows": np.array([r.stats["rows_sampled"], r.stats["val_rows"]])}
    if what == "fsla":
        kw.pop("step_size")
        r = fb.fsla(prob, lam, iters=4, batch_size=5, seed=3, eval_every=2, **kw)
        return {"lam": np.asarray(r.lam, dtype=float), "w": r.w,
                "outer_value": np.asarray(r.history.outer_value),
                "grad_norm": np.asarray(r.history.grad_norm),
                "moved": np.float64(np.max(np.abs(np.asarray(r.lam) - lam)))}
    if what == "many":
        starts = np.stack([lam + 0.3 * k for k in range(3)])
        r = fb.minimize_many(prob, starts, iters=2, steps=3, lr=0.5, **kw)
        return {"lam": np.asarray(r.lam, dtype=float), "value": np.asarray(r.value),
                "w": np.asarray(r.w), "moved": np.float64(np.max(np.abs(r.lam - starts)))}
    if what == "sweep":
        lams = np.stack([lam + 0.3 * k for k in range(3)])
        kw.setdefault("method", "reverse")
        r = fb.sweep(prob, lams, steps=4, **kw)
        out = {"value": r.value, "w": r.w, "diverged": r.stats["diverged"],
               "inner_values": r.stats["inner_values"]}
        if r.grad is not None:
            out["grad"] = np.asarray(r.grad, dtype=float)
        return out
    if what == "solve":
        r = fb.solve(prob, lam, steps=4, **kw)
        return {"value": np.float64(r.value), "w": r.w,
                "inner_values": r.stats["inner_values"]}
    r = fb.hypergradient(prob, lam, method=what, steps=4, **kw)
    return {"grad": np.asarray(r.grad, dtype=float), "value": np.float64(r.value), "w": r.w,
            "inner_values": r.stats["inner_values"],
            "passes": np.array([r.stats["gradient_passes"], r.stats["hvp_passes"]])}


def refusals():
    """What a GPU problem refuses: name → the error's type and message."""
    import fastbilevel as fb
    from conftest import make_problem
    prob, _ = make_problem("logistic", "l2", "dense64", n=12, m=5, d=4)
    g = prob.to("cuda")

    def small_gpu():            # a GPU with 4 KiB free: refused before any allocation
        g.backend._free_memory = lambda: 4096
        try:
            fb.sweep(g, np.linspace(-2.0, 0.0, 4), steps=50, step_size=0.2)
        finally:
            del g.backend._free_memory
    calls = {
        "memory": small_gpu,
        "sweep_client": lambda: fb.sweep(g, np.zeros((2,)), steps=2, client=object()),
        "soba": lambda: fb.minimize(g, np.zeros(()), method="soba", iters=2),
    }
    out = {}
    for name, call in calls.items():
        try:
            call()
            out[name] = "no error"
        except Exception as e:
            out[name] = f"{type(e).__name__}: {e}"
    return out


def _fix_simulator():
    """Two fixes to Numba's CUDA simulator, which runs a block's threads as
    Python threads, and a faster way to run them (each applied only where the
    simulator's code is the one it replaces; the run fails on a mismatch
    rather than go on unfixed):

    * ``cuda.shared.array``: the simulator finds a block's array by the
      line that declares it, but its lookup-then-insert is not locked, so two
      threads reaching the line first can each get an array of their own
      (threads then read entries no thread wrote). The same lookup, locked.
    * its block loop polls the threads without pause while they wait at a
      syncthreads, holding the GIL they need to get there; the same loop,
      yielding the GIL on every round.
    * it starts a new Python thread for every thread of every block (about
      170,000 in this run, most of its time); here each block shape keeps
      its threads, which run one block after another: a thread waits for
      its next block, runs the kernel with that block's index, and reports
      back. The threads keep the simulator's own class (its syncthreads and
      its reductions), so kernels see the same ``cuda`` module as before.
    """
    import inspect
    import threading
    from numba.cuda.simulator import kernel as K
    from numba.cuda.simulator import kernelapi as KA
    from numba.np import numpy_support
    from numba.core import types
    shared_src = inspect.getsource(KA.FakeCUDAShared.array)
    block_src = inspect.getsource(K.BlockManager)
    thread_src = inspect.getsource(K.BlockThread)
    for need, src in (("self._allocations.get(caller)", shared_src),
                      ("self._dynshared_size // dtype.itemsize", shared_src),
                      ("syncthreads_blocked", block_src), ("self._block_dim", block_src),
                      ("self.syncthreads_event.wait()", thread_src),
                      ("self._manager.block_state", thread_src),
                      ("self.thread_id = self.threadIdx.x", thread_src)):
        assert need in src, f"the simulator changed ({need!r} not found): update _fix_simulator"
    lock = threading.Lock()
    plain = KA.FakeCUDAShared.array

    def array(self, shape, dtype):
        if shape == 0:
            return plain(self, shape, dtype)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        f = sys._getframe(1)
        caller = (f.f_code.co_filename, f.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res
    KA.FakeCUDAShared.array = array

    BT, BM = K.BlockThread, K.BlockManager

    class PooledThread(BT):
        """A simulator thread that runs one block after another."""

        def __init__(self, manager, threadIdx):
            BT.__init__(self, self._serve, manager, (0, 0, 0), threadIdx, False)
            self.go = threading.Event()
            self.job = None
            self.finished = True

        def _serve(self):
            while True:
                self.go.wait()
                self.go.clear()
                f, args = self.job
                try:
                    f(*args)
                except Exception as e:       # the simulator's own message
                    msg = f"tid={list(self.threadIdx)} ctaid={list(self.blockIdx)}"
                    msg = f"{msg}: {e}" if str(e) else msg
                    self.exception = (type(e)(msg), sys.exc_info()[2])
                self.finished = True

    pools = {}

    def run(self, grid_point, *args):
        if self._debug:
            raise AssertionError("the pooled simulator threads do not run debug=True kernels")
        threads = pools.get(self._block_dim)
        if threads is None:
            threads = pools[self._block_dim] = [PooledThread(self, bp)
                                                for bp in np.ndindex(*self._block_dim)]
            for t in threads:
                t.start()
        for t in threads:
            t._manager = self
            t.blockIdx = KA.Dim3(*grid_point)
            t.exception = None
            t.abort = False
            t.syncthreads_blocked = False
            t.syncthreads_event.clear()
            t.finished = False
            t.job = (self._f, args)
            t.go.set()
        live = threads
        failed = None
        while live:
            time.sleep(0)
            if failed is None:
                failed = next((t for t in live if t.exception), None)
                if failed is not None:       # abort the others at their next syncthreads
                    given_up = time.monotonic() + 10.0
                    for o in threads:
                        o.abort = True
                        o.syncthreads_blocked = False
                        o.syncthreads_event.set()
            elif time.monotonic() > given_up:
                # a thread that never reaches a syncthreads (waiting on the
                # failed one): leave these threads, the next block gets new ones
                del pools[self._block_dim]
                break
            live = [t for t in live if not t.finished]
            if failed is None and live and all(t.syncthreads_blocked for t in live):
                for t in live:
                    t.syncthreads_blocked = False
                    t.syncthreads_event.set()
        failed = failed or next((t for t in threads if t.exception), None)
        if failed is not None:             # the first failure, not the aborts it caused
            raise failed.exception[0].with_traceback(failed.exception[1])
    BM.run = run


def main(path):
    import fastbilevel as fb
    _fix_simulator()
    from fastbilevel.cuda import simulated
    assert simulated(), "run with NUMBA_ENABLE_CUDASIM=1"
    t0 = time.perf_counter()
    res = {}
    errors = {}
    for case in CASES:
        try:
            g, lam = problem_of(case, "cuda")
            assert g.device == "cuda"
            for k, v in run_case(g, lam, case).items():
                res[f"{case[0]}/{k}"] = v
        except Exception:
            errors[case[0]] = traceback.format_exc()
    # the same case twice: bit-identical (fixed summation order)
    g, lam = problem_of(CASES[0], "cuda")
    again = run_case(g, lam, CASES[0])
    for k, v in again.items():
        res[f"again/{k}"] = v
    for k, v in refusals().items():
        res[f"refusal/{k}"] = np.array(v)
    for k, v in errors.items():
        res[f"error/{k}"] = np.array(v)
    res["seconds"] = np.float64(time.perf_counter() - t0)
    np.savez(path, **res)
    print(f"{len(CASES)} cases, {len(errors)} errors, {time.perf_counter() - t0:.1f} s")
    return fb


if __name__ == "__main__":
    sys.path.insert(0, __file__.rsplit("/", 1)[0])
    main(sys.argv[1])
