"""Fault: two writers on one store (separate processes).

Required: the second fails at once, naming the holder (pid and host); a stale lock (a dead pid on this host)
is detected and broken only when asked; processes racing to create, open or break the lock of a store end
with exactly one writer.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from faultkit import DEADLINE, GROUPS, SPEC, assert_clean_prefix, assert_one_line_error, cli, spawn, write

import gradmanifold.store.lock as lock_mod
from gradmanifold.errors import StoreLockedError
from gradmanifold.store import StoreWriter, open_store
from gradmanifold.store.lock import LOCK_NAME, read_holder
from gradmanifold.store.verify import verify_store

HOLDER = """
    import sys
    from faultkit import GROUPS, SPEC, make_row
    from gradmanifold.store import StoreWriter
    w = StoreWriter(sys.argv[1], SPEC, GROUPS, chunk_rows=4)
    n = w.n_rows
    for s in range(n, n + 6):
        w.append(s, *make_row(s))
    w.flush()
    print("locked", flush=True)
    sys.stdin.read()  # hold the store until the parent closes stdin
    w.close()
"""

RACER = """
    import os, sys, time
    from faultkit import DEADLINE, GROUPS, SPEC, make_row
    from gradmanifold.errors import StoreLockedError
    from gradmanifold.store import StoreWriter
    path, go, break_lock, tried = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
    n = int(sys.argv[5])
    print("ready", flush=True)
    while not os.path.exists(go):
        time.sleep(0.0005)
    try:
        w = StoreWriter(path, SPEC, GROUPS, chunk_rows=4, break_lock=break_lock)
    except StoreLockedError as exc:
        result = f"locked {exc}"
    except Exception as exc:
        result = f"other {type(exc).__name__} {exc}"
    else:
        n_rows = w.n_rows
        w.append(n_rows, *make_row(n_rows))
        result = "won"
    open(os.path.join(tried, str(os.getpid())), "w").close()  # this racer has made its attempt
    if result == "won":
        # Hold the store until every racer has made its attempt, however slowly they run, then let it go.
        deadline = time.monotonic() + DEADLINE
        while len(os.listdir(tried)) < n and time.monotonic() < deadline:
            time.sleep(0.001)
        if len(os.listdir(tried)) < n:
            result = f"won, but only {len(os.listdir(tried))} of {n} racers tried within {DEADLINE:g} s"
        w.close()
    print(result, flush=True)
