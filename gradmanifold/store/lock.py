"""Single-writer lock: a file naming host and pid, created exclusively; a second writer fails at once."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gradmanifold.errors import StoreLockedError

LOCK_NAME = ".gradmanifold.lock"
DAMAGED_LOCK_AGE = 10.0


@dataclass(frozen=True)
class LockHolder:
    """Who holds a store's lock."""

    host: str
    pid: int
    started: str
    # seconds since an unreadable (empty or damaged) lock file was written; not part of the identity
    damaged_age: float | None = field(default=None, compare=False)

    @property
    def is_stale(self) -> bool:
        """True when the holder is a dead process on this host (a lock on another host is never judged).

        An unreadable lock file (a writer killed between creating it and writing its name into it) counts
        as stale once it is DAMAGED_LOCK_AGE seconds old: a live writer fills its lock at once.
        """
        if self.damaged_age is not None:
            return self.damaged_age > DAMAGED_LOCK_AGE
        return self.host == socket.gethostname() and not _pid_alive(self.pid)

    def describe(self) -> str:
        if self.damaged_age is not None:
            return f"an unreadable lock file (empty or damaged, written {self.damaged_age:.0f} s ago)"
        return f"pid {self.pid} on host {self.host} (since {self.started})"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) holds nothing: treat it as dead.
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat", encoding="ascii") as f:
        if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
            return False
    return True


def read_holder(root: Path) -> LockHolder | None:
    """The current holder of root's lock, or None when unlocked."""
    return read_holder_file(root / LOCK_NAME)


def read_holder_file(path: Path) -> LockHolder | None:
    """The holder named by a lock file, None when there is no such file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return LockHolder(str(raw["host"]), int(raw["pid"]), str(raw.get("started", "?")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        try:
            age = max(0.0, time.time() - path.stat().st_mtime)
        except OSError:
            age = 0.0
        return LockHolder("?", 0, "?", damaged_age=age)


class WriterLock:
    """The lock a StoreWriter holds for its lifetime (and `gradmanifold repair` while it repairs)."""

    def __init__(self, root: Path, break_stale: bool = False) -> None:
        self.path = root / LOCK_NAME
        self._held = False
        holder = read_holder(root)
        if holder is not None:
            if holder.is_stale and break_stale:
                self._break(root, holder)
            elif holder.is_stale:
                raise StoreLockedError(
                    f"{root} has a stale lock from {holder.describe()}, a process that no longer runs; "
                    "if no other writer uses this store, pass break_lock=True (CLI: --break-lock)"
                )
            else:
                raise StoreLockedError(
                    f"{root} is being written by {holder.describe()}; one writer at a time "
                    "(wait for it to finish, or record to another store)"
                )
        payload = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "started": datetime.now(UTC).isoformat()}
        ).encode()
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            other = read_holder(root)
            who = other.describe() if other else "another process"
            raise StoreLockedError(f"{root} is being written by {who}; one writer at a time") from None
        try:
            try:
                if os.write(fd, payload) != len(payload):
                    raise OSError(errno.ENOSPC, "short write", str(self.path))
            finally:
                os.close(fd)
        except BaseException:
            # A lock file without its holder would block every later writer: remove it.
            self.path.unlink(missing_ok=True)
            raise
        self._held = True

    def _break(self, root: Path, stale: LockHolder) -> None:
        """Remove a stale lock, atomically: of several processes breaking it at once, one removes it.

        The lock is renamed aside first; if what was renamed is not the stale lock judged above (another
        process broke it and took the store meanwhile), it is put back and the store counts as locked.
        """
        aside = self.path.with_name(f"{LOCK_NAME}.{uuid.uuid4().hex}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process broke it first; the O_EXCL create decides who writes
        moved = read_holder_file(aside)
        if moved != stale:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            who = moved.describe() if moved else "another process"
            raise StoreLockedError(f"{root} is being written by {who}; one writer at a time")
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
