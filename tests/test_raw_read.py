"""The reader's direct path for local raw chunk files (store.rawchunk) against its zarr path.

Required: the same arrays bit for bit for every table and array, full and partial last chunks; the same
damage found with the same words (a flipped byte, a truncated, an overlong, a missing file); arrays whose
metadata is not plain little-endian bytes read through zarr; a chunk key encoding other than the default
followed; the read-ahead thread gone when the consumer stops early or fails.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec
from zarr.storage import LocalStore

import gradmanifold.store.reader as reader_mod
from gradmanifold.errors import CorruptStoreError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import ChunkDamagedError, StoreWriter, open_store
from gradmanifold.store.layout import TABLE_BY_NAME, checksum, chunk_file

SPEC = ProjectionSpec(k=8, seed=5)
GROUPS = [("a", 30), ("b", 10), ("c", 7)]
N_ROWS = 18  # chunks of 4: 4 full chunks and a partial one of 2 rows
TABLE_ROWS = {"spectra": 7, "curvature": 5, "glass": 4}  # in chunks of 3: each ends with a partial chunk
DIMS = {"spectra": {"layers": 2, "q": 3}, "curvature": {"layers": 2, "q": 3}, "glass": {"params": 3}}
LAYERS = [{"name": "fc1.weight", "shape": [5, 6]}, {"name": "fc2.weight", "shape": [2, 5]}]
META = {
    "spectra": {"layers": LAYERS},
    "curvature": {"layers": LAYERS},
    "glass": {"params": [{"name": f"p{i}", "shape": [4]} for i in range(3)]},
}


def _row_values(rng: np.random.Generator, table: str) -> dict[str, np.ndarray]:
    spec = TABLE_BY_NAME[table]
    dims = DIMS[table]
    return {
        a.name: rng.standard_normal([dims[d] for d in a.dims]) for a in spec.arrays if a.name != spec.step
    }


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store of every table and array: loss, lr, updates, flagged rows, each table ending mid-chunk."""
    path = tmp_path / "r.zarr"
    rng = np.random.default_rng(11)
    with StoreWriter(path, SPEC, GROUPS, chunk_rows=4, fsync=False, updates="exact") as w:
        for table, dims in DIMS.items():
            w.add_table(table, dims, META[table], chunk_rows=3)
        for i in range(N_ROWS):
            step = 10 + 3 * i
            flags = np.array([i % 5 == 0, 0, i % 7 == 3], np.uint8)
            w.append(
                step,
                rng.standard_normal((3, 8)).astype(np.float32),
                rng.random(3) * 10,
                flags=flags,
                loss=float(rng.random()),
                lr=1e-3 * (i + 1),
                update=rng.standard_normal((3, 8)).astype(np.float32),
                update_sqnorm=rng.random(3),
            )
            for table, n in TABLE_ROWS.items():
                if i < n:
                    w.append_row(table, step, _row_values(rng, table))
    return path


@pytest.fixture
def direct_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The chunk files the direct path reads (each call of store.rawchunk.read_rows)."""
    seen: list[str] = []
    real = reader_mod.read_rows

    def spy(path: str, layout: Any, rows: int) -> tuple[np.ndarray | None, str]:
        seen.append(path)
        return real(path, layout, rows)

    monkeypatch.setattr(reader_mod, "read_rows", spy)
    return seen


def _zarr_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every array read through zarr, as before the direct path (a reference to compare it against)."""
    monkeypatch.setattr(reader_mod, "raw_layout", lambda arr, folder: None)


def _everything(path: Path) -> dict[str, Any]:
    """Every committed chunk of every array of every table, the chunks the iteration yields, the steps."""
    r = open_store(path)
    out: dict[str, Any] = {}
    for table in r.tables:
        t = r.table(table)
        for i in range(t.n_chunks):
            for name, a in r.read_chunk(i, t.arrays).items():
                out[f"{table}/{name}/{i}"] = a
        if table != "rows":
            for name, a in r.read_table(table).items():
                out[f"{table}/{name}/all"] = a
    for j, c in enumerate(r.iter_chunks(3, 17)):  # a range that starts and ends inside chunks
        for name in ("step", "proj", "sqnorm", "flags", "loss", "lr", "update", "update_sqnorm"):
            out[f"iter/{name}/{j}"] = getattr(c, name)
    out["steps"] = r.steps()
    return out


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        assert x.dtype == y.dtype and x.shape == y.shape, key
        assert np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes(), key


