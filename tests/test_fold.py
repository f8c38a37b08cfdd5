"""The analysis as a fold: S time segments (and scope parts) merged give one pass's numbers.

Tolerance: 1e-12 relative (1e-13 absolute for shares in [0, 1]) on every float of the JSON document; every
integer (steps, excluded rows, r*, nested r*, increments) and every string (warnings) identical. One pass
and a fold add the same numbers in another order (per-coordinate sums, Gram blocks), so they agree to a few
ulps; the EMA state carried across a boundary (beta^n ema_in + ema_0) rounds once more.
"""

from __future__ import annotations

import math
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import reference as ref

from gradmanifold.analysis import _open_source, _plan, analyze
from gradmanifold.errors import UsageError
from gradmanifold.finalize import finalize
from gradmanifold.fold import Carry, compose, merge, run_segment, summarize
from gradmanifold.projection import ProjectionSpec
from gradmanifold.report.json import to_dict
from gradmanifold.store import ArraySource, StoreWriter

REL, ABS = 1e-12, 1e-13


def data(seed: int, t: int = 400, g: int = 3, k: int = 16, flag_rate: float = 0.05) -> dict[str, np.ndarray]:
    """A strong mean, a random walk and noise (the EMA state far from zero), flags at `flag_rate`."""
    rng = np.random.default_rng(seed)
    mu = 4.0 * rng.standard_normal((g, k))
    walk = np.cumsum(0.3 * rng.standard_normal((t, g, k)), axis=0)
    proj = (mu + walk + rng.standard_normal((t, g, k))).astype(np.float32)
    sqnorm = (proj.astype(np.float64) ** 2).sum(axis=2) * rng.uniform(0.8, 1.2, (t, g))
    flags = (rng.random((t, g)) < flag_rate).astype(np.uint8)
    return {"proj": proj, "sqnorm": sqnorm, "flags": flags}


def source(d: dict[str, np.ndarray], chunk_rows: int = 37) -> ArraySource:
    return ArraySource(d["proj"], d["sqnorm"], flags=d["flags"], chunk_rows=chunk_rows)


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Two analysis documents agree: floats to REL (ABS), everything else exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}.{i}")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert isinstance(b, float) and math.isclose(a, b, rel_tol=REL, abs_tol=ABS), (where, a, b)
    else:
        assert a == b and type(a) is type(b), (where, a, b)


OPTIONS = [
    {"window": 45, "burn_in": 7},
    {"window": 10},
    {"burn_in": 30, "start_step": 50, "stop_step": 333},
    {"window": 64, "ema_grid": (0.5, 0.9, 0.999), "predictors": ("last", "ema:0.999", "trend")},
]


@pytest.mark.parametrize("options", OPTIONS, ids=["window+burn", "short windows", "range+burn", "ema0.999"])
@pytest.mark.parametrize("segments", [2, 3, 7, 50])
def test_segments_equal_one_pass(options: dict[str, Any], segments: int) -> None:
    # chunks of 37 rows: segment boundaries fall inside chunks and inside windows; 5% flagged rows
    d = data(1)
    one = to_dict(analyze(source(d), **options))
    assert_same(one, to_dict(analyze(source(d), segments=segments, **options)))


def test_one_pass_matches_the_reference_with_strong_mean() -> None:
    """The data of this file is harsher than test_analysis' (a mean 4x the noise): the plain pass still
    matches the independent reference, so the fold is compared with a correct baseline."""
    d = data(2, t=200)
    res = analyze(source(d), burn_in=3)
    want = ref.reference_analysis(d["proj"], d["flags"], burn_in=3, sqnorm=d["sqnorm"])
    for name, w in want.items():
        for p in ("last", "ema:0.9", "ema:0.99", "trend"):
            assert math.isclose(res.scopes[name].path_length[p], w["path_length"][p], rel_tol=1e-9)
        assert dict(res.scopes[name].rank.r_star) == w["r_star"]


