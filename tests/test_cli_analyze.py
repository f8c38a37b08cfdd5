"""`gradmanifold analyze | check | info`: in-process (stdout and stderr apart) and as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradmanifold.cli import app
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import StoreWriter

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def _store(path: Path, steps: int = 120, k: int = 16, groups: int = 2, flag_row: int | None = 30) -> Path:
    rng = np.random.default_rng(0)
    names = [(f"layer{i}", 100 * (i + 1)) for i in range(groups)]
    w = StoreWriter(path, ProjectionSpec(k=k, seed=3), groups=names, fsync=False)
    mu = rng.standard_normal((groups, k))
    for t in range(steps):
        p = (mu + rng.standard_normal((groups, k))).astype(np.float32)
        flags = np.zeros(groups, np.uint8)
        if t == flag_row:
            flags[-1] = 1
        w.append(10 * t, p, (p.astype(np.float64) ** 2).sum(axis=1), flags=flags, loss=1.0 / (t + 1))
    w.close()
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _store(tmp_path_factory.mktemp("cli") / "run.zarr")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_analyze_tables(store: Path) -> None:
    r = runner.invoke(app, ["analyze", str(store), "--window", "50"])
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    for text in ("self-test: kappa(zero) = 1 exactly in every scope: ok", "layer0", "layer1", "model"):
        assert text in r.stdout
    assert "windows of 50 steps" in r.stdout
    assert "1 flagged step(s) excluded" in r.stdout


def test_analyze_json_is_all_of_stdout(store: Path) -> None:
    r = runner.invoke(
        app,
        [
            "analyze",
            str(store),
            "--json",
            "-p",
            "last,ema:0.95",
            "--eps",
            "0.1",
            "--eps",
            "0.2",
            "--burn-in",
            "5",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    doc = json.loads(r.stdout)
    assert doc["schema"] == "gradmanifold.analysis/1"
    assert doc["config"]["predictors"] == ["zero", "last", "ema:0.95"]
    assert doc["config"]["eps"] == [0.1, 0.2]
    assert doc["config"]["burn_in"] == 5
    assert doc["store"]["k"] == 16 and doc["store"]["projection"]["seed"] == 3
    assert doc["scopes"]["model"]["n_steps"] == 114  # 120 - 5 burn-in - 1 flagged
    assert set(doc["scopes"]["model"]["rank"]["r_star"]) == {"0.1", "0.2"}


def test_analyze_options(store: Path) -> None:
    r = runner.invoke(
        app, ["analyze", str(store), "--json", "--start", "100", "--stop", "600", "-g", "layer1"]
    )
    doc = json.loads(r.stdout)
    assert list(doc["scopes"]) == ["layer1", "model"]
    assert doc["config"]["first_step"] == 100 and doc["config"]["last_step"] == 590
    r = runner.invoke(app, ["analyze", str(store), "--json", "--svd", "randomized", "--sketch-rank", "8"])
    assert json.loads(r.stdout)["config"]["svd_method"] == "randomized"
    r = runner.invoke(app, ["analyze", str(store), "--json", "--ema-grid", "0.3,0.6"])
    assert json.loads(r.stdout)["scopes"]["model"]["best_ema"]["beta"] in (0.3, 0.6)


def test_check_exit_codes(store: Path) -> None:
    ok = runner.invoke(
        app, ["check", str(store), "--max", "model.kappa.zero=1", "--min", "layer0.n_steps=100"]
    )
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    assert "all 2 checks hold" in ok.stdout
    bad = runner.invoke(
        app,
        [
            "check",
            str(store),
            "--max",
            "model.kappa.ema:0.9=0.01",
            "--max",
            "model.rank.r_star.0.1=1000",
            "-q",
        ],
    )
    assert bad.exit_code == 1
    lines = bad.stdout.strip().splitlines()
    assert lines[0].startswith("FAIL: model.kappa.ema:0.9 = ") and lines[0].endswith("want <= 0.01 (max)")
    assert lines[-1] == "1 of 2 checks failed"
    assert bad.stderr == ""
    usage = runner.invoke(app, ["check", str(store), "--max", "model.kapa.last=1"])
    assert usage.exit_code == 2
    assert "no key matches" in usage.stderr
    none = runner.invoke(app, ["check", str(store)])
    assert none.exit_code == 2 and "no thresholds" in none.stderr


def test_info(store: Path) -> None:
    r = runner.invoke(app, ["info", str(store)])
    assert r.exit_code == 0, r.stderr
    for text in ("120 steps", "k = 16", "layer0", "layer1", "writer segments", "on disk"):
        assert text in r.stdout
    doc = json.loads(runner.invoke(app, ["info", str(store), "--json"]).stdout)
    assert doc["schema"] == "gradmanifold.info/1"
    assert doc["n_steps"] == 120 and doc["k"] == 16
    assert [g["name"] for g in doc["groups"]] == ["layer0", "layer1"]
    assert doc["groups"][1]["nonfinite_rows"] == 1
    assert doc["projection"]["seed"] == 3


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bad")
    plain = base / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("not a store")
    newer = _store(base / "newer.zarr", steps=5)
    manifest = newer / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["schema_version"] = 99
    manifest.write_text(json.dumps(doc))
    empty = base / "empty.zarr"
    StoreWriter(empty, ProjectionSpec(k=8), groups=[("a", 10)], fsync=False).close()
    one = _store(base / "one.zarr", steps=1, flag_row=None)
    good = _store(base / "good.zarr", steps=20, flag_row=None)
    return {
        "missing": base / "nope.zarr",
        "plain": plain,
        "newer": newer,
        "empty": empty,
        "one": one,
        "good": good,
    }


@pytest.mark.parametrize(
    ("which", "extra", "message"),
    [
        ("missing", [], "does not exist"),
        ("plain", [], "is not a gradmanifold store"),
        ("newer", [], "newer"),
        ("empty", [], "at least 2"),
        ("one", [], "at least 2"),
        ("good", ["-p", "last,lasst"], "unknown predictor 'lasst'"),
        ("good", ["-g", "layer7"], "unknown group(s) 'layer7'"),
        ("good", ["--eps", "0.1,1.5"], "outside (0, 1)"),
        ("good", ["--eps", "0"], "outside (0, 1)"),
        ("good", ["--svd", "lu"], "unknown svd method"),
        ("good", ["--window", "1"], "window 1 is too short"),
        ("good", ["--ema-grid", "2"], "--ema-grid"),
    ],
)
@pytest.mark.parametrize("command", ["analyze", "check"])
def test_bad_input_is_one_line_exit_2(
    bad_stores: dict[str, Path], which: str, extra: list[str], message: str, command: str, tmp_path: Path
) -> None:
    target = bad_stores[which]
    before = _snapshot(target) if target.exists() else None
    args = [command, str(target), *extra]
    if command == "check":
        args += ["--max", "model.kappa.last=2"]
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        r = runner.invoke(app, args)
    finally:
        os.chdir(cwd)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("gradmanifold: error: ")
    assert message in lines[0]
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written
    if before is not None:
        assert _snapshot(target) == before


def test_info_bad_input(bad_stores: dict[str, Path]) -> None:
    for which in ("missing", "plain", "newer"):
        r = runner.invoke(app, ["info", str(bad_stores[which])])
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""


def test_help_lists_the_commands() -> None:
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for name in ("analyze", "check", "info"):
        assert name in r.stdout


def test_help_paragraphs_are_not_broken_mid_sentence() -> None:
    """typer keeps a docstring's line breaks in --help, so a paragraph wrapped in the source shows as a hard
    break at a narrow terminal: every paragraph of every command's help is one line."""
    import inspect

    import typer.main

    command = typer.main.get_command(app)
    for name, sub in command.commands.items():  # type: ignore[attr-defined]
        doc = inspect.cleandoc(sub.help or "")
        broken = [para for para in doc.split("\n\n") if "\n" in para.strip()]
        assert not broken, (name, broken)


