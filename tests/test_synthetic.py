"""Synthetic tasks: each documented ground truth against the task's own gradients (plain references)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from gradmanifold.errors import UsageError
from gradmanifold.synthetic import (
    TASKS,
    kappa_reference,
    make_task,
    rank_from_energies,
    rank_reference,
    record_task,
)

PRED = ("zero", "last", "ema:0.9", "ema:0.99", "trend")


# ---------------------------------------------------------- a second, plain reference (loops, no tricks)
def plain_kappa(g: np.ndarray) -> dict[str, float]:
    g = np.asarray(g, dtype=np.float64)
    den = sum(float(row @ row) for row in g)
    out = {}
    for pid in PRED:
        num = 0.0
        e = np.zeros(g.shape[1])
        beta = float(pid[4:]) if pid.startswith("ema:") else 0.0
        for t, row in enumerate(g):
            if pid == "zero" or t == 0:
                m = np.zeros_like(row)
            elif pid == "last":
                m = g[t - 1]
            elif pid == "trend":
                m = g[0] if t == 1 else 2 * g[t - 1] - g[t - 2]
            else:
                m = e
            if pid.startswith("ema:"):
                m = e
                e = beta * e + (1 - beta) * row
            num += float((row - m) @ (row - m))
        out[pid] = num / den
    return out


def plain_rank(g: np.ndarray, eps: float) -> int:
    s2 = np.linalg.svd(np.diff(g, axis=0), compute_uv=False) ** 2
    total = s2.sum()
    for r in range(1, len(s2) + 1):
        if s2[:r].sum() >= (1 - eps) * total:
            return r
    return len(s2)


def test_module_references_agree_with_the_plain_ones() -> None:
    g = np.random.default_rng(3).standard_normal((40, 7)).cumsum(axis=0)
    got, want = kappa_reference(g), plain_kappa(g)
    for pid in PRED:
        assert got[pid] == pytest.approx(want[pid], rel=1e-12)
    for eps in (0.5, 0.1, 0.01):
        assert rank_reference(g, eps) == plain_rank(g, eps)


def test_rank_from_energies_counts_multiplicities() -> None:
    assert rank_from_energies(np.array([4.0, 1.0]), 0.5, np.array([1, 4])) == 1  # 4 of 8 is half
    assert rank_from_energies(np.array([4.0, 1.0]), 0.1, np.array([1, 4])) == 5  # 7.2 of 8: 4 + 1 + 1 + 1 + 1
    assert rank_from_energies(np.ones(10), 0.05) == 10
    assert rank_from_energies(np.zeros(3), 0.1) == 0


# ------------------------------------------------------------------ ground truths
def measured(name: str, steps: int, dim: int, seed: int, **params: float) -> tuple[dict, dict]:
    task = make_task(name, steps, dim, seed, params)
    truth = task.ground_truth(eps=())
    return truth.kappa, plain_kappa(task.array()) if dim * steps <= 40_000 else kappa_reference(task.array())


def test_white_noise_matches_the_exact_expectation_and_designs_closed_forms() -> None:
    truth, got = measured("white-noise", 600, 256, 1, q=0.3)
    for pid in PRED:
        assert got[pid] == pytest.approx(truth[pid], rel=0.02), pid
    # docs/METHOD.md: long white-noise streams: last 2(1-q), ema:b (2/(1+b))(1-q), trend 6(1-q)
    long = make_task("white-noise", 20_000, 4, 0, {"q": 0.3}).ground_truth(eps=())
    q = 0.3
    closed = {"zero": 1.0, "last": 2 * (1 - q), "ema:0.9": 2 / 1.9 * (1 - q), "trend": 6 * (1 - q)}
    for pid, value in closed.items():
        assert long.kappa[pid] == pytest.approx(value, rel=2e-3), pid
        assert long.kappa_limit[pid] == pytest.approx(value, rel=1e-12)


def test_white_noise_truth_has_teeth() -> None:
    """The truth for q = 0.5 must not pass on data generated with q = 0.3."""
    truth = make_task("white-noise", 600, 256, 1, {"q": 0.5}).ground_truth(eps=()).kappa
    got = kappa_reference(make_task("white-noise", 600, 256, 1, {"q": 0.3}).array())
    assert abs(got["last"] / truth["last"] - 1) > 0.2


def test_random_walk_expectation_is_the_closed_form_and_one_run_lands_within_its_spread() -> None:
    steps, dim = 500, 256
    truth, got = measured("random-walk", steps, dim, 2)
    assert truth["last"] == pytest.approx(2 / (steps + 1), rel=1e-12)
    assert truth["zero"] == pytest.approx(1.0, rel=1e-12)
    for pid in PRED:  # documented spread: about 1.5 / sqrt(d) relative
        assert got[pid] == pytest.approx(truth[pid], rel=4 / math.sqrt(dim)), pid


def test_lowrank_drift_recovers_the_planted_rank() -> None:
    task = make_task("lowrank-drift", 400, 64, 3, {"rank": 5})
    g = task.array()
    truth = task.ground_truth(eps=(0.1, 0.05, 0.01))
    for eps in (0.1, 0.05, 0.01):
        assert plain_rank(g, eps) == 5
        assert truth.rank[repr(eps)] == 5
        assert truth.rank_limit[repr(eps)] == 5
    got = plain_kappa(g)
    for pid in PRED:
        assert got[pid] == pytest.approx(truth.kappa[pid], rel=0.15), pid


def test_lowrank_drift_with_decaying_energies_predicts_a_lower_rank_at_large_eps() -> None:
    task = make_task("lowrank-drift", 600, 64, 4, {"rank": 8, "decay": 0.5})
    truth = task.ground_truth(eps=(0.5, 0.01))
    # energies 1, 1/2, 1/4 ...: the first direction holds about half of the total
    assert truth.rank_limit["0.5"] <= 2
    assert truth.rank_limit["0.01"] in (7, 8)
    assert abs(rank_reference(task.array(), 0.5) - truth.rank_limit["0.5"]) <= 1


def test_noisy_quadratic_matches_the_exact_expectation() -> None:
    truth, got = measured("noisy-quadratic", 600, 128, 5)
    for pid in PRED:
        assert got[pid] == pytest.approx(truth[pid], rel=0.02), pid
    # noise-dominated stationary SGD: last is worse than predicting zero, the slow EMA about as good
    assert truth["last"] > 1.5 and truth["trend"] > truth["last"]


def test_lqr_lands_within_the_replica_spread() -> None:
    task = make_task("lqr", 300, 32, 6, {"replicas": 8})
    truth = task.ground_truth(eps=(0.5,))
    got = kappa_reference(task.array())
    assert truth.method == "estimated from 8 replicas"
    for pid in PRED:
        tol = 4 * truth.kappa_sd[pid] + 0.02 * truth.kappa[pid]
        assert abs(got[pid] - truth.kappa[pid]) <= tol, pid
    assert abs(rank_reference(task.array(), 0.5) - truth.rank["0.5"]) <= 3


def test_lqr_gradient_is_the_derivative_of_the_cost() -> None:
    from gradmanifold.synthetic import _dlyap, _lqr_grad, _lqr_setup

    setup = _lqr_setup(make_task("lqr", 10, 12, 0))
    n, m = setup.b.shape
    k = np.random.default_rng(0).standard_normal((1, m, n)) * 0.05

    def cost(kk: np.ndarray) -> float:
        ak = setup.a - setup.b @ kk
        p = _dlyap(ak, np.eye(n) + np.swapaxes(kk, -1, -2) @ kk)
        return float(np.trace(p[0]))

    grad = _lqr_grad(setup.a, setup.b, k)[0][0]
    h = 1e-6
    for i, j in [(0, 0), (m - 1, n - 1), (0, n // 2)]:
        e = np.zeros_like(k)
        e[0, i, j] = h
        assert grad[i, j] == pytest.approx((cost(k + e) - cost(k - e)) / (2 * h), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("name", TASKS)
def test_tasks_are_deterministic_in_their_seed(name: str) -> None:
    a = make_task(name, 20, 12, 7).array()
    b = make_task(name, 20, 12, 7).array()
    c = make_task(name, 20, 12, 8).array()
    assert a.shape == (20, 12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    ("name", "params", "words"),
    [
        ("pink-noise", {}, "unknown synthetic task"),
        ("white-noise", {"q": 1.5}, "q (signal fraction)"),
        ("white-noise", {"rank": 3}, "unknown parameter"),
        ("lowrank-drift", {"rank": 99}, "rank must be between"),
        ("noisy-quadratic", {"lr": 2.5}, "lr"),
    ],
)
def test_bad_task_options_are_usage_errors(name: str, params: dict, words: str) -> None:
    with pytest.raises(UsageError, match=re.escape(words)):
        make_task(name, 50, 16, 0, params)


def test_recorded_store_matches_the_truth_within_the_projection_error(tmp_path: Path) -> None:
    from gradmanifold import Recorder
    from gradmanifold.analysis import analyze

    for name, params in (("white-noise", {}), ("lowrank-drift", {"rank": 4})):
        task = make_task(name, 300, 64, 0, params)
        path = tmp_path / f"{name}.zarr"
        with Recorder(path, k=128, seed=0) as rec:
            assert record_task(task, rec) == 300
        result = analyze(path)
        scope = result.scopes["all"]
        raw = kappa_reference(task.array())
        truth = task.ground_truth(eps=())
        for pid in ("last", "ema:0.9", "trend"):
            # projected vs full-dimensional: the JL error at k = 128 on a 64-dim stream
            assert scope.kappa[pid] == pytest.approx(raw[pid], rel=0.08), (name, pid)
            if name == "white-noise":
                assert scope.kappa[pid] == pytest.approx(truth.kappa[pid], rel=0.1), pid
        if name == "lowrank-drift":
            assert scope.rank.r_star["0.1"] == 4  # the planted rank survives the projection
