"""Full check of a store: manifest, array metadata, every committed chunk, steps, flags, leftovers.

`verify_store(path)` returns a VerifyReport (plain data); `gradmanifold verify` renders it. Problems are
damage (the CLI exits 3); notes are harmless leftovers (temp files, uncommitted chunk files, a stale lock)
that `gradmanifold repair` cleans up.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gradmanifold.errors import one_line
from gradmanifold.store.chunk import FLAG_NONFINITE, FLAG_SKIPPED
from gradmanifold.store.layout import (
    ARRAY_BY_NAME,
    ROWS,
    TABLE_BY_NAME,
    array_issues,
    leftover_temp_files,
    open_arrays,
    open_group,
)
from gradmanifold.store.location import LocalLocation
from gradmanifold.store.lock import read_holder
from gradmanifold.store.manifest import Manifest
from gradmanifold.store.plainmeta import plain_group, read_plain
from gradmanifold.store.reader import ChunkDamagedError, StoreReader

if TYPE_CHECKING:
    from zarr.abc.store import Store

KNOWN_FLAGS = int(FLAG_NONFINITE | FLAG_SKIPPED)


@dataclass(frozen=True)
class Problem:
    """One piece of damage. `chunk` is None for damage that is not one chunk's (array metadata)."""

    message: str
    array: str | None = None
    chunk: int | None = None
    rows: tuple[int, int] | None = None  # [start, stop)
    steps: tuple[int, int] | None = None  # first, last

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "array": self.array,
            "chunk": self.chunk,
            "rows": None if self.rows is None else list(self.rows),
            "steps": None if self.steps is None else list(self.steps),
        }


