"""The writer's direct path for plain local arrays (zarr.json and chunk files written without zarr) vs zarr.

Required: the metadata written equals what zarr writes for every array of every table (and the group, and a
resized array); chunk files equal zarr's bytes for full and partial last chunks; rows written by the writer
read back through zarr itself bit for bit, also after rewinds and resumes (a property test against a model);
an array the store holds in another layout is still written through zarr; recording imports no zarr.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.codecs import GzipCodec
from zarr.storage import LocalStore

from gradmanifold.errors import StoreWriteError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import StoreWriter, open_store
from gradmanifold.store.layout import (
    ARRAY_BY_NAME,
    STORE_ATTRS,
    TABLE_BY_NAME,
    TABLES,
    array_shape,
    chunk_file,
    create_arrays,
)
from gradmanifold.store.support import versions
from gradmanifold.store.tables import LocalArray, open_writable

ROOT = Path(__file__).resolve().parents[1]
SPEC = ProjectionSpec(k=8, seed=5)
GROUPS = [("a", 30), ("b", 10), ("c", 7)]
DIMS = {
    "rows": {"groups": 3, "k": 8},
    "spectra": {"layers": 2, "q": 3},
    "curvature": {"layers": 2, "q": 3},
    "glass": {"params": 3},
}
LAYERS = [{"name": "fc1.weight", "shape": [5, 6]}, {"name": "fc2.weight", "shape": [2, 5]}]
META = {
    "spectra": {"layers": LAYERS},
    "curvature": {"layers": LAYERS},
    "glass": {"params": [{"name": f"p{i}", "shape": [4]} for i in range(3)]},
}
ALL_ARRAYS = [(t.name, a.name) for t in TABLES for a in t.arrays]


def _zarr_create(root: Path, names: tuple[str, ...], dims: dict[str, int], chunk_rows: int) -> None:
    """What the writer created through zarr before it wrote the files itself."""
    group = zarr.open_group(store=LocalStore(root), mode="a", zarr_format=3, attributes=STORE_ATTRS)
    for name in names:
        group.create_array(
            name,
            shape=array_shape(name, 0, dims),
            chunks=array_shape(name, chunk_rows, dims),
            dtype=ARRAY_BY_NAME[name].dtype,
            compressors=None,
            fill_value=0,
            overwrite=True,
        )


def _zarr_array(root: Path, name: str, mode: str = "r") -> Any:
    return zarr.open_array(store=LocalStore(root, read_only=mode == "r"), path=name, mode=mode, zarr_format=3)


def _doc(path: Path) -> Any:
    return json.loads(path.read_bytes())


def _values(name: str, n: int, dims: dict[str, int], seed: int) -> np.ndarray:
    """n rows of array `name`, random and of its dtype (integers spread over the type's range)."""
    rng = np.random.default_rng(seed)
    shape = array_shape(name, n, dims)
    dtype = np.dtype(ARRAY_BY_NAME[name].dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)


# ---------------------------------------------------------------- metadata


@pytest.mark.parametrize("table", [t.name for t in TABLES])
def test_metadata_equals_what_zarr_writes(tmp_path: Path, table: str) -> None:
    names = tuple(a.name for a in TABLE_BY_NAME[table].arrays)
    dims = DIMS[table]
    create_arrays(tmp_path / "raw", names, dims, 4, attrs=STORE_ATTRS)
    _zarr_create(tmp_path / "zarr", names, dims, 4)
    for rel in ["zarr.json", *(f"{n}/zarr.json" for n in names)]:
        raw, ref = _doc(tmp_path / "raw" / rel), _doc(tmp_path / "zarr" / rel)
        assert raw == ref, rel
        assert list(raw) == list(ref), rel  # the same keys in the same order
        if rel != "zarr.json":
            assert type(raw["fill_value"]) is type(ref["fill_value"]), rel  # 0.0 for floats, 0 for integers
    # both are files zarr opens as the same array, and the writer holds as plain
    for name in names:
        arr = _zarr_array(tmp_path / "raw", name)
        assert arr.shape == array_shape(name, 0, dims) and arr.chunks == array_shape(name, 4, dims)
        assert LocalArray.open(tmp_path / "raw" / name, ARRAY_BY_NAME[name].dtype) is not None


@pytest.mark.parametrize(("table", "name"), ALL_ARRAYS)
def test_resize_writes_what_zarr_writes(tmp_path: Path, table: str, name: str) -> None:
    dims = DIMS[table]
    create_arrays(tmp_path / "raw", (name,), dims, 4, attrs=STORE_ATTRS)
    _zarr_create(tmp_path / "zarr", (name,), dims, 4)
    arr = LocalArray.open(tmp_path / "raw" / name, ARRAY_BY_NAME[name].dtype)
    assert arr is not None
    ref = _zarr_array(tmp_path / "zarr", name, "r+")
    for rows in (4, 12, 20):
        arr.resize(array_shape(name, rows, dims))
        ref.resize(array_shape(name, rows, dims))
        assert _doc(tmp_path / "raw" / name / "zarr.json") == _doc(tmp_path / "zarr" / name / "zarr.json")
        assert arr.shape == array_shape(name, rows, dims)
    with pytest.raises(ValueError, match="rows only grow"):
        arr.resize(array_shape(name, 8, dims))  # the writer never shrinks (zarr would delete chunks)


def test_creation_overwrites_the_leftovers_of_a_killed_creation(tmp_path: Path) -> None:
    root = tmp_path / "s.zarr"
    dims = DIMS["rows"]
    create_arrays(root, ("proj", "step"), dims, 4, attrs=STORE_ATTRS)
    stray = chunk_file(root, "proj", 3)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"left over")
    (root / "proj" / "zarr.json").write_text("{}")
    create_arrays(root, ("proj", "step"), dims, 4, attrs=STORE_ATTRS)
    assert sorted(p.name for p in (root / "proj").iterdir()) == ["zarr.json"]  # as zarr's overwrite=True
    _zarr_create(tmp_path / "ref", ("proj",), dims, 4)
    assert _doc(root / "proj" / "zarr.json") == _doc(tmp_path / "ref" / "proj" / "zarr.json")
    assert not list(root.rglob("*.partial"))


