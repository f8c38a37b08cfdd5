"""Spectrum readouts on known spectra, the Gram and sketch accumulators against scipy's SVD, error bars."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import reference as ref
import scipy.linalg
from hypothesis import given
from hypothesis import strategies as st

from gradmanifold import spectrum as sp
from gradmanifold.kernels.gram import (
    ExactGram,
    NystromSketch,
    gram_reference,
    nystrom_eigenvalues,
    sketch_reference,
    sketch_test_matrix,
)


def _with_spectrum(s: np.ndarray, n: int, seed: int) -> np.ndarray:
    """An n x k matrix whose singular values are s (random orthogonal factors)."""
    rng = np.random.default_rng(seed)
    k = len(s)
    u = np.linalg.qr(rng.standard_normal((n, k)))[0]
    v = np.linalg.qr(rng.standard_normal((k, k)))[0]
    return (u * s) @ v.T


def test_readouts_on_a_known_spectrum() -> None:
    eigs = np.array([50.0, 30.0, 10.0, 5.0, 3.0, 2.0])  # total 100
    assert sp.r_star(eigs, 100.0, 0.5) == 1
    assert sp.r_star(eigs, 100.0, 0.2) == 2
    assert sp.r_star(eigs, 100.0, 0.1) == 3
    assert sp.r_star(eigs, 100.0, 0.05) == 4
    assert sp.r_star(eigs, 100.0, 0.01) == 6
    np.testing.assert_allclose(sp.tail_fractions(eigs, 100.0), [1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.0])
    assert sp.participation_ratio(eigs) == pytest.approx(100.0**2 / (2500 + 900 + 100 + 25 + 9 + 4))
    assert sp.top_energy(eigs, 100.0) == pytest.approx({"1": 0.5, "2": 0.8, "5": 0.98, "10": 1.0})


def test_degenerate_and_truncated_spectra() -> None:
    zeros = np.zeros(4)
    assert sp.r_star(zeros, 0.0, 0.1) == 0
    assert sp.participation_ratio(zeros) == 0.0
    assert sp.tail_fractions(zeros, 0.0).tolist() == [0.0] * 5
    # A sketch sees only the top of the spectrum: r* beyond it is None, the tail is total - head.
    top = np.array([40.0, 30.0])
    assert sp.r_star(top, 100.0, 0.5) == 2
    assert sp.r_star(top, 100.0, 0.1) is None
    np.testing.assert_allclose(sp.tail_sums(top, 100.0), [100.0, 60.0, 30.0])


@given(n=st.integers(1, 60), k=st.integers(1, 12), blocks=st.lists(st.integers(0, 60), max_size=5))
def test_exact_gram_any_blocking_equals_svd(n: int, k: int, blocks: list[int]) -> None:
    h = np.random.default_rng(n * 100 + k).standard_normal((n, k))
    acc = ExactGram(k)
    cuts = [0, *sorted(b for b in blocks if b < n), n]
    for a, b in itertools.pairwise(cuts):
        acc.add(h[a:b])
    assert acc.n_rows == n
    np.testing.assert_allclose(acc.gram, gram_reference(h), rtol=1e-12, atol=1e-12)
    s2 = scipy.linalg.svd(h, compute_uv=False) ** 2
    want = np.zeros(k)
    want[: len(s2)] = s2
    np.testing.assert_allclose(acc.eigenvalues(), want, rtol=1e-9, atol=1e-9 * want.max())
    assert acc.frobenius_sq == pytest.approx(float((h**2).sum()), rel=1e-12)


def test_leading_block_is_the_sub_sketch_spectrum() -> None:
    h = np.random.default_rng(1).standard_normal((200, 32))
    acc = ExactGram(32)
    acc.add(h)
    np.testing.assert_allclose(acc.eigenvalues(8), ref.spectrum(h[:, :8]), rtol=1e-9)


@pytest.mark.parametrize("k_rank", [(64, 5), (128, 12)])
def test_nystrom_recovers_planted_spectra(k_rank: tuple[int, int]) -> None:
    k, r = k_rank
    s = np.concatenate([np.linspace(10, 5, r), 1e-3 * np.ones(k - r)])
    h = _with_spectrum(s, 500, seed=k)
    sk = NystromSketch(k, 2 * r + 10, seed=0)
    for a in range(0, 500, 77):
        sk.add(h[a : a + 77])
    np.testing.assert_allclose(sk.y, sketch_reference(h, sk.omega), rtol=1e-10, atol=1e-10)
    got = sk.eigenvalues()
    np.testing.assert_allclose(got[:r], s[:r] ** 2, rtol=1e-6)
    assert sk.frobenius_sq == pytest.approx(float((s**2).sum()), rel=1e-10)
    total = sk.frobenius_sq
    assert sp.r_star(got, total, 0.01) == sp.r_star(s**2, total, 0.01) == r


def test_a_too_small_sketch_is_caught() -> None:
    # Teeth: a sketch of rank 3 cannot see a rank-8 spectrum, so the comparison above would fail.
    k, r = 64, 8
    s = np.concatenate([np.linspace(10, 5, r), np.zeros(k - r)])
    h = _with_spectrum(s, 300, seed=3)
    sk = NystromSketch(k, 3, seed=0)
    sk.add(h)
    assert sp.r_star(sk.eigenvalues(), sk.frobenius_sq, 0.01) is None
    assert not np.allclose(np.sort(sk.eigenvalues())[::-1][:3], s[:3] ** 2, rtol=1e-3)


def test_sketch_test_matrix_is_seeded_and_orthonormal() -> None:
    a = sketch_test_matrix(40, 10, seed=5)
    np.testing.assert_array_equal(a, sketch_test_matrix(40, 10, seed=5))
    assert not np.array_equal(a, sketch_test_matrix(40, 10, seed=6))
    np.testing.assert_allclose(a.T @ a, np.eye(10), atol=1e-12)
    assert nystrom_eigenvalues(np.zeros((40, 10)), a).tolist() == [0.0] * 10


def test_nested_verdict() -> None:
    levels = (64, 128, 256)
    ok, k_next, moving = sp.nested_verdict(levels, {"0.1": [5, 5, 5], "0.5": [1, 1, 2]})
    assert (ok, k_next, moving) == (True, None, [])
    ok, k_next, moving = sp.nested_verdict(levels, {"0.1": [20, 30, 38], "0.5": [3, 3, 3]})
    assert not ok and moving == ["0.1"]
    assert k_next == 512  # max(2k, 8 r*) = max(512, 304) rounded up to a power of two
    assert sp.nested_verdict(levels, {"0.1": [20, 60, 100]})[1] == 1024
    assert sp.is_moving(10, 12) and not sp.is_moving(10, 11) and not sp.is_moving(3, 4)
    assert sp.nested_levels(256) == (64, 128, 256)
    assert sp.nested_levels(2) == (1, 2)


def test_kappa_interval_and_relative_error() -> None:
    den = np.full(100, 2.0)
    assert sp.kappa_interval(den, den) == (1.0, 1.0)
    num = np.random.default_rng(0).normal(3.0, 0.3, 100)
    lo, hi = sp.kappa_interval(num, den)
    se = num.std(ddof=1) * math.sqrt(100) / den.sum()
    assert (hi - lo) / 2 == pytest.approx(3 * se, rel=1e-9)
    assert lo < num.sum() / den.sum() < hi
    assert math.isnan(sp.kappa_interval(num, np.zeros(100))[0])
    # A denominator dominated by one direction: the exact norm narrows the interval to the numerator's noise.
    rng = np.random.default_rng(1)
    den1 = 50.0 * rng.chisquare(1, 100) + 1.0
    num1 = rng.normal(1.0, 0.05, 100)
    wide = sp.kappa_interval(num1, den1)
    narrow = sp.kappa_interval(num1, den1, exact_den=float(den1.sum()))
    assert wide[0] <= narrow[0] <= narrow[1] <= wide[1]
    assert narrow[1] - narrow[0] < 0.5 * (wide[1] - wide[0])
    assert sp.relative_error(den) == 0.0
    assert sp.relative_error(num) == pytest.approx(3 * num.std(ddof=1) * 10 / num.sum(), rel=1e-9)
