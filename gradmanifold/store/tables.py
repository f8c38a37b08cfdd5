"""A table's rows as the writer holds them: committed steps, and a buffer of whole-chunk rows to write.

Every table of the registry (store.layout.TABLES) goes through this one path, so an array recorded every N
steps is written, checksummed, rewound and committed exactly like the main rows. Arrays in the plain layout
(the only one the writer creates) are written without zarr: each chunk is one file of raw bytes, written
whole (LocalArray); an array a store holds in another layout goes through zarr.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gradmanifold.store.layout import (
    ARRAY_BY_NAME,
    ROWS,
    TABLE_BY_NAME,
    array_chunk_file,
    array_row_bytes,
    array_shape,
    checksum,
    meta_bytes,
    open_arrays,
    write_file,
)
from gradmanifold.store.manifest import Manifest, TableState
from gradmanifold.store.plainmeta import PlainArray, read_plain
from gradmanifold.store.rawchunk import RawLayout, read_rows
from gradmanifold.store.resume import read_committed_chunk


class LocalArray:
    """A local array in the plain layout, held without zarr: its zarr.json (as JSON) and its chunk files, each
    the chunk's raw little-endian C-order bytes (store.rawchunk), read and written directly."""

    def __init__(self, folder: Path, doc: dict[str, Any], plain: PlainArray) -> None:
        self.folder = folder
        self.doc = doc  # its zarr.json: a resize changes the shape only, as zarr's does
        self.shape = plain.shape
        self.chunks = plain.chunks
        self.dtype = plain.dtype
        self.layout = RawLayout(plain.dtype, plain.chunks, str(folder), plain.encode_key)

    @classmethod
    def open(cls, folder: Path, dtype: str) -> LocalArray | None:
        """The array in `folder` when its zarr.json is the plain layout with data type `dtype`, else None."""
        path = folder / "zarr.json"
        plain = read_plain(path, dtype)
        if plain is None:
            return None
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):  # changed since: zarr opens it and names any damage
            return None
        return cls(folder, doc, plain)

    def resize(self, shape: tuple[int, ...]) -> None:
        """Grow to `shape` (more rows): rewrite zarr.json with the new shape, the one thing zarr's resize
        changes when growing. Shrinking is refused: zarr would delete the chunks past the new shape, and the
        writer never shrinks an array (a rewind leaves the shape, the manifest counts the rows)."""
        if tuple(shape[1:]) != self.shape[1:] or shape[0] < self.shape[0]:
            raise ValueError(f"{self.folder}: cannot resize {self.shape} to {shape} (rows only grow)")
        doc = {**self.doc, "shape": [int(n) for n in shape]}
        write_file(self.folder / "zarr.json", meta_bytes(doc))
        self.doc, self.shape = doc, tuple(int(n) for n in shape)

    def write_chunks(self, first: int, block: np.ndarray) -> list[Path]:
        """Write `block` (rows from the start of chunk `first` on) as whole chunk files; returns the files.

        The last chunk's rows past the block are the fill value 0, and every chunk gets a file, an all-zero
        one too (a committed chunk always has a file). Each is written atomically (store.layout.write_file).
        """
        c = self.chunks[0]
        if block.shape[1:] != self.chunks[1:] or (first + -(-len(block) // c)) * c > self.shape[0]:
            raise ValueError(f"{self.folder}: {block.shape} rows from chunk {first} do not fit {self.shape}")
        files = []
        for i in range(0, len(block), c):
            part = np.ascontiguousarray(block[i : i + c], self.dtype)
            if len(part) < c:
                whole = np.zeros(self.chunks, self.dtype)
                whole[: len(part)] = part
                part = whole
            path = Path(self.layout.file(first + i // c))
            write_file(path, part.data)
            files.append(path)
        return files

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Rows `rows` (a slice of step 1, clipped to the shape as zarr clips it), read from the chunk files.

        A chunk without a file reads as the fill value 0, as through zarr; a file of the wrong size, or one
        that cannot be read, raises ValueError naming it.
        """
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("only row slices of step 1")
        stop = max(start, stop)
        c = self.chunks[0]
        out = np.zeros((stop - start, *self.chunks[1:]), self.dtype)
        for index in range(start // c, -(-stop // c)):
            lo, hi = max(start, index * c), min(stop, (index + 1) * c)
            path = self.layout.file(index)
            data, why = read_rows(path, self.layout, hi - index * c)
            if data is not None:
                out[lo - start : hi - start] = data[lo - index * c :]
            elif why != "missing":
                raise ValueError(f"chunk file {path} is {why}")
        return out


def open_writable(
    root: Path, names: tuple[str, ...], dims: dict[str, int], chunk_rows: int
) -> dict[str, Any]:
    """The named arrays of the local store at `root` as the writer holds them: a LocalArray for each in the
    plain layout with the manifest's chunk shape (`dims`, `chunk_rows`), a zarr array for any other."""
    out: dict[str, Any] = {}
    for name in names:
        arr = LocalArray.open(root / name, ARRAY_BY_NAME[name].dtype)
        if arr is not None and arr.chunks == array_shape(name, chunk_rows, dims):
            out[name] = arr
    rest = tuple(name for name in names if name not in out)
    if rest:  # zarr loads only here
        out.update(open_arrays(root, rest, writable=True))
    return {name: out[name] for name in names}


class TableBuffer:
    """Committed steps of one table, and its buffer from chunk row `base` on (the committed prefix of the
    base chunk, then new rows)."""

    def __init__(self, name: str, arrays: dict[str, Any], steps: np.ndarray, chunk_rows: int) -> None:
        self.name = name
        self.spec = TABLE_BY_NAME[name]
        self.arrays = arrays
        self.steps = steps
        self.chunk_rows = chunk_rows
        self.base = 0
        self.buf: dict[str, list[np.ndarray]] = {n: [] for n in arrays}
        # Lowest committed row a rewind replaced since the last commit (None: no committed row replaced).
        self.replace_from: int | None = None

    @property
    def n_rows(self) -> int:
        """Rows committed plus buffered."""
        return self.base + len(self.buf[self.spec.step])

    @property
    def n_buffered(self) -> int:
        return len(self.buf[self.spec.step])

    @property
    def last_step(self) -> int | None:
        """The last step appended (buffered or committed), None when empty."""
        key = self.spec.step
        if self.buf[key]:
            return int(self.buf[key][-1])
        return int(self.steps[self.base - 1]) if self.base else None

    def push(self, row: dict[str, np.ndarray]) -> None:
        for name, rows in self.buf.items():
            rows.append(row[name])

    def load_tail(self, root: Path, m: Manifest, row: int) -> None:
        """Make `row` the end of the buffer: load the committed prefix of its chunk (verified) into it."""
        base = (row // self.chunk_rows) * self.chunk_rows
        self.base = base
        self.buf = {name: [] for name in self.arrays}
        if row > base:
            data = read_committed_chunk(root, self.arrays, m, base // self.chunk_rows, tuple(self.arrays))
            for name in self.arrays:
                self.buf[name] = list(data[name][: row - base])

    def cut(self, root: Path, m: Manifest, step: int) -> int:
        """Drop rows whose step is >= `step` from the buffer (reloading an earlier chunk when needed);
        returns the rows kept. The store itself changes at the next commit."""
        buffered = np.asarray(self.buf[self.spec.step], dtype=np.int64)
        all_steps = np.concatenate([self.steps[: self.base], buffered])
        keep = int(np.searchsorted(all_steps, step, side="left"))
        if keep >= self.base:
            for rows in self.buf.values():
                del rows[keep - self.base :]
        else:
            self.load_tail(root, m, keep)
        if keep < m.table(self.name).n_rows:
            self.replace_from = keep if self.replace_from is None else min(self.replace_from, keep)
        return keep

    def truncated(self, state: TableState, keep: int) -> TableState:
        """The committed state cut back to its first `keep` rows (the cut chunk's rows are in the buffer)."""
        n_full, rem = divmod(keep, self.chunk_rows)
        sums = {a: tuple(v[:n_full]) for a, v in state.checksums.items()}
        if rem:
            a0 = n_full * self.chunk_rows - self.base
            for a, rows in self.buf.items():
                sums[a] = (*sums[a], checksum(np.stack(rows[a0 : a0 + rem])))
        last = int(self.steps[keep - 1]) if keep else None
        return state.with_(n_rows=keep, last_step=last, checksums=sums)

    def pending(self, dims: dict[str, int]) -> tuple[str, int]:
        """What the next write does, for error messages: a description and the bytes it needs."""
        lo, hi, c = self.base, self.n_rows, self.chunk_rows
        n_chunks = -(-hi // c) - lo // c
        need = n_chunks * c * sum(array_row_bytes(name, dims) for name in self.arrays)
        of = "" if self.name == ROWS else f" of table {self.name!r}"
        return f"writing rows {lo}..{hi - 1}{of} ({n_chunks} chunk(s) per array)", need

    def snapshot(self) -> tuple[int, int, dict[str, list[np.ndarray]]]:
        """(first row, end row, rows of each array) of the buffer as it is now: what write_snapshot writes,
        while new rows go on being appended (the rows themselves are never changed in place)."""
        return self.base, self.n_rows, {name: list(rows) for name, rows in self.buf.items()}

    def write(self, root: Path, state: TableState) -> tuple[TableState, list[Path]]:
        """Write the buffered chunks (data only; OSError propagates); returns the state that commits them
        and the files to fsync before it is published."""
        new, touched, self.steps = self.write_snapshot(root, state, self.snapshot())
        return new, touched

    def write_snapshot(
        self, root: Path, state: TableState, snap: tuple[int, int, dict[str, list[np.ndarray]]]
    ) -> tuple[TableState, list[Path], np.ndarray]:
        """Write a snapshot's chunks: (the state that commits them, the files to fsync, the committed steps).

        It changes nothing of the buffer, so it may run on a commit thread (store.commit) while rows are
        appended; the arrays' files and metadata are its own until it returns.
        """
        lo, hi, buf = snap
        c = self.chunk_rows
        assert lo % c == 0, "the buffer starts at a chunk boundary, so every chunk is written whole"
        capacity = -(-hi // c) * c
        data = {name: np.stack(rows) if rows else None for name, rows in buf.items()}
        touched: list[Path] = []
        for name, arr in self.arrays.items():
            if arr.shape[0] < capacity:
                arr.resize(array_shape(name, capacity, state.dims))
                touched.append(root / name / "zarr.json")
            block = data[name]
            if block is None:
                continue
            if isinstance(arr, LocalArray):
                touched += arr.write_chunks(lo // c, block)
            else:  # an array of another layout (store.tables.open_writable): through zarr
                arr[lo:hi] = block
                touched += [array_chunk_file(arr, root, name, i) for i in range(lo // c, -(-hi // c))]
        sums = dict(state.checksums)
        first_chunk = lo // c
        for name in self.arrays:
            kept = list(sums.get(name, ()))[:first_chunk]
            d = data[name]
            for i in range(first_chunk, -(-hi // c)):
                a, b = i * c - lo, min((i + 1) * c, hi) - lo
                assert d is not None
                kept.append(checksum(d[a:b]))
            sums[name] = tuple(kept)
        steps = data[self.spec.step]
        new_steps = np.zeros(0, np.int64) if steps is None else steps.astype(np.int64)
        all_steps = np.concatenate([self.steps[:lo], new_steps])
        last = int(all_steps[-1]) if hi else None
        return state.with_(n_rows=hi, last_step=last, checksums=sums), touched, all_steps

    @property
    def plain(self) -> bool:
        """Whether every array is written directly (LocalArray), none through zarr."""
        return all(isinstance(a, LocalArray) for a in self.arrays.values())

    def trim(self, committed: int) -> None:
        """After a commit: keep only the committed prefix of the last (partial) chunk in the buffer."""
        self.replace_from = None
        base = (committed // self.chunk_rows) * self.chunk_rows
        drop = base - self.base
        if drop:
            for rows in self.buf.values():
                del rows[:drop]
            self.base = base
