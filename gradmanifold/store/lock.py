"""Single-writer lock: a file naming host and pid, created exclusively; a second writer fails at once."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gradmanifold.errors import StoreLockedError

LOCK_NAME = ".gradmanifold.lock"


@dataclass(frozen=True)
class LockHolder:
    """Who holds a store's lock."""

    host: str
    pid: int
    started: str

    @property
    def is_stale(self) -> bool:
        """True when the holder is a dead process on this host (a lock on another host is never judged)."""
        return self.host == socket.gethostname() and not _pid_alive(self.pid)

    def describe(self) -> str:
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
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
    return True


def read_holder(root: Path) -> LockHolder | None:
    """The current holder of root's lock, or None when unlocked (an unreadable lock reads as pid 0)."""
    path = root / LOCK_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return LockHolder(str(raw["host"]), int(raw["pid"]), str(raw.get("started", "?")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return LockHolder("?", 0, "?")


class WriterLock:
    """The lock a StoreWriter holds for its lifetime."""

    def __init__(self, root: Path, break_stale: bool = False) -> None:
        self.path = root / LOCK_NAME
        self._held = False
        holder = read_holder(root)
        if holder is not None:
            if holder.is_stale and break_stale:
                self.path.unlink(missing_ok=True)
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
            os.write(fd, payload)
        finally:
            os.close(fd)
        self._held = True

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
