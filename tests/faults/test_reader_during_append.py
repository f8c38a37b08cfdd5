"""Fault: readers while a writer appends, flushes and rewinds (separate processes).

Required: every read sees a clean committed prefix, never a partial row. A reader holds the commit it opened:
an append (which rewrites the partial last chunk file) leaves its rows valid; a rewind that replaces rows it
holds is reported as StoreChangedError ("open the store again"), never as corruption.
"""

from __future__ import annotations

import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
from faultkit import (
    DEADLINE,
    GROUPS,
    SPEC,
    WRITER,
    Lines,
    assert_clean_prefix,
    make_row,
    read_all,
    spawn,
    wait_until,
    write,
)

from gradmanifold.store import StoreChangedError, StoreWriter, open_store
from gradmanifold.store.verify import verify_store

READER = """
    import os, random, sys
    import numpy as np
    from faultkit import check_rows
    from gradmanifold.errors import NotAStoreError, StoreNotFoundError
    from gradmanifold.store import StoreChangedError, open_store
    path, stop, seed, progress = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    rnd = random.Random(seed)
    ok = changed = most = 0
    with open(progress, "a") as report:
        while not os.path.exists(stop):
            try:
                r = open_store(path)
            except (NotAStoreError, StoreNotFoundError):
                continue  # not created yet
            try:
                chunks = list(r.iter_chunks(chunk_rows=rnd.choice([None, 1, 2, 5])))
            except StoreChangedError:
                changed += 1
            else:
                if chunks:
                    step = np.concatenate([c.step for c in chunks])
                    proj = np.concatenate([c.proj for c in chunks])
                    check_rows(step, proj, np.concatenate([c.sqnorm for c in chunks]))
                    assert len(step) == r.n_steps
                    most = max(most, len(step))
                ok += 1
            report.write(f"{ok} {changed} {most}\\n")  # after every read: the test waits for counts
            report.flush()
    print("ok", ok, "changed", changed, "most", most, flush=True)
"""
#: clean reads each reader completes while the writer runs, and commits and rewinds the writer makes meanwhile
READS, COMMITS, REWINDS = 5, 12, 1
#: the writer rewinds to the first half of its rows whenever it reaches this many: reads stay equally cheap
CAP = 60


def test_readers_see_clean_prefixes_while_a_writer_appends_and_rewinds(tmp_path: Path) -> None:
    _readers_during_append(tmp_path, 0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1, 11))
def test_readers_see_clean_prefixes_many(tmp_path: Path, seed: int) -> None:
    _readers_during_append(tmp_path, seed)


def _progress(path: Path) -> tuple[int, int, int]:
    """(clean reads, reads that met a rewind, most rows seen) from a reader's last complete line."""
    text = path.read_text() if path.exists() else ""
    done = text[: text.rfind("\n") + 1].split()
    ok, changed, most = (int(v) for v in done[-3:]) if done else (0, 0, 0)
    return ok, changed, most


