"""Fault: the writer is killed with SIGKILL at a random point (appending, flushing, rewinding, committing).

Required: the store opens; exactly the committed steps are visible (at least every commit the writer
reported, each row exactly as written, no NaN or fill rows); leftover temp files are cleaned by the next
writer; resume continues. Also: a repair interrupted at any file operation leaves a sound store.
"""

from __future__ import annotations

import random
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from faultkit import GROUPS, SPEC, WRITER, assert_clean_prefix, make_row, read_all, spawn

from gradmanifold.store import StoreWriter, open_store
from gradmanifold.store.verify import verify_store


def _kill_round(path: Path, seed: int, delay: float) -> int:
    """Run the writer, SIGKILL it after `delay` s of appending; return the bound it reported last."""
    proc = spawn(WRITER, str(path), str(seed))
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.strip() == "ready", (first, proc.stderr.read() if proc.stderr else "")
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    bound = 0
    for line in out.splitlines():
        _, n = line.split()
        bound = int(n)
    return bound


def _check_after_kill(path: Path, bound: int) -> int:
    n = assert_clean_prefix(path)  # every row as written, steps 0..n-1, no NaN, no fill rows
    assert n >= bound, f"the store lost committed rows: {n} < {bound}"
    report = verify_store(path)
    assert report.ok, report.problems
    return n


def _trial(path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    for round_ in range(2):  # kill, then resume the run and kill again
        bound = _kill_round(path, seed * 10 + round_, rnd.uniform(0.02, 0.6))
        _check_after_kill(path, bound)
    # Resume in-process: the killed writer's temp files go, its segment is marked interrupted.
    n = open_store(path).n_steps
    version = int(read_all(path)["sqnorm"][-1, 0]) + 1 if n else 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "removed N temp files left by an interrupted writer"
        with StoreWriter(path, SPEC, GROUPS, chunk_rows=3, break_lock=True) as w:
            w.append(n, *make_row(n, version))
    assert not list(path.rglob("*.partial"))
    assert assert_clean_prefix(path) == n + 1
    m = open_store(path).manifest
    assert m.segments[-1].status == "closed"
    assert all(s.status in ("interrupted", "closed") for s in m.segments[:-1])
    assert verify_store(path).ok


@pytest.mark.parametrize("seed", range(3))
def test_sigkill_at_random_points(tmp_path: Path, seed: int) -> None:
    _trial(tmp_path / "r.zarr", seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 160))
def test_sigkill_at_random_points_many(tmp_path: Path, seed: int) -> None:
    _trial(tmp_path / "r.zarr", seed)


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
