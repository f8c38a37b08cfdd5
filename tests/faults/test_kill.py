"""Fault: a writer or a Recorder is killed with SIGKILL (appending, rewinding, committing), or a repair is.

Required: the store opens; exactly the committed steps are visible (the rows of the last commit published,
or of the one being published when the process died; each row exactly as written, no NaN or fill rows);
leftover temp files are cleaned by the next writer; resume continues. A repair killed at any file operation
leaves the old commit or the repaired one, and running it again finishes.

The killed processes are forked by a fork server (killkit.py), so that a trial costs milliseconds, not the
second a new Python process takes; each dies at the N-th file operation of the phase under test (chosen at
random, or each in turn), or is killed by the test after it reported a chosen number of lines. Nothing here
waits for time to pass.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from faultkit import GROUPS, SPEC, assert_clean_prefix, make_row, read_all, write
from killkit import CHUNK_ROWS, ForkServer, Outcome, check_recorded, open_recorder, record

from gradmanifold.store import StoreWriter, open_store
from gradmanifold.store.repair import repair_store
from gradmanifold.store.verify import verify_store

#: kill points are drawn among the first this many file operations of the phase: about two commits (append,
#: commit) or two rewinds (rewind) of the writers in killkit
TARGETS = {"append": 120, "commit": 16, "rewind": 130}
WRITERS = ("writer", "recorder")
#: kills per chain (one store killed again and again, each kill checked, resumed at the end): default / slow
CHAIN, CHAIN_SLOW = {"writer": 3, "recorder": 2}, 10
#: chains per (writer, phase) under the slow mark: StoreWriter, Recorder
CHAINS_SLOW = {"writer": 4, "recorder": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    s = ForkServer(tmp_path_factory.mktemp("forks"))
    yield s
    s.close()


def _check_after_kill(path: Path, writer: str, out: Outcome, before: int) -> int:
    """The store holds exactly the rows of the last commit published (or of the one in flight), each as
    written, and verifies; returns its rows."""
    assert out.killed, f"it was to die by SIGKILL, but exited with {out.code}: {out.stderr[-3000:]}"
    n = check_recorded(path) if writer == "recorder" else assert_clean_prefix(path)
    possible = out.rows_possible(before)
    assert n in possible, f"the store holds {n} rows, but the commits published say {sorted(possible)}"
    report = verify_store(path)
    assert report.ok, report.problems
    return n


def _resume(path: Path, writer: str) -> None:
    """Resume in-process: the killed writer's temp files go, its segment is marked interrupted."""
    n = open_store(path).n_steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "removed N temp files left by an interrupted writer"
        if writer == "recorder":
            loss = [c.loss for c in open_store(path).iter_chunks() if c.loss is not None]
            version = int(np.concatenate(loss)[-1]) + 1 if n else 0
            with open_recorder(path) as rec:
                record(rec, n, version)
        else:
            version = int(read_all(path)["sqnorm"][-1, 0]) + 1 if n else 0
            with StoreWriter(path, SPEC, GROUPS, chunk_rows=CHUNK_ROWS, break_lock=True) as w:
                w.append(n, *make_row(n, version))
    assert not list(path.rglob("*.partial"))
    assert (check_recorded(path) if writer == "recorder" else assert_clean_prefix(path)) == n + 1
    m = open_store(path).manifest
    assert m.segments[-1].status == "closed"
    assert all(s.status in ("interrupted", "closed") for s in m.segments[:-1])
    assert verify_store(path).ok


def _chain(server: ForkServer, path: Path, writer: str, phase: str, seed: int, kills: int) -> None:
    """Kill a writer at a random point of `phase`, check the store, start it again on the same store, ..."""
    rnd = random.Random(seed)
    rows = 0
    for i in range(kills):
        target = rnd.randint(1, TARGETS[phase])
        job = {"kind": "writer", "writer": writer, "path": str(path), "seed": seed * 100 + i}
        out = server.run({**job, "phase": phase, "target": target})
        rows = _check_after_kill(path, writer, out, rows)
        # it died where it was to die (the lines it reported say where it was)
        if phase == "rewind":
            assert out.died_rewinding, out.lines[-5:]
        else:
            assert out.died_committing == (phase == "commit"), (phase, out.lines[-5:])
    _resume(path, writer)


