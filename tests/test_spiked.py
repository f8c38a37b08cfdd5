"""The spiked-two-layer synthetic task: its gradients, its ground truth, and recording it."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from gradmanifold.errors import UsageError
from gradmanifold.synthetic import SpikedTruth, kappa_reference, make_task, record_task

PRED = ("zero", "last", "ema:0.9", "ema:0.99", "trend")


def test_dimensions_follow_dim_and_hidden() -> None:
    assert make_task("spiked-two-layer", 5, 2048).matrix_shape == (32, 64)
    assert make_task("spiked-two-layer", 5, 1024).matrix_shape == (16, 64)
    assert make_task("spiked-two-layer", 5, 12).matrix_shape == (2, 6)
    assert make_task("spiked-two-layer", 5, 96, params={"hidden": 8}).matrix_shape == (8, 12)
    assert make_task("white-noise", 5, 12).matrix_shape is None
    g = make_task("spiked-two-layer", 7, 96, 1, {"hidden": 8, "samples": 40}).array()
    assert g.shape == (7, 96) and g.dtype == np.float64


def test_each_gradient_is_the_autograd_gradient_of_the_task_loss() -> None:
    torch = pytest.importorskip("torch")
    from gradmanifold.synthetic import _spiked_rng, _spiked_run

    for batch in (0, 16):
        task = make_task("spiked-two-layer", 6, 96, 2, {"hidden": 8, "samples": 64, "batch": batch})
        flat = task.array()
        prev = None
        for t, st in enumerate(_spiked_run(task, _spiked_rng(task))):
            assert len(st.y) == (batch or 64)
            w = torch.tensor(st.w, requires_grad=True)
            f = torch.relu(torch.from_numpy(st.x) @ w.T) @ torch.from_numpy(st.a)
            (0.5 * ((f - torch.from_numpy(st.y)) ** 2).mean()).backward()
            want = w.grad.numpy()
            np.testing.assert_allclose(st.grad, want, rtol=0, atol=1e-13 * np.abs(want).max())
            np.testing.assert_array_equal(flat[t], st.grad.ravel())  # row-major [hidden, p]
            if (
                prev is not None and not batch
            ):  # full batch: one gradient-descent step of size lr n / ||X||_op^2
                eta = 0.5 * 64 / np.linalg.norm(st.x, 2) ** 2
                np.testing.assert_allclose(st.w, prev.w - eta * prev.grad, rtol=1e-12, atol=1e-15)
            prev = st


def test_ground_truth_split_is_exact_per_step_and_bounds_the_top2_energy() -> None:
    task = make_task("spiked-two-layer", 40, 2048, 3, {"replicas": 2})
    truth = task.ground_truth(eps=(0.5,))
    assert isinstance(truth, SpikedTruth) and truth.shape == (32, 64) and truth.zeta == pytest.approx(16.0)
    g = task.array().reshape(40, 32, 64)
    sv = np.linalg.svd(g, compute_uv=False)
    top2 = (sv[:, :2] ** 2).sum(axis=1) / (sv**2).sum(axis=1)
    np.testing.assert_allclose(truth.top2_energy, top2, rtol=1e-10)  # the stream's own top-2 share
    assert np.all(np.array(truth.top2_bound) <= top2 + 1e-12)  # Eckart-Young: S1 + S2 has rank two
    assert np.all(sv[:, 2] / sv[:, 0] <= np.array(truth.e_ratio) + 1e-12)  # Weyl
    # near initialisation two rank-one terms carry the gradient (nu = 0.5: ||E|| / ||G|| 0.02 to 0.09 by seed)
    assert truth.e_ratio[0] < 0.1 and truth.top2_energy[0] > 0.99
    assert truth.method == "estimated from 2 replicas" and set(truth.kappa) == set(PRED)


def test_a_bigger_spike_makes_the_split_tighter_at_initialisation() -> None:
    first = []
    for nu in (0.25, 0.5, 0.75):
        truth = make_task("spiked-two-layer", 3, 2048, 0, {"nu": nu, "replicas": 1}).ground_truth(eps=())
        first.append(float(np.mean(truth.e_ratio)))
    assert first[0] > first[1] > first[2] and first[2] < 0.02, first


def test_one_run_lands_within_the_replica_spread() -> None:
    task = make_task("spiked-two-layer", 120, 512, 4, {"replicas": 6})
    truth = task.ground_truth(eps=(0.5,))
    got = kappa_reference(task.array())
    for pid in PRED:
        tol = 4 * truth.kappa_sd[pid] + 0.02 * truth.kappa[pid]
        assert abs(got[pid] - truth.kappa[pid]) <= tol, (pid, got[pid], truth.kappa[pid], truth.kappa_sd[pid])


def test_truth_to_dict_is_strict_json() -> None:
    truth = make_task("spiked-two-layer", 10, 96, 0, {"replicas": 2}).ground_truth()
    d = json.loads(json.dumps(truth.to_dict(), allow_nan=False))
    split = d["two_rank_one"]
    assert len(split["e_ratio"]) == 10 and split["shape"] == [6, 16]
    assert split["e_ratio_max"] == pytest.approx(max(truth.e_ratio))
    assert d["task"] == "spiked-two-layer" and d["steps"] == 10


def test_deterministic_in_seed_and_minibatches_differ() -> None:
    a = make_task("spiked-two-layer", 8, 96, 5, {"batch": 16}).array()
    np.testing.assert_array_equal(a, make_task("spiked-two-layer", 8, 96, 5, {"batch": 16}).array())
    assert not np.array_equal(a, make_task("spiked-two-layer", 8, 96, 6, {"batch": 16}).array())
    assert not np.array_equal(a, make_task("spiked-two-layer", 8, 96, 5).array())


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"hidden": 7}, "hidden must divide --dim (96)"),
        ({"nu": 3.0}, "nu (spike size"),
        ({"lr": 2.0}, "lr (times the largest curvature)"),
        ({"batch": 300}, "batch must be 0"),
        ({"samples": 1}, "samples must be between"),
        ({"replicas": 0}, "replicas must be at least 1"),
        ({"rank": 3}, "unknown parameter"),
    ],
)
def test_bad_options_are_usage_errors(params: dict, words: str) -> None:
    with pytest.raises(UsageError, match=re.escape(words)):
        make_task("spiked-two-layer", 10, 96, 0, params)


def test_recorded_and_from_the_command_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gradmanifold import Recorder
    from gradmanifold.cli import app
    from gradmanifold.store import open_store

    task = make_task("spiked-two-layer", 12, 96, 0)
    with Recorder(tmp_path / "a.zarr", k=32, seed=0) as rec:
        assert record_task(task, rec) == 12  # goes in as the [6, 16] matrix
    with Recorder(tmp_path / "flat.zarr", k=32, seed=0) as rec:
        for t, g in enumerate(task.gradients()):
            rec.record(t, g)
    mat, flat = open_store(tmp_path / "a.zarr"), open_store(tmp_path / "flat.zarr")
    assert mat.group_names == flat.group_names == ("all",)
    np.testing.assert_array_equal(mat.read_chunk(0)["proj"], flat.read_chunk(0)["proj"])
    out = tmp_path / "b.zarr"
    args = ["record", "--out", str(out), "--synthetic", "spiked-two-layer", "--steps", "12", "--dim", "96"]
    r = CliRunner().invoke(app, [*args, "--k", "16", "--param", "nu=0.75", "--json"])
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["steps_recorded"] == 12 and doc["task"]["nu"] == 0.75
    assert len(doc["ground_truth"]["two_rank_one"]["e_ratio"]) == 12
    assert all(v is None or math.isfinite(v) for v in doc["ground_truth"]["two_rank_one"]["e_ratio"])