def test_direct_path_equals_zarr_path_bit_for_bit(
    store: Path, direct_reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = _everything(store)
    arrays = {a.name for t in TABLE_BY_NAME.values() for a in t.arrays}
    assert {Path(p).relative_to(store).parts[0] for p in direct_reads} == arrays  # every array read directly
    assert direct["rows/proj/4"].shape == (2, 3, 8)  # the partial last chunk: only its committed rows
    assert direct["spectra/spectra_sigma/2"].shape == (1, 2, 3)
    assert all(a.flags.writeable for a in direct.values() if isinstance(a, np.ndarray))
    direct_reads.clear()
    _zarr_only(monkeypatch)
    reference = _everything(store)
    assert not direct_reads
    _same(direct, reference)


def test_rows_beyond_the_commit_are_never_returned(store: Path) -> None:
    """Rows the partial last chunk file holds past n_rows (a writer's uncommitted rows) stay unseen."""
    f = chunk_file(store, "proj", 4)
    data = bytearray(f.read_bytes())
    data[-4:] = b"\xff\xff\xff\xff"  # in row 3 of the chunk: not committed (the chunk holds 2 rows)
    f.write_bytes(bytes(data))
    r = open_store(store)
    assert r.read_chunk(4, ("proj",))["proj"].shape == (2, 3, 8)
    assert r.verify() == []


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "flipped": (lambda f: f.write_bytes(bytes([f.read_bytes()[0] ^ 0x10]) + f.read_bytes()[1:]), "checksum"),
    "truncated": (lambda f: f.write_bytes(f.read_bytes()[:-3]), "truncated ("),
    "overlong": (lambda f: f.write_bytes(f.read_bytes() + b"\0"), "overlong ("),
    "missing": (lambda f: f.unlink(), "(missing)"),
}


def _error(path: Path, table: str, index: int, name: str) -> str:
    r = open_store(path)
    with pytest.raises(ChunkDamagedError) as info:
        r.read_chunk(index, (name,))
    assert (info.value.chunk, info.value.array) == (index, name)
    return str(info.value)


