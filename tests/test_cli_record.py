"""`gradmanifold record`: in-process (stdout and stderr apart) and as real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gradmanifold.cli import app
from gradmanifold.store import open_store

runner = CliRunner()


def record(*args: str) -> object:
    return runner.invoke(app, ["record", *args])


def one_line_error(r: object, code: int = 2) -> str:
    assert r.exit_code == code, (r.stdout, r.stderr)  # type: ignore[attr-defined]
    lines = r.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("gradmanifold: error: "), r.stderr  # type: ignore[attr-defined]
    assert r.stdout == ""  # type: ignore[attr-defined]
    return str(lines[0])


def test_synthetic_records_and_prints_the_ground_truth(tmp_path: Path) -> None:
    out = tmp_path / "wn.zarr"
    r = record("--out", str(out), "--synthetic", "white-noise", "--steps", "40", "--dim", "16", "--k", "8")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    assert "40 steps recorded (synthetic)" in r.stdout
    assert "kappa last" in r.stdout and "T -> inf: 1" in r.stdout
    store = open_store(out)
    assert (store.n_steps, store.k, store.group_names) == (40, 8, ("all",))


def test_synthetic_json_and_parameters(tmp_path: Path) -> None:
    out = tmp_path / "lr.zarr"
    r = record(
        "--out", str(out), "--synthetic", "lowrank-drift", "--steps", "60", "--dim", "20",
        "--param", "rank=3", "--param", "revert=0.1", "--k", "16", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["steps_recorded"] == 60 and doc["task"]["rank"] == 3
    assert doc["ground_truth"]["rank_limit"]["0.1"] == 3


def test_ingest_from_a_folder(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for s in range(5):
        np.savez(dumps / f"step_{s * 10}.npz", w=np.full(6, s, np.float32), b=np.ones(2))
    r = record("--out", str(tmp_path / "run.zarr"), "--from", str(dumps), "--k", "4", "--delete-ingested")
    assert r.exit_code == 0, r.stderr
    assert "5 steps recorded (dumps)" in r.stdout and "files deleted: 5" in r.stdout
    assert open_store(tmp_path / "run.zarr").group_names == ("w", "b")


def test_follow_with_idle_timeout(tmp_path: Path) -> None:
    np.save(tmp_path / "g_1.npy", np.ones(3))
    r = record(
        "--out", str(tmp_path / "run.zarr"), "--from", str(tmp_path), "--follow",
        "--idle-timeout", "0.3", "--poll", "0.05", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["mode"] == "follow" and doc["files_ingested"] == 1 and doc["stopped"].startswith("idle")


def test_a_bad_dump_is_one_line_naming_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "g_1.npy", np.ones(3))
    (tmp_path / "g_2.npy").write_bytes(b"\x93NUMPY garbage")
    msg = one_line_error(record("--out", str(tmp_path / "run.zarr"), "--from", str(tmp_path)))
    assert "g_2.npy: cannot read this dump" in msg
    assert open_store(tmp_path / "run.zarr").n_steps == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "choose one of"),
        (["--synthetic", "white-noise", "--from", "x"], "choose only one of"),
        (["--synthetic", "pink-noise"], "unknown synthetic task 'pink-noise'"),
        (["--synthetic", "white-noise", "--param", "q"], "expected KEY=NUMBER"),
        (["--synthetic", "white-noise", "--groups", "enc"], "--groups 'enc': expected one of"),
        (["--synthetic", "white-noise", "--kind", "dense"], "--kind must be sparse or gaussian"),
        (["--synthetic", "white-noise", "--follow"], "go with --from"),
        (["--from", "/nonexistent/dumps"], "/nonexistent/dumps does not exist"),
        (["--", "/nonexistent/python"], "cannot run '/nonexistent/python'"),
        (["--synthetic", "white-noise", "--threads", "2"], "--threads must be auto, 0 (record on"),
        (["--synthetic", "white-noise", "--threads", "many"], "--threads must be auto, 0"),
    ],
)
def test_bad_usage_is_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    msg = one_line_error(record("--out", str(tmp_path / "run.zarr"), *args))
    assert words in msg


def test_record_as_real_subprocesses(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "gradmanifold"
    for i, cmd in enumerate([[str(exe)], [sys.executable, "-m", "gradmanifold"]]):
        out = tmp_path / f"r{i}.zarr"
        done = subprocess.run(
            [*cmd, "record", "--out", str(out), "--synthetic", "random-walk", "--steps", "20", "--dim", "8"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        assert open_store(out).n_steps == 20


def test_wrap_through_the_cli_passes_the_exit_code(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = tmp_path / "t.py"
    script.write_text(
        "import torch\nm = torch.nn.Linear(3, 1)\no = torch.optim.SGD(m.parameters(), lr=0.1)\n"
        "for _ in range(4):\n    o.zero_grad(); m(torch.ones(2, 3)).sum().backward(); o.step()\n"
        "raise SystemExit(3)\n"
    )
    out = tmp_path / "run.zarr"
    done = subprocess.run(
        [sys.executable, "-m", "gradmanifold", "record", "--out", str(out), "--k", "4", "--",
         sys.executable, str(script)],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    assert f"gradmanifold: {out}: 4 steps committed" in done.stderr
    assert open_store(out).group_names == ("weight", "bias")


def test_synthetic_help_names_every_task() -> None:
    """The --synthetic help is a literal (the CLI imports no task code to print it): it must list them all."""
    import typer.main

    from gradmanifold.synthetic import TASKS

    command = typer.main.get_command(app)
    option = next(p for p in command.commands["record"].params if p.name == "synthetic")  # type: ignore[attr-defined]
    listed = (option.help or "").split("(")[0].replace(" ", "").split("|")
    assert listed == list(TASKS)