@pytest.mark.parametrize("phase", ["append", "rewind", "commit"])
@pytest.mark.parametrize("writer", WRITERS)
def test_sigkill_at_chosen_points(server: ForkServer, tmp_path: Path, writer: str, phase: str) -> None:
    _chain(server, tmp_path / "r.zarr", writer, phase, seed=0, kills=CHAIN[writer])


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["append", "rewind", "commit"])
@pytest.mark.parametrize(("writer", "chain"), [(w, c) for w in WRITERS for c in range(1, CHAINS_SLOW[w] + 1)])
def test_sigkill_at_chosen_points_many(
    server: ForkServer, tmp_path: Path, writer: str, chain: int, phase: str
) -> None:
    _chain(server, tmp_path / "r.zarr", writer, phase, seed=chain, kills=CHAIN_SLOW)


def _trial(server: ForkServer, path: Path, seed: int) -> None:
    """Kill the writer from outside after it reported a random number of lines (at whatever point it has
    reached then), twice, then resume."""
    rnd = random.Random(seed)
    rows = 0
    for round_ in range(2):  # kill, then resume the run and kill again
        job = {"kind": "writer", "writer": "writer", "path": str(path), "seed": seed * 10 + round_}
        out = server.run({**job, "phase": None}, kill_after=rnd.randint(1, 40))
        rows = _check_after_kill(path, "writer", out, rows)
    _resume(path, "writer")


@pytest.mark.parametrize("seed", range(3))
def test_sigkill_at_random_points(server: ForkServer, tmp_path: Path, seed: int) -> None:
    _trial(server, tmp_path / "r.zarr", seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 160))
def test_sigkill_at_random_points_many(server: ForkServer, tmp_path: Path, seed: int) -> None:
    _trial(server, tmp_path / "r.zarr", seed)


def _damaged(path: Path, case: str) -> int:
    """10 committed rows in chunks of 4; damage them; return the rows a repair keeps."""
    write(path, list(range(10)), chunk_rows=4, fsync=False)
    if case == "tail":
        f = path / "proj" / "c" / "2" / "0" / "0"
        f.write_bytes(f.read_bytes()[:-3])  # damage the last chunk: repair drops it
        return 8
    (path / "sqnorm" / "zarr.json").write_text("{not json")  # repair rebuilds it from the manifest
    return 10


def _repair_killed_at(server: ForkServer, path: Path, case: str, target: int) -> bool:
    """Kill a repair at its target-th file operation; check the store; repair again. True when the repair
    had fewer operations and finished."""
    keep = _damaged(path, case)
    out = server.run({"kind": "repair", "path": str(path), "phase": "repair", "target": target})
    if out.code == 0 and out.lines[-1:] == ["repaired"]:
        assert verify_store(path).ok and assert_clean_prefix(path) == keep
        return True
    assert out.killed, f"the repair was to die by SIGKILL, but exited with {out.code}: {out.stderr[-3000:]}"
    report = verify_store(path)  # the old commit (still damaged) or the repaired one
    if case == "tail":
        assert open_store(path).n_steps in (8, 10)
        if open_store(path).n_steps == 8:
            assert report.ok and assert_clean_prefix(path) == 8
    else:
        assert report.ok or report.damaged_metadata == ("sqnorm",), report.problems
    repair_store(path, break_lock=True)  # running it again finishes the job (the dead repair's lock is stale)
    report = verify_store(path)
    assert report.ok and not report.uncommitted_files, report
    assert assert_clean_prefix(path) == keep  # every kept row bit for bit: committed chunks never touched
    return False


@pytest.mark.parametrize("target", [1, 7, 20, 40, 60])
def test_sigkill_during_repair(server: ForkServer, tmp_path: Path, target: int) -> None:
    _repair_killed_at(server, tmp_path / "r.zarr", "tail", target)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["tail", "metadata"])
