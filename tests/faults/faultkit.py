"""Helpers of the fault-injection suite: rows that check themselves, snapshots, CLI runs, child writers.

Every row this suite writes is a function of (step, version): proj from a seeded generator, sqnorm[0] holds
the version (how many rewinds had happened when it was written) and sqnorm[1] the step. So any reader can
check, row by row, that what it sees is a row a writer really wrote: never a torn, zero-filled or NaN row.

No assertion here depends on how much work fits in some time: a test that runs processes side by side waits
for work done (a count of reads, commits or lines reached) with `wait_until`, bounded by DEADLINE, a limit
only a hung process reaches, and failing with a message that names what did not happen.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import StoreWriter, open_store

SPEC = ProjectionSpec(k=8, seed=3)
GROUPS = [("a", 100), ("b", 7)]
ROOT = Path(__file__).resolve().parents[2]
FAULTS = Path(__file__).resolve().parent
#: seconds a test waits for work it started (a child's reads, commits, a line): far more than a loaded
#: machine needs, so that reaching it means something hung; the failure then says what did not happen
DEADLINE = 120.0


def examples(factor: float) -> int:
    """Hypothesis examples for a test: `factor` times the active profile's count (ci profile: more)."""
    from hypothesis import settings

    return max(1, int(factor * settings().max_examples))


