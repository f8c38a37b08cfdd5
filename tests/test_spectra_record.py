"""Layer spectra end to end: the Recorder stores each matrix gradient's top singular values and ||G||_F^2,
`gradmanifold spectrum` reads them back into readouts, `check --spectrum` turns them into exit codes.

Checked against exact SVDs (float64) of the very gradients recorded, and against planted spectra whose
exponent is known by construction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from faults.faultkit import assert_one_line_error, cli

from gradmanifold import Recorder
from gradmanifold.errors import InputError, SpecMismatchError
from gradmanifold.layerspectra import layer_spectra
from gradmanifold.store import open_store
from gradmanifold.store.verify import verify_store

torch = pytest.importorskip("torch")


def planted(m: int, n: int, sigma: np.ndarray, seed: int) -> np.ndarray:
    """U diag(sigma) V^T with random orthonormal U, V: its singular values are sigma, exactly."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, len(sigma))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(sigma))))
    return (u * sigma) @ v.T


def test_torch_mlp_and_cnn_spectra_match_exact_svd(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 10)
    )
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    exact: dict[int, dict[str, np.ndarray]] = {}
    with Recorder(tmp_path / "run.zarr", k=16, spectra_every=3, spectra_top=8) as rec:
        for step in range(10):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            rec.record(step, model)
            if step % 3 == 0:
                exact[step] = {
                    n: p.grad.double().reshape(p.shape[0], -1).numpy().copy()
                    for n, p in model.named_parameters()
                    if p.ndim >= 2
                }
            opt.step()
    res = layer_spectra(tmp_path / "run.zarr", top=8)
    assert list(res.layers) == ["0.weight", "3.weight"]
    assert res.layers["0.weight"].shape == (8, 27)  # out x in*kh*kw
    for name, ly in res.layers.items():
        assert list(ly.steps) == [0, 3, 6, 9]
        for j, step in enumerate(ly.steps):
            g = exact[int(step)][name]
            want = np.linalg.svd(g, compute_uv=False)[:8]
            np.testing.assert_allclose(ly.sigma[j], want, rtol=1e-5)  # float32 gradient, float64 SVD
            np.testing.assert_allclose(ly.frobenius_sq[j], (g**2).sum(), rtol=1e-6)
    assert verify_store(tmp_path / "run.zarr").ok


@pytest.mark.parametrize("shape", [(64, 80), (300, 400)])  # exact path, randomized path
def test_planted_power_law_gives_its_exponent(tmp_path: Path, shape: tuple[int, int]) -> None:
    gamma = 1.3
    sig = np.arange(1, 41, dtype=np.float64) ** -gamma
    g = planted(*shape, sig, seed=1)
    with Recorder(tmp_path / "run.zarr", k=8, spectra_every=1, spectra_top=20) as rec:
        rec.record(0, {"w": g, "b": np.ones(3)})
    res = layer_spectra(tmp_path / "run.zarr", top=20)
    ly = res.layers["w"]
    np.testing.assert_allclose(ly.sigma[0], sig[:20], rtol=1e-3)  # within 1% asked; here 0.1%
    assert ly.frobenius_sq[0] == pytest.approx((sig**2).sum(), rel=1e-12)
    assert ly.series["gamma"][0] == pytest.approx(gamma, abs=2e-3)
    assert ly.series["r2_gamma"][0] == pytest.approx(1.0, abs=1e-4)
    assert ly.bic_winner[0] == "power" if shape == (64, 80) else True


