"""Every oracle, for every model × map × format, against central finite
differences of the naive NumPy objective, and values against the naive ones."""
import numpy as np
import pytest
import fastbilevel as fb

import naive
from conftest import make_problem, random_lam, tol

TOL_FD = 1e-6

# dense float32 in the default tier too: the oracles are where its tiles'
# float32 arithmetic is checked against the naive objective
pytestmark = pytest.mark.combo_formats("dense32")


def _point(prob, seed=2):
    rng = np.random.default_rng(seed)
    return 0.5 * rng.standard_normal(prob.w_shape), rng.standard_normal(prob.w_shape)


def test_values_match_naive(combo):
    prob, s = make_problem(*combo)
    lam = random_lam(prob)
    w, _ = _point(prob)
    assert naive.rel_err(prob.inner_value(w, lam), naive.inner_value(s, w, lam)) < tol(prob, 1e-12)
    assert naive.rel_err(prob.outer_value(w), naive.outer_value(s, w)) < tol(prob, 1e-12)


def test_inner_and_outer_gradients_match_fd(combo):
    prob, s = make_problem(*combo)
    lam = random_lam(prob)
    w, _ = _point(prob)
    fd = naive.central_diff(lambda x: naive.inner_value(s, x, lam), w)
    assert naive.rel_err(prob.inner_grad(w, lam), fd) < TOL_FD
    fd = naive.central_diff(lambda x: naive.outer_value(s, x), w)
    assert naive.rel_err(prob.outer_grad(w), fd) < TOL_FD
    assert np.all(prob.outer_grad_lam(w, lam) == 0) and prob.outer_grad_lam(w, lam).shape == np.shape(lam)


def test_hvp_matches_fd_of_gradient(combo):
    prob, s = make_problem(*combo)
    lam = random_lam(prob)
    w, v = _point(prob)
    eps = 1e-6
    fd = (naive.inner_grad(s, w + eps * v, lam) - naive.inner_grad(s, w - eps * v, lam)) / (2 * eps)
    assert naive.rel_err(prob.hvp(w, lam, v), fd) < TOL_FD


def test_cross_matches_fd_in_lambda(combo):
    prob, s = make_problem(*combo)
    lam = random_lam(prob)
    w, v = _point(prob)
    fd = naive.central_diff(lambda l: np.vdot(naive.inner_grad(s, w, l), v), lam)
    got = prob.cross(w, lam, v)
    assert got.shape == np.shape(lam)
    if prob.hyper == "init":
        assert np.all(got == 0) and np.all(fd == 0)
    else:
        assert naive.rel_err(got, fd) < TOL_FD


def test_saturated_losses_stay_finite():
    """Margins up to 1e4 in magnitude: no overflow, no NaN, correct limits."""
    for model in ("logistic", "multinomial"):
        prob, s = make_problem(model, "l2", "dense64")
        w = 1e4 * np.sign(np.random.default_rng(0).standard_normal(prob.w_shape))
        lam = np.array(0.0)
        vals = [prob.inner_value(w, lam), prob.outer_value(w)]
        outs = [prob.inner_grad(w, lam), prob.outer_grad(w), prob.hvp(w, lam, w)]
        assert all(np.isfinite(v) for v in vals)
        assert all(np.all(np.isfinite(o)) for o in outs)
        assert naive.rel_err(prob.outer_value(w), naive.outer_value(s, w)) < 1e-12
        assert naive.rel_err(prob.inner_grad(w, lam), naive.inner_grad(s, w, lam)) < 1e-12
    from fastbilevel.kernels import sigmoid, sigmoid_prime, softplus
    assert sigmoid(-1e4) == 0.0 and sigmoid(1e4) == 1.0
    assert softplus(1e4) == 1e4 and softplus(-1e4) == 0.0
    assert sigmoid_prime(1e4) == 0.0 and sigmoid_prime(0.0) == 0.25