def make_row(step: int, version: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([version, step])
    proj = rng.standard_normal((2, 8)).astype(np.float32)
    return proj, np.array([float(version), float(step)])


def write(path: Path, steps: list[int], chunk_rows: int = 4, version: int = 0, **kw: Any) -> None:
    with StoreWriter(path, SPEC, GROUPS, chunk_rows=chunk_rows, **kw) as w:
        for s in steps:
            w.append(s, *make_row(s, version), loss=float(s))


def read_all(path: Path) -> dict[str, np.ndarray]:
    r = open_store(path)
    chunks = list(r.iter_chunks())
    if not chunks:
        return {
            "step": np.zeros(0, np.int64),
            "proj": np.zeros((0, 2, 8), np.float32),
            "sqnorm": np.zeros((0, 2)),
        }
    return {
        "step": np.concatenate([c.step for c in chunks]),
        "proj": np.concatenate([c.proj for c in chunks]),
        "sqnorm": np.concatenate([c.sqnorm for c in chunks]),
    }


def check_rows(step: np.ndarray, proj: np.ndarray, sqnorm: np.ndarray, first_step: int = 0) -> None:
    """The rows are steps first_step, first_step+1, ... each exactly as some writer wrote it."""
    n = len(step)
    np.testing.assert_array_equal(step, np.arange(first_step, first_step + n))
    assert np.isfinite(proj).all() and np.isfinite(sqnorm).all()
    versions = sqnorm[:, 0].astype(np.int64)
    assert np.all(np.diff(versions) >= 0), "a rewind replaces a suffix: versions never decrease along rows"
    for i in range(n):
        want_proj, want_sq = make_row(int(step[i]), int(versions[i]))
        np.testing.assert_array_equal(proj[i], want_proj)
        np.testing.assert_array_equal(sqnorm[i], want_sq)


def assert_clean_prefix(path: Path) -> int:
    """Open, read everything, check every row; return the number of committed rows."""
    got = read_all(path)
    check_rows(got["step"], got["proj"], got["sqnorm"])
    return len(got["step"])


def snapshot(path: Path) -> dict[str, Any]:
    """Every file and folder under path (or the path itself): kind, mode, size, content hash."""
    out: dict[str, Any] = {}
    if not os.path.lexists(path):
        return {"": None}
    items = [path, *sorted(path.rglob("*"))] if path.is_dir() else [path]
    for p in items:
        rel = str(p.relative_to(path)) if p != path else ""
        st = p.lstat()
        if p.is_dir():
            out[rel] = ("dir", st.st_mode)
        else:
            out[rel] = ("file", st.st_mode, st.st_size, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


_COMMAND: dict[str, Any] = {}


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run the CLI in-process; returns typer's Result (exit_code, stdout, stderr).

    typer's CliRunner builds the click command from the app's type hints on every call, nine tenths of the
    cost of a short command line; the command is built once here and reused (a fuzz test runs thousands).
    """
    import typer.testing
    from typer.main import get_command

    from gradmanifold.cli import app

    key = f"{id(app)}:{len(app.registered_commands)}:{len(app.registered_groups)}"
    if key not in _COMMAND:
        _COMMAND.clear()
        _COMMAND[key] = get_command(app)
    command = _COMMAND[key]
    runner = typer.testing.CliRunner()
    if not hasattr(typer.testing, "_get_command"):  # another typer: build the command on each call
        return runner.invoke(app, list(args), env=env)
    with mock.patch.object(typer.testing, "_get_command", lambda _app: command):
        return runner.invoke(app, list(args), env=env)


def assert_one_line_error(result: Any, code: int) -> str:
    """Exit `code`, no traceback, exactly one `gradmanifold: error:` line on stderr."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.stdout
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gradmanifold: error: "), err
    assert "internal error" not in lines[0]
    return lines[0]


def wait_until(
    done: Callable[[], bool],
    what: str,
    *,
    procs: Sequence[subprocess.Popen[str]] = (),
    state: Callable[[], object] | None = None,
    timeout: float = DEADLINE,
) -> None:
    """Poll `done()` until it is true. Fail naming `what` (and `state()`, what was reached) once `timeout` s
    have passed, or as soon as one of `procs` exits first (with the end of its stderr)."""
    deadline = time.monotonic() + timeout
    while not done():
        seen = f" (reached: {state()})" if state is not None else ""
        for p in procs:
            if p.poll() is not None:
                err = p.stderr.read()[-3000:] if p.stderr is not None else ""
                who = f"{p.args!r:.80} exited ({p.returncode})"
                raise AssertionError(f"{what}: not done{seen}, and {who}: {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not done within {timeout:g} s{seen}")
        time.sleep(0.01)


class Lines:
    """The lines a child writes to a pipe, gathered by a thread: the child never blocks on a full pipe, and
    the test reads what came so far (`lines`) without waiting; `ended` is set at the end of the stream."""

    def __init__(self, pipe: Any) -> None:
        self.lines: list[str] = []
        self.ended = threading.Event()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: Any) -> None:
        with pipe:
            for line in pipe:
                self.lines.append(line.rstrip("\n"))
        self.ended.set()


def child_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join([str(FAULTS), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def spawn(script: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    """Start a Python child running `script` (dedented) with args; stdout is a pipe of text lines."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
        **kw,
    )


# A writer that appends forever, flushing and rewinding at random (rows carry their version, see above); it
# reports on stdout a lower bound of what the store must hold from then on: "commit N" after a commit of N
# rows, "floor N" before a rewind. Run it with spawn(WRITER, path, seed[, cap]): with a cap, it rewinds to
# the first half of its rows whenever it reaches `cap` rows, so that the store stays small however long
# it runs (readers beside it then read at the same speed all along).
WRITER = """
    import random, sys
    from faultkit import GROUPS, SPEC, make_row
    from gradmanifold.store import StoreWriter, open_store
    path, seed = sys.argv[1], int(sys.argv[2])
    cap = int(sys.argv[3]) if len(sys.argv) > 3 else None
    rnd = random.Random(seed)
    try:
        r = open_store(path)
        chunks = list(r.iter_chunks())
        version = int(chunks[-1].sqnorm[-1, 0]) + 1 if chunks else 0
    except Exception:
        version = 0
    w = StoreWriter(path, SPEC, GROUPS, chunk_rows=3, break_lock=True)
    step = w.n_rows
    print("ready", flush=True)
    while True:
        capped = cap is not None and step >= cap
        if step > 3 and (capped or rnd.random() < 0.06):
            back = rnd.randint(0, step // 2) if capped else rnd.randint(max(0, step - 8), step - 1)
            version += 1
            print("floor", min(back, w.n_committed), flush=True)
            step = back
        w.append(step, *make_row(step, version), loss=float(step))
        step += 1
        if rnd.random() < 0.3:
            w.flush()
            print("commit", w.n_committed, flush=True)
"""