@dataclass(frozen=True)
class VerifyReport:
    """What `verify_store` found. `ok` is True when there is no damage (notes may remain)."""

    path: str
    n_rows: int
    chunk_rows: int
    n_chunks: int
    first_step: int | None
    last_step: int | None
    groups: tuple[str, ...]
    nonfinite_rows: tuple[int, ...]  # per group: rows flagged non-finite
    skipped_rows: tuple[int, ...]  # per group: rows flagged skipped
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    damaged_metadata: tuple[str, ...] = ()  # arrays (or "." for the group) whose zarr.json is unusable
    uncommitted_files: tuple[str, ...] = field(default=(), repr=False)  # chunk files past the commit
    temp_files: tuple[str, ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_chunks(self) -> tuple[int, ...]:
        """Committed chunks of the main rows with any damage, in order."""
        return self.bad_chunks_of(ROWS)

    def bad_chunks_of(self, table: str) -> tuple[int, ...]:
        """Committed chunks of `table` with any damage, in order."""
        return tuple(
            sorted(
                {
                    p.chunk
                    for p in self.problems
                    if p.chunk is not None and p.array is not None and ARRAY_BY_NAME[p.array].table == table
                }
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "n_rows": self.n_rows,
            "chunk_rows": self.chunk_rows,
            "n_chunks": self.n_chunks,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "groups": [
                {"name": n, "nonfinite_rows": f, "skipped_rows": s}
                for n, f, s in zip(self.groups, self.nonfinite_rows, self.skipped_rows, strict=True)
            ],
            "bad_chunks": list(self.bad_chunks),
            "problems": [p.to_dict() for p in self.problems],
            "damaged_metadata": list(self.damaged_metadata),
            "notes": list(self.notes),
        }


def verify_store(path: str | os.PathLike[str]) -> VerifyReport:
    """Check everything a reader relies on; raises only when the manifest itself is unusable.

    path: a store folder or URL. Manifest damage raises CorruptStoreError; a missing path, a non-store or a
    newer schema raise the errors of open_store. Everything else is collected into the report. A store at a
    URL is never listed: only what the manifest names is checked (no temp files, uncommitted chunk files or
    lock are looked for).
    """
    reader = StoreReader(path)
    m = reader.manifest
    loc = reader.location
    root = loc.root if isinstance(loc, LocalLocation) else None
    problems: list[Problem] = []
    damaged_meta = _check_metadata(loc.zarr_root(), m, problems)
    g = len(m.groups)
    nonfinite = np.zeros(g, np.int64)
    skipped = np.zeros(g, np.int64)
    first: int | None = None
    for table in m.table_names:
        good = _check_table(reader, table, damaged_meta, problems)
        if table != ROWS:
            continue
        for i, chunk in enumerate(good):
            flags = chunk.get("flags")
            if flags is not None:
                nonfinite += ((flags & FLAG_NONFINITE) != 0).sum(axis=0)
                skipped += ((flags & FLAG_SKIPPED) != 0).sum(axis=0)
            if i == 0 and chunk.get("step") is not None:
                first = int(chunk["step"][0])
    temp = [] if root is None else [str(p.relative_to(root)) for p in leftover_temp_files(root)]
    uncommitted = [] if root is None else [str(p.relative_to(root)) for p in uncommitted_chunk_files(root, m)]
    notes = _notes(root, m, temp, uncommitted)
    return VerifyReport(
        path=str(reader.path),
        n_rows=m.n_rows,
        chunk_rows=m.chunk_rows,
        n_chunks=m.n_chunks,
        first_step=first,
        last_step=m.last_step,
        groups=tuple(gr.name for gr in m.groups),
        nonfinite_rows=tuple(int(x) for x in nonfinite),
        skipped_rows=tuple(int(x) for x in skipped),
        problems=tuple(problems),
        notes=tuple(notes),
        damaged_metadata=tuple(damaged_meta),
        uncommitted_files=tuple(uncommitted),
        temp_files=tuple(temp),
    )


def _check_table(
    reader: StoreReader, table: str, damaged_meta: list[str], problems: list[Problem]
) -> list[dict[str, np.ndarray]]:
    """Every committed chunk of one table: checksums, values the writer never writes, step order.

    Returns the sound arrays of each chunk (in chunk order) for the counts the report gives.
    """
    root, m = reader.path, reader.manifest
    t = m.table(table)
    key = TABLE_BY_NAME[table].step
    c = t.chunk_rows
    out: list[dict[str, np.ndarray]] = []
    prev: int | None = None
    for i in range(t.n_chunks):
        lo, hi = i * c, min((i + 1) * c, t.n_rows)
        good: dict[str, np.ndarray] = {}
        for name in t.arrays:
            if name in damaged_meta:
                continue
            try:
                good[name] = reader.read_chunk(i, (name,))[name]
            except ChunkDamagedError as exc:
                problems.append(_chunk_problem(root, name, i, lo, hi, exc.steps, exc.reason))
        out.append(good)
        step = good.get(key)
        se = (int(step[0]), int(step[-1])) if step is not None else None

        found: list[tuple[str, str]] = []  # (array, why)
        if step is not None and np.any(np.diff(step) <= 0):
            found.append((key, "its steps are not strictly increasing"))
        if step is not None and prev is not None and int(step[0]) <= prev:
            found.append((key, f"starts at or before step {prev}, where the chunk before ends"))
        if step is not None and i == t.n_chunks - 1 and int(step[-1]) != t.last_step:
            found.append((key, f"ends at a step other than the manifest's last_step {t.last_step}"))
        prev = None if step is None else int(step[-1])
        flags = good.get("flags")
        if flags is not None and np.any(flags & ~np.uint8(KNOWN_FLAGS)):
            found.append(("flags", "holds unknown flag bits"))
        for name, data in good.items():
            if ARRAY_BY_NAME[name].finite and not np.isfinite(data).all():
                found.append((name, "holds NaN or Inf (never written so)"))
        problems += [_chunk_problem(root, name, i, lo, hi, se, why) for name, why in found]
    return out


_CHUNK_KEY = re.compile(r"^c/(\d+)(?:/0)*$")


def uncommitted_chunk_files(root: Path, m: Manifest, keep: dict[str, int] | None = None) -> list[Path]:
    """Chunk files at or past the first chunk of their table holding no committed row (or no row kept:
    `keep` maps a table to the rows it keeps)."""
    out = []
    for table in m.table_names:
        t = m.table(table)
        first_free = -(-(keep or {}).get(table, t.n_rows) // t.chunk_rows)
        out += _files_from(root, t.arrays, first_free)
    return sorted(out)


def _files_from(root: Path, names: tuple[str, ...], first_free: int) -> list[Path]:
    out = []
    for name in names:
        base = root / name / "c"
        if not base.is_dir():
            continue
        for p in base.rglob("*"):
            if not p.is_file() or p.name.endswith(".partial"):
                continue
            match = _CHUNK_KEY.match(p.relative_to(root / name).as_posix())
            if match and int(match.group(1)) >= first_free:
                out.append(p)
    return out


def _chunk_problem(
    root: Path | str, name: str, i: int, lo: int, hi: int, se: tuple[int, int] | None, why: str
) -> Problem:
    steps = f", steps {se[0]}..{se[1]}" if se else ", steps unknown"
    return Problem(f"chunk {i} of {name!r} (rows {lo}..{hi - 1}{steps}): {why}", name, i, (lo, hi), se)


def _check_metadata(root: Path | Store, m: Manifest, problems: list[Problem]) -> list[str]:
    """Check the group's and each array's metadata on its own (damage to one spares the others): dtype,
    chunk shape and that the shape covers the committed rows. A local store's plain zarr.json (the writer's
    layout) is read as JSON; any other, and a remote location's, is opened through zarr, naming any damage.
    """
    damaged: list[str] = []
    folder = root if isinstance(root, Path) else None
    try:
        if folder is None or not plain_group(folder / "zarr.json"):
            open_group(root)
    except Exception as exc:
        problems.append(Problem(f"the zarr group metadata (zarr.json) is unusable ({_brief(exc)})"))
        damaged.append(".")
    for name in (a for table in m.table_names for a in m.table(table).arrays):
        t = m.table(ARRAY_BY_NAME[name].table)
        # the writer's plain metadata is checked without zarr (0.2 s to import); anything else goes to zarr
        plain = None if folder is None else read_plain(folder / name / "zarr.json", ARRAY_BY_NAME[name].dtype)
        try:
            arr = plain if plain is not None else open_arrays(root, (name,), writable=False)[name]
        except Exception as exc:
            problems.append(Problem(f"array {name!r} cannot be opened ({_brief(exc)})", name))
            damaged.append(name)
            continue
        issues = array_issues(arr, name, t.dims, t.chunk_rows, t.n_rows)
        if issues:
            problems.append(Problem(f"array {name!r} disagrees with the manifest: {'; '.join(issues)}", name))
            damaged.append(name)
    return damaged


def _notes(root: Path | None, m: Manifest, temp: list[str], uncommitted: list[str]) -> list[str]:
    """Harmless findings; `root` is None for a store at a URL, whose folder and lock are not looked at."""
    if root is None:
        return [
            "a store at a URL: the committed chunks were checked; temp files, uncommitted chunk files and "
            "the writer lock were not looked for (that would list the folder)"
        ]
    notes = []
    if temp:
        notes.append(f"{len(temp)} temp file(s) left by an interrupted writer (repair removes them)")
    if uncommitted:
        notes.append(
            f"{len(uncommitted)} chunk file(s) past the committed rows, written but never committed "
            "(an interrupted writer; repair moves them to its backup)"
        )
    holder = read_holder(root)
    if holder is not None:
        if holder.is_stale:
            notes.append(f"stale writer lock from {holder.describe()} (repair --break-lock removes it)")
        else:
            notes.append(f"a writer is appending: {holder.describe()}; this report covers the commit it read")
    if any(s.status == "open" for s in m.segments) and holder is None:
        notes.append("the last writer did not close the store (killed?); its committed rows are all here")
    return notes


def _brief(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")
