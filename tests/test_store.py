"""Store: round trip, chunking invariance, resume and rewind, lock, spec checks, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradmanifold.errors import (
    CorruptStoreError,
    InputError,
    NotAStoreError,
    SchemaVersionError,
    SpecMismatchError,
    StoreExistsError,
    StoreLockedError,
    StoreNotFoundError,
)
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import StoreWriter, open_store
from gradmanifold.store.lock import LOCK_NAME

SPEC = ProjectionSpec(k=8, seed=3)
GROUPS = [("a", 100), ("b", 7)]


def make_rows(
    steps: list[int], g: int = 2, k: int = 8, seed: int = 0
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """A deterministic row per step: the same step always gives the same row."""
    out = {}
    for s in steps:
        rng = np.random.default_rng([seed, s])
        out[s] = (rng.standard_normal((g, k)).astype(np.float32), rng.random(g) * 10)
    return out


def write(path: Path, steps: list[int], chunk_rows: int = 4, **kw: object) -> None:
    rows = make_rows(steps)
    with StoreWriter(path, SPEC, GROUPS, chunk_rows=chunk_rows, **kw) as w:  # type: ignore[arg-type]
        for s in steps:
            w.append(s, *rows[s], loss=float(s) / 10)


def read_all(path: Path) -> dict[str, np.ndarray]:
    r = open_store(path)
    chunks = list(r.iter_chunks())
    return {
        "step": np.concatenate([c.step for c in chunks]),
        "proj": np.concatenate([c.proj for c in chunks]),
        "sqnorm": np.concatenate([c.sqnorm for c in chunks]),
        "loss": np.concatenate([c.loss for c in chunks if c.loss is not None]),
    }


def expected(steps: list[int]) -> dict[str, np.ndarray]:
    rows = make_rows(steps)
    return {
        "step": np.array(steps, np.int64),
        "proj": np.stack([rows[s][0] for s in steps]),
        "sqnorm": np.stack([rows[s][1] for s in steps]),
    }


def assert_holds(path: Path, steps: list[int]) -> None:
    got, want = read_all(path), expected(steps)
    np.testing.assert_array_equal(got["step"], want["step"])
    np.testing.assert_array_equal(got["proj"], want["proj"])
    np.testing.assert_array_equal(got["sqnorm"], want["sqnorm"])


def test_round_trip_bit_exact(tmp_path: Path) -> None:
    steps = list(range(0, 50, 3))
    write(tmp_path / "r.zarr", steps)
    assert_holds(tmp_path / "r.zarr", steps)
    r = open_store(tmp_path / "r.zarr")
    assert r.n_steps == len(steps)
    assert r.group_names == ("a", "b") and r.group_sizes == (100, 7)
    assert r.spec == SPEC
    np.testing.assert_allclose(read_all(tmp_path / "r.zarr")["loss"], np.array(steps) / 10)
    assert r.verify() == []


def test_same_inputs_give_same_store_bits(tmp_path: Path) -> None:
    steps = list(range(13))
    for name in ("x.zarr", "y.zarr"):
        write(tmp_path / name, steps)
    for sub in ("proj", "sqnorm", "step", "flags", "loss"):
        fx = sorted(
            p.relative_to(tmp_path / "x.zarr") for p in (tmp_path / "x.zarr" / sub).rglob("*") if p.is_file()
        )
        for rel in fx:
            assert (tmp_path / "x.zarr" / rel).read_bytes() == (tmp_path / "y.zarr" / rel).read_bytes(), rel
    mx = json.loads((tmp_path / "x.zarr/manifest.json").read_text())
    my = json.loads((tmp_path / "y.zarr/manifest.json").read_text())
    assert mx["checksums"] == my["checksums"]


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 40),
    chunk_rows=st.integers(1, 9),
    read_rows=st.integers(1, 12),
    flushes=st.lists(st.integers(0, 40), max_size=5),
)
def test_chunking_invariance(
    tmp_path_factory: pytest.TempPathFactory, n: int, chunk_rows: int, read_rows: int, flushes: list[int]
) -> None:
    path = tmp_path_factory.mktemp("c") / "r.zarr"
    steps = list(range(n))
    rows = make_rows(steps)
    with StoreWriter(path, SPEC, GROUPS, chunk_rows=chunk_rows) as w:
        for s in steps:
            w.append(s, *rows[s])
            if s in flushes:
                w.flush()
    r = open_store(path)
    chunks = list(r.iter_chunks(chunk_rows=read_rows))
    assert all(c.n <= read_rows for c in chunks)
    assert [c.row0 for c in chunks] == sorted({c.row0 for c in chunks})
    np.testing.assert_array_equal(np.concatenate([c.proj for c in chunks]), expected(steps)["proj"])
    lo, hi = min(3, n), min(n, 17)
    part = list(r.iter_chunks(lo, hi, groups=[1]))
    got = np.concatenate([c.proj for c in part]) if part else np.zeros((0, 1, 8), np.float32)
    np.testing.assert_array_equal(got, expected(steps)["proj"][lo:hi, [1]])


def test_resume_appends(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, list(range(10)))
    write(path, list(range(10, 23)))
    assert_holds(path, list(range(23)))
    m = open_store(path).manifest
    assert [s.status for s in m.segments] == ["closed", "closed"]
    assert [s.first_row for s in m.segments] == [0, 10]


@pytest.mark.parametrize("restart_at", [0, 3, 4, 7, 9])
def test_rewind_gives_same_store_as_uninterrupted(tmp_path: Path, restart_at: int) -> None:
    """A job restarted from a checkpoint re-records steps; the store ends as if it never stopped."""
    path, ref = tmp_path / "r.zarr", tmp_path / "ref.zarr"
    write(ref, list(range(20)))
    write(path, list(range(10)))
    with pytest.warns(UserWarning, match="rewinding"):
        write(path, list(range(restart_at, 20)))
    assert_holds(path, list(range(20)))
    a, b = open_store(path).manifest, open_store(ref).manifest
    assert a.checksums == b.checksums


def test_rewind_is_not_applied_until_commit(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, list(range(10)))
    rows = make_rows([2])
    w = StoreWriter(path, SPEC, GROUPS)
    with pytest.warns(UserWarning, match="rewinding"):
        w.append(2, *rows[2])
    assert open_store(path).n_steps == 10  # a crash now keeps the old rows
    w.close()
    assert open_store(path).n_steps == 3


def test_rewind_inside_buffer(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    rows = make_rows(list(range(10)))
    with StoreWriter(path, SPEC, GROUPS, chunk_rows=100) as w:
        for s in range(8):
            w.append(s, *rows[s])
        with pytest.warns(UserWarning, match="rewinding"):
            w.append(5, *rows[5])
        for s in range(6, 10):
            w.append(s, *rows[s])
    assert_holds(path, list(range(10)))


def test_lock_blocks_second_writer_and_names_holder(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    w = StoreWriter(path, SPEC, GROUPS)
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        StoreWriter(path, SPEC, GROUPS)
    w.close()
    assert not (path / LOCK_NAME).exists()
    StoreWriter(path, SPEC, GROUPS).close()


def test_stale_lock_detected_and_broken_explicitly(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, [0, 1])
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = int(proc.stdout)
    import socket

    (path / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "started": "x"}))
    with pytest.raises(StoreLockedError, match="stale lock"):
        StoreWriter(path, SPEC, GROUPS)
    write(path, [2], break_lock=True)
    assert_holds(path, [0, 1, 2])


def test_spec_mismatch_names_each_field(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, [0])
    with pytest.raises(SpecMismatchError) as info:
        StoreWriter(path, ProjectionSpec(k=8, seed=4, kind="gaussian"), [("a", 100), ("c", 7)])
    msg = str(info.value)
    for part in ("seed", "kind", "missing ['b']", "new ['c']"):
        assert part in msg
    with pytest.raises(SpecMismatchError, match="group 'b' size: store has 7, writer has 8"):
        StoreWriter(path, SPEC, [("a", 100), ("b", 8)])
    assert not (path / LOCK_NAME).exists()  # a refused writer leaves no lock behind


def test_resume_modes(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        StoreWriter(tmp_path / "new.zarr", SPEC, GROUPS, resume="must")
    write(tmp_path / "r.zarr", [0])
    with pytest.raises(StoreExistsError):
        StoreWriter(tmp_path / "r.zarr", SPEC, GROUPS, resume="never")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "file.txt").write_text("x")
    with pytest.raises(NotAStoreError):
        StoreWriter(tmp_path / "other", SPEC, GROUPS)


def test_bad_rows_are_refused_without_damage(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, [0, 1])
    with StoreWriter(path, SPEC, GROUPS) as w:
        with pytest.raises(InputError, match=r"shape \(2, 8\)"):
            w.append(5, np.zeros((2, 9), np.float32), np.zeros(2))
        with pytest.raises(InputError, match="integer"):
            w.append(1.5, np.zeros((2, 8), np.float32), np.zeros(2))  # type: ignore[arg-type]
    assert_holds(path, [0, 1])
    with pytest.raises(InputError, match="reserved"):
        StoreWriter(tmp_path / "m.zarr", SPEC, [("model", 3)])


def test_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        open_store(tmp_path / "nope.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError):
        open_store(tmp_path / "empty")
    write(tmp_path / "r.zarr", [0, 1])
    mpath = tmp_path / "r.zarr/manifest.json"
    m = json.loads(mpath.read_text())
    m["schema_version"] = 99
    mpath.write_text(json.dumps(m))
    with pytest.raises(SchemaVersionError, match="newer"):
        open_store(tmp_path / "r.zarr")
    mpath.write_text("{not json")
    with pytest.raises(CorruptStoreError, match="not valid JSON"):
        open_store(tmp_path / "r.zarr")


def test_corrupted_chunk_is_named(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, list(range(12)), chunk_rows=4)
    f = path / "proj" / "c" / "1" / "0" / "0"
    data = bytearray(f.read_bytes())
    data[5] ^= 0xFF
    f.write_bytes(bytes(data))
    r = open_store(path)
    with pytest.raises(CorruptStoreError, match=r"chunk 1 of 'proj' \(rows 4\.\.7"):
        list(r.iter_chunks())
    assert next(str(e) for e in r.verify()).count("chunk 1") == 1
    (path / "sqnorm" / "c" / "2" / "0").unlink()
    assert len(open_store(path).verify()) == 2


def test_reader_trusts_manifest_not_shape(tmp_path: Path) -> None:
    """Rows past the committed count (written but not yet committed) are invisible."""
    path = tmp_path / "r.zarr"
    write(path, list(range(6)), chunk_rows=4)
    rows = make_rows([6, 7, 8])
    w = StoreWriter(path, SPEC, GROUPS, chunk_rows=4)
    for s in (6, 7):
        w.append(s, *rows[s])  # completes chunk 1: written and committed
    w.append(8, *rows[8])  # buffered only
    assert open_store(path).n_steps == 8
    w.abandon()
    assert_holds(path, list(range(8)))


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import SPEC, GROUPS, make_rows
    from gradmanifold.store import StoreWriter
    path, start = sys.argv[1], int(sys.argv[2])
    steps = list(range(start, start + 100000))
    w = StoreWriter(path, SPEC, GROUPS, chunk_rows=3, break_lock=True)  # the killed writer's stale lock
    for s in steps:
        w.append(s, *make_rows([s])[s])
        if s % 2 == 0:
            w.flush()
            print(s, flush=True)
    """
)


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_leaves_every_committed_step(tmp_path: Path, trial: int) -> None:
    path = tmp_path / "r.zarr"
    script = tmp_path / "writer.py"
    script.write_text(KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = 0
    for round_ in range(2):  # kill, then resume and kill again
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(start)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert proc.stdout is not None
        seen = []
        target = 5 + 7 * trial + 3 * round_
        for line in proc.stdout:
            seen.append(int(line))
            if len(seen) >= target:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        r = open_store(path)
        n = r.n_steps
        assert n >= seen[-1] + 1  # everything reported committed is there
        assert_holds(path, list(range(n)))  # and nothing else: an exact prefix, bit for bit
        assert r.verify() == []
        start = n
    m = open_store(path).manifest
    # The resumed writer marked the killed one's segment as interrupted.
    assert m.segments[0].status == "interrupted"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write(path, [start], break_lock=True)
    assert not list(path.rglob("*.partial"))
    assert_holds(path, list(range(start + 1)))