def test_rank_two_plus_noise_reads_as_two_rank_one_terms(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    g = planted(50, 70, np.array([10.0, 6.0]), seed=4) + 0.01 * rng.standard_normal((50, 70))
    with Recorder(tmp_path / "run.zarr", k=8, spectra_every=1, spectra_top=10) as rec:
        rec.record(0, {"w": g})
    sm = layer_spectra(tmp_path / "run.zarr", top=10).layers["w"].series
    exact = np.linalg.svd(g, compute_uv=False)
    assert sm["top2_energy"][0] == pytest.approx((exact[:2] ** 2).sum() / (g**2).sum(), rel=1e-12)
    assert sm["gap_23"][0] == pytest.approx(exact[1] / exact[2], rel=1e-12)
    assert sm["rank_two_residual"][0] == pytest.approx(exact[2] / exact[0], rel=1e-12)
    # the planted structure: two terms hold all but the noise; the third value is the noise edge
    assert sm["top2_energy"][0] > 0.99 and sm["gap_23"][0] > 30 and sm["rank_two_residual"][0] < 0.02


def test_spectra_only_at_multiples_and_layers_smaller_than_q_pad_with_nan(tmp_path: Path) -> None:
    with Recorder(tmp_path / "run.zarr", k=8, every=2, spectra_every=4, spectra_top=6) as rec:
        for step in range(13):
            rec.record(step, {"big": np.full((8, 9), step + 1.0) + np.eye(8, 9), "small": np.ones((3, 5))})
    r = open_store(tmp_path / "run.zarr")
    tab = r.read_table("spectra")
    assert list(tab["spectra_step"]) == [0, 4, 8, 12]
    assert (
        np.isnan(tab["spectra_sigma"][:, 1, 3:]).all() and np.isfinite(tab["spectra_sigma"][:, 1, :3]).all()
    )
    assert r.table("spectra").meta["layers"] == [
        {"name": "big", "shape": [8, 9]},
        {"name": "small", "shape": [3, 5]},
    ]


def test_bad_recorder_settings_are_one_line_errors(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "a.zarr", k=8, spectra_every=2)
    with pytest.raises(InputError, match="no gradient has two or more dimensions"):
        rec.record(0, {"b": np.ones(5)})
    rec = Recorder(tmp_path / "b.zarr", k=8, spectra_every=2, spectra_top=7)
    with pytest.raises(InputError, match="spectra_top=7 is more singular values than any layer has"):
        rec.record(0, {"w": np.ones((4, 6)), "v": np.ones((6, 5))})
    with pytest.raises(InputError, match="spectra_every must be an integer >= 0"):
        Recorder(tmp_path / "c.zarr", spectra_every=-1)
    with Recorder(tmp_path / "d.zarr", k=8, spectra_every=2, spectra_top=3) as rec:
        rec.record(0, {"w": np.ones((4, 6))})
    rec = Recorder(tmp_path / "d.zarr", k=8, spectra_every=2, spectra_top=4)
    with pytest.raises(SpecMismatchError, match="q: store has 3, writer asks 4"):
        rec.record(2, {"w": np.ones((4, 6))})
    rec.close()
    assert open_store(tmp_path / "d.zarr").n_steps == 1  # the refused resume lost nothing


def test_nonfinite_gradient_gives_a_nan_spectra_row(tmp_path: Path) -> None:
    with Recorder(tmp_path / "run.zarr", k=8, spectra_every=1, spectra_top=3) as rec:
        rec.record(0, {"w": np.eye(4)})
        rec.record(1, {"w": np.full((4, 4), np.nan)})
    tab = open_store(tmp_path / "run.zarr").read_table("spectra")
    np.testing.assert_array_equal(tab["spectra_sigma"][0, 0], [1, 1, 1])
    assert np.isnan(tab["spectra_sigma"][1]).all()
    res = layer_spectra(tmp_path / "run.zarr", top=3)
    assert res.layers["w"].bic_winner[1] is None and math.isnan(res.layers["w"].series["gamma"][1])


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spectra") / "run.zarr"
    sig = np.arange(1, 31, dtype=np.float64) ** -1.5
    with Recorder(path, k=8, spectra_every=5, spectra_top=12) as rec:
        for step in range(20):
            rec.record(
                step,
                {
                    "enc.fc1.weight": planted(40, 50, sig * (1 + step), step),
                    "enc.fc1.bias": np.ones(40),
                    "head.weight": planted(10, 40, sig[:10], 99),
                },
            )
    return path


def test_spectrum_json_schema(store: Path) -> None:
    res = cli("spectrum", str(store), "--json", "--top", "10")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema"] == "gradmanifold.spectrum/1" and doc["top"] == 10 and doc["q"] == 12
    ly = doc["layers"]["enc.fc1.weight"]
    assert ly["shape"] == [40, 50] and ly["steps"] == [0, 5, 10, 15]
    assert len(ly["sigma"]) == 4 and len(ly["sigma"][0]) == 12
    for key in (
        "gamma",
        "r2_gamma",
        "bic_winner",
        "participation_ratio",
        "stable_rank",
        "top2_energy",
        "gap_23",
        "rank_two_residual",
        "frobenius_sq",
    ):
        assert len(ly[key]) == 4, key
    assert set(ly["bic"]) == {"power", "exponential", "lognormal"}
    assert ly["gamma"][0] == pytest.approx(1.5, abs=1e-6)  # exact path: planted exponent
    assert ly["summary"]["gamma"]["trend"] == pytest.approx(0.0, abs=1e-6)  # scaling keeps gamma
    assert ly["summary"]["stable_rank"]["first"] == pytest.approx(ly["stable_rank"][0])
    assert doc["layers"]["head.weight"]["sigma"][0][10:] == [None, None]  # a 10 x 40 layer has 10 values
    assert doc["probes"] == []


def test_spectrum_tables_at_80_and_160_columns(store: Path) -> None:
    for cols in ("80", "160"):
        res = cli("spectrum", str(store), "--per-step", env={"COLUMNS": cols})
        assert res.exit_code == 0, res.stderr
        lines = res.stdout.splitlines()
        assert max(len(line) for line in lines) <= int(cols)
        assert any("enc.fc1.weight" in line for line in lines)  # the name fits whole at both widths
        assert any(line.split()[:1] == ["15"] for line in lines)  # a per-step row
    assert "BIC pow/exp/logn" in res.stdout  # the wide table has room for the BICs


def test_layer_filter_and_check(store: Path) -> None:
    doc = json.loads(cli("spectrum", str(store), "--json", "--layers", "head.*").stdout)
    assert list(doc["layers"]) == ["head.weight"]
    ok = cli("check", str(store), "--spectrum", "--max", "layers.enc.fc1.weight.gamma.-1=1.6")
    assert ok.exit_code == 0 and "ok: layers.enc.fc1.weight.gamma.-1 = 1.5" in ok.stdout, ok.stdout
    bad = cli("check", str(store), "--spectrum", "--min", "layers.head.weight.summary.top2_energy.last=0.99")
    assert bad.exit_code == 1 and "FAIL" in bad.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "nope.*"], "matches no recorded layer; layers: enc.fc1.weight, head.weight"),
        (["--top", "13"], "more than the 12 singular values recorded per layer"),
        (["--top", "2"], "the fit window needs at least 3 values"),
    ],
)
def test_spectrum_bad_input(store: Path, args: list[str], message: str) -> None:
    line = assert_one_line_error(cli("spectrum", str(store), *args), 2)
    assert message in line


