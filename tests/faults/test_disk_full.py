"""Fault: the disk fills up (or the file size limit is hit, or fsync fails) while the writer flushes.

Required: a clear error naming the path and the bytes; committed data intact; the writer can go on once
space is back; the training loop's Recorder follows its on_error policy ("raise", or "warn" and keep
training). Three injections: a byte budget on every file write under the store (in-process, swept over
many budgets so the disk fills at every kind of write), RLIMIT_FSIZE in a child process (the real kernel
error, EFBIG), and a real full file system (a tiny tmpfs, when this machine lets tests mount one).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import GROUPS, SPEC, assert_clean_prefix, make_row, snapshot, spawn, write

from gradmanifold.errors import StoreWriteError
from gradmanifold.store import StoreWriter, open_store
from gradmanifold.store.lock import LOCK_NAME
from gradmanifold.store.verify import verify_store

NOSPACE = os.strerror(errno.ENOSPC)


class _Limited:
    """A file object whose writes draw on a shared byte budget; past it, ENOSPC after a partial write."""

    def __init__(self, f: Any, disk: dict[str, int]) -> None:
        self._f = f
        self._disk = disk

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        left = self._disk["left"]
        if len(view) <= left:
            self._disk["left"] = left - len(view)
            return int(self._f.write(view))
        self._f.write(view[:left])  # a real full disk takes what fits, then fails
        self._disk["left"] = 0
        self._disk["failures"] += 1
        raise OSError(errno.ENOSPC, NOSPACE)

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


@contextlib.contextmanager
def disk_budget(root: Path, budget: int) -> Iterator[dict[str, int]]:
    """Every file opened for writing under root (zarr chunks, metadata, manifest) shares `budget` bytes."""
    real_open = io.open
    prefix = str(root.absolute())
    disk = {"left": budget, "failures": 0}

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        f = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wax+")
        if (
            writing
            and isinstance(file, str | os.PathLike)
            and os.path.abspath(os.fspath(file)).startswith(prefix)
        ):
            return _Limited(f, disk)
        return f

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(io, "open", fake_open)
        mp.setattr(builtins, "open", fake_open)
        yield disk


def _assert_clear(exc: StoreWriteError, path: Path, reason: str = NOSPACE) -> None:
    msg = str(exc)
    assert str(path) in msg, msg  # which store (and the file, when the OS says)
    assert "bytes" in msg and "needs about" in msg, msg  # how much it was writing
    assert reason in msg, msg  # why
    assert "keeps every committed row" in msg, msg  # what is safe
    assert "\n" not in msg


BUDGETS = [0, 1, 64, 200, 400, 700, 1000, 1500, 2200, 3000, 4500, 6000, 9000, 14000, 10**7]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("rewind", [False, True])
def test_disk_fills_during_appends(tmp_path: Path, budget: int, rewind: bool) -> None:
    """The disk fills somewhere in 14 appends (with or without a rewind over committed rows)."""
    _fill_during_appends(tmp_path / "r.zarr", budget, rewind)


@pytest.mark.slow
@pytest.mark.parametrize("rewind", [False, True])
def test_disk_fills_at_every_byte_offset(tmp_path: Path, rewind: bool) -> None:
    """A fine sweep: the disk fills at 240 offsets, inside chunk data, metadata and manifest writes."""
    seen = set()
    for i, budget in enumerate(range(0, 24000, 100)):
        seen.add(_fill_during_appends(tmp_path / f"r{i}.zarr", budget, rewind))
    assert {"writing rows", "publishing the manifest", None} <= seen


def _fill_during_appends(path: Path, budget: int, rewind: bool) -> str | None:
    """Returns what was being written when the disk filled (None: it did not fill)."""
    write(path, list(range(6)))
    steps = [*range(6, 11), *(range(3, 14) if rewind else range(11, 20))]
    versions = [0] * 5 + [1 if rewind else 0] * (len(steps) - 5)
    w = StoreWriter(path, SPEC, GROUPS, chunk_rows=4)
    failed, done = None, 0
    with disk_budget(path, budget) as disk, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rewind's notice
        try:
            for s, v in zip(steps, versions, strict=True):
                done += 1  # appended (into the buffer) even when the flush it triggers fails
                w.append(s, *make_row(s, v), loss=float(s))
            w.flush()
        except StoreWriteError as exc:
            failed = exc
    if failed is None:
        assert disk["failures"] == 0
    else:
        _assert_clear(failed, path)
    # Committed data intact: a clean prefix (at least the rows before the rewind point), and sound.
    n = assert_clean_prefix(path)
    assert n >= (3 if rewind else 6)
    assert verify_store(path).ok
    # Space is back: the same writer goes on and loses nothing it was given.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s, v in list(zip(steps, versions, strict=True))[done:]:
            w.append(s, *make_row(s, v), loss=float(s))
        w.close()
    assert assert_clean_prefix(path) == (14 if rewind else 20)
    assert verify_store(path).ok
    if failed is None:
        return None
    return "writing rows" if "writing rows" in str(failed) else "publishing the manifest"


def test_disk_full_when_opening_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, list(range(6)))
    before = snapshot(path)
    with disk_budget(path, 0), pytest.raises(StoreWriteError) as info:
        StoreWriter(path, SPEC, GROUPS, chunk_rows=4)
    _assert_clear(info.value, path)
    assert "publishing the manifest" in str(info.value)
    assert snapshot(path) == before  # no lock, no temp file left behind
    new = tmp_path / "new.zarr"
    with disk_budget(tmp_path, 300), pytest.raises(StoreWriteError):
        StoreWriter(new, SPEC, GROUPS, chunk_rows=4)
    assert not new.exists()  # a store that could not be created leaves nothing behind


def test_fsync_failure_is_a_write_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.zarr"
    write(path, list(range(6)))
    w = StoreWriter(path, SPEC, GROUPS, chunk_rows=4)
    w.append(6, *make_row(6))  # buffered: rows 4..6 of chunk 1

    def bad_fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with monkeypatch.context() as mp:
        mp.setattr(os, "fsync", bad_fsync)
        with pytest.raises(StoreWriteError) as info:
            w.flush()
    _assert_clear(info.value, path, os.strerror(errno.EIO))
    assert assert_clean_prefix(path) == 6
    w.close()
    assert assert_clean_prefix(path) == 7


def test_disk_full_while_writing_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock file that could not be filled in would block every later writer: it is removed."""
    path = tmp_path / "r.zarr"
    write(path, list(range(3)))
    before = snapshot(path)
    real_write = os.write

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, NOSPACE)

    with monkeypatch.context() as mp:
        mp.setattr(os, "write", full)
        with pytest.raises(StoreWriteError, match="cannot lock") as info:
            StoreWriter(path, SPEC, GROUPS)
    assert os.write is real_write
    assert NOSPACE in str(info.value)
    assert not (path / LOCK_NAME).exists()
    assert snapshot(path) == before
    write(path, [3])  # the next writer is not blocked
    assert assert_clean_prefix(path) == 4


