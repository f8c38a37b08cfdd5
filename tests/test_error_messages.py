"""Wording of the store's error messages: each says what happened, why, and how to fix it, on one line.

A message is part of the interface (people act on it, scripts grep it): changes here are deliberate.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gradmanifold.errors import (
    CorruptStoreError,
    GradManifoldError,
    NotAStoreError,
    SchemaVersionError,
    SpecMismatchError,
    StoreLockedError,
    StoreNotFoundError,
    StoreWriteError,
)
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import StoreChangedError, StoreWriter, open_store
from gradmanifold.store.layout import chunk_file
from gradmanifold.store.lock import LOCK_NAME
from gradmanifold.store.repair import repair_store

SPEC = ProjectionSpec(k=8, seed=3)
GROUPS = [("a", 100), ("b", 7)]


def _write(path: Path, steps: list[int], version: int = 0) -> None:
    with StoreWriter(path, SPEC, GROUPS, chunk_rows=4, fsync=False) as w:
        for s in steps:
            rng = np.random.default_rng([version, s])
            w.append(s, rng.standard_normal((2, 8)), [1.0, 2.0])


def missing(tmp: Path) -> None:
    open_store(tmp / "run.zarr")


def not_a_store(tmp: Path) -> None:
    (tmp / "run.zarr").mkdir()
    open_store(tmp / "run.zarr")


def newer_schema(tmp: Path) -> None:
    _write(tmp / "run.zarr", [0])
    m = json.loads((tmp / "run.zarr/manifest.json").read_text())
    m["schema_version"] = 3
    (tmp / "run.zarr/manifest.json").write_text(json.dumps(m))
    open_store(tmp / "run.zarr")


def damaged_manifest(tmp: Path) -> None:
    _write(tmp / "run.zarr", [0])
    m = json.loads((tmp / "run.zarr/manifest.json").read_text())
    m["n_rows"] = "one"
    (tmp / "run.zarr/manifest.json").write_text(json.dumps(m))
    open_store(tmp / "run.zarr")


def damaged_chunk(tmp: Path) -> None:
    _write(tmp / "run.zarr", list(range(100, 110)))
    f = chunk_file(tmp / "run.zarr", "proj", 1)
    f.write_bytes(f.read_bytes()[:-1])
    list(open_store(tmp / "run.zarr").iter_chunks())


def changed_under_reader(tmp: Path) -> None:
    _write(tmp / "run.zarr", list(range(10)))
    r = open_store(tmp / "run.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _write(tmp / "run.zarr", [5, 6], version=1)
    list(r.iter_chunks())


def locked(tmp: Path) -> None:
    _write(tmp / "run.zarr", [0])
    (tmp / "run.zarr" / LOCK_NAME).write_text(
        json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-01-01T00:00:00"})
    )
    StoreWriter(tmp / "run.zarr", SPEC, GROUPS)


def stale_lock(tmp: Path) -> None:
    _write(tmp / "run.zarr", [0])
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (tmp / "run.zarr" / LOCK_NAME).write_text(
        json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "x"})
    )
    StoreWriter(tmp / "run.zarr", SPEC, GROUPS)


def spec_mismatch(tmp: Path) -> None:
    _write(tmp / "run.zarr", [0])
    StoreWriter(tmp / "run.zarr", ProjectionSpec(k=16, seed=3), GROUPS)


def disk_full(tmp: Path) -> None:
    _write(tmp / "run.zarr", [0, 1])
    w = StoreWriter(tmp / "run.zarr", SPEC, GROUPS, chunk_rows=4, fsync=False)
    w.append(2, np.ones((2, 8)), [1.0, 1.0])  # buffered: rows 0..2 of chunk 0
    real = os.replace

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    os.replace = full  # type: ignore[assignment]
    try:
        w.flush()
    finally:
        os.replace = real
        w.abandon()


def damaged_before_append(tmp: Path) -> None:
    _write(tmp / "run.zarr", list(range(6)))
    f = chunk_file(tmp / "run.zarr", "sqnorm", 1)
    f.write_bytes(bytes(len(f.read_bytes())))
    StoreWriter(tmp / "run.zarr", SPEC, GROUPS)


def truncated_before_append(tmp: Path) -> None:
    _write(tmp / "run.zarr", list(range(6)))
    f = chunk_file(tmp / "run.zarr", "sqnorm", 1)
    f.write_bytes(f.read_bytes()[:5])
    StoreWriter(tmp / "run.zarr", SPEC, GROUPS)


def repair_refused(tmp: Path) -> None:
    _write(tmp / "run.zarr", list(range(12)))
    f = chunk_file(tmp / "run.zarr", "proj", 0)
    f.write_bytes(bytes(len(f.read_bytes())))
    repair_store(tmp / "run.zarr")


# scenario -> (error class, what happened, why, how to fix)
CASES: dict[str, tuple[Callable[[Path], None], type[GradManifoldError], str, str, str]] = {
    "missing": (missing, StoreNotFoundError, "run.zarr does not exist", "", "record a run first"),
    "not a store": (
        not_a_store,
        NotAStoreError,
        "run.zarr is not a gradmanifold store",
        "(no manifest.json)",
        "point at a folder written by gradmanifold record or Recorder",
    ),
    "newer schema": (
        newer_schema,
        SchemaVersionError,
        "store schema version 3",
        "is newer than this gradmanifold reads (2)",
        "upgrade gradmanifold",
    ),
    "damaged manifest": (
        damaged_manifest,
        CorruptStoreError,
        "manifest.json: 'n_rows'",
        "must be an integer, found a string",
        "restore manifest.json from a copy",
    ),
    "damaged chunk": (
        damaged_chunk,
        CorruptStoreError,
        "chunk 1 of 'proj' (rows 4..7, steps 104..107) is damaged",
        "(truncated (",
        "run `gradmanifold verify` to list every bad chunk, `gradmanifold repair` to drop a damaged tail",
    ),
    "changed under a reader": (
        changed_under_reader,
        StoreChangedError,
        "rows from 5 on were replaced while this reader held them",
        "the writer rewound or the store was repaired",
        "open the store again to read the current rows",
    ),
    "locked": (
        locked,
        StoreLockedError,
        f"is being written by pid {os.getpid()} on host {socket.gethostname()}",
        "one writer at a time",
        "wait for it to finish, or record to another store",
    ),
    "stale lock": (
        stale_lock,
        StoreLockedError,
        "has a stale lock from pid",
        "a process that no longer runs",
        "pass break_lock=True (CLI: --break-lock)",
    ),
    "spec mismatch": (
        spec_mismatch,
        SpecMismatchError,
        "cannot append to",
        "projection k: store has 8, writer asks 16",
        "resume with the store's settings, or record to a new store",
    ),
    "disk full": (
        disk_full,
        StoreWriteError,
        "writing rows 0..2 (1 chunk(s) per array) to",
        "failed at {store}/proj/c/0/0/0: No space left on device (needs about 424 bytes",
        "free space on that disk, then flush again or resume the run",
    ),
    "damaged before append": (
        damaged_before_append,
        CorruptStoreError,
        "chunk 1 of 'sqnorm' (rows 4..5) is damaged (checksum mismatch)",
        "so the writer cannot append after it",
        "`gradmanifold repair` to drop the damaged tail",
    ),
    "truncated before append": (
        truncated_before_append,
        CorruptStoreError,
        "chunk 1 of 'sqnorm' (rows 4..5) is damaged (chunk file",
        "{store}/sqnorm/c/1/0 is truncated (5 bytes, an uncompressed chunk has 64)), so the writer cannot",
        "`gradmanifold repair` to drop the damaged tail",
    ),
    "repair refused": (
        repair_refused,
        CorruptStoreError,
        "damaged chunk(s) [0] are followed by 2 sound chunk(s)",
        "repair only drops a damaged tail, so it dropped nothing",
        "`gradmanifold repair --drop-sound-tail`",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_message_says_what_why_and_how_to_fix(tmp_path: Path, case: str) -> None:
    make, cls, what, why, fix = CASES[case]
    with pytest.raises(cls) as info:
        make(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    for part in (what, why.format(store=tmp_path / "run.zarr"), fix):
        assert part in msg, f"{case}: {part!r} not in {msg!r}"
    assert str(tmp_path / "run.zarr") in msg  # always which store
