"""Recording parameter updates: u_t = theta_t - theta_{t-1} between recorded steps, projected with the
gradient's own R, and ||u_t||^2; checked against plain SGD, where u_t = -lr * g_{t-1} exactly."""

from __future__ import annotations

import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from faults.faultkit import assert_one_line_error, cli

from gradmanifold import Recorder
from gradmanifold.errors import InputError, SpecMismatchError
from gradmanifold.store import StoreReader, open_store
from gradmanifold.store.verify import verify_store

torch = pytest.importorskip("torch")
LR = 0.1


def rows(path: Path) -> dict[str, np.ndarray]:
    chunks = list(open_store(path).iter_chunks())
    return {
        key: np.concatenate([getattr(c, key) for c in chunks])
        for key in ("step", "proj", "update", "update_sqnorm")
    }


def sgd_run(path: Path, mode: str, steps: int = 12) -> list[dict[str, np.ndarray]]:
    """Plain SGD on a small ReLU MLP; returns the parameters before each step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    x, y = torch.randn(32, 8), torch.randn(32, 3)
    thetas = []
    with Recorder(path, k=64, updates=mode, groups="single") as rec:
        for step in range(steps):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            thetas.append({n: p.detach().double().numpy().copy() for n, p in model.named_parameters()})
            rec.record(step, model)
            opt.step()
    return thetas


@pytest.mark.parametrize("mode", ["exact", "projected"])
def test_sgd_update_is_minus_lr_times_the_previous_gradient(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "run.zarr"
    thetas = sgd_run(path, mode)
    got = rows(path)
    z, w = got["proj"][:, 0].astype(np.float64), got["update"][:, 0].astype(np.float64)
    assert np.isnan(w[0]).all() and np.isnan(got["update_sqnorm"][0]).all()  # no previous parameters
    # plain SGD: R u_t = -lr R g_{t-1}, up to float32 rounding of the stored rows and of the parameters
    np.testing.assert_allclose(w[1:], -LR * z[:-1], rtol=0, atol=2e-5 * np.abs(w[1:]).max())
    assert open_store(path).updates == mode
    sq = got["update_sqnorm"][1:, 0]
    if mode == "exact":
        want = [
            sum(
                (
                    (thetas[t][n].astype(np.float32) - thetas[t - 1][n].astype(np.float32)).astype(np.float64)
                    ** 2
                ).sum()
                for n in thetas[t]
            )
            for t in range(1, len(thetas))
        ]
        np.testing.assert_allclose(sq, want, rtol=1e-12)  # the float32 difference is exact, summed in float64
    else:
        assert np.isnan(sq).all()  # only the projections were kept: norms unknown, and the store says so
    assert verify_store(path).ok


def test_mapping_gradients_need_params_of_the_same_names(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "run.zarr", k=8, updates=True)
    grads = {"w": np.ones((3, 4)), "b": np.ones(3)}
    with pytest.raises(InputError, match="got no params: pass params="):
        rec.record(0, grads)
    with pytest.raises(InputError, match="missing \\['b'\\]"):
        rec.record(0, grads, params={"w": np.zeros((3, 4))})
    with pytest.raises(InputError, match="not recorded \\['c'\\]"):
        rec.record(0, grads, params={"w": np.zeros((3, 4)), "b": np.zeros(3), "c": np.zeros(1)})
    with pytest.raises(InputError, match="'b' has 4 elements but its gradient has 3"):
        rec.record(0, grads, params={"w": np.zeros((3, 4)), "b": np.zeros(4)})
    rec.record(0, grads, params={"w": np.zeros((3, 4)), "b": np.zeros(3)})
    rec.record(1, grads, params={"w": np.full((3, 4), 0.5), "b": np.zeros(3)})
    rec.close()
    got = rows(tmp_path / "run.zarr")
    np.testing.assert_allclose(got["update_sqnorm"][1], [12 * 0.25, 0.0])
    with pytest.raises(InputError, match="updates must be False, True"):
        Recorder(tmp_path / "x.zarr", updates="sometimes")  # type: ignore[arg-type]


def test_resume_must_keep_the_update_setting(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with Recorder(path, k=8) as rec:
        rec.record(0, {"w": np.ones(4)})
    rec = Recorder(path, k=8, updates=True)
    with pytest.raises(SpecMismatchError, match="recorded without parameter updates"):
        rec.record(1, {"w": np.ones(4)}, params={"w": np.ones(4)})
    rec.close()
    assert open_store(path).n_steps == 1 and open_store(path).updates is None


def test_a_rewind_forgets_the_previous_parameters(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rewind warning
        with Recorder(path, k=8, updates=True) as rec:
            for step in (0, 1, 2, 3, 2, 3):
                rec.record(step, {"w": np.ones(4)}, params={"w": np.full(4, float(step))})
    got = rows(path)
    assert list(got["step"]) == [0, 1, 2, 3]
    sq = got["update_sqnorm"][:, 0]
    assert np.isnan(sq[0]) and sq[1] == 4.0 and np.isnan(sq[2]) and sq[3] == 4.0


TRAIN = textwrap.dedent(
    """
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 6), torch.randn(16, 2)
    for step in range(8):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    """
)


def test_wrap_mode_records_updates(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    out = tmp_path / "run.zarr"
    res = cli(
        "record",
        "--out",
        str(out),
        "--k",
        "32",
        "--groups",
        "single",
        "--updates",
        "--",
        sys.executable,
        str(script),
    )
    assert res.exit_code == 0, res.stderr
    got = rows(out)
    assert len(got["step"]) == 8 and StoreReader(out).updates == "exact"
    z, w = got["proj"][:, 0].astype(np.float64), got["update"][:, 0].astype(np.float64)
    np.testing.assert_allclose(w[1:], -0.1 * z[:-1], rtol=0, atol=2e-5 * np.abs(w[1:]).max())


def test_ingest_with_parameters(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    theta = np.zeros((3, 4))
    rng = np.random.default_rng(1)
    for step in range(5):
        g = rng.standard_normal((3, 4))
        np.savez(dumps / f"s{step}.npz", w=g, **{"params/w": theta})
        theta = theta - 0.5 * g
    out = tmp_path / "run.zarr"
    res = cli("record", "--out", str(out), "--from", str(dumps), "--k", "16", "--updates")
    assert res.exit_code == 0, res.stderr
    got = rows(out)
    z, w = got["proj"][:, 0].astype(np.float64), got["update"][:, 0].astype(np.float64)
    np.testing.assert_allclose(w[1:], -0.5 * z[:-1], rtol=1e-5, atol=1e-6)


def test_updates_bad_input_on_the_command_line(tmp_path: Path) -> None:
    out = str(tmp_path / "s.zarr")
    line = assert_one_line_error(
        cli("record", "--out", out, "--synthetic", "white-noise", "--steps", "5", "--dim", "8", "--updates"),
        2,
    )
    assert "got no params" in line
    dumps = tmp_path / "d"
    dumps.mkdir()
    np.save(dumps / "s0.npy", np.ones(4))
    line = assert_one_line_error(cli("record", "--out", out, "--from", str(dumps), "--updates"), 2)
    assert "--updates needs the parameters in every dump" in line