def test_randomized_sketch_and_sub_sketches_merge() -> None:
    """The Nyström sketch Y = H^T H Omega and the nested sub-sketches add across segments (same Omega)."""
    d = data(3, t=300, k=32)
    opts = {"svd": "randomized", "sketch_rank": 8, "window": 70}
    one = to_dict(analyze(source(d), **opts))
    assert one["scopes"]["model"]["rank"]["method"] == "randomized"
    for segments in (2, 5):
        assert_same(one, to_dict(analyze(source(d), segments=segments, **opts)))


def test_group_selection_and_one_group_alias() -> None:
    d = data(4, t=250, g=4)
    for groups in (("g0", "g2"), ("g3",)):
        one = to_dict(analyze(source(d), groups=groups, window=33))
        assert_same(one, to_dict(analyze(source(d), groups=groups, window=33, segments=4)))


def test_the_carry_composes_to_the_state_of_one_pass() -> None:
    """compose(compose(fresh, A), B) is the state one pass reaches after A + B: ring rows bit for bit (the
    last three valid rows, checked against the data), EMA states to 1e-13 of an explicit recursion."""
    d = data(5, t=301)
    src = source(d, chunk_rows=29)
    plan = _plan(src, _config(burn_in=11))
    fresh = Carry.fresh(plan, src.k)
    cuts = [0, 95, 96, 230, 301]
    carry = fresh
    for a, b in pairwise(cuts):
        carry = compose(plan, carry, summarize(src, plan, a, b))
    whole = compose(plan, fresh, summarize(src, plan, 0, 301))
    np.testing.assert_array_equal(carry.nseen, whole.nseen)
    np.testing.assert_array_equal(carry.hist, whole.hist)
    assert carry.counted_rows == whole.counted_rows == 301 - 11
    for s, groups in enumerate([[0, 1, 2], [0], [1], [2]]):
        rows, valid = ref.scope_rows(d["proj"], d["flags"], groups)
        x = rows[valid]  # the scope's stream: its valid rows, float64
        assert carry.nseen[s] == len(x)
        for i in range(1, 4):  # the ring holds the last three valid rows at slot (row index mod 3)
            np.testing.assert_array_equal(carry.hist[s, (len(x) - i) % 3], x[-i])
        for p, pred in enumerate(plan.predictors):
            if pred.id.startswith("ema:"):
                m = ref.predictions(x, pred.id)
                end = pred.beta * m[-1] + (1.0 - pred.beta) * x[-1]
                np.testing.assert_allclose(carry.ema[s, p], end, rtol=1e-13, atol=1e-13 * np.abs(end).max())


def test_scope_parts_and_segments_merge_in_any_grouping() -> None:
    """Tasks over (segment, scope part): merge scope parts of a segment, then segments; equal to one pass."""
    d = data(6, t=260)
    src = source(d, chunk_rows=31)
    cfg = _config(window=40, burn_in=2)
    plan = _plan(src, cfg)
    _, store = _open_source(src)
    cuts = [plan.lo, 77, 170, plan.hi]
    carries = [Carry.fresh(plan, src.k)]
    for a, b in pairwise(cuts[:-1]):
        carries.append(compose(plan, carries[-1], summarize(src, plan, a, b)))
    segs = []
    for j in range(3):
        left = run_segment(src, plan, cuts[j], cuts[j + 1], carries[j], [0, 2])
        right = run_segment(src, plan, cuts[j], cuts[j + 1], carries[j], [1, 3])
        segs.append(merge(right, left))  # scope parts in any order
    whole = merge(segs[0], merge(segs[1], segs[2]))  # a tree, not a left fold
    assert_same(to_dict(analyze(source(d), cfg)), to_dict(finalize(plan, store, whole)))


