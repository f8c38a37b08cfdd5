"""Fault: non-finite gradients (NaN, +-Inf), subnormals, huge finite values.

Required: flagged and counted; never stored as a non-finite projection, never reaching the kernels or the
SVD; analysis results unaffected by the flagged rows (the same numbers as a run that never saw them).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from faultkit import GROUPS, SPEC, cli

from gradmanifold import Recorder
from gradmanifold.store import FLAG_NONFINITE, StoreWriter, open_store
from gradmanifold.store.verify import verify_store

BAD = {
    "nan": np.nan,
    "+inf": np.inf,
    "-inf": -np.inf,
    "overflow": 1e300,  # finite, but its squared norm overflows float64
}


def grads(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    base = rng.standard_normal(40) * 0.1 + 1.0  # a drifting signal plus noise: predictable, not trivially
    return {"w": base * (1 + 0.01 * step), "b": rng.standard_normal(5)}


def poisoned(step: int, value: float) -> dict[str, np.ndarray]:
    g = grads(step)
    g["w"] = g["w"].copy()
    g["w"][step % 40] = value
    return g


BAD_STEPS = {7: "nan", 13: "+inf", 21: "-inf", 22: "overflow", 40: "nan"}


def _record(path: Path, nonfinite: str) -> Recorder:
    with Recorder(path, k=16, seed=1, groups="tensor", nonfinite=nonfinite, chunk_rows=8) as rec:
        for step in range(60):
            g = poisoned(step, BAD[BAD_STEPS[step]]) if step in BAD_STEPS else grads(step)
            rec.record(step, g, loss=1.0 / (step + 1))
    return rec


def test_flagged_counted_and_stored_finite(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    rec = _record(path, "flag")
    assert rec.steps_flagged == len(BAD_STEPS) and rec.steps_recorded == 60
    r = open_store(path)
    chunks = list(r.iter_chunks())
    proj = np.concatenate([c.proj for c in chunks])
    flags = np.concatenate([c.flags for c in chunks])
    w = r.group_names.index("w")
    assert np.isfinite(proj).all()  # a non-finite gradient is stored as a zero row, flagged
    flagged = np.flatnonzero(flags[:, w] & FLAG_NONFINITE)
    assert list(flagged) == sorted(BAD_STEPS)
    assert not (flags[:, 1 - w] & FLAG_NONFINITE).any()  # only the poisoned group is flagged
    np.testing.assert_array_equal(proj[flagged, w], 0)
    assert r.manifest.segments[-1].nonfinite == len(BAD_STEPS)
    report = verify_store(path)
    assert report.ok and report.nonfinite_rows[w] == len(BAD_STEPS)
    res = cli("verify", str(path))
    assert res.exit_code == 0 and f"group w: {len(BAD_STEPS)} non-finite row(s)" in res.stdout


def test_subnormal_and_tiny_values_are_ordinary_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    with Recorder(path, k=16, seed=1) as rec:
        for step, value in enumerate([5e-324, 1e-310, np.finfo(np.float32).smallest_subnormal, 1e-30]):
            assert rec.record(step, {"w": np.full(50, value)})
    r = open_store(path)
    c = next(r.iter_chunks())
    assert not c.flags.any() and np.isfinite(c.proj).all() and np.isfinite(c.sqnorm).all()


def test_writer_flags_a_projection_that_overflows_float32(tmp_path: Path) -> None:
    """Whoever calls the writer: a finite float64 row beyond float32's range is flagged, stored as zeros."""
    path = tmp_path / "r.zarr"
    with StoreWriter(path, SPEC, GROUPS, chunk_rows=4) as w:
        w.append(0, np.ones((2, 8)), [1.0, 1.0])
        w.append(1, np.full((2, 8), 1e39), [1e78, 1.0])  # group a overflows float32; b too (all 1e39)
        w.append(2, np.array([[1.0] * 8, [np.nan] * 8]), [1.0, 1.0])
        w.append(3, np.ones((2, 8)), [np.inf, 1.0])
    c = next(open_store(path).iter_chunks())
    assert np.isfinite(c.proj).all()
    np.testing.assert_array_equal(c.flags & FLAG_NONFINITE, [[0, 0], [1, 1], [0, 1], [1, 0]])
    assert open_store(path).manifest.segments[-1].nonfinite == 3


def test_recorder_huge_finite_gradient_is_flagged_quietly(tmp_path: Path) -> None:
    with Recorder(tmp_path / "r.zarr", k=16, seed=1) as rec:
        rec.record(0, {"w": np.full(50, 1e39)})
        assert rec.steps_flagged == 1


def _numbers(result: object) -> dict[str, object]:
    """kappa, path lengths and spectra of every scope, from the analysis result."""
    out: dict[str, object] = {}
    for scope in result.scopes.values():  # type: ignore[attr-defined]
        out[scope.name] = {
            "kappa": dict(scope.kappa),
            "path_length": dict(scope.path_length),
            "r_star": dict(scope.rank.r_star),
            "frobenius_sq": scope.rank.frobenius_sq,
            "tail": list(scope.rank.tail),
            "distortion": scope.projection_distortion,
        }
    return out


def test_analysis_ignores_flagged_rows(tmp_path: Path) -> None:
    """Poisoned steps (flagged) analyze exactly like the same run that skipped them: for the poisoned group
    and the model total; the clean group keeps every row and analyzes like a run never poisoned."""
    analysis = pytest.importorskip("gradmanifold.analysis")
    flagged, skipped, clean = tmp_path / "flagged.zarr", tmp_path / "skipped.zarr", tmp_path / "clean.zarr"
    _record(flagged, "flag")
    _record(skipped, "skip")
    with Recorder(clean, k=16, seed=1, groups="tensor", chunk_rows=8) as rec:
        for step in range(60):
            rec.record(step, grads(step), loss=1.0 / (step + 1))
    assert open_store(flagged).n_steps == 60 and open_store(skipped).n_steps == 60 - len(BAD_STEPS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NaN reaching numpy would warn
        results = {
            name: _numbers(analysis.analyze(p, svd="exact", chunk_rows=rows))
            for name, p, rows in (("flagged", flagged, 5), ("skipped", skipped, 7), ("clean", clean, 9))
        }
    assert "nan" not in json.dumps(results["flagged"], default=str).lower()
    assert "inf" not in json.dumps(results["flagged"], default=str).lower()
    for scope, other in (("w", "skipped"), ("model", "skipped"), ("b", "clean")):
        _same(results["flagged"][scope], results[other][scope], scope)


def _same(sa: object, sb: object, scope: str) -> None:
    assert isinstance(sa, dict) and isinstance(sb, dict)
    assert sa["r_star"] == sb["r_star"], scope
    for key in ("kappa", "path_length"):
        for pred in sa[key]:
            assert sa[key][pred] == pytest.approx(sb[key][pred], rel=1e-9), (scope, key, pred)
    assert sa["frobenius_sq"] == pytest.approx(sb["frobenius_sq"], rel=1e-9), scope
    np.testing.assert_allclose(sa["tail"], sb["tail"], rtol=1e-7, atol=1e-12)