def test_gradient_hvp_and_cross_share_one_pass(combo):
    """want_grad and want_hvp together in one pass give what the separate
    passes give (to rounding: the shared pass pairs W[k] with V[k] in its
    register tile, the gradient pass pairs classes, so sums run in another
    order)."""
    from fastbilevel import kernels as K
    prob, _ = make_problem(*combo)
    lam = random_lam(prob)
    w, v = _point(prob)
    hp = prob._lam_in(lam)
    W, V = prob._w_in("w", w), prob._w_in("v", v)
    n = prob.n
    G1, H1, c1 = np.empty_like(W), np.empty_like(W), np.empty(n)
    val = K.oracle_pass(prob.train, hp.a, prob._model, W, V, True, True, G1, H1, c1, 2)
    G2, H2, c2 = np.empty_like(W), np.empty_like(W), np.empty(n)
    val2 = K.oracle_pass(prob.train, hp.a, prob._model, W, V, True, False, G2, G2, np.empty(0), 2)
    K.oracle_pass(prob.train, hp.a, prob._model, W, V, False, True, H2, H2, c2, 2)
    assert naive.rel_err(val, val2) < 1e-13
    for a, b in ((G1, G2), (H1, H2)):
        assert naive.rel_err(a, b) < 1e-13
    if prob.hyper == "sample_weights":
        assert naive.rel_err(c1, c2) < 1e-13
        # a J·v pass alone (no H·v accumulation) gives the same cross bit for bit
        c3 = np.full(n, np.nan)
        untouched = np.full_like(W, 7.0)
        K.oracle_pass(prob.train, hp.a, prob._model, W, V, False, False, untouched, untouched,
                      c3, 2)
        assert np.array_equal(c3, c2) and np.all(untouched == 7.0)


def test_serial_pass_equals_the_parallel_pass_bit_for_bit(monkeypatch):
    """oracle_pass_serial runs the parallel pass's chunks one after another
    in the same merge order: the same value, gradient, HVP and cross terms
    bit for bit, on either format."""
    import fastbilevel as fb
    from fastbilevel.kernels.oracles import oracle_pass, oracle_pass_serial
    monkeypatch.setattr(fb.config, "NCHUNKS", 3)
    for fmt in ("dense", "csr"):
        prob, _ = make_problem("multinomial", "l2", fmt)
        w, v = _point(prob)
        W, V = w.reshape(prob.c, prob.d), v.reshape(prob.c, prob.d)
        outs = []
        for kernel in (oracle_pass, oracle_pass_serial):
            G, HV, cross = np.empty_like(W), np.empty_like(W), np.empty(prob.n)
            val = kernel(prob.train, np.empty(0), prob._model, W, V, True, True, G, HV, cross, 3)
            outs.append((val, G, HV, cross))
        assert outs[0][0] == outs[1][0]
        for a, b in zip(outs[0][1:], outs[1][1:]):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_data_sq_norm_is_the_largest_eigenvalue(fmt, dtype):
    """The step-size estimate (power iteration on XᵀX/n) against the largest
    eigenvalue of XᵀX/n from a dense eigensolver; it never reads the labels
    and leaves X untouched."""
    import scipy.sparse as sp
    prob, _ = make_problem("logistic", "l2", fmt)
    X = prob.train.X if fmt == "dense" else sp.csr_matrix(
        (prob.train.data, prob.train.indices, prob.train.indptr), shape=(prob.n, prob.d))
    X = X.astype(dtype)
    Xd = X.toarray() if fmt == "csr" else X
    before = Xd.copy()
    fresh = fb.BilevelProblem("logistic", "l2", X, prob.y, X[:5], prob.y[:5])
    exact = np.linalg.eigvalsh(Xd.astype(np.float64).T @ Xd.astype(np.float64) / prob.n)[-1]
    est = fresh.data_sq_norm()
    assert est == pytest.approx(exact, rel=1e-6 if dtype == "float64" else 1e-4)
    assert fresh.data_sq_norm() == est            # cached
    after = X.toarray() if fmt == "csr" else X
    assert np.array_equal(after, before)