def test_spectrum_of_a_store_without_spectra(tmp_path: Path) -> None:
    with Recorder(tmp_path / "run.zarr", k=8) as rec:
        rec.record(0, np.ones(10))
    line = assert_one_line_error(cli("spectrum", str(tmp_path / "run.zarr")), 2)
    assert "holds no layer spectra: record with --spectra-every N" in line
    line = assert_one_line_error(cli("spectrum", str(tmp_path / "missing.zarr")), 2)
    assert "does not exist" in line


def test_record_options_bad_input(tmp_path: Path) -> None:
    out = str(tmp_path / "s.zarr")
    line = assert_one_line_error(
        cli(
            "record",
            "--out",
            out,
            "--synthetic",
            "white-noise",
            "--steps",
            "5",
            "--dim",
            "8",
            "--spectra-every",
            "2",
        ),
        2,
    )
    assert "no gradient has two or more dimensions" in line
    line = assert_one_line_error(
        cli("record", "--out", out, "--synthetic", "white-noise", "--spectra-every", "-3"), 2
    )
    assert "--spectra-every must be 0 (off) or a positive step count" in line
    line = assert_one_line_error(
        cli(
            "record", "--out", out, "--synthetic", "white-noise", "--spectra-every", "2", "--spectra-top", "0"
        ),
        2,
    )
    assert "--spectra-top must be at least 1" in line


