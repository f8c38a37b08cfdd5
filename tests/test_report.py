"""The JSON contract (schema, keys, nulls), console tables, `check` paths, golden JSON of sample_logs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradmanifold.analysis import analyze
from gradmanifold.errors import UsageError
from gradmanifold.report import checks
from gradmanifold.report.console import render as render_text
from gradmanifold.report.json import SCHEMA, render, to_dict
from gradmanifold.store.chunk import ArraySource

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"

SCOPE_KEYS = {
    "n_steps",
    "excluded_steps",
    "kappa",
    "path_length",
    "kappa_interval",
    "projection_distortion",
    "distortion_rel_error",
    "rank",
    "bounds",
    "best_ema",
    "self_test",
}
RANK_KEYS = {
    "method",
    "n_increments",
    "frobenius_sq",
    "r_star",
    "tail",
    "participation_ratio",
    "top_energy",
    "nested",
}


@pytest.fixture(scope="module")
def result() -> Any:
    rng = np.random.default_rng(0)
    proj = (rng.standard_normal((120, 3, 16)) + 2.0).astype(np.float32)
    proj[:, 2] = 0.0  # a dead group: its kappa is 0/0, written as null
    sq = (proj.astype(np.float64) ** 2).sum(axis=2)
    src = ArraySource(proj, sq, group_names=["enc", "dec", "dead"], chunk_rows=25)
    return analyze(src, window=50, predictors=("last", "ema:0.90", "trend"))


def test_json_contract(result: Any) -> None:
    text = render(result)
    doc = json.loads(text)
    assert text.endswith("\n")
    assert json.dumps(doc, indent=2, sort_keys=True) + "\n" == text  # keys sorted, stable formatting
    assert doc["schema"] == SCHEMA == "gradmanifold.analysis/1"
    assert set(doc) == {"schema", "store", "config", "scopes", "windows", "warnings"}
    assert {"path", "n_steps", "k", "projection", "groups"} <= set(doc["store"])
    assert {"predictors", "eps", "window", "svd", "start_step", "stop_step", "groups"} <= set(doc["config"])
    assert list(doc["scopes"]) == sorted(["model", "enc", "dec", "dead"])
    for sc in doc["scopes"].values():
        assert set(sc) == SCOPE_KEYS
        assert set(sc["kappa"]) == {"zero", "last", "ema:0.9", "trend"}
        assert set(sc["kappa_interval"]) == set(sc["kappa"]) == set(sc["path_length"])
        assert set(sc["rank"]) == RANK_KEYS
        assert set(sc["rank"]["r_star"]) == {"0.5", "0.1", "0.05", "0.01"}
        assert set(sc["rank"]["top_energy"]) == {"1", "2", "5", "10"}
        assert set(sc["rank"]["nested"]) == {"k", "r_star", "k_enough", "suggested_k", "moving"}
        assert {"sqrt_min_kappa", "min_kappa_predictor", "avg_proxy_error"} <= set(sc["bounds"])
        assert set(sc["best_ema"]) == {"beta", "kappa"}
        assert len(sc["rank"]["tail"]) == 17
    model = doc["scopes"]["model"]
    assert model["kappa"]["zero"] == 1.0
    assert model["self_test"] == {"kappa_zero": 1.0, "ok": True}
    assert all(len(iv) == 2 for iv in model["kappa_interval"].values())
    dead = doc["scopes"]["dead"]
    assert dead["kappa"]["last"] is None and dead["projection_distortion"] is None
    assert dead["self_test"]["ok"] is False
    assert [w["start_step"] for w in doc["windows"]] == [0, 50, 100]
    w = doc["windows"][0]
    assert set(w) == {"index", "start_step", "end_step", "n_rows", "scopes"}
    assert set(w["scopes"]["model"]) == {"n_steps", "kappa", "r_star"}


def test_to_dict_has_no_nan(result: Any) -> None:
    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert not (isinstance(x, float) and not math.isfinite(x))

    walk(to_dict(result))


def test_console_tables(result: Any) -> None:
    text = render_text(result)
    assert "self-test: kappa(zero) = 1 exactly in every scope: FAILED" in text  # the dead group
    for name in ("model", "enc", "dec", "dead", "ema:0.9", "trend", "r*(0.1)", "windows of 50 steps"):
        assert name in text
    assert "\x1b[" not in text  # no colour codes in rendered text


def test_console_self_test_ok() -> None:
    g = np.random.default_rng(1).standard_normal((40, 8)).astype(np.float32)
    assert "every scope: ok" in render_text(analyze(g))


# ---------------------------------------------------------------------------------------------- check paths


def test_resolve_paths(result: Any) -> None:
    doc = to_dict(result)
    m = doc["scopes"]["model"]
    assert checks.resolve(doc, "model.kappa.ema:0.9") == m["kappa"]["ema:0.9"]
    assert checks.resolve(doc, "model.kappa.ema:0.90") == m["kappa"]["ema:0.9"]
    assert checks.resolve(doc, "scopes.model.rank.r_star.0.1") == m["rank"]["r_star"]["0.1"]
    assert checks.resolve(doc, "model.rank.r_star.0.10") == m["rank"]["r_star"]["0.1"]
    assert checks.resolve(doc, "enc.rank.tail.3") == doc["scopes"]["enc"]["rank"]["tail"][3]
    assert (
        checks.resolve(doc, "windows.1.scopes.dec.kappa.last")
        == doc["windows"][1]["scopes"]["dec"]["kappa"]["last"]
    )
    assert checks.resolve(doc, "model.rank.top_energy.10") == m["rank"]["top_energy"]["10"]
    with pytest.raises(UsageError, match=r"no key matches 'kapa\.last'"):
        checks.resolve(doc, "model.kapa.last")
    # a scope named with dots (a tensor, a module path) is found without `scopes.` too, the longest name first
    dotted = {"scopes": {"fc1.bias": {"kappa": {"last": 1.0}}, "fc1.weight": {"kappa": {"last": 2.0}}}}
    assert checks.resolve(dotted, "fc1.weight.kappa.last") == 2.0
    assert checks.resolve(dotted, "scopes.fc1.weight.kappa.last") == 2.0
    dotted["scopes"]["fc1"] = {"weight": {"kappa": {"last": 3.0}}}
    assert checks.resolve(dotted, "fc1.weight.kappa.last") == 2.0  # the longest key, as at every level
    with pytest.raises(UsageError, match=r"no key matches 'fc2\.kappa\.last' under the top level"):
        checks.resolve(dotted, "fc2.kappa.last")
    with pytest.raises(UsageError, match="not an index"):
        checks.resolve(doc, "windows.9.scopes")


def test_evaluate(result: Any) -> None:
    doc = to_dict(result)
    k = doc["scopes"]["model"]["kappa"]["last"]
    bounds = checks.parse_bounds(
        [f"model.kappa.last={k + 0.1}", f"enc.kappa.trend={-1}"], [f"model.kappa.last={k}"]
    )
    out = checks.evaluate(doc, bounds)
    assert [o.ok for o in out] == [True, False, True]
    assert out[1].line().startswith("FAIL: enc.kappa.trend = ")
    assert "want <= -1 (max)" in out[1].line()
    null = checks.evaluate(doc, [checks.parse_bound("dead.kappa.last=2", "max")])[0]
    assert not null.ok and "null" in null.line()
    with pytest.raises(UsageError, match="not a number"):
        checks.evaluate(doc, [checks.parse_bound("model.rank=1", "max")])


@pytest.mark.parametrize("text", ["model.kappa.last", "=3", "model.kappa.last=abc", "x=nan"])
def test_bad_bounds(text: str) -> None:
    with pytest.raises(UsageError):
        checks.parse_bound(text, "max")


def test_no_bounds() -> None:
    with pytest.raises(UsageError, match="no thresholds"):
        checks.parse_bounds([], [])


# ---------------------------------------------------------------------------------------------- golden files


def _goldens() -> list[Path]:
    return sorted(GOLDEN.glob("*.json")) if GOLDEN.is_dir() else []


@pytest.mark.skipif(not _goldens(), reason="no golden JSON yet (make golden writes tests/golden/*.json)")
@pytest.mark.parametrize("golden", _goldens(), ids=lambda p: p.stem)
def test_golden_json(golden: Path) -> None:
    store = ROOT / "sample_logs" / f"{golden.stem}.zarr"
    assert store.is_dir(), f"{golden.name} has no store {store}"
    want = json.loads(golden.read_text())
    got = to_dict(analyze(store))
    want["store"].pop("path")
    got["store"].pop("path")
    _assert_same(got, want, "")


def _assert_same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{where}: keys {set(got) ^ set(want)}"
        for key in want:
            _assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_same(a, b, f"{where}.{i}")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where
