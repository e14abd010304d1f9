"""The per-row math's own pieces: the SIMD exponential of the softmax and the
block softmax, against the C library and the per-row kernel."""
import math

import numpy as np
from numba import njit

from fastbilevel.kernels._rowmath import (MULTINOMIAL, exp_neg, row_coefs, softmax_block,
                                          softmax_scratch)


@njit
def _exp_loop(x, out):
    """exp_neg over an array: a loop LLVM turns into SIMD code."""
    for i in range(x.shape[0]):
        out[i] = exp_neg(x[i])


def _arguments():
    rng = np.random.default_rng(0)
    return np.concatenate([-rng.exponential(3.0, 200_000), -rng.uniform(0.0, 708.0, 100_000),
                           rng.uniform(-0.35, 0.0, 100_000),
                           -rng.exponential(3.0, 100_000).astype(np.float32).astype(np.float64)])


def test_exp_neg_is_as_accurate_as_the_c_library():
    x = _arguments()
    out = np.empty_like(x)
    _exp_loop(x, out)
    ref = np.exp(x)
    # both within about an ulp of e^x, so within two ulps of each other
    assert np.max(np.abs(out - ref) / ref) < 2.0 ** -51
    special = np.array([0.0, -0.0, -1e-300, -707.9, -708.5, -745.5, -800.0, -np.inf, np.nan])
    got = np.empty_like(special)
    _exp_loop(special, got)
    assert got[0] == 1.0 and got[1] == 1.0 and got[2] == 1.0
    assert abs(got[3] - math.exp(-707.9)) <= 2.0 ** -51 * math.exp(-707.9)
    assert np.array_equal(got[4:8], np.zeros(4))          # subnormal results flush to zero
    assert np.isnan(got[8])


def test_exp_neg_gives_the_same_bits_in_simd_and_scalar_code():
    """The block softmax calls it in SIMD loops, the per-row kernels one value
    at a time: the two must agree bit for bit, or a full pass and a minibatch
    pass over the same rows would differ."""
    x = _arguments()[::97]
    simd = np.empty_like(x)
    _exp_loop(x, simd)
    scalar = np.array([exp_neg(v) for v in x])     # the dispatcher: scalar code
    assert np.array_equal(simd, scalar)


@njit
def _rowwise(yb, wb, nb, Z, U, inv_n, want_grad, want_hvp, cross, ci, CG, CH, val):
    c = Z.shape[1]
    dl = np.empty(c)
    hu = np.empty(c)
    for r in range(nb):
        val += row_coefs(MULTINOMIAL, yb[r], Z[r], U[r], wb[r], inv_n, want_grad, want_hvp,
                         CG[r], CH[r], cross, ci + r, dl, hu)
    return val


def test_block_softmax_equals_the_per_row_math_bit_for_bit():
    """``softmax_block`` (classes outside, rows inside: SIMD across rows)
    against ``row_coefs`` row by row: loss sum, both coefficient sets and
    the cross terms, for full and partial blocks, logits large enough to
    underflow, and a row of NaN logits that must not touch the others."""
    rng = np.random.default_rng(1)
    rb = 8
    for c in (2, 3, 10, 12):
        for trial in range(40):
            nb = rb if trial % 3 else 5
            scale = 400.0 if trial % 7 == 0 else 3.0
            Z = scale * rng.standard_normal((rb, c))
            if trial == 4:
                Z[2, 1] = np.nan
            U = rng.standard_normal((rb, c))
            yb = rng.integers(0, c, rb).astype(np.float64)
            wb = rng.uniform(0.1, 2.0, rb) / 50.0
            want_grad, want_hvp, want_cross = trial % 2 == 0, trial % 4 < 2, trial % 5 != 0
            outs = []
            for run in ("block", "rows"):
                CG, CH = np.full((rb, c), -7.0), np.full((rb, c), -7.0)
                cross = np.full(20 if want_cross else 0, -7.0)
                if run == "block":
                    val = softmax_block(yb, wb, nb, Z, U, 1.0 / 50, want_grad, want_hvp, cross,
                                        9, CG, CH, softmax_scratch(c), 0.25)
                else:
                    val = _rowwise(yb, wb, nb, Z, U, 1.0 / 50, want_grad, want_hvp, cross, 9,
                                   CG, CH, 0.25)
                outs.append((val, CG, CH, cross))
            (v1, *a1), (v2, *a2) = outs
            assert v1 == v2 or (trial == 4 and np.isnan(v1) and np.isnan(v2))
            for p, q in zip(a1, a2):
                assert np.array_equal(p, q, equal_nan=True)
            if trial == 4:
                assert np.isnan(a1[0][2]).all() and np.isfinite(np.delete(a1[0], 2, 0)).all()
    # a partial block leaves the rows past nb alone
    CG = np.full((rb, 3), -7.0)
    softmax_block(np.zeros(rb), np.ones(rb), 5, np.zeros((rb, 3)), np.zeros((rb, 3)), 1.0,
                  True, False, np.empty(0), 0, CG, CG, softmax_scratch(3), 0.0)
    assert (CG[5:] == -7.0).all() and np.allclose(CG[:5, 1], 1.0 / 3)
