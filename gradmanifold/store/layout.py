"""Zarr v3 layout of a store: array names, dtypes, chunking, checksums, the metadata files of a new store.

A store is created without zarr: the group's and each array's zarr.json are written as the JSON zarr 3 writes
for them (`group_meta`, `array_meta`). zarr is imported only to open arrays that are not in that plain layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import google_crc32c
import numpy as np

if TYPE_CHECKING:  # zarr itself loads on first use: `info` and the direct chunk reads never need it
    import zarr
    from zarr.abc.store import Store

from gradmanifold.store.lock import LOCK_NAME
from gradmanifold.store.plainmeta import PlainArray
from gradmanifold.store.rawchunk import RawLayout

# Chunk target: whole rows along T, ~4 MiB of `proj` per chunk. Measured here: 4 KiB chunks read at tens
# of MB/s, multi-MiB chunks at GB/s. No compression: projected gradients are noise-like and compress ~1.1x,
# while zstd decodes at ~1.5 GB/s and would bound analysis speed; crc32c checksums (~16 GB/s) guard the
# data instead.
TARGET_CHUNK_BYTES = 4 << 20
MAX_CHUNK_ROWS = 1 << 16
#: the zarr group's attributes: they only tag the folder; the manifest (its own file) is the commit point
STORE_ATTRS = {"gradmanifold": {"schema": "gradmanifold.store", "manifest": "manifest.json"}}


@dataclass(frozen=True)
class ArraySpec:
    """One array of a store: dtype, the table whose row axis it shares, its trailing dimensions by name.

    `optional` arrays exist only when the writer asked for them (loss, lr, update); `finite` arrays never hold
    NaN or Inf (the writer flags such rows instead), which verify checks.
    """

    name: str
    dtype: str
    table: str
    dims: tuple[str, ...] = ()
    optional: bool = False
    finite: bool = False


@dataclass(frozen=True)
class TableSpec:
    """A row axis: arrays that grow together, one row per step the table records, keyed by `step`."""

    name: str
    step: str  # the array holding each row's training step (strictly increasing)
    dims: tuple[str, ...]  # the sizes its arrays' trailing dimensions are named by
    arrays: tuple[ArraySpec, ...]
    target_chunk_bytes: int = TARGET_CHUNK_BYTES

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arrays if not a.optional)

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arrays if a.optional)


#: The main table: one row per recorded step. Its state lives at the top of the manifest (store format 1).
ROWS = "rows"
TABLES: tuple[TableSpec, ...] = (
    TableSpec(
        ROWS,
        "step",
        ("groups", "k"),
        (
            ArraySpec("proj", "float32", ROWS, ("groups", "k"), finite=True),
            ArraySpec("sqnorm", "float64", ROWS, ("groups",)),
            ArraySpec("step", "int64", ROWS),
            ArraySpec("flags", "uint8", ROWS, ("groups",)),
            ArraySpec("loss", "float64", ROWS, optional=True),
            ArraySpec("lr", "float64", ROWS, optional=True),
            # The parameter update since the previous recorded step, projected with the same R, and its
            # squared norm (NaN where unknown: the first row of a writer, or norms of a "projected" store).
            ArraySpec("update", "float32", ROWS, ("groups", "k"), optional=True),
            ArraySpec("update_sqnorm", "float64", ROWS, ("groups",), optional=True),
        ),
    ),
    # Layer spectra: top-q singular values and the exact squared Frobenius norm of each matrix-shaped
    # gradient, every N recorded steps (docs/SPECTRA.md).
    TableSpec(
        "spectra",
        "spectra_step",
        ("layers", "q"),
        (
            ArraySpec("spectra_step", "int64", "spectra"),
            ArraySpec("spectra_sigma", "float64", "spectra", ("layers", "q")),
            ArraySpec("spectra_frob_sq", "float64", "spectra", ("layers",)),
        ),
        target_chunk_bytes=64 << 10,
    ),
    # Curvature probes: per matrix layer the top singular values of the full-batch gradient and the exact
    # curvature h_k along u_k v_k^T (docs/PROBES.md); NaN where a layer was not probed.
    TableSpec(
        "curvature",
        "curvature_step",
        ("layers", "q"),
        (
            ArraySpec("curvature_step", "int64", "curvature"),
            ArraySpec("curvature_sigma", "float64", "curvature", ("layers", "q")),
            ArraySpec("curvature_h", "float64", "curvature", ("layers", "q")),
            ArraySpec("curvature_frob_sq", "float64", "curvature", ("layers",)),
        ),
        target_chunk_bytes=64 << 10,
    ),
    # Glass probes (docs/PROBES.md): per parameter tensor the mean glass density rho and curvature proxy h
    # of Alice's estimators, at the probe's sigma; NaN where a parameter was not probed.
    TableSpec(
        "glass",
        "glass_step",
        ("params",),
        (
            ArraySpec("glass_step", "int64", "glass"),
            ArraySpec("glass_sigma", "float64", "glass"),
            ArraySpec("glass_rho", "float64", "glass", ("params",)),
            ArraySpec("glass_h", "float64", "glass", ("params",)),
        ),
        target_chunk_bytes=64 << 10,
    ),
)
TABLE_BY_NAME = {t.name: t for t in TABLES}
ARRAYS = tuple(a for t in TABLES for a in t.arrays)
ARRAY_BY_NAME = {a.name: a for a in ARRAYS}


def default_chunk_rows(row_bytes: int, target: int = TARGET_CHUNK_BYTES) -> int:
    """Rows per chunk so one chunk of the table's widest array is about `target` bytes (a power of two)."""
    rows = max(1, target // max(row_bytes, 1))
    rows = 1 << (rows.bit_length() - 1)
    return min(rows, MAX_CHUNK_ROWS)


def array_row_bytes(name: str, dims: dict[str, int]) -> int:
    """Bytes of one row of array `name`."""
    a = ARRAY_BY_NAME[name]
    return np.dtype(a.dtype).itemsize * int(np.prod([dims[d] for d in a.dims], dtype=np.int64))


def row_bytes(table: str, dims: dict[str, int]) -> int:
    """Bytes of one row of the table's widest array."""
    return max(array_row_bytes(a.name, dims) for a in TABLE_BY_NAME[table].arrays)


def array_shape(name: str, rows: int, dims: dict[str, int]) -> tuple[int, ...]:
    """Shape of array `name` holding `rows` rows, its trailing sizes taken from the table's `dims`."""
    return (rows, *(int(dims[d]) for d in ARRAY_BY_NAME[name].dims))


def checksum(a: np.ndarray) -> str:
    """crc32c of the array's C-order bytes, as 8 hex digits.

    A C-contiguous array is hashed in place (its buffer, no copy: ~20 GB/s here against ~9 GB/s with a copy
    to bytes); google_crc32c refuses buffers whose exporter must be released (a memoryview), so anything it
    refuses is copied to bytes first.
    """
    c = np.ascontiguousarray(a)
    try:
        value = google_crc32c.value(c)
    except (TypeError, ValueError):
        value = google_crc32c.value(c.tobytes())
    return f"{value:08x}"


def group_meta(attrs: dict[str, Any]) -> dict[str, Any]:
    """The zarr.json of the store's group, as zarr 3 writes it for a group with these attributes."""
    return {"attributes": attrs, "zarr_format": 3, "node_type": "group"}


def array_meta(name: str, rows: int, dims: dict[str, int], chunk_rows: int) -> dict[str, Any]:
    """The zarr.json of array `name` holding `rows` rows, as zarr 3's create_array writes it for the plain
    layout: chunks of `chunk_rows` whole rows, the `bytes` codec alone (little endian), fill value 0."""
    dtype = np.dtype(ARRAY_BY_NAME[name].dtype)
    codec: dict[str, Any] = {"name": "bytes"}
    if dtype.itemsize > 1:  # zarr names no byte order for 1-byte types
        codec["configuration"] = {"endian": "little"}
    return {
        "shape": list(array_shape(name, rows, dims)),
        "data_type": ARRAY_BY_NAME[name].dtype,
        "chunk_grid": {
            "name": "regular",
            "configuration": {"chunk_shape": list(array_shape(name, chunk_rows, dims))},
        },
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": 0.0 if dtype.kind == "f" else 0,
        "codecs": [codec],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def meta_bytes(doc: dict[str, Any]) -> bytes:
    """A zarr.json document as zarr writes it (JSON, indented by 2)."""
    return json.dumps(doc, indent=2).encode()


def write_file(path: Path, data: bytes | memoryview, fsync: bool = False) -> None:
    """Write `data` (bytes, or a C-contiguous buffer such as ndarray.data) to `path` atomically: into a temp
    file beside it, `<name>.<32 hex>.partial` (the pattern remove_partials and store.support.write_error
    know), fsynced when `fsync`, renamed over `path`; missing folders are made first.

    A reader sees the old file or the new one, never a part. An OSError that names no file names `path`.
    """
    tmp = path.with_name(f"{path.name}.{os.urandom(16).hex()}.partial")
    try:
        if not os.path.isdir(path.parent):
            os.makedirs(path.parent, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)
        raise


def create_arrays(
    root: Path,
    names: tuple[str, ...],
    dims: dict[str, int],
    chunk_rows: int,
    attrs: dict[str, Any],
    fsync: bool = False,
    top: Path | None = None,
) -> None:
    """Create the zarr group (when new) and the named (empty) arrays of one table, writing their zarr.json
    directly: what zarr.open_group(mode="a", attributes=attrs) and create_array(..., compressors=None,
    fill_value=0, overwrite=True) write, without zarr's per-call cost.

    fsync: fsync the files written and their folders before returning, so that a manifest published next,
    which names these arrays, never survives a power cut that they do not. top: fsync the folders up to this
    one (default root): a writer that made the store's folder passes the folder that holds its new name.
    """
    written: list[Path] = []
    group = root / "zarr.json"
    if not group.exists():  # as open_group(mode="a"): an existing group is kept as it is
        write_file(group, meta_bytes(group_meta(attrs)))
        written.append(group)
    for name in names:
        folder = root / name
        if folder.is_dir():  # overwrite: leftovers of a creation that was killed hold nothing committed
            shutil.rmtree(folder)
        write_file(folder / "zarr.json", meta_bytes(array_meta(name, 0, dims, chunk_rows)))
        written.append(folder / "zarr.json")
    if fsync:
        fsync_files([p.absolute() for p in written], (root if top is None else top).absolute())


def zarr_store(root: Path | Store, writable: bool = False) -> Store:
    """The zarr store of a store folder (a LocalStore), or `root` itself: a remote location's read-only store.

    root: the folder, or a zarr Store (store.location.RemoteLocation.zarr_root); writable: open for writing
    (a folder only).
    """
    from zarr.storage import LocalStore

    if isinstance(root, Path):
        return LocalStore(root, read_only=not writable)
    if writable or not root.read_only:
        raise ValueError(f"{root!r}: only a local folder is opened for writing")
    return root


def open_group(root: Path | Store) -> zarr.Group:
    """Open the store's zarr group read-only (checks the group metadata)."""
    import zarr

    return zarr.open_group(store=zarr_store(root), mode="r", zarr_format=3)


def open_arrays(root: Path | Store, names: tuple[str, ...], writable: bool) -> dict[str, zarr.Array]:
    """Open the named arrays of the store at root (a folder, or a remote location's read-only zarr store),
    each on its own (damage to one spares the others)."""
    import zarr

    store = zarr_store(root, writable)
    out: dict[str, zarr.Array] = {}
    for name in names:
        arr = zarr.open_array(store=store, path=name, mode="r+" if writable else "r", zarr_format=3)
        if not isinstance(arr, zarr.Array):
            raise TypeError(f"{name!r} is a {type(arr).__name__}, not an array")
        # Write every chunk, also an all-zero one (zarr would leave no file): a committed chunk always has
        # a file, so a missing file is always damage.
        out[name] = arr.with_config({"write_empty_chunks": True}) if writable else arr
    return out


def array_issues(
    arr: zarr.Array | PlainArray, name: str, dims: dict[str, int], chunk_rows: int, n_rows: int
) -> list[str]:
    """How array `name` (a zarr array, or its plain zarr.json) disagrees with what the manifest says it holds
    (empty when it agrees)."""
    return shape_issues(name, tuple(arr.shape), tuple(arr.chunks), arr.dtype, dims, chunk_rows, n_rows)


def shape_issues(
    name: str,
    shape: tuple[int, ...],
    chunks: tuple[int, ...],
    dtype: Any,
    dims: dict[str, int],
    chunk_rows: int,
    n_rows: int,
) -> list[str]:
    """How an array `name` of this shape, chunk shape and dtype (a zarr array's, or a plain zarr.json's)
    disagrees with what the manifest says it holds (empty when it agrees)."""
    want_chunks = array_shape(name, chunk_rows, dims)
    want_dtype = np.dtype(ARRAY_BY_NAME[name].dtype)
    issues = []
    if np.dtype(dtype) != want_dtype:
        issues.append(f"dtype {dtype}, expected {want_dtype}")
    if chunks != want_chunks:
        issues.append(f"chunks {chunks}, expected {want_chunks}")
    if shape[1:] != want_chunks[1:] or shape[0] < n_rows:
        issues.append(f"shape {shape} does not hold {n_rows} rows of {want_chunks[1:]}")
    return issues


def raw_layout(arr: zarr.Array | PlainArray, folder: Path) -> RawLayout | None:
    """How the chunk files of array `arr` (its folder: `folder`) lie on disk when each holds the chunk's raw
    C-order bytes (the `bytes` codec alone, little endian, on a little-endian machine); None when they are
    anything else (compressed, another codec, big endian, ...): such arrays are read through zarr.

    arr: a zarr array, or a PlainArray (store.plainmeta: its zarr.json read without zarr, plain already).
    """
    if isinstance(arr, PlainArray):
        return RawLayout(arr.dtype, arr.chunks, str(folder), arr.encode_key)
    from zarr.codecs import BytesCodec
    from zarr.codecs.bytes import Endian
    from zarr.core.chunk_grids import RegularChunkGrid
    from zarr.core.metadata import ArrayV3Metadata

    meta = arr.metadata
    if sys.byteorder != "little" or not isinstance(meta, ArrayV3Metadata):
        return None
    if not isinstance(meta.chunk_grid, RegularChunkGrid) or meta.storage_transformers:
        return None
    codecs = tuple(meta.codecs)
    if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
        return None
    dtype = np.dtype(arr.dtype)
    endian = codecs[0].endian
    if dtype.byteorder not in "=|<" or (endian is None and dtype.itemsize > 1):
        return None
    if endian is not None and endian != Endian.little:
        return None
    chunks = tuple(int(c) for c in arr.chunks)
    return RawLayout(dtype.newbyteorder("="), chunks, str(folder), meta.chunk_key_encoding.encode_chunk_key)


def chunk_key(arr: zarr.Array, chunk: int) -> str:
    """The key of chunk `chunk` (along the rows) of `arr` under its own chunk key encoding ('/'-separated)."""
    from zarr.core.metadata import ArrayV3Metadata

    meta = arr.metadata
    coords = (chunk, *(0,) * (len(arr.shape) - 1))
    if isinstance(meta, ArrayV3Metadata):
        return meta.chunk_key_encoding.encode_chunk_key(coords)
    return (meta.dimension_separator or ".").join(map(str, coords))  # zarr format 2 (never written here)


def array_chunk_file(arr: zarr.Array, root: Path, name: str, chunk: int) -> Path:
    """Path of chunk `chunk` (along the rows) of array `name` of the store folder `root`, under the chunk key
    encoding its metadata names (the writer's is zarr v3's default: chunk_file)."""
    return root.joinpath(name, *chunk_key(arr, chunk).split("/"))


def chunk_file(root: Path, name: str, chunk: int) -> Path:
    """Path of one chunk file under zarr v3's default chunk key encoding ('c/' and '/' separators)."""
    return root.joinpath(name, "c", str(chunk), *("0",) * len(ARRAY_BY_NAME[name].dims))


def fsync_files(paths: list[Path], root: Path | None = None) -> None:
    """fsync each file, then the folders holding them up to `root` (so that new names survive a power cut,
    not only the bytes)."""
    folders: set[Path] = set()
    for p in paths:
        for d in p.parents:
            if root is None or d == root or root in d.parents:
                folders.add(d)
            if root is None or d == root:
                break
    for p in [*paths, *sorted(folders, key=lambda d: -len(d.parts))]:
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def leftover_temp_files(root: Path) -> list[Path]:
    """Temp files a killed writer may leave: zarr's and the manifest's '*.partial', set-aside stale locks."""
    found = [
        Path(folder, name)
        for folder, _, names in os.walk(root)  # scandir-based: much faster than Path.rglob on many chunks
        for name in names
        if name.endswith(".partial")
    ]
    return sorted([*found, *root.glob(f"{LOCK_NAME}.*.stale")])


def remove_partials(root: Path) -> int:
    """Delete temp files left by a killed writer; returns how many."""
    n = 0
    for p in leftover_temp_files(root):
        p.unlink(missing_ok=True)
        n += 1
    return n