# A training loop with a Recorder; after 32 recorded steps (one committed chunk) the file size limit drops
# below one chunk file, so every later flush fails with EFBIG, as a full disk would fail it with ENOSPC.
TRAINING = """
    import resource, signal, sys, warnings
    import numpy as np
    from gradmanifold import Recorder
    from gradmanifold.errors import StoreWriteError
    path, policy, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
    rec = Recorder(path, k=256, seed=0, on_error=policy, chunk_rows=32, flush_interval=1e9, threads=threads)
    grads = lambda s: {"w": np.random.default_rng(s).standard_normal(1000)}
    for s in range(32):
        rec.record(s, grads(s))
    rec.flush()
    resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))
    trained = 0
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for s in range(32, 100):
                rec.record(s, grads(s))
                trained += 1
            rec.close()
        print("finished", trained, flush=True)
        for w in seen:
            print("warning", str(w.message).replace(chr(10), " "), flush=True)
    except StoreWriteError as exc:
        print("raised", trained, str(exc).replace(chr(10), " "), flush=True)
"""


@pytest.mark.parametrize("threads", [0, 1])
@pytest.mark.parametrize("policy", ["raise", "warn"])
def test_recorder_on_error_policy_with_a_file_size_limit(tmp_path: Path, policy: str, threads: int) -> None:
    path = tmp_path / "run.zarr"
    proc = spawn(TRAINING, str(path), policy, str(threads))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    efbig = os.strerror(errno.EFBIG)
    if policy == "raise":
        word, trained, msg = lines[0].split(" ", 2)
        # the 64th step fills chunk 1, whose commit (on the commit thread, store.commit) fails: its error
        # reaches the training thread at the first record() after the commit ended, at the latest at close()
        # (the loop then has trained all 68 steps)
        assert word == "raised" and 32 <= int(trained) <= 68
        assert efbig in msg and str(path) in msg and "bytes" in msg and "ulimit -f" in msg
    else:
        assert lines[0] == "finished 68"  # training went on to the end
        warned = [ln for ln in lines[1:] if "recording stopped, training goes on" in ln]
        assert len(warned) == 1 and efbig in warned[0] and str(path) in warned[0], lines
    r = open_store(path)
    assert r.n_steps == 32 and list(r.steps()) == list(range(32))  # the committed chunk, intact
    assert verify_store(path).ok
    assert not (path / LOCK_NAME).exists() or policy == "raise"


def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    where.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    return res.returncode == 0


def test_real_full_file_system(tmp_path: Path) -> None:
    disk = tmp_path / "small"
    if not _mount_tmpfs(disk, "160k"):
        pytest.skip("needs permission to mount a tmpfs (root in a privileged container)")
    try:
        path = disk / "r.zarr"
        committed = 0
        with pytest.raises(StoreWriteError) as info:
            w = StoreWriter(path, SPEC, [("w", 1000)], chunk_rows=64, fsync=True)
            import numpy as np

            for s in range(100000):
                w.append(s, np.full((1, 8), float(s), np.float32), [1.0])
                committed = w.n_committed
        _assert_clear(info.value, path)
        r = open_store(path)
        assert r.n_steps >= committed and r.n_steps > 0
        assert verify_store(path).ok
        assert list(r.steps()) == list(range(r.n_steps))
    finally:
        subprocess.run(["umount", str(disk)], check=False)
