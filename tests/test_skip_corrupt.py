"""analyze --skip-corrupt: damaged chunks are left out as missing rows, reported, and nothing else changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradmanifold.analysis import analyze
from gradmanifold.cli import app
from gradmanifold.errors import CorruptStoreError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import ArraySource, StoreWriter

T, G, K, C = 60, 2, 16, 8


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    mean = rng.standard_normal((G, K))
    proj = (mean + 0.7 * rng.standard_normal((T, G, K))).astype(np.float32)
    sqnorm = (proj.astype(np.float64) ** 2).sum(axis=2)
    path = tmp_path / "r.zarr"
    with StoreWriter(path, ProjectionSpec(k=K), [("a", 100), ("b", 50)], chunk_rows=C, fsync=False) as w:
        for t in range(T):
            w.append(t, proj[t], sqnorm[t])
    f = path / "proj" / "c" / "2" / "0" / "0"  # rows 16..23
    data = bytearray(f.read_bytes())
    data[40] ^= 0x55
    f.write_bytes(bytes(data))
    return path, proj, sqnorm


def test_damaged_chunk_fails_without_the_flag(damaged: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = damaged
    with pytest.raises(CorruptStoreError, match="chunk 2"):
        analyze(path)
    res = CliRunner().invoke(app, ["analyze", str(path)])
    assert res.exit_code == 3
    assert "chunk 2" in res.stderr and "Traceback" not in res.stderr


def test_skip_corrupt_equals_the_stream_without_those_rows(
    damaged: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    path, proj, sqnorm = damaged
    got = analyze(path, skip_corrupt=True)
    keep = np.r_[0:16, 24:T]
    ref = analyze(ArraySource(proj[keep], sqnorm[keep], step=keep, group_names=("a", "b")))
    for scope in ("model", "a", "b"):
        assert got.scopes[scope].excluded_steps == 8
        for pid, v in ref.scopes[scope].kappa.items():
            assert got.scopes[scope].kappa[pid] == pytest.approx(v, rel=1e-12)
        assert got.scopes[scope].rank.r_star == ref.scopes[scope].rank.r_star
    assert any("damaged chunk 2 (rows 16..23, steps 16..23)" in w for w in got.warnings)


def test_skip_corrupt_cli_reports_what_it_left_out(damaged: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, _, _ = damaged
    res = CliRunner().invoke(app, ["analyze", str(path), "--skip-corrupt", "--json"])
    assert res.exit_code == 0, res.stderr
    import json

    doc = json.loads(res.stdout)
    assert doc["scopes"]["model"]["excluded_steps"] == 8
    assert any("chunk 2" in w for w in doc["warnings"])
    res = CliRunner().invoke(app, ["check", str(path), "--skip-corrupt", "--max", "model.kappa.zero=1"])
    assert res.exit_code == 0, res.stderr