def test_sigkill_at_every_point_of_a_repair(server: ForkServer, tmp_path: Path, case: str) -> None:
    """Kill the repair at its 1st, 2nd, 3rd ... file operation, until one run has fewer and finishes."""
    for target in range(1, 1000):
        if _repair_killed_at(server, tmp_path / f"r{target}.zarr", case, target):
            break
    assert target > 20, (
        f"a repair of {case!r} damage should pass through many file operations, not {target - 1}"
    )


def test_kill_in_the_rewind_window_keeps_a_clean_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rewind over committed rows first commits the cut store; dying then keeps the rows before the cut."""
    import gradmanifold.store.writer as writer_mod

    path = tmp_path / "r.zarr"
    with StoreWriter(path, SPEC, GROUPS, chunk_rows=4) as w:
        for s in range(10):
            w.append(s, *make_row(s))
    w = StoreWriter(path, SPEC, GROUPS, chunk_rows=4)
    with pytest.warns(UserWarning, match="rewinding"):
        w.append(5, *make_row(5, 1))  # rewind to step 5: rows 5..9 will be replaced
    w.append(6, *make_row(6, 1))

    class Died(BaseException):
        pass

    def die(self: object) -> None:
        raise Died

    monkeypatch.setattr(writer_mod.StoreWriter, "_write_buffer", die)
    with pytest.raises(Died):
        w.flush()  # the cut store (5 rows, generation 1) is published, then the writer "dies"
    w.abandon()
    m = open_store(path).manifest
    assert (m.n_rows, m.generation, m.replaced_from) == (5, 1, 5)
    assert assert_clean_prefix(path) == 5
    assert verify_store(path).ok


def test_repair_interrupted_at_any_file_operation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill repair (an exception that nothing catches) at each copy, publish and delete in turn."""
    import gradmanifold.store.repair as repair_mod

    class Died(BaseException):
        pass

    real_copy, real_publish, real_unlink = repair_mod.shutil.copy2, repair_mod.publish_manifest, Path.unlink
    point = {"n": -1, "calls": 0}

    def maybe_die() -> None:
        if point["calls"] == point["n"]:
            point["calls"] += 1
            raise Died
        point["calls"] += 1

    def copy2(*a: object, **k: object) -> object:
        maybe_die()
        return real_copy(*a, **k)  # type: ignore[arg-type]

    def publish(*a: object, **k: object) -> None:
        maybe_die()
        real_publish(*a, **k)  # type: ignore[arg-type]

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if ".repair-" not in str(self) and self.name != ".gradmanifold.lock":
            maybe_die()
        real_unlink(self, missing_ok=missing_ok)

    n_points = 0
    for n in range(40):
        path = tmp_path / f"r{n}.zarr"
        with StoreWriter(path, SPEC, GROUPS, chunk_rows=4) as w:
            for s in range(10):
                w.append(s, *make_row(s))
        f = path / "proj" / "c" / "2" / "0" / "0"
        f.write_bytes(f.read_bytes()[:-3])  # damage the last chunk
        point.update(n=n, calls=0)
        with monkeypatch.context() as mp:
            mp.setattr(repair_mod.shutil, "copy2", copy2)
            mp.setattr(repair_mod, "publish_manifest", publish)
            mp.setattr(Path, "unlink", unlink)
            try:
                repair_mod.repair_store(path)
                finished = True
            except Died:
                finished = False
        (path / ".gradmanifold.lock").unlink(missing_ok=True)  # the dead repair's lock
        r = open_store(path)
        assert r.n_steps in (8, 10)  # the old commit or the repaired one, nothing else
        if r.n_steps == 8:
            assert verify_store(path).ok and assert_clean_prefix(path) == 8
        repair_mod.repair_store(path)  # running it again finishes the job
        assert verify_store(path).ok and assert_clean_prefix(path) == 8
        assert not verify_store(path).uncommitted_files
        if finished:
            n_points = n
            break
    assert n_points >= 3, "the repair should pass through several file operations"
    np.testing.assert_array_equal(read_all(path)["step"], np.arange(8))
