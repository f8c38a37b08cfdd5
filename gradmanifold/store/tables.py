"""A table's rows as the writer holds them: committed steps, and a buffer of whole-chunk rows to write.

Every table of the registry (store.layout.TABLES) goes through this one path, so an array recorded every N
steps is written, checksummed, rewound and committed exactly like the main rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gradmanifold.store.layout import ROWS, TABLE_BY_NAME, array_row_bytes, array_shape, checksum, chunk_file
from gradmanifold.store.manifest import Manifest, TableState
from gradmanifold.store.resume import read_committed_chunk


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

    def write(self, root: Path, state: TableState) -> tuple[TableState, list[Path]]:
        """Write the buffered chunks (data only; OSError propagates); returns the state that commits them
        and the files to fsync before it is published."""
        lo, hi, c = self.base, self.n_rows, self.chunk_rows
        capacity = -(-hi // c) * c
        data = {name: np.stack(rows) if rows else None for name, rows in self.buf.items()}
        touched: list[Path] = []
        for name, arr in self.arrays.items():
            if arr.shape[0] < capacity:
                arr.resize(array_shape(name, capacity, state.dims))
                touched.append(root / name / "zarr.json")
            block = data[name]
            if block is not None:
                arr[lo:hi] = block
            touched += [chunk_file(root, name, i) for i in range(lo // c, -(-hi // c))]
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
        self.steps = np.concatenate([self.steps[:lo], new_steps])
        last = int(self.steps[-1]) if hi else None
        return state.with_(n_rows=hi, last_step=last, checksums=sums), touched

    def trim(self, committed: int) -> None:
        """After a commit: keep only the committed prefix of the last (partial) chunk in the buffer."""
        self.replace_from = None
        base = (committed // self.chunk_rows) * self.chunk_rows
        drop = base - self.base
        if drop:
            for rows in self.buf.values():
                del rows[:drop]
            self.base = base
