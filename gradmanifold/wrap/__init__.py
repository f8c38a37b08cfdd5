"""Wrap mode: run a training command as a child process and record every optimizer step, no code changes.

    gradmanifold record --out run.zarr [--k 256 --seed 0 --every N --groups ...] -- python train.py ARGS

How. The parent puts `gradmanifold/wrap/boot` first on the child's PYTHONPATH and passes the recorder options
as environment variables (gradmanifold.wrap.options). Python runs `boot/sitecustomize.py` at start-up in the
child (and in every Python process the child starts: torchrun workers, DataLoader workers); it arms a
post-import hook, so nothing is imported until the job imports torch.optim, and then registers torch's
global optimizer step pre-hook (gradmanifold.wrap.hook). The parent forwards SIGTERM, SIGHUP and SIGINT to
the child and returns the child's exit code (128 + N when a signal N ended it); the child commits its store
when it exits, fails, or is interrupted.

The parent also sets NUMBA_NUM_THREADS=1 for the child when it is unset: a per-step projection is small, and
numba's thread pool beside a training job that owns the cores costs barrier waits far above the work.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradmanifold.errors import UsageError
from gradmanifold.wrap.options import RecordOptions

FORWARDED = ("SIGTERM", "SIGHUP", "SIGINT", "SIGQUIT", "SIGUSR1", "SIGUSR2")


def boot_dir() -> str:
    """The folder holding the start-up sitecustomize.py (put it first on PYTHONPATH)."""
    return str(Path(__file__).resolve().parent / "boot")


def store_path(out: str, index: int) -> str:
    """The store of the index-th optimizer that steps: `out` for the first, `<stem>.opt<i><suffix>` after."""
    if index == 0:
        return out
    p = Path(out)
    return str(p.with_name(f"{p.stem}.opt{index}{p.suffix}"))


@dataclass(frozen=True)
class WrapResult:
    exit_code: int
    stores: list[tuple[str, int]] = field(default_factory=list)  # (path, committed steps)

    def to_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "stores": [{"path": p, "n_steps": n} for p, n in self.stores]}


def child_env(opts: RecordOptions, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env.update(opts.to_env())
    here = str(
        Path(__file__).resolve().parent.parent.parent
    )  # the folder that holds the gradmanifold package
    parts = [boot_dir(), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p], here]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    env.setdefault("NUMBA_NUM_THREADS", "1")
    return env


def run_wrapped(command: Sequence[str], opts: RecordOptions) -> WrapResult:
    """Run `command` with recording on; wait for it; return its exit code and the stores it wrote."""
    try:
        proc = subprocess.Popen(list(command), env=child_env(opts))
    except FileNotFoundError:
        raise UsageError(f"cannot run {command[0]!r}: no such file or command") from None
    except PermissionError:
        raise UsageError(f"cannot run {command[0]!r}: permission denied") from None
    previous = {}

    def forward(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and _terminal_sent_it():
            return  # Ctrl-C in a terminal reaches the child directly (same process group)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    for name in FORWARDED:
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, forward)
    try:
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return WrapResult(128 - rc if rc < 0 else rc, _stores(opts.out))


def _terminal_sent_it() -> bool:
    """True when we are the terminal's foreground process group (so the child got the same SIGINT)."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):
        return False


def _stores(out: str) -> list[tuple[str, int]]:
    from gradmanifold.store import open_store

    found = []
    for i in range(64):
        path = store_path(out, i)
        if not Path(path).exists():
            if i:
                break
            continue
        try:
            found.append((path, open_store(path).n_steps))
        except Exception:
            found.append((path, -1))
    return found


__all__ = ["RecordOptions", "WrapResult", "boot_dir", "child_env", "run_wrapped", "store_path"]