"""


class _PinnedClock:
    """The time module as the lock module sees it, with time() pinned: the age of a lock file is exact."""

    def __init__(self, now: float) -> None:
        self._now = now

    def time(self) -> float:
        return self._now

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def _hold(path: Path) -> subprocess.Popen[str]:
    proc = spawn(HOLDER, str(path), stdin=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.stderr.read() if proc.stderr else ""
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()


def test_second_writer_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, list(range(3)))
    proc = _hold(path)
    try:
        # Fails at once: the holder keeps the lock until the test lets it go (below), so a writer that waited
        # for the lock would not come back; it must raise while the lock is still held.
        outcome: dict[str, object] = {}

        def second_writer() -> None:
            try:
                StoreWriter(path, SPEC, GROUPS).abandon()
                outcome["result"] = "opened the store"
            except BaseException as exc:
                outcome["result"] = exc

        attempt = threading.Thread(target=second_writer, daemon=True)
        attempt.start()
        attempt.join(DEADLINE)
        assert not attempt.is_alive(), f"a second writer still waits for the lock after {DEADLINE:g} s"
        assert isinstance(outcome["result"], StoreLockedError), outcome
        holder = read_holder(path)
        assert proc.poll() is None and holder is not None and holder.pid == proc.pid  # the lock was held
        msg = str(outcome["result"])
        assert f"pid {proc.pid} on host {socket.gethostname()}" in msg and "one writer at a time" in msg
        # repair refuses too; reading goes on (a snapshot of the last commit)
        err = assert_one_line_error(cli("repair", str(path)), 2)
        assert f"pid {proc.pid}" in err
        res = cli("verify", str(path))
        assert res.exit_code == 0 and "a writer is appending" in res.stdout
        assert assert_clean_prefix(path) == 9
    finally:
        proc.communicate(timeout=DEADLINE)  # closes its stdin: it commits and exits
    assert proc.returncode == 0
    write(path, [9])  # free again
    assert assert_clean_prefix(path) == 10


def test_stale_lock_is_detected_and_broken_only_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    proc = _hold(path)
    _kill(proc)
    assert (path / LOCK_NAME).exists()
    with pytest.raises(StoreLockedError) as info:
        StoreWriter(path, SPEC, GROUPS)
    msg = str(info.value)
    assert f"stale lock from pid {proc.pid}" in msg and "break_lock=True (CLI: --break-lock)" in msg
    err = assert_one_line_error(cli("repair", str(path)), 2)
    assert "stale lock" in err
    res = cli("repair", str(path), "--break-lock")
    assert res.exit_code == 0, res.stderr
    assert not (path / LOCK_NAME).exists()
    assert assert_clean_prefix(path) == 6  # the killed writer's commit
    proc = _hold(path)
    _kill(proc)
    write(path, [12], break_lock=True)  # the writer API breaks it when told
    assert assert_clean_prefix(path) == 13
    assert verify_store(path).ok


def test_lock_of_another_host_is_never_broken(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, [0])
    (path / LOCK_NAME).write_text(json.dumps({"host": "another-host", "pid": 1, "started": "x"}))
    with pytest.raises(StoreLockedError, match="pid 1 on host another-host"):
        StoreWriter(path, SPEC, GROUPS, break_lock=True)


def test_unreadable_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lock file with no holder in it: locked while fresh, stale (breakable) once old."""
    path = tmp_path / "r.zarr"
    write(path, [0])
    (path / LOCK_NAME).write_bytes(b"")
    # Written one second ago (a pinned clock: however long this machine takes between the two lines).
    written = (path / LOCK_NAME).stat().st_mtime
    with monkeypatch.context() as mp, pytest.raises(StoreLockedError, match="unreadable lock file") as info:
        mp.setattr(lock_mod, "time", _PinnedClock(written + 1.0))
        StoreWriter(path, SPEC, GROUPS, break_lock=True)
    assert "stale" not in str(info.value)
    old = time.time() - 60
    os.utime(path / LOCK_NAME, (old, old))
    with pytest.raises(StoreLockedError, match="stale lock from an unreadable lock file"):
        StoreWriter(path, SPEC, GROUPS)
    write(path, [1], break_lock=True)
    assert assert_clean_prefix(path) == 2


def _race(tmp_path: Path, path: Path, n: int, break_lock: bool) -> list[str]:
    """n processes try to open the store at once; the winner holds it until every other one has tried."""
    go, tried = tmp_path / "go", tmp_path / "tried"
    tried.mkdir()
    flag = "1" if break_lock else "0"
    procs = [spawn(RACER, str(path), str(go), flag, str(tried), str(n)) for _ in range(n)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.communicate()[1]
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=DEADLINE)
        assert p.returncode == 0, err
        outs.append(out.strip())
    go.unlink()
    return outs


@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_racing_writers_end_with_exactly_one(tmp_path: Path, existing: bool) -> None:
    path = tmp_path / "r.zarr"
    if existing:
        write(path, list(range(5)))
    outs = _race(tmp_path, path, 3, break_lock=False)
    assert sum(o == "won" for o in outs) == 1, outs
    assert all(o == "won" or o.startswith("locked") for o in outs), outs
    assert assert_clean_prefix(path) == (6 if existing else 1)
    assert verify_store(path).ok and not (path / LOCK_NAME).exists()


def test_racing_stale_lock_breakers_end_with_exactly_one(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, list(range(5)))
    probe = subprocess.Popen(["sleep", "0"])  # a pid that ran on this host and is gone
    probe.wait()
    (path / LOCK_NAME).write_text(
        json.dumps({"host": socket.gethostname(), "pid": probe.pid, "started": "x"})
    )
    outs = _race(tmp_path, path, 3, break_lock=True)
    assert sum(o == "won" for o in outs) == 1, outs
    assert all(o == "won" or o.startswith("locked") for o in outs), outs
    assert assert_clean_prefix(path) == 6
    assert not list(path.glob(f"{LOCK_NAME}.*"))  # no set-aside lock left behind
    assert open_store(path).manifest.segments[-1].status == "closed"
