"""StoreReader: the committed rows of a store as a stream of chunks, each verified against its checksum.

A reader sees the commit that was current when it opened the store, and only that. The writer may go on
appending meanwhile: committed bytes never change under an append, so the reader's rows stay valid. When a
checksum does not match, the reader re-reads the manifest before calling the chunk corrupt: if the writer
has since replaced the rows (a rewind of a resumed job, a repair), that is a StoreChangedError, not damage.

A local array whose chunk files hold raw bytes (the writer's layout, told from its zarr.json read as plain
JSON: store.plainmeta) is read file by file straight into numpy (store.rawchunk), checksummed in place and
sliced without copies, and zarr is never imported for it; other arrays, and remote stores, through zarr.
Iterating reads the next chunks ahead on a thread, so reading overlaps the consumer's work.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradmanifold.errors import (
    ChunkDamagedError,
    CorruptStoreError,
    GradManifoldError,
    StoreChangedError,
    UsageError,
    one_line,
)
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store.chunk import FLAG_NONFINITE, FLAG_SKIPPED, Chunk
from gradmanifold.store.layout import (
    ARRAY_BY_NAME,
    ROWS,
    TABLE_BY_NAME,
    array_chunk_file,
    array_issues,
    checksum,
    open_arrays,
    raw_layout,
)
from gradmanifold.store.location import LocalLocation, StoreLocation, locate
from gradmanifold.store.lock import read_holder
from gradmanifold.store.manifest import MANIFEST_NAME, Manifest, TableState
from gradmanifold.store.plainmeta import read_plain
from gradmanifold.store.rawchunk import RawLayout, read_rows, size_problem
from gradmanifold.store.readahead import run_ahead

# Re-reads of a chunk whose checksum fails, each after re-reading the manifest (seconds to wait before each).
# Chunk files and the manifest are replaced by atomic renames, so one re-read settles it on a local disk.
RETRY_DELAYS = (0.0,)
#: chunks a reader of a remote store fetches ahead, each on its own thread (their round trips overlap)
REMOTE_READ_AHEAD = 4
#: chunks a reader of a local store reads ahead of its consumer, on one thread (files are read one by one)
LOCAL_READ_AHEAD = 2


@dataclass(frozen=True)
class ExcludedChunk:
    """A storage chunk that iter_chunks(skip_corrupt=True) left out, and why."""

    index: int
    row_start: int  # first row of the chunk's committed rows
    row_stop: int  # one past the last
    first_step: int | None  # None when the step array's chunk is damaged too
    last_step: int | None
    reason: str

    @property
    def n_rows(self) -> int:
        return self.row_stop - self.row_start

    def describe(self) -> str:
        steps = (
            f"steps {self.first_step}..{self.last_step}" if self.first_step is not None else "steps unknown"
        )
        return f"chunk {self.index} (rows {self.row_start}..{self.row_stop - 1}, {steps}): {self.reason}"


def open_store(path: str | os.PathLike[str]) -> StoreReader:
    """Open a store for reading.

    path: a store folder, or the URL of one (http(s)://, s3://, gs://, memory://: read-only, docs/REMOTE.md).
    Raises StoreNotFoundError, NotAStoreError, SchemaVersionError, UsageError (exit code 2) or
    CorruptStoreError (3).
    """
    return StoreReader(path)


class StoreReader:
    """Read-only view of the rows committed when the store was opened (a ChunkSource)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        #: where the store lives: a local folder or a URL (store.location)
        self.location: StoreLocation = locate(path)
        #: what messages name: the folder (a Path) or the URL (a str)
        self.path: Path | str = self.location.path
        self.manifest: Manifest = self.location.open_manifest()
        try:
            self.spec = ProjectionSpec.from_dict(self.manifest.projection)
        except UsageError as exc:
            raise CorruptStoreError(
                f"{os.path.join(self.path, MANIFEST_NAME)}: the projection spec is invalid ({exc})"
            ) from None
        self._arrays: dict[str, Any] = {}
        #: per opened array of a local store: its raw chunk layout, None when it is read through zarr
        self._raw: dict[str, RawLayout | None] = {}
        self._root: Path | None = self.location.root if isinstance(self.location, LocalLocation) else None
        self._steps: np.ndarray | None = None
        #: chunks the last iter_chunks(skip_corrupt=True) left out (in row order)
        self.excluded: list[ExcludedChunk] = []

    # ---------------------------------------------------------------- ChunkSource
    @property
    def n_steps(self) -> int:
        return self.manifest.n_rows

    @property
    def k(self) -> int:
        return self.manifest.k

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.manifest.groups)

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return tuple(g.size for g in self.manifest.groups)

    @property
    def chunk_rows(self) -> int:
        return self.manifest.chunk_rows

    @property
    def has_loss(self) -> bool:
        return "loss" in self.manifest.optional

    @property
    def has_lr(self) -> bool:
        return "lr" in self.manifest.optional

    @property
    def updates(self) -> str | None:
        """How the update norms were had ("exact", "projected") when the store holds updates, else None."""
        return self.manifest.updates

    @property
    def tables(self) -> tuple[str, ...]:
        """The tables the store holds ("rows", the main one, first; then e.g. "spectra")."""
        return self.manifest.table_names

    def table(self, name: str) -> TableState:
        """The committed state of table `name` (sizes, rows, meta); UsageError when the store has none."""
        if name not in self.manifest.table_names:
            raise UsageError(
                f"{self.path} holds no {name!r} table (it holds: {', '.join(self.manifest.table_names)})"
            )
        return self.manifest.table(name)

    def read_table(self, name: str, rows: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """Committed rows [a, b) (default: all) of every array of table `name`, verified chunk by chunk.

        Meant for the small tables (layer spectra, probes); the main rows stream through iter_chunks.
        """
        t = self.table(name)
        a, b = (0, t.n_rows) if rows is None else (max(0, rows[0]), min(rows[1], t.n_rows))
        parts: dict[str, list[np.ndarray]] = {n: [] for n in t.arrays}
        c = t.chunk_rows
        for index in range(a // c, -(-b // c)) if b > a else ():
            data = self.read_chunk(index, t.arrays)
            lo = index * c
            for n in t.arrays:
                parts[n].append(data[n][max(a, lo) - lo : min(b, lo + c) - lo])
        dims = t.dims
        return {
            n: np.concatenate(v)
            if v
            else np.zeros((0, *(dims[d] for d in ARRAY_BY_NAME[n].dims)), ARRAY_BY_NAME[n].dtype)
            for n, v in parts.items()
        }

    def steps(self) -> np.ndarray:
        """Training step of every committed row (int64 [n_steps]; 8 bytes a row)."""
        if self._steps is None:
            self._steps = self._bulk_steps()
            if self._steps is None:  # some chunk fails: read chunk by chunk, for the error that names it
                parts = [c.step for c in self._iter_raw(0, self.n_steps, names=("step",))]
                self._steps = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return self._steps

    def _bulk_steps(self) -> np.ndarray | None:
        """All committed steps in one read (zarr fetches the chunks concurrently), each chunk verified;
        None when any chunk fails its check."""
        m, c = self.manifest, self.chunk_rows
        try:
            self._open("step")
            raw = self._raw["step"]
            arr = None if raw is not None else self._array("step")
        except CorruptStoreError:
            return None
        if arr is None:  # local raw chunk files: one read a chunk, no zarr
            parts = []
            for i in range(m.n_chunks):
                part, why = self._read_checked(
                    "step", i, i * c, min((i + 1) * c, m.n_rows), m.checksums["step"][i]
                )
                if why or part is None:
                    return None
                parts.append(part)
            return np.concatenate(parts) if parts else np.zeros(0, np.int64)
        try:
            data = np.asarray(arr[: m.n_rows], dtype=np.int64)
        except Exception:
            return None
        for i in range(m.n_chunks):
            lo, hi = i * c, min((i + 1) * c, m.n_rows)
            if self._known_missing(arr, "step", i) or checksum(data[lo:hi]) != m.checksums["step"][i]:
                return None
        return data

    def row_range(self, start_step: int | None = None, stop_step: int | None = None) -> tuple[int, int]:
        """Rows whose step lies in [start_step, stop_step) (None: unbounded)."""
        steps = self.steps()
        lo = 0 if start_step is None else int(np.searchsorted(steps, start_step, side="left"))
        hi = len(steps) if stop_step is None else int(np.searchsorted(steps, stop_step, side="left"))
        return lo, max(lo, hi)

    def iter_chunks(
        self,
        row_start: int = 0,
        row_stop: int | None = None,
        groups: Sequence[int] | None = None,
        chunk_rows: int | None = None,
        *,
        skip_corrupt: bool = False,
    ) -> Iterator[Chunk]:
        """Committed rows [row_start, row_stop) in storage chunks (at most chunk_rows rows each), verified.

        A damaged chunk raises CorruptStoreError naming it, its rows and steps. With skip_corrupt=True the
        damaged storage chunks are left out instead (row0 then jumps over them) and listed, once the
        iteration ends, in `self.excluded` (ExcludedChunk: index, rows, steps, reason).
        """
        stop = self.n_steps if row_stop is None else min(int(row_stop), self.n_steps)
        start = max(0, int(row_start))
        names = self.manifest.table(ROWS).arrays
        sel = None if groups is None else np.asarray(list(groups), dtype=np.intp)
        excluded: list[ExcludedChunk] = []
        self.excluded = excluded
        for chunk in self._iter_raw(start, stop, names, excluded if skip_corrupt else None):
            if sel is not None:
                chunk = chunk.select(sel)
            if chunk_rows is None or chunk.n <= chunk_rows:
                yield chunk
                continue
            for a in range(0, chunk.n, chunk_rows):
                yield chunk.rows(a, min(a + chunk_rows, chunk.n))

    # ---------------------------------------------------------------- verification and info
    def read_chunk(self, index: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The committed rows of storage chunk `index`, verified against the manifest checksums.

        A damaged chunk raises ChunkDamagedError (a CorruptStoreError naming chunk, rows and steps).
        On a mismatch the manifest is read again: rows the writer replaced since this reader opened the
        store raise StoreChangedError; a mismatch that persists under an unchanged commit is corruption.
        """
        names = tuple(names or self.manifest.table(ROWS).arrays)
        t = self.manifest.table(ARRAY_BY_NAME[names[0]].table)
        c = t.chunk_rows
        lo, hi = index * c, min((index + 1) * c, t.n_rows)
        if not 0 <= lo < hi:
            raise IndexError(f"chunk {index} holds no committed rows")
        out: dict[str, np.ndarray] = {}
        for name in names:
            data, why = self._read_checked(name, index, lo, hi, t.checksums[name][index])
            if why:
                data, why = self._retry(name, index, lo, hi, why)
            if why:
                raise self._corrupt(index, name, why)
            assert data is not None
            out[name] = data
        return out

    def verify(self) -> list[ChunkDamagedError]:
        """Check every committed chunk of every array; returns the problems found (empty when sound)."""
        problems = []
        for table in self.tables:
            t = self.manifest.table(table)
            for i in range(t.n_chunks):
                for name in t.arrays:
                    try:
                        self.read_chunk(i, (name,))
                    except ChunkDamagedError as exc:
                        problems.append(exc)
        return problems

    def info(self) -> dict[str, Any]:
        """What the store holds: size, chunking, groups, segments, flagged rows, writer lock."""
        m = self.manifest
        flagged = np.zeros(len(m.groups), np.int64)
        skipped = np.zeros(len(m.groups), np.int64)
        for chunk in self._iter_raw(0, self.n_steps, ("flags",)):
            flagged += ((chunk.flags & FLAG_NONFINITE) != 0).sum(axis=0)
            skipped += ((chunk.flags & FLAG_SKIPPED) != 0).sum(axis=0)
        # A remote store is never listed (its size is unknown) and its lock is not read.
        loc = self.location
        local = loc.root if isinstance(loc, LocalLocation) else None
        size = None if local is None else sum(p.stat().st_size for p in local.rglob("*") if p.is_file())
        steps = self.steps()
        holder = None if local is None else read_holder(local)
        return {
            "path": str(self.path),
            "schema_version": m.schema_version,
            "n_steps": m.n_rows,
            "first_step": int(steps[0]) if len(steps) else None,
            "last_step": m.last_step,
            "k": m.k,
            "projection": dict(m.projection),
            "fingerprint": m.fingerprint,
            "groups": [
                {"name": g.name, "size": g.size, "nonfinite_rows": int(f), "skipped_rows": int(s)}
                for g, f, s in zip(m.groups, flagged, skipped, strict=True)
            ],
            "optional": list(m.optional),
            "updates": m.updates,
            "tables": {n: {"rows": m.table(n).n_rows, **m.table(n).dims} for n in m.table_names if n != ROWS},
            "chunk_rows": m.chunk_rows,
            "n_chunks": m.n_chunks,
            "size_bytes": size,
            "created": m.created,
            "versions": dict(m.versions),
            "segments": [s.to_dict() for s in m.segments],
            "writer": None
            if holder is None
            else {"host": holder.host, "pid": holder.pid, "since": holder.started},
        }

    # ---------------------------------------------------------------- internals
    def _open(self, name: str) -> None:
        """Check array `name` against the manifest on first use (so damaged metadata of one array spares the
        rest) and settle how it is read: `self._raw[name]`, its raw chunk layout or None (through zarr).

        A local array's zarr.json is read as plain JSON first (store.plainmeta): when it is the writer's plain
        layout, no zarr array is opened (nor zarr imported) until a read needs one; anything else, and every
        remote store, is opened through zarr.
        """
        if name in self._raw:
            return
        root = self._root
        spec = ARRAY_BY_NAME[name]
        plain = None if root is None else read_plain(root / name / "zarr.json", spec.dtype)
        arr: Any = plain if plain is not None else self._array(name)
        t = self.manifest.table(spec.table)
        issues = array_issues(arr, name, t.dims, t.chunk_rows, t.n_rows)
        if issues:
            raise CorruptStoreError(
                f"{self.path}: array {name!r} disagrees with the manifest ({'; '.join(issues)}); one of "
                "them is damaged: run `gradmanifold verify`"
            )
        self._raw[name] = None if root is None else raw_layout(arr, root / name)

    def _array(self, name: str) -> Any:
        """The zarr array `name`, opened on first use (unchecked: `_open` checks it against the manifest)."""
        arr = self._arrays.get(name)
        if arr is None:
            try:
                arr = open_arrays(self.location.zarr_root(), (name,), writable=False)[name]
            except Exception as exc:
                fix = (
                    "its metadata (zarr.json) is missing or unreadable at the server"
                    if self.location.remote
                    else "its metadata (zarr.json) is damaged or missing; `gradmanifold repair` rebuilds it"
                )
                why = f"({type(exc).__name__}: {_brief(exc)}); {fix}"
                raise CorruptStoreError(f"{self.path}: array {name!r} cannot be opened {why}") from None
            self._arrays[name] = arr
        return arr

    def _read_checked(
        self, name: str, index: int, lo: int, hi: int, want: str
    ) -> tuple[np.ndarray | None, str]:
        """Rows [lo, hi) of array `name` and "" when their checksum is `want`, else (None or data, why)."""
        data, why = self._read_rows(name, index, lo, hi)
        if data is None:
            return None, why
        return (data, "") if checksum(data) == want else (data, "checksum mismatch")

    def _read_rows(self, name: str, index: int, lo: int, hi: int) -> tuple[np.ndarray | None, str]:
        """Rows [lo, hi) of storage chunk `index` of array `name`, unverified, and ""; or (None, why not).

        A raw local chunk file is read straight into numpy (rows from the chunk's first to hi, then a view
        from lo: no copy); other arrays through zarr.
        """
        self._open(name)
        raw = self._raw[name]
        if raw is not None:
            first = index * raw.chunk_shape[0]
            rows, why = read_rows(raw.file(index), raw, hi - first)
            return (None, why) if rows is None else (rows[lo - first :], "")
        arr = self._array(name)  # opened lazily: a plain local array read through zarr only when told to
        if self._known_missing(arr, name, index):
            return None, "missing"  # the writer writes a file for every chunk, even an all-zero one
        try:
            data = np.asarray(arr[lo:hi])
        except FileNotFoundError:  # a remote store's missing chunk (store.location.RemoteLocation)
            return None, "missing"
        except Exception as exc:  # a truncated or overlong chunk file fails to decode
            return None, self._unreadable(arr, name, index, exc)
        if data.shape[0] != hi - lo:
            return None, f"short ({data.shape[0]} of {hi - lo} rows)"
        return data, ""

    def _unreadable(self, arr: Any, name: str, index: int, exc: Exception) -> str:
        """Why a chunk does not decode: a file of the wrong size (truncated, overlong), or what zarr says."""
        want = int(np.prod(arr.chunks)) * arr.dtype.itemsize
        if self._root is not None:  # the file under the array's own chunk key encoding
            try:
                size: int | None = array_chunk_file(arr, self._root, name, index).stat().st_size
            except OSError:
                size = None
        else:
            size = self.location.chunk_size(name, index)
        if size is not None and size != want:
            return size_problem(size, want)
        return f"unreadable ({type(exc).__name__}: {_brief(exc)})"

    def _known_missing(self, arr: Any, name: str, index: int) -> bool:
        """No file for chunk `index` of `name` (a local folder: by its own chunk key encoding; a remote store
        answers False and lets the read fail instead, see StoreLocation.known_missing)."""
        if self._root is not None:
            return not array_chunk_file(arr, self._root, name, index).is_file()
        return self.location.known_missing(name, index)

    def _retry(self, name: str, index: int, lo: int, hi: int, why: str) -> tuple[np.ndarray | None, str]:
        """After a mismatch: re-read the manifest; rows replaced since we opened -> StoreChangedError."""
        mine = self.manifest
        data: np.ndarray | None = None
        for delay in RETRY_DELAYS:
            if delay:
                time.sleep(delay)
            try:
                fresh = self.location.read_manifest()
            except GradManifoldError:
                fresh = mine  # judge by our own commit
            # replaced_from counts main rows; any replacement of another table's rows changed it
            replaced = fresh.generation > mine.generation + 1 or (
                fresh.generation == mine.generation + 1
                and (fresh.replaced_from < hi or ARRAY_BY_NAME[name].table != ROWS)
            )
            if replaced:
                raise StoreChangedError(
                    f"{self.path}: rows from {fresh.replaced_from} on were replaced while this reader held "
                    f"them (the writer rewound or the store was repaired: generation {mine.generation} -> "
                    f"{fresh.generation}); open the store again to read the current rows"
                )
            # Same rows as our commit: read again (an unusual file system may show a rename late).
            want = mine.table(ARRAY_BY_NAME[name].table).checksums[name][index]
            data, why = self._read_checked(name, index, lo, hi, want)
            if not why:
                return data, ""
        return data, why

    def _steps_of(self, index: int, table: str = ROWS) -> tuple[int, int] | None:
        """First and last step of chunk `index` of `table`, from its (verified) step array; None if
        unknowable."""
        t = self.manifest.table(table)
        key = TABLE_BY_NAME[table].step
        c = t.chunk_rows
        lo, hi = index * c, min((index + 1) * c, t.n_rows)
        if table == ROWS and self._steps is not None and hi <= len(self._steps):
            return int(self._steps[lo]), int(self._steps[hi - 1])
        try:
            data, why = self._read_checked(key, index, lo, hi, t.checksums[key][index])
        except CorruptStoreError:
            return None
        if why or data is None:
            return None
        return int(data[0]), int(data[-1])

    def _corrupt(self, index: int, name: str, why: str) -> ChunkDamagedError:
        table = ARRAY_BY_NAME[name].table
        t = self.manifest.table(table)
        c = t.chunk_rows
        lo, hi = index * c, min((index + 1) * c, t.n_rows)
        se = self._steps_of(index, table)
        steps = f", steps {se[0]}..{se[1]}" if se else ", steps unknown: its step chunk is damaged too"
        fix = "run `gradmanifold verify` to list every bad chunk" + (
            " (a store at a URL is read-only: repair a local copy)"
            if self.location.remote
            else ", `gradmanifold repair` to drop a damaged tail"
        )
        return ChunkDamagedError(
            f"{self.path}: chunk {index} of '{name}' (rows {lo}..{hi - 1}{steps}) is damaged ({why}); {fix}",
            chunk=index,
            array=name,
            rows=(lo, hi),
            steps=se,
            reason=why,
        )

    def _iter_raw(
        self,
        start: int,
        stop: int,
        names: Sequence[str],
        excluded: list[ExcludedChunk] | None = None,
    ) -> Iterator[Chunk]:
        c = self.chunk_rows
        indices = range(start // c, -(-stop // c))
        for index, fetched in zip(indices, self._read_ahead(indices, names), strict=True):
            try:
                data = fetched()
            except ChunkDamagedError as exc:
                if excluded is None:
                    raise
                se = exc.steps
                lo = index * c
                excluded.append(
                    ExcludedChunk(
                        index=index,
                        row_start=max(start, lo),
                        row_stop=min(stop, lo + c),
                        first_step=None if se is None else se[0],
                        last_step=None if se is None else se[1],
                        reason=f"{exc.array!r} {exc.reason}",
                    )
                )
                continue
            lo = index * c
            a, b = max(start, lo) - lo, min(stop, lo + c) - lo
            n = b - a
            empty = np.zeros((n, len(self.manifest.groups)), np.uint8)
            yield Chunk(
                row0=lo + a,
                step=data["step"][a:b] if "step" in data else np.zeros(n, np.int64),
                proj=data["proj"][a:b] if "proj" in data else np.zeros((n, 0, self.k), np.float32),
                sqnorm=data["sqnorm"][a:b] if "sqnorm" in data else empty.astype(np.float64),
                flags=data["flags"][a:b] if "flags" in data else empty,
                loss=data["loss"][a:b] if "loss" in data else None,
                lr=data["lr"][a:b] if "lr" in data else None,
                update=data["update"][a:b] if "update" in data else None,
                update_sqnorm=data["update_sqnorm"][a:b] if "update_sqnorm" in data else None,
            )

    def _read_ahead(
        self, indices: range, names: Sequence[str]
    ) -> Iterator[Callable[[], dict[str, np.ndarray]]]:
        """For each chunk index, a call that returns its verified rows (read_chunk) or raises.

        Chunks are read and checked ahead of the consumer on worker threads, so that reading overlaps what
        the consumer does with the chunk in hand: a local store up to LOCAL_READ_AHEAD chunks on one thread
        (its reads are system calls that release the GIL), a remote one up to REMOTE_READ_AHEAD on as many
        threads, so that the round trips of its requests overlap (docs/REMOTE.md). When the consumer stops
        (or fails), no thread is left behind (store.readahead).
        """
        remote = self.location.remote
        depth = REMOTE_READ_AHEAD if remote else LOCAL_READ_AHEAD
        if depth < 1 or len(indices) < 2:
            for index in indices:
                yield functools.partial(self.read_chunk, index, names)
            return
        threads = depth if remote else 1
        with closing(run_ahead(indices, lambda i: self.read_chunk(i, names), depth, threads)) as chunks:
            for _, done in chunks:
                yield done.result


def _brief(exc: BaseException) -> str:
    return one_line(str(exc))
