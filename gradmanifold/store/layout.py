"""Zarr v3 layout of a store: array names, dtypes, chunking, checksums. The only module that imports zarr."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.storage import LocalStore

from gradmanifold.store.lock import LOCK_NAME

# Chunk target: whole rows along T, ~4 MiB of `proj` per chunk. Measured here: 4 KiB chunks read at tens
# of MB/s, multi-MiB chunks at GB/s. No compression: projected gradients are noise-like and compress ~1.1x,
# while zstd decodes at ~1.5 GB/s and would bound analysis speed; crc32c checksums (~16 GB/s) guard the
# data instead.
TARGET_CHUNK_BYTES = 4 << 20
MAX_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dtype: str
    per_group: bool  # [T, G] (or [T, G, k] for proj) versus [T]


ARRAYS = (
    ArraySpec("proj", "float32", True),
    ArraySpec("sqnorm", "float64", True),
    ArraySpec("step", "int64", False),
    ArraySpec("flags", "uint8", True),
    ArraySpec("loss", "float64", False),
    ArraySpec("lr", "float64", False),
)
ARRAY_BY_NAME = {a.name: a for a in ARRAYS}


def default_chunk_rows(n_groups: int, k: int) -> int:
    """Rows per chunk so one chunk of `proj` is ~4 MiB (a power of two, at least 1)."""
    row_bytes = n_groups * k * 4
    rows = max(1, TARGET_CHUNK_BYTES // max(row_bytes, 1))
    rows = 1 << (rows.bit_length() - 1)
    return min(rows, MAX_CHUNK_ROWS)


def array_shape(name: str, rows: int, n_groups: int, k: int) -> tuple[int, ...]:
    if name == "proj":
        return (rows, n_groups, k)
    return (rows, n_groups) if ARRAY_BY_NAME[name].per_group else (rows,)


def checksum(a: np.ndarray) -> str:
    """crc32c of the array's C-order bytes, as 8 hex digits."""
    # google_crc32c takes only bytes objects, hence the copy (~10 GB/s, cheaper than the hash's read).
    return f"{google_crc32c.value(np.ascontiguousarray(a).tobytes()):08x}"


def create_arrays(
    root: Path, names: tuple[str, ...], n_groups: int, k: int, chunk_rows: int, attrs: dict[str, Any]
) -> None:
    """Create the zarr group and its (empty) arrays."""
    group = zarr.open_group(store=LocalStore(root), mode="a", zarr_format=3, attributes=attrs)
    for name in names:
        shape = array_shape(name, 0, n_groups, k)
        chunks = array_shape(name, chunk_rows, n_groups, k)
        group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            dtype=ARRAY_BY_NAME[name].dtype,
            compressors=None,
            fill_value=0,
            overwrite=True,  # a new store: leftovers of a creation that was killed hold nothing committed
        )


def open_group(root: Path) -> zarr.Group:
    """Open the store's zarr group read-only (checks the group metadata)."""
    return zarr.open_group(store=LocalStore(root, read_only=True), mode="r", zarr_format=3)


def open_arrays(root: Path, names: tuple[str, ...], writable: bool) -> dict[str, zarr.Array]:
    """Open the named arrays of the store at root, each on its own (damage to one spares the others)."""
    store = LocalStore(root, read_only=not writable)
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
    arr: zarr.Array, name: str, n_groups: int, k: int, chunk_rows: int, n_rows: int
) -> list[str]:
    """How array `name` disagrees with what the manifest says it holds (empty when it agrees)."""
    want_chunks = array_shape(name, chunk_rows, n_groups, k)
    want_dtype = np.dtype(ARRAY_BY_NAME[name].dtype)
    issues = []
    if np.dtype(arr.dtype) != want_dtype:
        issues.append(f"dtype {arr.dtype}, expected {want_dtype}")
    if tuple(arr.chunks) != want_chunks:
        issues.append(f"chunks {tuple(arr.chunks)}, expected {want_chunks}")
    if tuple(arr.shape[1:]) != want_chunks[1:] or arr.shape[0] < n_rows:
        issues.append(f"shape {tuple(arr.shape)} does not hold {n_rows} rows of {want_chunks[1:]}")
    return issues


def chunk_file(root: Path, name: str, chunk: int) -> Path:
    """Path of one chunk file under zarr v3's default chunk key encoding ('c/' and '/' separators)."""
    tail = ("0", "0") if name == "proj" else (("0",) if ARRAY_BY_NAME[name].per_group else ())
    return root.joinpath(name, "c", str(chunk), *tail)


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