def _readers_during_append(tmp_path: Path, seed: int) -> None:
    """Readers (separate processes) read while a writer appends, commits and rewinds, and after it is killed.

    Waits for work done, not for time: each reader completes READS clean reads and one sees more than 6 rows
    while the writer makes COMMITS commits and REWINDS rewinds; then the writer is killed and each reader
    reads the store it left.
    """
    path, stop = tmp_path / "r.zarr", tmp_path / "stop"
    writer = spawn(WRITER, str(path), str(seed), str(CAP))
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    said = Lines(writer.stdout)
    logs = [tmp_path / f"reader{i}.txt" for i in range(2)]
    readers = [
        spawn(READER, str(path), str(stop), str(seed * 10 + i), str(log)) for i, log in enumerate(logs)
    ]

    def counts() -> list[tuple[int, int, int]]:
        return [_progress(log) for log in logs]

    def writer_did(word: str) -> int:
        return sum(line.startswith(word) for line in list(said.lines))

    def state() -> str:
        return (
            f"readers (clean reads, changed, most rows) {counts()}; writer {writer_did('commit')} commits, "
            f"{writer_did('floor')} rewinds"
        )

    try:
        wait_until(
            lambda: (
                all(ok >= READS for ok, _, _ in counts())
                and max(most for _, _, most in counts()) > 6
                and writer_did("commit") >= COMMITS
                and writer_did("floor") >= REWINDS
            ),
            f"each reader completes {READS} clean reads, one sees more than 6 rows, while the writer commits "
            f"{COMMITS} times and rewinds",
            procs=[writer, *readers],
            state=state,
        )
        writer.send_signal(signal.SIGKILL)  # and the writer dies mid-way, for good measure
        writer.wait(timeout=DEADLINE)
        killed = counts()
        wait_until(  # two more reads each: at least one of them began after the kill
            lambda: all(sum(a[:2]) >= sum(b[:2]) + 2 for a, b in zip(counts(), killed, strict=True)),
            "each reader reads the store the killed writer left",
            procs=readers,
            state=state,
        )
    finally:
        stop.touch()
        if writer.poll() is None:
            writer.kill()
        writer.wait(timeout=DEADLINE)
        said.ended.wait(DEADLINE)  # its stdout is closed at its end
        if writer.stderr is not None:
            writer.stderr.close()
    results = []
    for p in readers:
        out, err = p.communicate(timeout=DEADLINE)
        assert p.returncode == 0, err[-3000:]
        _, ok, _, changed, _, most = out.split()
        results.append((int(ok), int(changed), int(most)))
    assert all(ok >= READS for ok, _, _ in results), results  # they really read, many times
    assert max(most for _, _, most in results) > 6, results
    assert_clean_prefix(path)
    assert verify_store(path).ok


def test_reader_holding_rows_a_rewind_replaces(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, list(range(12)))
    old = open_store(path)  # holds 12 rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with StoreWriter(path, SPEC, GROUPS, chunk_rows=4) as w:  # a job resumed from a checkpoint at step 6
            for s in range(6, 14):
                w.append(s, *make_row(s, 1))
    assert old.read_chunk(0)["step"].tolist() == [0, 1, 2, 3]  # rows before the rewind are still valid
    with pytest.raises(StoreChangedError, match=r"rows from 6 on were replaced.*open the store again"):
        list(old.iter_chunks())
    assert assert_clean_prefix(path) == 14  # a fresh reader sees the new rows
    assert read_all(path)["sqnorm"][6:, 0].tolist() == [1.0] * 8


def test_reader_whose_rows_end_before_the_rewind_reads_on(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    write(path, list(range(6)))
    old = open_store(path)  # rows 0..5; chunk 1 holds rows 4, 5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with StoreWriter(path, SPEC, GROUPS, chunk_rows=4) as w:
            for s in range(6, 12):
                w.append(s, *make_row(s))
            for s in range(9, 13):  # rewind to step 9: rows the old reader never held
                w.append(s, *make_row(s, 1))
    got = np.concatenate([c.step for c in old.iter_chunks()])
    assert got.tolist() == list(range(6))


def test_reader_while_the_partial_last_chunk_is_rewritten(tmp_path: Path) -> None:
    """Appends rewrite the file of the partial last chunk; the rows a reader holds keep their bytes."""
    path = tmp_path / "r.zarr"
    write(path, list(range(10)))  # chunk 2 holds rows 8, 9 of 4
    old = open_store(path)
    w = StoreWriter(path, SPEC, GROUPS, chunk_rows=4)
    for s in (10, 11, 12):
        w.append(s, *make_row(s))
        w.flush()
        got = np.concatenate([c.step for c in old.iter_chunks()])
        assert got.tolist() == list(range(10))
        assert old.verify() == []
    w.close()


def test_reader_opened_in_the_rewind_window(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the cut commit and the commit of the new rows, a new reader sees the cut store, cleanly."""
    import gradmanifold.store.writer as writer_mod

    path = tmp_path / "r.zarr"
    write(path, list(range(10)))
    seen: list[int] = []
    real = writer_mod.StoreWriter._write_buffer

    def spy(self: StoreWriter) -> object:
        seen.append(assert_clean_prefix(path))  # a reader opening right now
        return real(self)

    monkeypatch.setattr(writer_mod.StoreWriter, "_write_buffer", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with StoreWriter(path, SPEC, GROUPS, chunk_rows=4) as w:
            for s in range(5, 9):
                w.append(s, *make_row(s, 1))
    assert seen[0] == 5  # the cut store: rows 0..4, the replaced rows already gone
    assert assert_clean_prefix(path) == 9
