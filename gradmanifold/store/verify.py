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
from typing import Any

import numpy as np

from gradmanifold.store.chunk import FLAG_NONFINITE, FLAG_SKIPPED
from gradmanifold.store.layout import (
    array_issues,
    leftover_temp_files,
    open_arrays,
    open_group,
)
from gradmanifold.store.lock import read_holder
from gradmanifold.store.manifest import BASE_ARRAYS, Manifest
from gradmanifold.store.reader import ChunkDamagedError, StoreReader

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
        """Committed chunks with any damage, in order."""
        return tuple(sorted({p.chunk for p in self.problems if p.chunk is not None}))

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

    Manifest damage raises CorruptStoreError; a missing path, a non-store or a newer schema raise the
    errors of open_store. Everything else is collected into the report.
    """
    reader = StoreReader(path)
    m = reader.manifest
    root = reader.path
    names = (*BASE_ARRAYS, *m.optional)
    problems: list[Problem] = []
    damaged_meta = _check_metadata(root, m, names, problems)
    g = len(m.groups)
    nonfinite = np.zeros(g, np.int64)
    skipped = np.zeros(g, np.int64)
    steps: list[np.ndarray | None] = []
    c = m.chunk_rows
    for i in range(m.n_chunks):
        lo, hi = i * c, min((i + 1) * c, m.n_rows)
        good: dict[str, np.ndarray] = {}
        for name in names:
            if name in damaged_meta:
                continue
            try:
                good[name] = reader.read_chunk(i, (name,))[name]
            except ChunkDamagedError as exc:
                problems.append(_chunk_problem(root, name, i, lo, hi, exc.steps, exc.reason))
        step = good.get("step")
        steps.append(step)
        se = (int(step[0]), int(step[-1])) if step is not None else None
        if step is not None and np.any(np.diff(step) <= 0):
            problems.append(
                _chunk_problem(root, "step", i, lo, hi, se, "its steps are not strictly increasing")
            )
        flags = good.get("flags")
        if flags is not None:
            nonfinite += ((flags & FLAG_NONFINITE) != 0).sum(axis=0)
            skipped += ((flags & FLAG_SKIPPED) != 0).sum(axis=0)
            if np.any(flags & ~np.uint8(KNOWN_FLAGS)):
                problems.append(_chunk_problem(root, "flags", i, lo, hi, se, "holds unknown flag bits"))
        proj = good.get("proj")
        if proj is not None and not np.isfinite(proj).all():
            problems.append(
                _chunk_problem(root, "proj", i, lo, hi, se, "holds NaN or Inf (never written so)")
            )
    # Steps across chunk boundaries, and the manifest's last step.
    prev: int | None = None
    for i, step in enumerate(steps):
        if step is None:
            prev = None
            continue
        if prev is not None and int(step[0]) <= prev:
            lo, hi = i * c, min((i + 1) * c, m.n_rows)
            se = (int(step[0]), int(step[-1]))
            problems.append(
                _chunk_problem(
                    root,
                    "step",
                    i,
                    lo,
                    hi,
                    se,
                    f"starts at or before step {prev}, where the chunk before ends",
                )
            )
        prev = int(step[-1])
    if steps and steps[-1] is not None and int(steps[-1][-1]) != m.last_step:
        i = len(steps) - 1
        lo, hi = i * c, m.n_rows
        last = steps[-1]
        problems.append(
            _chunk_problem(
                root,
                "step",
                i,
                lo,
                hi,
                (int(last[0]), int(last[-1])),
                f"ends at a step other than the manifest's last_step {m.last_step}",
            )
        )
    first = int(steps[0][0]) if steps and steps[0] is not None else None
    temp = [str(p.relative_to(root)) for p in leftover_temp_files(root)]
    uncommitted = [str(p.relative_to(root)) for p in uncommitted_chunk_files(root, m, names)]
    notes = _notes(root, m, temp, uncommitted)
    return VerifyReport(
        path=str(root),
        n_rows=m.n_rows,
        chunk_rows=c,
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


_CHUNK_KEY = re.compile(r"^c/(\d+)(?:/0)*$")


def uncommitted_chunk_files(
    root: Path, m: Manifest, names: tuple[str, ...], keep_rows: int | None = None
) -> list[Path]:
    """Chunk files at or past the first chunk holding no committed row (rows past `keep_rows`)."""
    rows = m.n_rows if keep_rows is None else keep_rows
    first_free = -(-rows // m.chunk_rows)
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
    return sorted(out)


def _chunk_problem(
    root: Path, name: str, i: int, lo: int, hi: int, se: tuple[int, int] | None, why: str
) -> Problem:
    steps = f", steps {se[0]}..{se[1]}" if se else ", steps unknown"
    return Problem(f"chunk {i} of {name!r} (rows {lo}..{hi - 1}{steps}): {why}", name, i, (lo, hi), se)


def _check_metadata(root: Path, m: Manifest, names: tuple[str, ...], problems: list[Problem]) -> list[str]:
    """Open each array on its own; check dtype, chunk shape and that its shape covers the committed rows."""
    damaged: list[str] = []
    g, k, c = len(m.groups), m.k, m.chunk_rows
    try:
        open_group(root)
    except Exception as exc:
        problems.append(Problem(f"the zarr group metadata (zarr.json) is unusable ({_brief(exc)})"))
        damaged.append(".")
    for name in names:
        try:
            arr = open_arrays(root, (name,), writable=False)[name]
        except Exception as exc:
            problems.append(Problem(f"array {name!r} cannot be opened ({_brief(exc)})", name))
            damaged.append(name)
            continue
        issues = array_issues(arr, name, g, k, c, m.n_rows)
        if issues:
            problems.append(Problem(f"array {name!r} disagrees with the manifest: {'; '.join(issues)}", name))
            damaged.append(name)
    return damaged


def _notes(root: Path, m: Manifest, temp: list[str], uncommitted: list[str]) -> list[str]:
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
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 120 else text[:117] + "..."
