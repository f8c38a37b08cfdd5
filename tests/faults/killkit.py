"""Real SIGKILLs at chosen points, cheaply: a fork server and the writers, recorders and repairs it runs.

A kill trial needs a fresh process each time, and starting one that imports numpy, zarr and numba takes about
a second. The fork server (`ForkServer`, a child of the test) imports everything once and then forks one
process per trial, in milliseconds. That process runs a job and dies by SIGKILL:

- at a chosen point: the N-th file operation of a phase, where it sends SIGKILL to itself (so the point is
  exact and does not depend on how fast the machine is), or
- whenever the test kills it, after it has reported a chosen number of lines (work done, not time).

Phases of a writer (a StoreWriter, or a Recorder around one), from when it is open:

- append: the chunk and array-metadata files a flush writes (zarr's temp file renamed into place, fsyncs);
- commit: inside publish_manifest (temp manifest written and fsynced, renamed over manifest.json, the folder
  fsynced), the commit point of every flush;
- rewind: everything from a rewind over committed rows until the commit of the new rows returns: the cut
  store's commit, the rows rewritten in place, the final commit;
- repair: every file operation of `repair_store` (backup copies, fsyncs, the commit, deletes, lock release).

A file operation is a call of os.replace, os.rename, os.link, os.unlink, os.fsync or shutil.copy2, and
entering or leaving publish_manifest; the process dies just before or just after one. It reports, one line
each on its report file (os.write: a line survives the kill), "ready" once its writer is open, "publish N"
before a commit of N rows and "published N" after it, "floor N" before a rewind to step N (and "rewind N"
when that rewind replaces committed rows) and "commit N" after a flush it asked for. So the test knows
exactly which rows the store must hold after the kill: those of the last commit published, or of the one in
flight when the process died inside publish_manifest; and in which phase it died.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from faultkit import DEADLINE, GROUPS, SPEC, make_row, spawn

PHASES = ("append", "rewind", "commit", "repair")
#: a writer that reached this many steps without dying at its kill point exits with code 3
STEP_LIMIT = 20_000
CHUNK_ROWS = 3
#: the gradients a recording job records (a Recorder projects them; k and seed as SPEC); "a" is a 5 x 8
#: matrix, so the job also records its layer spectra (every SPECTRA_EVERY steps) and the parameter updates
RECORDED = (("a", 40), ("b", 6))
SPECTRA_EVERY, SPECTRA_TOP = 2, 3


def grads(step: int, version: int) -> dict[str, np.ndarray]:
    """The gradient a recording job gives the Recorder at `step` after `version` rewinds."""
    rng = np.random.default_rng([version, step, 7])
    return {"a": rng.standard_normal((5, 8)).astype(np.float32), "b": rng.standard_normal(6)}


def params(step: int, version: int) -> dict[str, np.ndarray]:
    """The parameters a recording job gives beside the gradient (their differences are the updates)."""
    rng = np.random.default_rng([version, step, 11])
    return {"a": rng.standard_normal((5, 8)).astype(np.float32), "b": rng.standard_normal(6)}


def recorded_row(step: int, version: int) -> tuple[np.ndarray, np.ndarray]:
    """(proj, sqnorm) the Recorder must have committed for `step` at `version`."""
    from gradmanifold.projection import project_with_norm

    g = grads(step, version)
    proj, sqnorm = [], []
    for name, _ in RECORDED:
        z, q = project_with_norm(g[name], SPEC, name, 0)
        proj.append(z.astype(np.float32))
        sqnorm.append(q)
    return np.stack(proj), np.asarray(sqnorm)


def check_recorded(path: Path) -> int:
    """A recorded store holds steps 0..n-1, each row the projection of the gradient of its version (kept in
    `loss`), versions never decreasing along rows; returns n."""
    from gradmanifold.store import open_store

    chunks = list(open_store(path).iter_chunks())
    if not chunks:
        return 0
    step = np.concatenate([c.step for c in chunks])
    proj = np.concatenate([c.proj for c in chunks])
    sqnorm = np.concatenate([c.sqnorm for c in chunks])
    loss = np.concatenate([c.loss for c in chunks if c.loss is not None])
    np.testing.assert_array_equal(step, np.arange(len(step)))
    versions = loss.astype(np.int64)
    np.testing.assert_array_equal(versions, loss)
    assert np.all(np.diff(versions) >= 0), "a rewind replaces a suffix: versions never decrease along rows"
    for i, (s, v) in enumerate(zip(step.tolist(), versions.tolist(), strict=True)):
        want_proj, want_sq = recorded_row(s, v)
        np.testing.assert_array_equal(proj[i], want_proj)
        np.testing.assert_array_equal(sqnorm[i], want_sq)
    _check_extras(path, chunks, step, versions)
    return len(step)


def open_recorder(path: Path) -> Any:
    """The Recorder every recording job (and its resumption) uses: spectra and updates on."""
    from gradmanifold import Recorder

    return Recorder(
        path,
        k=SPEC.k,
        seed=SPEC.seed,
        chunk_rows=CHUNK_ROWS,
        break_lock=True,
        flush_interval=1e9,
        spectra_every=SPECTRA_EVERY,
        spectra_top=SPECTRA_TOP,
        updates=True,
    )


def record(rec: Any, step: int, version: int) -> None:
    """Record `step` of `version` (its version kept in `loss`)."""
    rec.record(step, grads(step, version), loss=float(version), params=params(step, version))


def _check_extras(path: Path, chunks: list[Any], step: np.ndarray, versions: np.ndarray) -> None:
    """The spectra table and the update arrays of a recorded store hold only what the job recorded.

    A spectra row exists only for an even step the main rows hold (a kill between the main row's commit and
    its spectra row's loses that spectra row, never more), with the singular values of that version's
    gradient; an update row is NaN (the first row of a process, or after a rewind) or the exact difference of
    the parameters of the row before and of this row, of one version.
    """
    from gradmanifold.store import open_store

    upd_sq = np.concatenate([c.update_sqnorm for c in chunks])
    for i in range(len(step)):
        if np.isnan(upd_sq[i]).all():
            continue
        assert i > 0 and versions[i] == versions[i - 1], f"row {i}: an update across a rewind"
        now, before = params(int(step[i]), int(versions[i])), params(int(step[i - 1]), int(versions[i]))
        want = [float(((now[n] - before[n]).astype(np.float64) ** 2).sum()) for n, _ in RECORDED]
        np.testing.assert_allclose(upd_sq[i], want, rtol=1e-12)
    r = open_store(path)
    tab = r.read_table("spectra")
    by_step = dict(zip(step.tolist(), versions.tolist(), strict=True))
    got = tab["spectra_step"].tolist()
    assert got == sorted(set(got)) and all(s % SPECTRA_EVERY == 0 and s in by_step for s in got), got
    for j, s in enumerate(got):
        a = grads(s, by_step[s])["a"].astype(np.float64)
        want = np.linalg.svd(a, compute_uv=False)[:SPECTRA_TOP]
        np.testing.assert_allclose(tab["spectra_sigma"][j, 0], want, rtol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# inside a forked child


class _Trip:
    """Counts the file operations of the wanted phase; SIGKILLs this process at the target-th."""

    def __init__(self, phase: str | None, target: int, report: Callable[[str], None]) -> None:
        self.phase, self.target, self.report = phase, target, report
        self.count = 0
        self.armed = False
        self.in_commit = False
        self.committed = 0  # rows of the last manifest published
        self.rewind_to: int | None = None  # a rewind over committed rows is under way (to this row)
        self.lock = threading.Lock()

    def point(self) -> None:
        if not self.armed or self.phase is None:
            return
        if self.phase == "repair":
            hit = True
        elif self.phase == "rewind":
            hit = self.rewind_to is not None
        else:
            hit = self.phase == ("commit" if self.in_commit else "append")
        if not hit:
            return
        with self.lock:
            self.count += 1
            die = self.count == self.target
        if die:
            os.kill(os.getpid(), signal.SIGKILL)


def _install(trip: _Trip) -> None:
    """Put trip points around the file operations and the commits of this (forked, disposable) process."""
    import gradmanifold.store.commit as commit_mod
    import gradmanifold.store.repair as repair_mod
    import gradmanifold.store.writer as writer_mod

    def around(fn: Callable[..., Any]) -> Callable[..., Any]:
        def op(*a: Any, **k: Any) -> Any:
            trip.point()
            out = fn(*a, **k)
            trip.point()
            return out

        return op

    for name in ("replace", "rename", "link", "unlink", "fsync"):
        setattr(os, name, around(getattr(os, name)))
    shutil.copy2 = around(shutil.copy2)  # type: ignore[assignment]

    for mod in (writer_mod, commit_mod, repair_mod):  # commit_mod: the Recorder's commit thread
        real = mod.publish_manifest  # the commit point (a rename must show up here: AttributeError)

        def publish(root: Any, manifest: Any, *a: Any, _real: Any = real, **k: Any) -> None:
            trip.report(f"publish {manifest.n_rows}")
            trip.in_commit = True
            try:
                trip.point()
                _real(root, manifest, *a, **k)
                trip.point()
            finally:
                trip.in_commit = False
            trip.committed = manifest.n_rows
            if trip.rewind_to is not None and manifest.n_rows > trip.rewind_to:
                trip.rewind_to = None  # the commit of the new rows: the rewind is done
            trip.report(f"published {manifest.n_rows}")

        mod.publish_manifest = publish  # type: ignore[attr-defined]


def _last_version(path: Path, recorder: bool) -> int:
    """Rewinds so far, as the last committed row says (-1 for no store)."""
    from gradmanifold.store import open_store

    try:
        chunks = list(open_store(path).iter_chunks())
    except Exception:
        return -1
    if not chunks:
        return -1
    last = chunks[-1]
    return int(last.loss[-1]) if recorder and last.loss is not None else int(last.sqnorm[-1, 0])


def _writer_job(job: dict[str, Any], trip: _Trip) -> int:
    """Append forever (StoreWriter or Recorder), flushing and rewinding at random, until killed."""
    path, recorder = Path(job["path"]), job["writer"] == "recorder"
    rnd = random.Random(job["seed"])
    rewind_rate = 0.3 if job["phase"] == "rewind" else 0.06
    version = _last_version(path, recorder) + 1
    if recorder:
        from gradmanifold.store import open_store

        step = open_store(path).n_steps if path.exists() else 0
        rec = open_recorder(path)

        def add(s: int) -> None:
            record(rec, s, version)

        flush = rec.flush

        def settle() -> None:  # the commit in flight (store.commit) lands before a rewind is planned
            if rec._writer is not None:
                rec._writer._settle()

        add(step)  # the Recorder opens its store at its first step
        step += 1
    else:
        from gradmanifold.store import StoreWriter

        w = StoreWriter(path, SPEC, GROUPS, chunk_rows=CHUNK_ROWS, break_lock=True)
        step = w.n_rows

        def add(s: int) -> None:
            w.append(s, *make_row(s, version), loss=float(s))

        flush = w.flush

        def settle() -> None:
            pass

    trip.report("ready")
    trip.armed = True
    for _ in range(STEP_LIMIT):
        if step > 3 and rnd.random() < rewind_rate:
            settle()  # (the writer's rewind waits for it anyway: this only makes `committed` exact)
            committed = trip.committed
            if job["phase"] == "rewind" and committed:
                hi = min(committed, step) - 1  # over committed rows, and back: never a jump forward
                back = rnd.randint(max(0, hi - 7), hi)
            else:
                back = rnd.randint(max(0, step - 8), step - 1)
            version += 1
            trip.report(f"floor {min(back, committed)}")
            if back < committed:
                trip.rewind_to = back if trip.rewind_to is None else min(trip.rewind_to, back)
                trip.report(f"rewind {back}")
            step = back
        add(step)
        step += 1
        if rnd.random() < 0.3:
            flush()
            trip.report(f"commit {trip.committed}")
    return 3


def _repair_job(job: dict[str, Any], trip: _Trip) -> int:
    from gradmanifold.store.repair import repair_store

    trip.report("ready")
    trip.armed = True
    repair_store(job["path"])
    trip.report("repaired")
    return 0


def child_main(job: dict[str, Any]) -> None:
    """Run one job in this forked process; never returns (os._exit: nothing of the server's runs here)."""
    code = 70
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        err = os.open(job["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(null, 0)
        os.dup2(err, 1)
        os.dup2(err, 2)
        report_fd = os.open(job["report"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

        def report(line: str) -> None:
            os.write(report_fd, (line + "\n").encode())

        warnings.simplefilter("ignore")  # "rewinding", "removed N temp files": expected here
        trip = _Trip(job.get("phase"), int(job.get("target", 0)), report)
        _install(trip)
        code = _repair_job(job, trip) if job["kind"] == "repair" else _writer_job(job, trip)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


# The fork server: imports and warms up once (never touching a store: zarr's threads must not exist before a
# fork), then reads one job a line on stdin, forks, answers "pid P", waits and answers "status S".
SERVER = """
    import json, os, sys
    import killkit
    killkit.warm_up()
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            killkit.child_main(job)
        print("pid", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("status", status, flush=True)
"""


def warm_up() -> None:
    """Import what the jobs use and run the projection once (numba's compiled kernels load here, once)."""
    import gradmanifold.store.repair
    import gradmanifold.store.writer  # noqa: F401
    from gradmanifold import Recorder  # noqa: F401
    from gradmanifold.projection import fingerprint

    fingerprint(SPEC)  # cached: a forked StoreWriter does not project again
    recorded_row(0, 0)


# ------------------------------------------------------------------------------------------------------------
# in the test


@dataclass
class Outcome:
    """How a forked job ended: its exit code (-9 for SIGKILL), what it reported, its stderr."""

    code: int
    lines: list[str]
    stderr: str

    @property
    def killed(self) -> bool:
        return self.code == -signal.SIGKILL

    @property
    def died_committing(self) -> bool:
        """It died inside publish_manifest: a "publish N" line without its "published N"."""
        words = [line.split()[0] for line in self.lines if line.startswith("publish")]
        return bool(words) and words[-1] == "publish"

    @property
    def died_rewinding(self) -> bool:
        """It died in a rewind over committed rows: after "rewind N", before a "published M" with M > N."""
        since: int | None = None
        for line in self.lines:
            word, _, n = line.partition(" ")
            if word == "rewind":
                since = int(n) if since is None else min(since, int(n))
            elif word == "published" and since is not None and int(n) > since:
                since = None
        return since is not None

    def rows_possible(self, before: int) -> set[int]:
        """The committed row counts the store may show now: that of the last commit published, or also that
        of the commit in flight when the process died inside publish_manifest. `before`: rows at the start."""
        last, flight = before, None
        for line in self.lines:
            word, _, n = line.partition(" ")
            if word == "published":
                last, flight = int(n), None
            elif word == "publish":
                flight = int(n)
        return {last} if flight is None else {last, flight}


class ForkServer:
    """A child process that forks one process per job (see the module docstring)."""

    def __init__(self, folder: Path) -> None:
        import subprocess

        self.folder = folder
        self.jobs = 0
        self.proc = spawn(SERVER, stdin=subprocess.PIPE)
        self.answers: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._expect("ready")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.answers.put(line.strip())
        self.answers.put(None)

    def _expect(self, word: str, timeout: float = DEADLINE) -> str:
        try:
            line = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the fork server did not answer {word!r} within {timeout:g} s") from None
        return self._check(line, word)

    def _check(self, line: str | None, word: str) -> str:
        if line is None or not line.startswith(word):
            err = self.proc.stderr.read()[-3000:] if self.proc.stderr and self.proc.poll() is not None else ""
            raise AssertionError(f"the fork server answered {line!r}, not {word!r}: {err}")
        return line[len(word) :].strip()

    def run(self, job: dict[str, Any], kill_after: int | None = None) -> Outcome:
        """Run `job` in a forked process until it ends. With `kill_after`, SIGKILL it (from here) once it has
        reported that many lines after "ready". Fails if it runs DEADLINE s (it would have hung)."""
        assert self.proc.stdin is not None
        self.jobs += 1
        report, err = self.folder / f"job{self.jobs}.report", self.folder / f"job{self.jobs}.err"
        self.proc.stdin.write(json.dumps({**job, "report": str(report), "err": str(err)}) + "\n")
        self.proc.stdin.flush()
        pid = int(self._expect("pid"))
        deadline = time.monotonic() + DEADLINE

        def lines() -> list[str]:
            text = report.read_text() if report.exists() else ""
            return text[: text.rfind("\n") + 1].splitlines()

        status = None
        while kill_after is not None and status is None:
            try:
                status = self._check(self.answers.get(timeout=0.01), "status")  # it ended by itself
            except queue.Empty:
                said = lines()
                if "ready" in said and len(said) - said.index("ready") - 1 >= kill_after:
                    os.kill(pid, signal.SIGKILL)
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    raise AssertionError(
                        f"job {job} did not report {kill_after} lines within {DEADLINE:g} s: {said[-5:]}"
                    ) from None
        if status is None:
            try:
                status = self._expect("status", timeout=max(1.0, deadline - time.monotonic()))
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(
                    f"job {job} did not reach its kill point within {DEADLINE:g} s: {lines()[-5:]}"
                ) from None
        code = os.waitstatus_to_exitcode(int(status))
        return Outcome(code, lines(), err.read_text() if err.exists() else "")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=DEADLINE)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