def test_recorder_probe_is_stored_and_reported(tmp_path: Path) -> None:
    from gradmanifold.layerspec import fit_spectral

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    batch = (torch.randn(20, 6), torch.randn(20, 3))

    def loss_fn(m: torch.nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    rec = Recorder(tmp_path / "run.zarr", k=8)
    with pytest.raises(InputError, match="record\\(\\) a step before the first probe"):
        rec.probe(0, model, loss_fn, batch, top=4)
    loss_fn(model, batch).backward()
    rec.record(0, model)
    got = rec.probe(0, model, loss_fn, batch, top=4, layers="2.*")
    rec.close()
    doc = json.loads(cli("spectrum", str(tmp_path / "run.zarr"), "--json", "--top", "4").stdout)
    assert doc["layers"] == {} and [p["step"] for p in doc["probes"]] == [0]
    stored = doc["probes"][0]["layers"]
    assert list(stored) == ["2.weight"]  # only the probed layer; 0.weight's row is NaN
    ly = got.layers["2.weight"]
    np.testing.assert_array_equal(stored["2.weight"]["sigma"], ly.sigma)
    np.testing.assert_array_equal(stored["2.weight"]["h"], ly.h)
    fit = fit_spectral(ly.sigma, ly.h, top=4, shape=(3, 9))
    assert stored["2.weight"]["alpha"] == pytest.approx(fit.alpha, rel=1e-12, nan_ok=True)
    assert stored["2.weight"]["s"] == pytest.approx(fit.s, rel=1e-12, nan_ok=True)
    assert verify_store(tmp_path / "run.zarr").ok


def test_recorder_glass_probe_is_stored_and_reported(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(5, 12), torch.nn.ReLU(), torch.nn.Linear(12, 1))
    batch = (torch.randn(40, 5), torch.randn(40, 1))

    def loss_fn(m: torch.nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return ((m(b[0]) - b[1]) ** 2).mean()

    with Recorder(tmp_path / "run.zarr", k=8) as rec:
        loss_fn(model, batch).backward()
        rec.record(0, model)
        first = rec.probe(0, model, loss_fn, batch, kind="glass", sigma=1e-2)
        second = rec.probe(3, model, loss_fn, batch, kind="glass", sigma=1e-3, layers="0.*", seed=4)
        with pytest.raises(InputError, match="probe kind must be"):
            rec.probe(4, model, loss_fn, batch, kind="hessian")  # type: ignore[arg-type]
    doc = json.loads(cli("spectrum", str(tmp_path / "run.zarr"), "--json").stdout)
    g0, g1 = doc["glass_probes"]
    assert (g0["step"], g0["sigma"], g1["step"], g1["sigma"]) == (0, 1e-2, 3, 1e-3)
    assert set(g0["params"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert set(g1["params"]) == {"0.weight", "0.bias"}  # the others were not probed: NaN rows, left out
    for got, probe in ((g0, first), (g1, second)):
        for name, grp in probe.groups.items():
            assert got["params"][name]["rho_mean"] == grp.rho_mean
            assert got["params"][name]["h_mean"] == grp.h_mean
    assert verify_store(tmp_path / "run.zarr").ok