def test_merge_refuses_spans_that_do_not_meet() -> None:
    d = data(7, t=120)
    src = source(d)
    plan = _plan(src, _config())
    fresh = Carry.fresh(plan, src.k)
    a = run_segment(src, plan, 0, 40, fresh)
    c = run_segment(src, plan, 60, 120, fresh)
    with pytest.raises(ValueError, match="cannot merge"):
        merge(a, c)
    with pytest.raises(ValueError, match="cannot merge"):
        merge(c, a)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_bad_segments(bad: Any) -> None:
    with pytest.raises(UsageError, match="segments"):
        analyze(source(data(8, t=50)), segments=bad)


def test_more_segments_than_rows() -> None:
    d = data(9, t=12)
    assert_same(to_dict(analyze(source(d))), to_dict(analyze(source(d), segments=1000)))


def test_progress_covers_the_range_once() -> None:
    seen: list[tuple[int, int]] = []
    analyze(source(data(10, t=200), chunk_rows=16), segments=3, progress=lambda a, b: seen.append((a, b)))
    assert seen[-1] == (200, 200) and all(b == 200 for _, b in seen)
    assert [a for a, _ in seen] == sorted(a for a, _ in seen)


# ---------------------------------------------------------------------------------------------- stores


def _store(path: Path, t: int = 60, chunk_rows: int = 8) -> Path:
    rng = np.random.default_rng(4)
    mean = 3.0 * rng.standard_normal((2, 16))
    with StoreWriter(
        path, ProjectionSpec(k=16), [("a", 100), ("b", 50)], chunk_rows=chunk_rows, fsync=False
    ) as w:
        for step in range(t):
            p = (mean + 0.7 * rng.standard_normal((2, 16))).astype(np.float32)
            w.append(step, p, (p.astype(np.float64) ** 2).sum(axis=1))
    return path


def test_damaged_chunk_left_out_with_windows_and_segments(tmp_path: Path) -> None:
    """A chunk left out by skip_corrupt (rows 16..23), windows of 10 counted rows present, segment
    boundaries inside the damaged chunk: one warning for the chunk, windows as one pass cuts them."""
    path = _store(tmp_path / "r.zarr")
    f = path / "proj" / "c" / "2" / "0" / "0"
    raw = bytearray(f.read_bytes())
    raw[40] ^= 0x55
    f.write_bytes(bytes(raw))
    one = analyze(path, skip_corrupt=True, window=10)
    # regression: one pass once looped forever here; a window holds 10 rows present, across the gap
    assert [(w.start_step, w.end_step, w.n_rows) for w in one.windows] == [
        (0, 9, 10), (10, 27, 10), (28, 37, 10), (38, 47, 10), (48, 57, 10), (58, 59, 2)
    ]  # fmt: skip
    assert sum("damaged chunk 2 (rows 16..23" in w for w in one.warnings) == 1
    for segments in (3, 5, 9):  # 60 rows: boundaries at 20 (inside the chunk), 12, 18, 20, 24 ...
        assert_same(to_dict(one), to_dict(analyze(path, skip_corrupt=True, window=10, segments=segments)))


def test_update_statistics_with_segments(tmp_path: Path) -> None:
    """Stores with parameter updates: the statistics come from one whole-stream pass: equal exactly."""
    from gradmanifold import Recorder

    path = tmp_path / "u.zarr"
    rng = np.random.default_rng(0)
    theta = rng.standard_normal(48)
    star = rng.standard_normal(48)
    with Recorder(path, k=16, kind="gaussian", updates=True, chunk_rows=16) as rec:
        for step in range(120):
            g = 0.7 * (theta - star) + 0.05 * rng.standard_normal(48)
            rec.record(
                step, {"w": g[:30], "v": g[30:]}, params={"w": theta[:30].copy(), "v": theta[30:].copy()}
            )
            theta = theta - 0.2 * g
    one = to_dict(analyze(path, window=40))
    assert "updates" in one["scopes"]["model"] and "updates" in one["windows"][0]["scopes"]["model"]
    assert_same(one, to_dict(analyze(path, window=40, segments=4)))


def _config(**options: Any) -> Any:
    from gradmanifold.analysis import config_with

    return config_with(None, options)
