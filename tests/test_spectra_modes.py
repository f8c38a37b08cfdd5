"""--spectra-every in every record mode: a wrapped torch job (no code change), ingested dumps that keep each
tensor's shape, and the synthetic spiked-two-layer task (whose two-rank-one structure is known)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from faults.faultkit import cli

from gradmanifold.layerspectra import layer_spectra
from gradmanifold.store import open_store
from gradmanifold.store.verify import verify_store
from gradmanifold.wrap import run_wrapped
from gradmanifold.wrap.options import RecordOptions

TRAIN = textwrap.dedent(
    """
    import torch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 12), torch.randn(64, 4)
    for step in range(20):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        if step == 10:
            torch.save({n: p.grad.clone() for n, p in model.named_parameters()}, "grad10.pt")
        opt.step()
    """
)


def test_wrap_mode_records_spectra_without_code_change(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    out = tmp_path / "run.zarr"
    opts = RecordOptions(out=str(out), k=16, spectra_every=5, spectra_top=4)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = run_wrapped([sys.executable, str(script)], opts)
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0
    res = layer_spectra(out, top=4)
    assert list(res.layers) == ["0.weight", "2.weight"]
    assert list(res.layers["0.weight"].steps) == [0, 5, 10, 15]
    g = torch.load(tmp_path / "grad10.pt")["0.weight"].double().numpy()
    np.testing.assert_allclose(
        res.layers["0.weight"].sigma[2], np.linalg.svd(g, compute_uv=False)[:4], rtol=1e-5
    )
    assert verify_store(out).ok


def test_options_travel_through_the_environment() -> None:
    opts = RecordOptions(out="/x/run.zarr", spectra_every=7, spectra_top=9)
    back = RecordOptions.from_env(opts.to_env())
    assert back is not None and back.spectra_every == 7 and back.spectra_top == 9


def test_ingested_dumps_keep_shapes_for_spectra(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    rng = np.random.default_rng(0)
    mats = {}
    for step in range(6):
        mats[step] = rng.standard_normal((10, 3, 2, 2))  # a conv kernel: read as 10 x 12
        np.savez(dumps / f"grads_{step}.npz", conv=mats[step], bias=rng.standard_normal(10))
    out = tmp_path / "run.zarr"
    res = cli(
        "record",
        "--out",
        str(out),
        "--from",
        str(dumps),
        "--k",
        "8",
        "--spectra-every",
        "2",
        "--spectra-top",
        "5",
    )
    assert res.exit_code == 0, res.stderr
    spec = layer_spectra(out, top=5)
    ly = spec.layers["conv"]
    assert ly.shape == (10, 12) and list(ly.steps) == [0, 2, 4]
    for j, step in enumerate((0, 2, 4)):
        want = np.linalg.svd(mats[step].reshape(10, 12), compute_uv=False)[:5]
        np.testing.assert_allclose(ly.sigma[j], want, rtol=1e-5)  # the dumps are float64, recorded exactly


def test_synthetic_spiked_task_with_spectra(tmp_path: Path) -> None:
    out = tmp_path / "spiked.zarr"
    res = cli(
        "record",
        "--out",
        str(out),
        "--synthetic",
        "spiked-two-layer",
        "--steps",
        "40",
        "--dim",
        "512",
        "--k",
        "16",
        "--spectra-every",
        "1",
        "--spectra-top",
        "6",
        "--param",
        "replicas=1",
        "--json",
    )
    assert res.exit_code == 0, res.stderr
    truth = json.loads(res.stdout)["ground_truth"]["two_rank_one"]
    spec = layer_spectra(out, top=6)
    (ly,) = spec.layers.values()
    assert ly.shape == (16, 32) and len(ly.steps) == 40  # hidden x input dims for --dim 512
    # the recorded spectra give the top-2 energy the decomposition predicts, step by step
    np.testing.assert_allclose(ly.series["top2_energy"], truth["top2_energy"], rtol=1e-6)
    assert open_store(out).n_steps == 40