def test_single_output_csr_rows_equal_the_generic_row_kernel_bit_for_bit():
    """A CSR pass of a linear or logistic model runs its own row loop (the
    two dots in one walk over the row, scalar derivatives, both updates in
    one walk); a minibatch pass over all rows in order runs the generic
    per-row kernel. Both must give the same value, gradient, HVP and cross
    terms bit for bit, for every request (gradient, HVP, J·v alone, all), on
    float64 and float32 data."""
    from fastbilevel.kernels import oracle_pass, oracle_pass_rows
    for model, fmt in (("linear", "csr"), ("logistic", "csr"), ("logistic", "csr32")):
        prob, _ = make_problem(model, "sample_weights", fmt)
        hp = prob._lam_in(random_lam(prob))
        w, v = _point(prob)
        W, V = prob._w_in("w", w), prob._w_in("v", v)
        n = prob.n
        rows = np.arange(n, dtype=np.int64)
        for want_grad, want_hvp, want_cross in ((True, False, False), (False, True, False),
                                                (False, False, True), (True, True, True)):
            outs = []
            for run in ("full", "rows"):
                G, HV = np.full_like(W, np.nan), np.full_like(W, np.nan)
                cross = np.full(n if want_cross else 0, np.nan)
                if run == "full":
                    val = oracle_pass(prob.train, hp.a, prob._model, W, V, want_grad, want_hvp,
                                      G, HV, cross, 1)
                else:
                    val = oracle_pass_rows(rows, prob.train, hp.a, prob._model, W, V,
                                           want_grad, want_hvp, G, HV, cross, 1)
                outs.append((val, G if want_grad else None, HV if want_hvp else None, cross))
            (v1, G1, H1, c1), (v2, G2, H2, c2) = outs
            assert v1 == v2 and np.isfinite(v1)
            for a, b in ((G1, G2), (H1, H2)):
                if a is not None:
                    assert np.isfinite(a).all() and np.array_equal(a, b)
            assert np.array_equal(c1, c2) and np.isfinite(c1).all()


def _softmax_hvp(s, w, lam, v):
    """Exact H·v of the weighted multinomial loss plus ridge (NumPy):
    Σ_i (a_i/n) x_i ⊗ p_i ⊙ (u_i − p_i·u_i) + reg·v, with u_i = Vᵀx_i."""
    from scipy.special import softmax
    W, V = s.W(w), s.W(v)
    P = softmax(s.X @ W, axis=1)
    U = s.X @ V
    Hu = P * (U - np.sum(P * U, axis=1, keepdims=True)) * naive.weights(s, lam)[:, None]
    return (s.X.T @ Hu / s.n + s.reg * V).reshape(np.shape(v))


def test_many_class_dense_tiles_match_numpy():
    """Dense models with c ≥ 5 classes take each half of an 8-row block
    through 4×5 tiles (float64), with the classes past a multiple of 5 in the
    8×2 tiles and rows past a multiple of 8 one at a time: value, gradient,
    H·v and the sample-weight cross term against NumPy, for c = 5, 7, 10, 12,
    full passes and a minibatch pass over every row."""
    from fastbilevel.kernels import oracle_pass_rows
    for c in (5, 7, 10, 12):
        for fmt in ("dense", "dense32"):
            prob, s = make_problem("multinomial", "sample_weights", fmt, n=45, d=13, c=c)
            lam = random_lam(prob)
            w, v = _point(prob)
            t = tol(prob, 1e-12)
            assert naive.rel_err(prob.inner_value(w, lam), naive.inner_value(s, w, lam)) < t
            assert naive.rel_err(prob.inner_grad(w, lam), naive.inner_grad(s, w, lam)) < t
            assert naive.rel_err(prob.hvp(w, lam, v), _softmax_hvp(s, w, lam, v)) < t
            fd = naive.central_diff(lambda x: np.vdot(naive.inner_grad(s, w, x), v), lam)
            assert naive.rel_err(prob.cross(w, lam, v), fd) < TOL_FD
            # the minibatch kernel (rows copied into a block) over all rows
            hp = prob._lam_in(lam)
            W, V = prob._w_in("w", w), prob._w_in("v", v)
            G, HV = np.empty_like(W), np.empty_like(W)
            rows = np.arange(prob.n, dtype=np.int64)
            oracle_pass_rows(rows, prob.train, hp.a, prob._model, W, V, True, True, G, HV,
                             np.empty(prob.n), 1)
            ref_g = naive.inner_grad(s, w, lam) - s.reg * np.asarray(w).reshape(s.d, s.c)
            assert naive.rel_err(prob._w_out(G), ref_g.reshape(np.shape(w))) < t
            ref_h = _softmax_hvp(s, w, lam, v) - s.reg * np.asarray(v).reshape(s.d, s.c)
            assert naive.rel_err(prob._w_out(HV), ref_h.reshape(np.shape(v))) < t