# ---------------------------------------------------------------- chunk files


@pytest.mark.parametrize("n", [8, 10, 3], ids=["full", "partial-last", "partial-only"])
@pytest.mark.parametrize(("table", "name"), ALL_ARRAYS)
def test_chunk_files_equal_what_zarr_writes(tmp_path: Path, table: str, name: str, n: int) -> None:
    dims = DIMS[table]
    block = _values(name, n, dims, seed=n)
    create_arrays(tmp_path / "raw", (name,), dims, 4, attrs=STORE_ATTRS)
    _zarr_create(tmp_path / "zarr", (name,), dims, 4)
    capacity = -(-n // 4) * 4
    arr = LocalArray.open(tmp_path / "raw" / name, ARRAY_BY_NAME[name].dtype)
    assert arr is not None
    arr.resize(array_shape(name, capacity, dims))
    files = arr.write_chunks(0, block)
    ref = _zarr_array(tmp_path / "zarr", name, "r+").with_config({"write_empty_chunks": True})
    ref.resize(array_shape(name, capacity, dims))
    ref[0:n] = block
    assert files == [chunk_file(tmp_path / "raw", name, i) for i in range(capacity // 4)]
    for i in range(capacity // 4):
        raw = chunk_file(tmp_path / "raw", name, i).read_bytes()
        assert raw == chunk_file(tmp_path / "zarr", name, i).read_bytes(), i
    np.testing.assert_array_equal(_zarr_array(tmp_path / "raw", name)[:n], block)  # zarr reads them back
    np.testing.assert_array_equal(arr[:n], block)  # and the writer's own read
    np.testing.assert_array_equal(arr[1 : n - 1], block[1 : n - 1])
    assert not list(tmp_path.rglob("*.partial"))


def test_an_all_zero_chunk_gets_a_file(tmp_path: Path) -> None:
    create_arrays(tmp_path, ("flags",), DIMS["rows"], 4, attrs=STORE_ATTRS)
    arr = LocalArray.open(tmp_path / "flags", "uint8")
    assert arr is not None
    arr.resize((8, 3))
    arr.write_chunks(0, np.zeros((6, 3), np.uint8))
    for i in range(2):
        assert chunk_file(tmp_path, "flags", i).read_bytes() == bytes(12)


def test_a_failed_write_names_the_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_arrays(tmp_path, ("step",), DIMS["rows"], 4, attrs=STORE_ATTRS)
    arr = LocalArray.open(tmp_path / "step", "int64")
    assert arr is not None
    arr.resize((4,))
    renamed: list[tuple[str, str]] = []

    def full(src: Any, dst: Any) -> None:
        renamed.append((os.fspath(src), os.fspath(dst)))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError) as info:
        arr.write_chunks(0, np.arange(4, dtype=np.int64))
    target = str(chunk_file(tmp_path, "step", 0))
    assert info.value.filename == target
    [(src, dst)] = renamed
    assert dst == target and src.startswith(target + ".") and src.endswith(".partial")
    assert len(Path(src).name.split(".")[1]) == 32  # `<file>.<32 hex>.partial`, as zarr names its temp files
    assert not list(tmp_path.rglob("*.partial")) and not Path(target).exists()


# ---------------------------------------------------------------- the writer, read back through zarr


def _append_main(w: StoreWriter, step: int, version: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([step, version])
    row = {
        "proj": rng.standard_normal((3, 8)).astype(np.float32),
        "sqnorm": rng.random(3) * 10,
        "flags": np.array([step % 5 == 0, 0, step % 7 == 3], np.uint8),
        "loss": np.float64(rng.random()),
        "lr": np.float64(1e-3 * (step + 1)),
        "update": rng.standard_normal((3, 8)).astype(np.float32),
        "update_sqnorm": rng.random(3),
    }
    w.append(
        step,
        row["proj"],
        row["sqnorm"],
        flags=row["flags"],
        loss=float(row["loss"]),
        lr=float(row["lr"]),
        update=row["update"],
        update_sqnorm=row["update_sqnorm"],
    )
    return {**row, "step": np.int64(step)}


def _append_table(w: StoreWriter, table: str, step: int, version: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([step, version, len(table)])
    spec = TABLE_BY_NAME[table]
    values = {
        a.name: rng.standard_normal([DIMS[table][d] for d in a.dims])
        for a in spec.arrays
        if a.name != spec.step
    }
    w.append_row(table, step, values)
    return {**values, spec.step: np.int64(step)}


class Model:
    """The rows each table should hold: per table, its rows in order (rewinds drop a suffix)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, np.ndarray]]] = {t.name: [] for t in TABLES}

    def add(self, table: str, row: dict[str, np.ndarray]) -> None:
        key = TABLE_BY_NAME[table].step
        kept = self.rows[table]
        self.rows[table] = [r for r in kept if int(r[key]) < int(row[key])] + [row]


def _check_through_zarr(path: Path, model: Model, plain: bool = True) -> None:
    """Every committed row of every array, read through zarr itself, is the model's bit for bit (and with
    `plain`, every committed chunk has a whole file of raw bytes)."""
    m = open_store(path).manifest
    for table, rows in model.rows.items():
        if table != "rows" and table not in m.tables:
            assert not rows
            continue
        state = m.table(table)
        assert state.n_rows == len(rows), table
        for name in state.arrays:
            arr = _zarr_array(path, name)
            assert arr.shape[0] >= len(rows) and arr.shape[0] % state.chunk_rows == 0
            got = np.asarray(arr[: len(rows)])
            want = np.array([r[name] for r in rows], dtype=ARRAY_BY_NAME[name].dtype).reshape(got.shape)
            np.testing.assert_array_equal(got, want, err_msg=f"{table}.{name}")
            assert got.tobytes() == want.tobytes(), f"{table}.{name}"  # bit for bit (NaN payloads too)
            for i in range(state.n_chunks if plain else 0):  # every committed chunk has a whole file
                f = chunk_file(path, name, i)
                assert f.stat().st_size == np.dtype(arr.dtype).itemsize * int(np.prod(arr.chunks)), f


def _open_writer(path: Path) -> StoreWriter:
    return StoreWriter(path, SPEC, GROUPS, chunk_rows=4, fsync=False, updates="exact")


def test_rows_read_back_through_zarr_after_resizes_rewinds_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    model = Model()
    w = _open_writer(path)
    for table in ("spectra", "curvature", "glass"):
        w.add_table(table, DIMS[table], META[table], chunk_rows=3)
    for s in range(18):  # 4 full chunks of the main rows, a partial one of 2; the tables end mid-chunk
        model.add("rows", _append_main(w, s, 0))
        if s % 2 == 0:
            for table in ("spectra", "curvature", "glass"):
                model.add(table, _append_table(w, table, s, 0))
    w.flush()
    _check_through_zarr(path, model)
    w.close()
    w = _open_writer(path)  # resumed: the partial last chunk is continued
    for s in range(18, 23):
        model.add("rows", _append_main(w, s, 0))
    w.flush()
    _check_through_zarr(path, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the rewind's notice
        model.add("rows", _append_main(w, 5, 1))  # rewind into chunk 1, then re-append
        for table in ("spectra", "curvature", "glass"):
            model.rows[table] = [r for r in model.rows[table] if int(r[TABLE_BY_NAME[table].step]) < 5]
        for s in range(6, 9):
            model.add("rows", _append_main(w, s, 1))
        model.add("spectra", _append_table(w, "spectra", 6, 1))
    w.close()
    _check_through_zarr(path, model)
    assert open_store(path).verify() == []
    w = _open_writer(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.add("rows", _append_main(w, 0, 2))  # rewind to the very first row
        for table in ("spectra", "curvature", "glass"):
            model.rows[table] = []
    w.close()
    _check_through_zarr(path, model)
    assert open_store(path).verify() == []


def test_an_array_of_another_layout_is_written_through_zarr(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    model = Model()
    with _open_writer(path) as w:
        for s in range(6):
            model.add("rows", _append_main(w, s, 0))
    old = _zarr_array(path, "proj")
    data = old[:]
    gz = zarr.create_array(
        store=LocalStore(path),
        name="proj",
        shape=old.shape,
        chunks=old.chunks,
        dtype=old.dtype,
        fill_value=0,
        overwrite=True,
        compressors=GzipCodec(),
    )
    gz[:] = data
    m = open_store(path).manifest
    held = open_writable(path, m.table("rows").arrays, m.table("rows").dims, m.chunk_rows)
    assert not isinstance(held["proj"], LocalArray) and isinstance(held["sqnorm"], LocalArray)
    with _open_writer(path) as w:
        for s in range(6, 15):
            model.add("rows", _append_main(w, s, 0))
    _check_through_zarr(path, model, plain=False)
    assert any(c["name"] == "gzip" for c in _doc(path / "proj" / "zarr.json")["codecs"])
    assert open_store(path).verify() == []


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6)),
        st.tuples(st.just("rewind"), st.integers(0, 30)),
        st.tuples(st.just("flush"), st.just(0)),
        st.tuples(st.just("reopen"), st.just(0)),
        st.tuples(st.just("spectra"), st.just(0)),
    ),
    max_size=25,
)


@settings(deadline=None)
@given(ops=OPS, chunk_rows=st.integers(1, 4))
def test_random_appends_flushes_and_rewinds_match_a_model(
    ops: list[tuple[str, int]], chunk_rows: int
) -> None:
    model = Model()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rewind notices
        path = Path(tmp) / "r.zarr"

        def open_() -> StoreWriter:
            w = StoreWriter(path, SPEC, GROUPS, chunk_rows=chunk_rows, fsync=False, updates="exact")
            w.add_table("spectra", DIMS["spectra"], META["spectra"], chunk_rows=chunk_rows)
            return w

        w = open_()
        version, step = 0, 0
        for op, arg in ops:
            if op == "append":
                for _ in range(arg):
                    model.add("rows", _append_main(w, step, version))
                    step += 1
            elif op == "rewind":
                version += 1
                step = min(arg, step)
                last = w.last_step
                if last is not None and step <= last:  # the other tables are cut back with the main rows
                    model.rows["spectra"] = [
                        r for r in model.rows["spectra"] if int(r["spectra_step"]) < step
                    ]
                model.add("rows", _append_main(w, step, version))
                step += 1
            elif op == "spectra":
                last = w.table_last_step("spectra")
                s = step if last is None else max(step, last + 1)
                model.add("spectra", _append_table(w, "spectra", s, version))
            elif op == "flush":
                w.flush()
                _check_through_zarr(path, model)
            else:
                w.close()
                w = open_()
        w.close()
        _check_through_zarr(path, model)
        assert open_store(path).verify() == []


# ---------------------------------------------------------------- recording imports no zarr

NO_ZARR = """
    import sys, warnings
    import numpy as np
    from gradmanifold import Recorder
    from gradmanifold.projection import ProjectionSpec
    from gradmanifold.store import StoreWriter
    warnings.simplefilter("ignore")
    path = sys.argv[1]
    spec, groups = ProjectionSpec(k=8, seed=1), [("a", 10), ("b", 5)]
    rng = np.random.default_rng(0)
    w = StoreWriter(path + "/w.zarr", spec, groups, chunk_rows=4)
    for s in range(11):  # past two chunk boundaries
        w.append(s, rng.standard_normal((2, 8)), rng.random(2), loss=float(s))
    w.flush()
    w.close()
    w = StoreWriter(path + "/w.zarr", spec, groups, chunk_rows=4)  # resumed
    for s in range(11, 14):
        w.append(s, rng.standard_normal((2, 8)), rng.random(2))
    w.flush()
    w.append(6, rng.standard_normal((2, 8)), rng.random(2))  # a rewind into an earlier chunk
    w.append(7, rng.standard_normal((2, 8)), rng.random(2))
    w.close()
    opts = dict(k=16, seed=0, chunk_rows=4, spectra_every=2, spectra_top=3, updates=True, threads=0)
    rec = Recorder(path + "/rec.zarr", **opts)
    grads = lambda: {"w": rng.standard_normal((6, 5)), "b": rng.standard_normal(5)}
    for s in range(10):
        rec.record(s, grads(), loss=1.0, params=grads())
    rec.close()
    rec = Recorder(path + "/rec.zarr", **opts)
    for s in range(3, 7):  # a rewind
        rec.record(s, grads(), loss=1.0, params=grads())
    rec.close()
    print(sorted(m for m in sys.modules if m == "zarr" or m.startswith("zarr.")))
"""


def test_recording_imports_no_zarr(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(NO_ZARR), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", res.stdout
    w, rec = open_store(tmp_path / "w.zarr"), open_store(tmp_path / "rec.zarr")
    assert list(w.steps()) == list(range(8)) and list(rec.steps()) == list(range(7))
    assert w.verify() == [] and rec.verify() == []


# ---------------------------------------------------------------- versions


def test_versions_are_the_installed_ones() -> None:
    from importlib.metadata import PackageNotFoundError, version

    got = versions()
    assert got is not versions()  # a fresh dict each time: the cache cannot be changed through it
    assert got == versions()
    assert got["python"] == sys.version.split()[0] and "gradmanifold" in got
    for dist in ("numpy", "zarr", "numba", "torch"):
        try:
            want: str | None = version(dist)
        except PackageNotFoundError:
            want = None
        assert got.get(dist) == want, dist
    assert all(type(v) is str for v in got.values())


def test_a_write_error_on_create_is_a_store_write_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace

    def full(src: Any, dst: Any) -> None:
        if str(dst).endswith("zarr.json"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(StoreWriteError, match="cannot create the store"):
        StoreWriter(tmp_path / "new.zarr", SPEC, GROUPS)
    assert not (tmp_path / "new.zarr").exists()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fsynced files through /proc")
@pytest.mark.parametrize("fsync", [True, False])
def test_creation_fsyncs_the_metadata_before_the_first_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool
) -> None:
    """A new store's group and array zarr.json (and their folders) reach the disk before the manifest that
    names them is published; with fsync=False nothing is fsynced."""
    synced: list[Path] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    path = tmp_path / "new" / "runs" / "run.zarr"  # folders made for it: their names must last too
    w = StoreWriter(path, SPEC, GROUPS, chunk_rows=4, fsync=fsync)
    if not fsync:
        w.close()
        assert synced == []
        return
    first_manifest = next(i for i, p in enumerate(synced) if p.name.startswith("manifest.json"))
    before = set(synced[:first_manifest])
    metadata = {path / "zarr.json"} | {path / a / "zarr.json" for a in TABLE_BY_NAME["rows"].required}
    assert metadata <= before, sorted(str(p) for p in metadata - before)
    assert path in before and all(path / a in before for a in TABLE_BY_NAME["rows"].required)
    assert {tmp_path, tmp_path / "new", tmp_path / "new" / "runs"} <= before
    assert tmp_path.parent not in synced  # the first folder that existed holds the new name: no higher
    w.close()
