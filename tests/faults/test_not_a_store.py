"""Fault: not a store, a missing path, a store of a newer schema, a read-only folder.

Required: one-line errors on stderr, exit code 2, and the file system exactly as before (snapshot of the
whole folder, before and after). Reading commands work on a read-only store without writing to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultkit import assert_one_line_error, cli, snapshot, write

from gradmanifold.store.manifest import SCHEMA_VERSION

READERS = [["verify"], ["info"], ["analyze"], ["check", "--max", "model.kappa.last=100"], ["repair"]]
WRITE = ["record", "--synthetic", "white-noise", "--steps", "6", "--dim", "16", "--k", "8", "--out"]


def _commands(path: Path) -> list[list[str]]:
    return [[*c[:1], str(path), *c[1:]] for c in READERS]


def _make(tmp_path: Path, what: str) -> Path:
    if what == "missing":
        return tmp_path / "nope.zarr"
    if what == "file":
        p = tmp_path / "run.zarr"
        p.write_text("not a store")
        return p
    if what == "empty folder":
        p = tmp_path / "run.zarr"
        p.mkdir()
        return p
    if what == "other folder":
        p = tmp_path / "run.zarr"
        (p / "sub").mkdir(parents=True)
        (p / "notes.txt").write_text("hello")
        (p / "zarr.json").write_text("{}")
        return p
    if what == "newer schema":
        p = tmp_path / "run.zarr"
        write(p, list(range(5)), fsync=False)
        m = json.loads((p / "manifest.json").read_text())
        m["schema_version"] = SCHEMA_VERSION + 1
        (p / "manifest.json").write_text(json.dumps(m))
        return p
    raise AssertionError(what)


WHAT = ["missing", "file", "empty folder", "other folder", "newer schema"]
EXPECT = {
    "missing": "does not exist",
    "file": "is not a gradmanifold store",
    "empty folder": "is not a gradmanifold store",
    "other folder": "is not a gradmanifold store",
    "newer schema": "upgrade gradmanifold",
}


@pytest.mark.parametrize("what", WHAT)
def test_reading_commands_refuse_with_one_line_and_touch_nothing(tmp_path: Path, what: str) -> None:
    path = _make(tmp_path, what)
    before = snapshot(tmp_path)
    for args in _commands(path):
        res = cli(*args)
        line = assert_one_line_error(res, 2)
        assert EXPECT[what] in line, (args, line)
        assert str(path) in line
        assert res.stdout == "", (args, res.stdout)
        assert snapshot(tmp_path) == before, args


@pytest.mark.parametrize("what", ["file", "other folder", "newer schema"])
def test_record_refuses_to_write_into_it(tmp_path: Path, what: str) -> None:
    path = _make(tmp_path, what)
    before = snapshot(tmp_path)
    res = cli(*WRITE, str(path))
    line = assert_one_line_error(res, 2)
    assert str(path) in line
    assert snapshot(tmp_path) == before


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[str]:
    """Make `path` read-only: a read-only bind mount as root (EROFS), permissions otherwise (EACCES)."""
    if os.geteuid() == 0:
        ok = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode == 0
        ok = (
            ok
            and subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], capture_output=True).returncode
            == 0
        )
        if not ok:
            subprocess.run(["umount", str(path)], capture_output=True)
            pytest.skip("root without permission to mount: cannot make a folder read-only")
        try:
            yield "Read-only file system"
        finally:
            subprocess.run(["umount", str(path)], check=True)
        return
    modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
    for p in modes:
        p.chmod(modes[p] & ~0o222)
    try:
        yield "Permission denied"
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_read_only_store(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    write(path, list(range(12)), fsync=False)
    (tmp_path / "backups").mkdir()
    before = snapshot(tmp_path)
    with read_only(path) as why:
        for args in (["verify", str(path)], ["info", str(path)], ["analyze", str(path)]):
            res = cli(*args)
            assert res.exit_code == 0, (args, res.stderr)
        res = cli("repair", str(path), "--backup", str(tmp_path / "backups"))
        line = assert_one_line_error(res, 2)
        assert why in line and str(path) in line and "writable" in line
        res = cli(*WRITE, str(path), "--resume", "must")
        line = assert_one_line_error(res, 2)
        assert str(path) in line
        assert snapshot(tmp_path) == before
    assert snapshot(tmp_path) == before
