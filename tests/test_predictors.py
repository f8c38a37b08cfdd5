"""Predictor ids, and the fused predictor kernel against its numpy twin and against the plain reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st

from gradmanifold.errors import UsageError
from gradmanifold.kernels.predict import predict_block, predict_block_numpy
from gradmanifold.predictors import (
    EMA,
    LAST,
    TREND,
    ZERO,
    Predictor,
    canonical_id,
    parse_ema_grid,
    parse_predictor,
    parse_predictors,
)


def test_ids_round_trip_and_are_canonical() -> None:
    for text in ("zero", "last", "trend", "ema:0.9", "ema:0.99", "ema:0.5", "ema:0"):
        assert parse_predictor(text).id == (text if text != "ema:0" else "ema:0.0")
    assert canonical_id("EMA:0.90") == "ema:0.9"
    assert canonical_id(" ema:.95 ") == "ema:0.95"
    assert parse_predictor("ema:0.99") == Predictor(EMA, 0.99)


def test_parse_lists() -> None:
    got = parse_predictors(["zero,last", "ema:0.9", "last", "trend"])
    assert [p.id for p in got] == ["zero", "last", "ema:0.9", "trend"]
    assert parse_ema_grid(["0.9,0.5", "0.99", "0.90"]) == (0.5, 0.9, 0.99)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("lst", "unknown predictor 'lst'"),
        ("ema", "needs a beta"),
        ("ema:1", r"outside \[0, 1\)"),
        ("ema:-0.1", r"outside \[0, 1\)"),
        ("ema:nan", r"outside \[0, 1\)"),
        ("ema:x", "not a number"),
    ],
)
def test_bad_ids(text: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        parse_predictor(text)
    with pytest.raises(UsageError):
        parse_predictors([])


# ---------------------------------------------------------------------------------------------- the kernel

KINDS = np.array([ZERO, LAST, EMA, EMA, TREND], np.int64)
BETAS = np.array([0.0, 0.0, 0.9, 0.3, 0.0])


class _State:
    def __init__(self, n_scopes: int, n_pred: int, k: int, cap: int) -> None:
        self.hist = np.zeros((n_scopes, 3, k))
        self.nseen = np.zeros(n_scopes, np.int64)
        self.ema = np.zeros((n_scopes, n_pred, k))
        self.acc = np.zeros((n_scopes, n_pred, k))
        self.count = np.zeros(n_scopes, np.int64)
        self.hbuf = np.zeros((n_scopes, cap, k))
        self.hcount = np.zeros(n_scopes, np.int64)

    def args(self) -> tuple[np.ndarray, ...]:
        return (self.hist, self.nseen, self.ema, self.acc, self.count, self.hbuf, self.hcount)


def _run(kernel, proj, valid, counted, cuts):  # type: ignore[no-untyped-def]
    n, g, k = proj.shape
    members = np.array(list(range(g)) + list(range(g)), np.int64)
    offsets = np.array([0, g, *(g + i + 1 for i in range(g))], np.int64)
    state = _State(g + 1, len(KINDS), k, n)
    bounds = [0, *sorted(set(cuts)), n]
    for a, b in itertools.pairwise(bounds):
        kernel(proj[a:b], members, offsets, valid[a:b], counted[a:b], KINDS, BETAS, *state.args())
    return state


@st.composite
def _blocks(draw):  # type: ignore[no-untyped-def]
    n = draw(st.integers(1, 40))
    g = draw(st.integers(1, 3))
    k = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    proj = (rng.standard_normal((n, g, k)) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
    valid = rng.random((n, g + 1)) > draw(st.sampled_from([0.0, 0.2]))
    counted = np.arange(n) >= draw(st.integers(0, n))
    cuts = draw(st.lists(st.integers(0, n), max_size=4))
    return proj, valid, counted, cuts


@given(_blocks())
def test_kernel_equals_numpy_twin(block) -> None:  # type: ignore[no-untyped-def]
    proj, valid, counted, cuts = block
    a = _run(predict_block, proj, valid, counted, cuts)
    b = _run(predict_block_numpy, proj, valid, counted, [])
    for x, y in zip(a.args(), b.args(), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-300)


def test_kernel_matches_reference_per_scope() -> None:
    rng = np.random.default_rng(7)
    proj = rng.standard_normal((60, 2, 5)).astype(np.float32)
    valid = np.ones((60, 3), bool)
    counted = np.ones(60, bool)
    s = _run(predict_block, proj, valid, counted, [13, 14, 40])
    x = proj.astype(np.float64).sum(axis=1)
    for i, pid in enumerate(["zero", "last", "ema:0.9", "ema:0.3", "trend"]):
        assert s.acc[0, i].sum() == pytest.approx(ref.path_length(x, pid), rel=1e-12)
    np.testing.assert_allclose(s.hbuf[0, : s.hcount[0]], ref.increments(x), rtol=1e-14)
    assert s.hcount.tolist() == [59, 59, 59]


def test_a_non_causal_predictor_is_caught() -> None:
    # Teeth: the reference with an EMA that peeks at g_t (m_t = e_t) differs from the kernel's causal EMA.
    rng = np.random.default_rng(8)
    proj = rng.standard_normal((50, 1, 4)).astype(np.float32)
    s = _run(predict_block, proj, np.ones((50, 2), bool), np.ones(50, bool), [])
    x = proj[:, 0].astype(np.float64)
    e = np.zeros(4)
    peek = 0.0
    for t in range(50):
        e = 0.9 * e + 0.1 * x[t]
        peek += float(((x[t] - e) ** 2).sum())
    assert s.acc[1, 2].sum() != pytest.approx(peek, rel=1e-3)
    assert s.acc[1, 2].sum() == pytest.approx(ref.path_length(x, "ema:0.9"), rel=1e-12)