# ------------------------------------------------------------------------------------------- real processes


@pytest.mark.parametrize(
    "argv",
    [[str(Path(sys.executable).parent / "gradmanifold")], [sys.executable, "-m", "gradmanifold"]],
    ids=["console-script", "python-m"],
)
def test_subprocess(store: Path, argv: list[str], tmp_path: Path) -> None:
    if not Path(argv[0]).exists():
        pytest.skip("console script not installed")
    env = {**os.environ, "NO_COLOR": "1"}
    r = subprocess.run(
        [*argv, "analyze", str(store), "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert json.loads(r.stdout)["scopes"]["model"]["kappa"]["zero"] == 1.0
    bad = subprocess.run(
        [*argv, "analyze", str(tmp_path / "missing.zarr")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1
    chk = subprocess.run(
        [*argv, "check", str(store), "--max", "model.kappa.last=0.0001"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chk.returncode == 1
    assert chk.stdout.startswith("FAIL: model.kappa.last")


def test_progress_bar_only_on_a_terminal_and_after_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradmanifold.cli import analyze as cli_analyze

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    quiet = cli_analyze.ProgressBar()
    quiet(5, 10)
    assert quiet.bar is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = cli_analyze.ProgressBar()
    bar(5, 10)
    assert bar.bar is None  # not before a second has passed
    bar.t0 -= 2.0
    bar(6, 10)
    assert bar.bar is not None
    bar(10, 10)
    bar.close()
    assert bar.bar is None
