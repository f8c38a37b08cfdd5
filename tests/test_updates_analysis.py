"""`analyze` on a store with parameter updates: the update statistics per scope and per window, end to end
through the Recorder and the store, on runs whose answers are known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from faults.faultkit import cli

from gradmanifold import Recorder
from gradmanifold.analysis import analyze


def quadratic_gd(path: Path, a: float = 0.7, lr: float = 0.3, steps: int = 300, noise: float = 0.0) -> None:
    """Gradient descent on L = a/2 ||theta - theta*||^2 in two groups: g = a (theta - theta*)."""
    rng = np.random.default_rng(0)
    theta = {"w": rng.standard_normal(40), "v": rng.standard_normal(24)}
    star = {"w": rng.standard_normal(40), "v": rng.standard_normal(24)}
    with Recorder(path, k=32, kind="gaussian", updates=True, groups="tensor") as rec:
        for step in range(steps):
            g = {n: a * (theta[n] - star[n]) + noise * rng.standard_normal(theta[n].shape) for n in theta}
            rec.record(step, g, params={n: t.copy() for n, t in theta.items()})
            theta = {n: theta[n] - lr * g[n] for n in theta}


def test_gradient_descent_on_a_quadratic(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    quadratic_gd(path, steps=60)
    res = analyze(path)
    for name in ("model", "w", "v"):
        u = res.scopes[name].updates
        assert u is not None and u["norms"] == "exact" and u["proxy"] is True
        # g_t - g_{t-1} = a u_t exactly, so the secant smoothness is a at every step (any projection)
        assert u["secant_smoothness_median"] == pytest.approx(0.7, rel=1e-5)
        assert u["secant_smoothness_quantiles"]["0.1"] == pytest.approx(0.7, rel=1e-5)
        assert u["secant_smoothness_quantiles"]["0.9"] == pytest.approx(0.7, rel=1e-5)
        assert u["secant_smoothness_exact_median"] == pytest.approx(0.7, rel=0.35)  # JL: ||Ru|| vs ||u||
        assert u["alignment_median"] == pytest.approx(1.0, abs=1e-5)  # plain gradient descent
        assert u["n_pairs"] == 59
        # D_g = a^2 D_theta: smooth curvature, exponent 2, no noise floor
        assert u["glass_exponent"] == pytest.approx(2.0, abs=0.02)
        assert u["glass_fit"]["noise_floor"] == pytest.approx(
            0.0, abs=1e-6 * u["glass_fit"]["lags"][0]["d_g"]
        )


def test_json_and_windows(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    quadratic_gd(path, steps=120)
    res = cli("analyze", str(path), "--json", "--window", "40")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["scopes"]["model"]["updates"]["alignment_median"] == pytest.approx(1.0, abs=1e-5)
    assert len(doc["windows"]) == 3
    for w in doc["windows"]:
        wu = w["scopes"]["model"]["updates"]
        assert wu["secant_smoothness_median"] == pytest.approx(0.7, rel=1e-5)
    text = cli("analyze", str(path), env={"COLUMNS": "120"}).stdout
    assert "parameter updates u_t (projected; a proxy)" in text and "update norms: exact" in text


def test_a_store_without_updates_has_no_update_keys(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with Recorder(path, k=8) as rec:
        for step in range(10):
            rec.record(step, np.full(5, float(step)))
    doc = json.loads(cli("analyze", str(path), "--json", "--window", "5").stdout)
    assert "updates" not in doc["scopes"]["model"]
    assert "updates" not in doc["windows"][0]["scopes"]["model"]
    assert "parameter updates" not in cli("analyze", str(path)).stdout
