"""BilevelProblem: validated data, models and hyperparameter maps (docs/math.md §1-3)."""
import warnings

import numpy as np

from . import _checks
from .backend import CPU, OnDevice
from .kernels.data import Data
from ._registry import MAPS, MODELS, HyperParams  # noqa: F401 (HyperParams: public type)


class BilevelProblem(OnDevice):
    """A bilevel problem min_λ f(ŵ(λ)), ŵ(λ) from an inner solver on g(·, λ).

    g(w, λ) = (1/n) Σ_i a_i(λ) ℓ(x_iᵀw; y_i) + r(w, λ),
    f(w)    = (1/m) Σ_j ℓ(x̃_jᵀw; ỹ_j)               (docs/math.md §1)

    Parameters
    ----------
    model : {"linear", "logistic", "multinomial"}
        Loss ℓ: least squares, binary logistic (labels ±1; {0, 1} is mapped),
        softmax cross-entropy (labels 0..c−1).
    hyper : {"sample_weights", "feature_l2", "l2", "biased_l2", "init"}
        What λ is: per-sample weights a_i = σ(λ_i) with r = (C/2)‖w‖²;
        per-feature ridge r = ½ Σ_j e^{λ_j}‖w_j‖²; ridge r = ½e^λ‖w‖²;
        learned prior r = (μ/2)‖w − λ‖²; learned start w₀ = λ with r = (C/2)‖w‖².
    X, y : training data, dense array (float32/float64) or scipy.sparse
        (converted to canonical CSR; a non-canonical CSR matrix is refused).
    X_val, y_val : validation data, converted to the format of X.
    reg : float, optional
        C for ``sample_weights`` and ``init`` (default 1e-3), μ for
        ``biased_l2`` (default 1.0); unused by ``feature_l2`` and ``l2``.
    dtype : float32 or float64, optional
        dtype of the stored data (default: that of X, float64 for integer X).
        Iterates and accumulators are always float64; float32 halves the
        bytes read per pass.
    n_classes : int, optional
        Number of classes c for ``multinomial``. Default: the number of
        classes in y, whose labels must then be 0..c−1 with every class
        present (a label that skips classes is refused).
    device : {"cpu", "cuda"}, optional
        Where the passes run (default "cpu"). "cuda" copies the data to the
        GPU once (``pip install fastbilevel[cuda]``); see :meth:`to`.

    Weights ``w`` are arrays of shape (d,) (linear, logistic) or (d, c)
    (multinomial). λ has shape (n,), (d,), () , w's shape, w's shape for the
    five maps in the order above.
    """

    def __init__(self, model, hyper, X, y, X_val, y_val, reg=None, dtype=None,
                 n_classes=None, device="cpu"):
        self.model = _checks.check_choice("model", model, MODELS)
        self.hyper = _checks.check_choice("hyper", hyper, MAPS)
        self._model = MODELS[model].code
        self._map = MAPS[hyper]
        self._hyper = self._map.code
        dt = _checks.check_dtype("dtype", dtype)
        Xd, ip, ix, xd, sparse, (n, d) = _checks.check_data("X", X, dt)
        self.dtype = (Xd if Xd is not None else xd).dtype
        Vd, vip, vix, vxd, _, (m, _) = _checks.check_data(
            "X_val", X_val, self.dtype, like_sparse=sparse, n_features=d)
        self.sparse = sparse
        self.n, self.d, self.m = n, d, m
        self.nnz = int(ip[-1]) if sparse else n * d
        self.nnz_val = int(vip[-1]) if sparse else m * d
        self.y = _checks.check_labels("y", y, n, model)
        self.y_val = _checks.check_labels("y_val", y_val, m, model)
        self.train = Data(Xd, ip, ix, xd, self.y)
        self.val = Data(Vd, vip, vix, vxd, self.y_val)
        self.backend = CPU
        self.c = _checks.check_n_classes(model, n_classes, self.y, self.y_val)
        if self._map.default_reg is not None:
            if reg is None:
                reg = self._map.default_reg
            self.reg = _checks.check_scalar("reg", reg, low=0.0,
                                            low_inclusive=self._map.reg_may_be_zero)
        else:
            if reg is not None:
                warnings.warn(f"reg is unused by hyper={hyper!r} (the strength is e^λ)",
                              stacklevel=2)
            self.reg = None
        self._data_sq_norm = None
        self._max_row_sq = None
        self._set_device(device)

    # ----------------------------------------------------------------- device
    def to(self, device):
        """This problem on ``device`` ("cpu" or "cuda"): a new problem sharing
        the host arrays, whose passes run there (for "cuda", its data is
        copied to the GPU once, here). Every method takes and returns NumPy
        arrays on either device. ``device="cuda"`` without a usable GPU raises
        :class:`fastbilevel.DeviceError`.

        On the GPU today: the oracles, ``hypergradient`` with every exact
        method (reverse, checkpointed, recompute, truncated, forward,
        implicit) and every inner solver (minibatch ``sgd`` too), stocBiO,
        FSLA, ``solve`` and ``minimize`` with those methods, ``sweep`` (B
        settings in lockstep). The stochastic solver family and
        ``sweep(client=)`` refuse a GPU problem (use ``.to("cpu")``)."""
        return OnDevice.to(self, device)

    # ---------------------------------------------------------------- layouts
    @property
    def w_shape(self):
        return (self.d,) if self.c == 1 else (self.d, self.c)

    @property
    def lam_shape(self):
        return self._map.lam_shape(self)

    @property
    def dim_w(self):
        return self.d * self.c

    @property
    def dim_lam(self):
        return int(np.prod(self.lam_shape, dtype=np.int64))

    def _w_in(self, name, w):
        """Public w (d,) or (d, c) → kernel W (c, d)."""
        w = _checks.check_vector(name, w, self.w_shape)
        return np.ascontiguousarray(w.reshape(self.d, self.c).T)

    def _w_out(self, W):
        return W.T.reshape(self.w_shape).copy()

    def _lam_in(self, lam):
        """Validate λ and return the kernel-side HyperParams."""
        shape = self.lam_shape
        arr = np.asarray(lam)
        if self.hyper == "l2" and arr.shape == (1,):
            arr = arr.reshape(())
        lam = _checks.check_vector("lam", arr, shape)
        return self._map.kernel_params(self, lam)

    def _lam_out(self, h):
        """Kernel-order flat hypergradient → shape of λ."""
        return self._map.from_kernel_order(self, h)

    # ---------------------------------------------------------------- oracles
    def _pass(self, data, a, W, V, want_grad, want_hvp, cross=None):
        G = np.empty_like(W)
        HV = np.empty_like(W)
        cross = np.empty(0) if cross is None else cross
        v = self.backend.oracle_pass(data, a, self._model, W, V, want_grad, want_hvp,
                                     G, HV, cross, self.backend.nchunks())
        return v, G, HV

    def inner_value(self, w, lam):
        """g(w, λ)."""
        W, hp = self._w_in("w", w), self._lam_in(lam)
        v, _, _ = self._pass(self.train, hp.a, W, W, False, False)
        return v + self.backend.reg_value(hp.rdiag, hp.prior, W)

    def inner_grad(self, w, lam):
        """∇_w g(w, λ), shape of w."""
        W, hp = self._w_in("w", w), self._lam_in(lam)
        _, G, _ = self._pass(self.train, hp.a, W, W, True, False)
        self.backend.reg_grad_add(hp.rdiag, hp.prior, W, G)
        return self._w_out(G)

    def hvp(self, w, lam, v):
        """H(w)v = ∇²_ww g(w, λ) v, shape of w."""
        W, hp = self._w_in("w", w), self._lam_in(lam)
        V = self._w_in("v", v)
        _, _, HV = self._pass(self.train, hp.a, W, V, False, True)
        self.backend.reg_hvp_add(hp.rdiag, V, HV)
        return self._w_out(HV)

    def cross(self, w, lam, v):
        """J(w)v = ∇_λ(∇_w g(w, λ)ᵀ v), shape of λ."""
        W, hp = self._w_in("w", w), self._lam_in(lam)
        V = self._w_in("v", v)
        cross = np.empty(self.n if self.hyper == "sample_weights" else 0)
        if cross.shape[0]:      # a J·v pass: the row dots and ℓ', no H·v accumulation
            self._pass(self.train, hp.a, W, V, False, False, cross)
        h = np.zeros(self.dim_lam)
        self.backend.cross_add(self._hyper, hp.rdiag, hp.da, W, V, cross, 1.0, h)
        return self._lam_out(h)

    def outer_value(self, w):
        """f(w) = (1/m) Σ_j ℓ(x̃_jᵀw; ỹ_j)."""
        W = self._w_in("w", w)
        return self._pass(self.val, np.empty(0), W, W, False, False)[0]

    def outer_grad(self, w):
        """∇_w f(w), shape of w."""
        W = self._w_in("w", w)
        return self._w_out(self._pass(self.val, np.empty(0), W, W, True, False)[1])

    def outer_grad_lam(self, w, lam):
        """∇_λ f(w, λ): zero, since f has no direct dependence on λ here."""
        self._w_in("w", w)
        self._lam_in(lam)
        return np.zeros(self.lam_shape)

    # --------------------------------------------------------------- spectrum
    def data_sq_norm(self, iters=50):
        """Largest eigenvalue of XᵀX/n: power iteration from a fixed start
        (cached per problem), on the host copy of X in its own dtype through
        BLAS (dense) or SciPy (CSR) products, on any device. No kernel of
        this package compiles for it, so a first call compiles only the
        kernels its method runs."""
        if self._data_sq_norm is None:
            from .reference import _matrix      # X itself, or a SciPy CSR view of it
            X = _matrix(self.train, (self.n, self.d))
            dtype = X.dtype
            v = np.random.default_rng(0).standard_normal(self.d)
            v /= np.linalg.norm(v)
            est = 0.0
            for _ in range(iters):
                hv = np.asarray(X.T @ (X @ v.astype(dtype)), dtype=np.float64) / self.n
                est = float(v @ hv)
                nrm = float(np.linalg.norm(hv))
                if not nrm > 0.0:       # XᵀX v = 0 (or an overflow, refused later)
                    break
                v = hv / nrm
            self._data_sq_norm = est
        return self._data_sq_norm

    def strong_convexity(self, lam):
        """Lower estimate of μ, the strong convexity of g(·, λ): the
        regularizer's exact part min_j rdiag_j (the loss part is convex, and
        its own curvature is not relied on)."""
        return float(self._lam_in(lam).rdiag.min())

    def max_row_sq_norm(self):
        """max_i ‖x_i‖² (cached)."""
        if self._max_row_sq is None:
            if self.sparse:
                ip, xd = self.train.indptr, self.train.data
                sq = np.add.reduceat(np.asarray(xd, dtype=np.float64) ** 2, ip[:-1]) \
                    if xd.shape[0] else np.zeros(self.n)
                sq[ip[:-1] == ip[1:]] = 0.0     # reduceat of an empty row repeats a value
                self._max_row_sq = float(sq.max()) if self.n else 0.0
            else:
                X = self.train.X
                self._max_row_sq = float(max(np.einsum("ij,ij->i", X, X, dtype=np.float64)
                                             .max(initial=0.0), 0.0))
        return self._max_row_sq

    def lipschitz(self, lam, per_sample=False):
        """Upper estimate of L, the smoothness of g(·, λ):
        sup ℓ'' · max_i a_i · λ_max(XᵀX/n) + max_j rdiag_j. With
        ``per_sample`` λ_max(XᵀX/n) is replaced by max_i ‖x_i‖², a bound on
        the smoothness of the loss on any minibatch."""
        hp = self._lam_in(lam)
        amax = float(hp.a.max()) if hp.a.shape[0] else 1.0
        spread = self.max_row_sq_norm() if per_sample else self.data_sq_norm()
        return MODELS[self.model].curvature * amax * spread + float(hp.rdiag.max())

    def __repr__(self):
        fmt = "csr" if self.sparse else "dense"
        return (f"BilevelProblem(model={self.model!r}, hyper={self.hyper!r}, "
                f"n={self.n}, m={self.m}, d={self.d}, c={self.c}, {fmt} "
                f"{self.dtype}, reg={self.reg})")