@pytest.mark.parametrize("kind", list(DAMAGE))
@pytest.mark.parametrize(
    ("table", "name", "index"),
    [("rows", "proj", 1), ("rows", "step", 4), ("rows", "flags", 0), ("spectra", "spectra_sigma", 2)],
)
def test_damage_is_found_with_the_same_words(
    store: Path, kind: str, table: str, name: str, index: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    damage, words = DAMAGE[kind]
    damage(chunk_file(store, name, index))
    direct = _error(store, table, index, name)
    assert words in direct
    with monkeypatch.context() as mp:
        _zarr_only(mp)
        assert _error(store, table, index, name) == direct
    if table == "rows":
        r = open_store(store)
        with pytest.raises(ChunkDamagedError) as info:
            list(r.iter_chunks())  # read ahead, checked as taken: the same error
        assert str(info.value) == direct
        kept = list(r.iter_chunks(skip_corrupt=True))
        assert [e.index for e in r.excluded] == [index]
        assert sum(c.n for c in kept) == N_ROWS - (2 if index == 4 else 4)


def _rewrite(path: Path, name: str, **options: Any) -> np.ndarray:
    """Array `name` written again with other zarr options (codecs, chunk key encoding); its data as was."""
    old = zarr.open_array(store=LocalStore(path), path=name, mode="r", zarr_format=3)
    data = old[:]
    new = zarr.create_array(
        store=LocalStore(path),
        name=name,
        shape=old.shape,
        chunks=old.chunks,
        dtype=old.dtype,
        fill_value=0,
        overwrite=True,
        **options,
    )
    new[:] = data
    return np.asarray(data)


@pytest.mark.parametrize(
    "options",
    [
        {"compressors": GzipCodec()},
        {"serializer": BytesCodec(endian="big"), "compressors": None},
    ],
    ids=["gzip", "big-endian"],
)
def test_other_codecs_are_read_through_zarr(
    store: Path, options: dict[str, Any], direct_reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as mp:
        _zarr_only(mp)
        reference = _everything(store)
    _rewrite(store, "proj", **options)
    direct_reads.clear()
    got = _everything(store)
    _same(got, reference)
    parts = {Path(p).relative_to(store).parts[0] for p in direct_reads}
    assert "proj" not in parts and {"sqnorm", "step", "flags"} <= parts  # only proj went through zarr
    assert open_store(store).verify() == []
    chunk = chunk_file(store, "proj", 1)
    chunk.write_bytes(chunk.read_bytes()[:-2])  # damage is still found on the zarr path
    assert "chunk 1 of 'proj'" in _error(store, "rows", 1, "proj")


def test_another_chunk_key_encoding_is_followed(
    store: Path, direct_reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as mp:
        _zarr_only(mp)
        reference = _everything(store)
    _rewrite(store, "proj", chunk_key_encoding={"name": "default", "separator": "."}, compressors=None)
    assert (store / "proj" / "c.1.0.0").is_file() and not (store / "proj" / "c").exists()
    direct_reads.clear()
    _same(_everything(store), reference)
    assert str(store / "proj" / "c.1.0.0") in direct_reads  # read directly, under its own key
    with monkeypatch.context() as mp:
        _zarr_only(mp)
        _same(_everything(store), reference)  # and through zarr
    (store / "proj" / "c.2.0.0").unlink()
    assert "chunk 2 of 'proj'" in _error(store, "rows", 2, "proj")
    assert "(missing)" in _error(store, "rows", 2, "proj")


_BEFORE: set[threading.Thread] = set()


def _read_threads() -> set[threading.Thread]:
    """The reader's threads alive now that were not before the test (`_BEFORE`)."""
    return {t for t in threading.enumerate() if t.name.startswith("gradmanifold-read")} - _BEFORE


@pytest.fixture
def threads_before() -> None:
    _BEFORE.clear()
    _BEFORE.update(t for t in threading.enumerate() if t.name.startswith("gradmanifold-read"))


@pytest.mark.usefixtures("threads_before")
def test_read_ahead_stops_when_the_consumer_stops(store: Path) -> None:
    r = open_store(store)
    chunks: Iterator[Any] = r.iter_chunks()
    first = next(chunks)
    assert first.n == 4 and _read_threads()  # the next chunks are being read meanwhile
    chunks.close()  # what a `break` out of a for loop does
    assert not _read_threads()

    for c in open_store(store).iter_chunks():
        if c.row0 >= 4:
            break
    assert not _read_threads()

    with pytest.raises(RuntimeError, match="consumer failed"):
        for _ in open_store(store).iter_chunks():
            raise RuntimeError("consumer failed")
    assert not _read_threads()


@pytest.mark.usefixtures("threads_before")
def test_read_ahead_stops_on_damage(store: Path) -> None:
    DAMAGE["flipped"][0](chunk_file(store, "sqnorm", 1))
    with pytest.raises(ChunkDamagedError):
        list(open_store(store).iter_chunks())
    assert not _read_threads()
    assert sum(c.n for c in open_store(store).iter_chunks(skip_corrupt=True)) == N_ROWS - 4
    assert not _read_threads()


@pytest.mark.parametrize(
    "a",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.arange(24, dtype=np.float64).reshape(4, 6)[:, ::2],  # not contiguous
        np.arange(24, dtype=np.int64)[::-1],
        np.zeros((0, 3), np.uint8),
    ],
    ids=["contiguous", "strided", "reversed", "empty"],
)
def test_checksum_is_the_crc32c_of_the_c_order_bytes(a: np.ndarray) -> None:
    assert checksum(a) == f"{google_crc32c.value(np.ascontiguousarray(a).tobytes()):08x}"
    ro = a.copy()
    ro.flags.writeable = False
    assert checksum(ro) == checksum(a)


@pytest.fixture
def zarr_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The arrays the reader opens through zarr (each call of store.layout.open_arrays)."""
    seen: list[str] = []
    real = reader_mod.open_arrays

    def spy(root: Any, names: tuple[str, ...], writable: bool) -> Any:
        seen.extend(names)
        return real(root, names, writable)

    monkeypatch.setattr(reader_mod, "open_arrays", spy)
    return seen


def _as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every array opened through zarr first, as before the plain metadata reads (store.plainmeta)."""
    monkeypatch.setattr(reader_mod, "read_plain", lambda path, dtype: None)


def test_plain_metadata_opens_no_zarr_array(
    store: Path, zarr_opens: list[str], direct_reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    got = _everything(store)
    assert not zarr_opens and direct_reads  # every array read directly, none opened through zarr
    with monkeypatch.context() as mp:
        _as_before(mp)
        _same(got, _everything(store))
    assert zarr_opens  # the reference opened them all


def _edit_meta(path: Path, name: str, edit: Callable[[dict[str, Any]], None]) -> None:
    meta = path / name / "zarr.json"
    doc = json.loads(meta.read_text())
    edit(doc)
    meta.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    ("options", "edit", "opened", "direct"),
    [
        ({"compressors": Crc32cCodec()}, None, True, False),
        ({"compressors": None, "chunk_key_encoding": {"name": "v2", "separator": "/"}}, None, False, True),
        (
            {"compressors": None, "dimension_names": ["t", "g", "k"], "attributes": {"a": 1}},
            None,
            False,
            True,
        ),
        # zarr opens these (the plain read leaves them to it), then finds their chunk files raw
        (
            {"compressors": None},
            lambda d: d.update(extra={"name": "x", "must_understand": False}),
            True,
            True,
        ),
        ({"compressors": None}, lambda d: d["codecs"][0].pop("configuration"), True, True),
    ],
    ids=["crc32c", "v2-keys", "dimension-names", "unknown-key", "no-endian"],
)
def test_unusual_metadata_reads_the_same_data(
    store: Path,
    options: dict[str, Any],
    edit: Callable[[dict[str, Any]], None] | None,
    opened: bool,
    direct: bool,
    direct_reads: list[str],
    zarr_opens: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Metadata other than the writer's plain layout is opened through zarr; plain variants are not."""
    with monkeypatch.context() as mp:
        _zarr_only(mp)
        reference = _everything(store)
    _rewrite(store, "proj", **options)
    if edit is not None:
        _edit_meta(store, "proj", edit)
    direct_reads.clear()
    zarr_opens.clear()
    _same(_everything(store), reference)
    parts = {Path(p).relative_to(store).parts[0] for p in direct_reads}
    assert ("proj" in parts) == direct and ("proj" in zarr_opens) == opened
    assert set(zarr_opens) <= {"proj"} and {"sqnorm", "step", "flags"} <= parts
    assert open_store(store).verify() == []


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("flags", lambda m: m.write_text("{")),
        ("flags", lambda m: m.write_text("[]")),
        ("flags", lambda m: m.write_bytes(b"\xff\xfe{")),
        ("flags", lambda m: m.unlink()),
        ("step", lambda m: m.write_text(m.read_text().replace('"int64"', '"float64"'))),
        ("step", lambda m: m.write_text(m.read_text().replace('"zarr_format": 3', '"zarr_format": 2'))),
        ("sqnorm", lambda m: _edit_meta(m.parent.parent, "sqnorm", lambda d: d.update(shape=[2, 3]))),
        ("sqnorm", lambda m: _edit_meta(m.parent.parent, "sqnorm", lambda d: d.update(shape=[18, 2]))),
        ("proj", lambda m: _edit_meta(m.parent.parent, "proj", _chunks(8, 3, 8))),
    ],
    ids=["not-json", "a-list", "not-utf8", "missing", "dtype", "format-2", "short", "groups", "chunks"],
)
def test_damaged_metadata_gives_the_same_error(
    store: Path, name: str, damage: Callable[[Path], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    damage(store / name / "zarr.json")

    def error() -> str:
        with pytest.raises(CorruptStoreError) as info:
            list(open_store(store).iter_chunks())
        return str(info.value)

    now = error()
    assert f"array {name!r}" in now and ("cannot be opened" in now or "disagrees with the manifest" in now)
    with monkeypatch.context() as mp:
        _as_before(mp)
        assert error() == now


def _chunks(*shape: int) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["chunk_grid"]["configuration"]["chunk_shape"] = list(shape)

    return edit


_GROUP_EDITS = [  # (edit, sound): what zarr makes of it decides
    (lambda m: m.write_text("{"), False),
    (lambda m: m.unlink(), False),
    (lambda m: m.write_text('{"zarr_format": 3, "node_type": "array"}'), False),
    (lambda m: m.write_text('{"zarr_format": 2, "node_type": "group"}'), True),  # zarr reads the rest
    (lambda m: m.write_text('{"zarr_format": 3, "node_type": "group", "attributes": []}'), False),
    (lambda m: m.write_text('{"zarr_format": 3, "node_type": "group", "extra": 1}'), False),
    (lambda m: m.write_text('{"zarr_format": 3, "node_type": "group"}'), True),
]


@pytest.mark.parametrize(
    ("name", "damage", "sound"),
    [
        ("flags", lambda m: m.write_text("{"), False),
        ("step", lambda m: m.write_text(m.read_text().replace('"int64"', '"float64"')), False),
        ("sqnorm", lambda m: _edit_meta(m.parent.parent, "sqnorm", lambda d: d.update(shape=[2, 3])), False),
        ("proj", lambda m: _edit_meta(m.parent.parent, "proj", _chunks(8, 3, 8)), False),
        # longer than the commit (a writer killed after growing it): sound
        ("proj", lambda m: _edit_meta(m.parent.parent, "proj", lambda d: d.update(shape=[99, 3, 8])), True),
        ("proj", None, True),
        *((".", edit, sound) for edit, sound in _GROUP_EDITS),
    ],
)
def test_verify_without_zarr_finds_what_zarr_finds(
    store: Path,
    name: str,
    damage: Callable[[Path], None] | None,
    sound: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """verify checks the writer's plain metadata as JSON (no zarr import): its report, damage or none, is
    the one it gives when zarr opens every array and the group."""
    import gradmanifold.store.verify as verify_mod

    if damage is not None:
        damage(store / name / "zarr.json")
    now = verify_mod.verify_store(store)
    with monkeypatch.context() as mp:
        mp.setattr(verify_mod, "read_plain", lambda path, dtype: None)
        mp.setattr(verify_mod, "plain_group", lambda path: False)
        assert verify_mod.verify_store(store) == now
    assert now.ok == sound, now.problems
