"""Fault: a truncated, corrupted, missing, swapped, overlong or zeroed chunk file; damaged array metadata.

Required: detected; the error names the chunk, its rows and steps; `gradmanifold verify` lists every bad
chunk (exit 3); iter_chunks(skip_corrupt=True) (for `analyze --skip-corrupt`) leaves exactly those out and
says which; `gradmanifold repair` drops a damaged tail keeping a backup, refuses damage followed by sound
chunks unless told, and never touches committed sound chunks.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from faultkit import assert_one_line_error, cli, make_row, read_all, snapshot, write

from gradmanifold.errors import CorruptStoreError
from gradmanifold.store import ChunkDamagedError, open_store
from gradmanifold.store.layout import chunk_file
from gradmanifold.store.verify import verify_store

STEPS = list(range(100, 118))  # 18 rows in chunks of 4: chunks 0..3 full, chunk 4 holds rows 16, 17
ARRAYS = ["proj", "sqnorm", "step", "flags", "loss"]


def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:-5])


def flip(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[3] ^= 0x40  # a byte of the first row: committed in every chunk
    f.write_bytes(bytes(data))


def remove(f: Path) -> None:
    f.unlink()


def overlong(f: Path) -> None:
    f.write_bytes(f.read_bytes() + b"\0\0\0\0")


def zero(f: Path) -> None:
    f.write_bytes(bytes(len(f.read_bytes())))


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "corrupted": flip,
    "missing": remove,
    "overlong": overlong,
    "zeroed": zero,
}
WHY = {
    "truncated": "truncated",
    "corrupted": "checksum mismatch",
    "missing": "missing",
    "overlong": "overlong",
    "zeroed": "checksum mismatch",
}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "r.zarr"
    write(path, STEPS)
    return path


def _rows(i: int) -> tuple[int, int]:
    return i * 4, min(i * 4 + 4, len(STEPS))


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize("array", ARRAYS)
def test_damage_is_detected_and_named(store: Path, kind: str, array: str) -> None:
    if (kind, array) == ("zeroed", "flags"):
        pytest.skip("these flags are all zero already: zeroing changes no byte")
    DAMAGE[kind](chunk_file(store, array, 1))
    DAMAGE[kind](chunk_file(store, array, 3))
    r = open_store(store)
    with pytest.raises(ChunkDamagedError) as info:
        list(r.iter_chunks())
    err = info.value
    assert (err.chunk, err.array, err.rows) == (1, array, (4, 8))
    msg = str(err)
    assert f"chunk 1 of '{array}' (rows 4..7, " in msg and WHY[kind] in msg
    if array == "step":
        assert "steps unknown" in msg  # the damaged chunk is the one that knew them
    else:
        assert "steps 104..107" in msg and err.steps == (104, 107)
    # verify lists every bad chunk, and only those
    report = verify_store(store)
    assert not report.ok and report.bad_chunks == (1, 3)
    res = cli("verify", str(store))
    assert res.exit_code == 3
    assert (
        f"chunk 1 of '{array}' (rows 4..7" in res.stdout
        and f"chunk 3 of '{array}' (rows 12..15" in res.stdout
    )
    assert "2 damaged chunk(s)" in assert_one_line_error(res, 3)
    # skip_corrupt reads around them and says what it left out
    r = open_store(store)
    chunks = list(r.iter_chunks(skip_corrupt=True))
    assert [c.row0 for c in chunks] == [0, 8, 16]
    got = np.concatenate([c.step for c in chunks])
    assert got.tolist() == [*STEPS[0:4], *STEPS[8:12], *STEPS[16:18]]
    for c in chunks:
        for j, s in enumerate(c.step):
            np.testing.assert_array_equal(c.proj[j], make_row(int(s))[0])
    assert [(e.index, e.row_start, e.row_stop) for e in r.excluded] == [(1, 4, 8), (3, 12, 16)]
    if array != "step":
        assert [(e.first_step, e.last_step) for e in r.excluded] == [(104, 107), (112, 115)]
    assert all(array in e.reason and WHY[kind] in e.reason for e in r.excluded)


def test_swapped_chunk_files(store: Path) -> None:
    a, b = chunk_file(store, "proj", 0), chunk_file(store, "proj", 2)
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    assert verify_store(store).bad_chunks == (0, 2)


def test_swapped_step_chunks_are_caught_even_with_matching_checksums(store: Path) -> None:
    """Swap the step chunk files and their checksums in the manifest: each chunk verifies, order does not."""
    a, b = chunk_file(store, "step", 1), chunk_file(store, "step", 2)
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    mpath = store / "manifest.json"
    m = json.loads(mpath.read_text())
    m["checksums"]["step"][1], m["checksums"]["step"][2] = (
        m["checksums"]["step"][2],
        m["checksums"]["step"][1],
    )
    mpath.write_text(json.dumps(m))
    report = verify_store(store)
    assert not report.ok and 2 in report.bad_chunks
    assert any("starts at or before step" in p.message for p in report.problems)


def test_verify_and_repair_of_a_sound_store_change_nothing(store: Path) -> None:
    before = snapshot(store.parent)
    res = cli("verify", str(store))
    assert res.exit_code == 0 and "sound" in res.stdout and res.stderr == ""
    res = cli("repair", str(store))
    assert res.exit_code == 0 and "nothing to repair" in res.stdout
    assert snapshot(store.parent) == before  # not even a backup folder


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_repair_drops_a_damaged_tail_and_keeps_a_backup(store: Path, kind: str) -> None:
    DAMAGE[kind](chunk_file(store, "sqnorm", 3))
    DAMAGE[kind](chunk_file(store, "proj", 4))
    sound = {p: p.read_bytes() for i in range(3) for a in ARRAYS if (p := chunk_file(store, a, i)).exists()}
    original = snapshot(store)
    res = cli("repair", str(store))
    assert res.exit_code == 0, res.stderr
    assert "drop committed rows 12..17 (steps 112..117); 12 rows remain" in res.stdout
    backup = Path(res.stdout.split("backup of everything removed: ")[1].split(" (")[0])
    assert backup.parent == store.parent and backup.name.startswith("r.zarr.repair-")
    # the store: sound, rows 0..11 exactly as written, committed sound chunks untouched
    assert verify_store(store).ok
    got = read_all(store)
    assert got["step"].tolist() == STEPS[:12]
    assert {p: p.read_bytes() for p in sound} == sound
    m = open_store(store).manifest
    assert m.segments[-1].status == "repaired" and m.generation == 1 and m.replaced_from == 12
    # the backup: every removed file and the old manifest; restoring it gives back the original store
    record = json.loads((backup / "REPAIR.json").read_text())
    assert (
        record["rows_before"] == 18 and record["rows_after"] == 12 and record["dropped_steps"] == [112, 117]
    )
    for rel in record["removed_files"]:
        assert (backup / rel).is_file() and not (store / rel).exists()
    for f in backup.rglob("*"):
        if f.is_file() and f.name != "REPAIR.json":
            dest = store / f.relative_to(backup)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest)
    restored = snapshot(store)
    assert {k: v for k, v in restored.items() if v[0] == "file"} == {
        k: v for k, v in original.items() if v[0] == "file"
    }


def test_repair_refuses_damage_followed_by_sound_chunks(store: Path) -> None:
    flip(chunk_file(store, "proj", 1))
    before = snapshot(store.parent)
    err = assert_one_line_error(cli("repair", str(store)), 3)
    assert "followed by 3 sound chunk(s)" in err and "--drop-sound-tail" in err and "--skip-corrupt" in err
    assert snapshot(store.parent) == before
    res = cli("repair", str(store), "--drop-sound-tail", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rows_after"] == 4 and out["dropped_steps"] == [104, 117] and out["backup"]
    assert read_all(store)["step"].tolist() == STEPS[:4]


def test_repair_dry_run_changes_nothing(store: Path) -> None:
    truncate(chunk_file(store, "proj", 4))
    before = snapshot(store.parent)
    res = cli("repair", str(store), "--dry-run")
    assert res.exit_code == 0 and "would drop committed rows 16..17" in res.stdout
    assert snapshot(store.parent) == before


def test_repair_removes_uncommitted_leftovers(store: Path) -> None:
    """Chunk files past the commit and temp files of a killed writer: moved to the backup."""
    stray = chunk_file(store, "proj", 7)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x" * 256)
    (store / "proj" / "c" / "1" / "0" / "0.abc.partial").write_bytes(b"junk")
    res = cli("verify", str(store))
    assert res.exit_code == 0 and "1 temp file(s)" in res.stdout and "1 chunk file(s) past" in res.stdout
    res = cli("repair", str(store))
    assert res.exit_code == 0 and "remove 2 uncommitted or dropped file(s)" in res.stdout
    assert not stray.exists() and read_all(store)["step"].tolist() == STEPS
    out = cli("verify", str(store)).stdout
    assert "note:" not in out


@pytest.mark.parametrize("how", ["garbage", "deleted", "wrong dtype", "group"])
def test_damaged_metadata_is_listed_and_rebuilt(store: Path, how: str) -> None:
    meta = store / ("zarr.json" if how == "group" else "sqnorm/zarr.json")
    if how == "garbage":
        meta.write_text("{not json")
    elif how == "deleted":
        meta.unlink()
    elif how == "wrong dtype":
        d = json.loads(meta.read_text())
        d["data_type"] = "float32"
        meta.write_text(json.dumps(d))
    else:
        meta.write_text("[]")
    report = verify_store(store)
    assert not report.ok and report.damaged_metadata
    res = cli("verify", str(store))
    assert res.exit_code == 3
    res = cli("repair", str(store))
    assert res.exit_code == 0, res.stderr
    assert "rebuild the array metadata (zarr.json)" in res.stdout
    assert verify_store(store).ok
    got = read_all(store)
    assert got["step"].tolist() == STEPS  # nothing dropped: the data was fine
    for s, row in zip(STEPS, got["sqnorm"], strict=True):
        np.testing.assert_array_equal(row, make_row(s)[1])


def test_reading_damaged_metadata_names_the_array(store: Path) -> None:
    (store / "flags" / "zarr.json").write_text("{")
    with pytest.raises(CorruptStoreError, match=r"array 'flags' cannot be opened.*repair` rebuilds it"):
        list(open_store(store).iter_chunks())
    # the other arrays still read
    assert open_store(store).steps().tolist() == STEPS


def test_repair_does_not_trust_a_manifest_that_disagrees_with_the_arrays(store: Path) -> None:
    """The manifest lost a group: the arrays disagree with it; rebuilding them from it would destroy data."""
    mpath = store / "manifest.json"
    m = json.loads(mpath.read_text())
    m["groups"] = m["groups"][:1]
    mpath.write_text(json.dumps(m))
    res = cli("verify", str(store))
    assert res.exit_code == 3 and "disagrees with the manifest" in res.stdout
    before = snapshot(store.parent)
    err = assert_one_line_error(cli("repair", str(store)), 3)
    assert "the manifest may be the damaged part; repair changed nothing" in err
    assert snapshot(store.parent) == before
