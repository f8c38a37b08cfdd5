"""StoreReader: the committed rows of a store as a stream of chunks, each verified against its checksum."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradmanifold.errors import CorruptStoreError, NotAStoreError, StoreNotFoundError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store.chunk import FLAG_NONFINITE, FLAG_SKIPPED, Chunk
from gradmanifold.store.layout import checksum, chunk_file, open_arrays
from gradmanifold.store.lock import read_holder
from gradmanifold.store.manifest import MANIFEST_NAME, Manifest, read_manifest

BASE_ARRAYS = ("proj", "sqnorm", "step", "flags")


def open_store(path: str | os.PathLike[str]) -> StoreReader:
    """Open a store for reading; raises StoreNotFoundError, NotAStoreError, SchemaVersionError, CorruptStoreError."""
    return StoreReader(path)


class StoreReader:
    """Read-only view of the rows committed when the store was opened (a ChunkSource)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        root = Path(path)
        if not root.exists():
            raise StoreNotFoundError(f"{root} does not exist; record a run first (gradmanifold record)")
        if not root.is_dir() or not (root / MANIFEST_NAME).is_file():
            raise NotAStoreError(
                f"{root} is not a gradmanifold store (no {MANIFEST_NAME}); "
                "point at a folder written by gradmanifold record or Recorder"
            )
        self.path = root
        try:
            self.manifest: Manifest = read_manifest(root)
        except PermissionError as exc:
            raise StoreNotFoundError(f"{root}: cannot read the manifest ({exc.strerror})") from None
        self.spec = ProjectionSpec.from_dict(self.manifest.projection)
        self._arrays: dict[str, Any] | None = None
        self._steps: np.ndarray | None = None

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

    def steps(self) -> np.ndarray:
        """Training step of every committed row (int64 [n_steps]; 8 bytes a row)."""
        if self._steps is None:
            parts = [c.step for c in self._iter_raw(0, self.n_steps, names=("step",))]
            self._steps = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return self._steps

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
    ) -> Iterator[Chunk]:
        """Committed rows [row_start, row_stop) in storage chunks (at most chunk_rows rows each), verified."""
        stop = self.n_steps if row_stop is None else min(int(row_stop), self.n_steps)
        start = max(0, int(row_start))
        names = (*BASE_ARRAYS, *self.manifest.optional)
        sel = None if groups is None else np.asarray(list(groups), dtype=np.intp)
        for chunk in self._iter_raw(start, stop, names):
            if sel is not None:
                chunk = Chunk(
                    row0=chunk.row0,
                    step=chunk.step,
                    proj=chunk.proj[:, sel],
                    sqnorm=chunk.sqnorm[:, sel],
                    flags=chunk.flags[:, sel],
                    loss=chunk.loss,
                    lr=chunk.lr,
                )
            if chunk_rows is None or chunk.n <= chunk_rows:
                yield chunk
                continue
            for a in range(0, chunk.n, chunk_rows):
                b = min(a + chunk_rows, chunk.n)
                yield Chunk(
                    row0=chunk.row0 + a,
                    step=chunk.step[a:b],
                    proj=chunk.proj[a:b],
                    sqnorm=chunk.sqnorm[a:b],
                    flags=chunk.flags[a:b],
                    loss=None if chunk.loss is None else chunk.loss[a:b],
                    lr=None if chunk.lr is None else chunk.lr[a:b],
                )

    # ---------------------------------------------------------------- verification and info
    def read_chunk(self, index: int, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The committed rows of storage chunk `index`, verified against the manifest checksums."""
        c = self.chunk_rows
        lo, hi = index * c, min((index + 1) * c, self.n_steps)
        if not 0 <= lo < hi:
            raise IndexError(f"chunk {index} holds no committed rows")
        arrays = self._open()
        out: dict[str, np.ndarray] = {}
        for name in names or arrays:
            try:
                data = np.asarray(arrays[name][lo:hi])
            except Exception as exc:
                raise self._corrupt(index, name, f"unreadable ({type(exc).__name__}: {exc})") from None
            if checksum(data) != self.manifest.checksums[name][index]:
                why = "missing" if not chunk_file(self.path, name, index).exists() else "checksum mismatch"
                raise self._corrupt(index, name, why)
            out[name] = data
        return out

    def verify(self) -> list[CorruptStoreError]:
        """Check every committed chunk of every array; returns the problems found (empty when sound)."""
        problems = []
        for i in range(self.manifest.n_chunks):
            for name in (*BASE_ARRAYS, *self.manifest.optional):
                try:
                    self.read_chunk(i, (name,))
                except CorruptStoreError as exc:
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
        size = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        steps = self.steps()
        holder = read_holder(self.path)
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
            "chunk_rows": m.chunk_rows,
            "n_chunks": m.n_chunks,
            "size_bytes": size,
            "created": m.created,
            "versions": dict(m.versions),
            "segments": [s.to_dict() for s in m.segments],
            "writer": None if holder is None else {"host": holder.host, "pid": holder.pid, "since": holder.started},
        }

    # ---------------------------------------------------------------- internals
    def _open(self) -> dict[str, Any]:
        if self._arrays is None:
            try:
                self._arrays = open_arrays(self.path, (*BASE_ARRAYS, *self.manifest.optional), writable=False)
            except Exception as exc:
                raise CorruptStoreError(
                    f"{self.path}: the zarr arrays cannot be opened ({type(exc).__name__}: {exc})"
                ) from None
        return self._arrays

    def _corrupt(self, index: int, name: str, why: str) -> CorruptStoreError:
        c = self.chunk_rows
        lo, hi = index * c, min((index + 1) * c, self.n_steps) - 1
        steps = ""
        if self._steps is not None and hi < len(self._steps):
            steps = f", steps {int(self._steps[lo])}..{int(self._steps[hi])}"
        return CorruptStoreError(
            f"{self.path}: chunk {index} of '{name}' (rows {lo}..{hi}{steps}) is {why}; "
            "run `gradmanifold verify` to list every bad chunk"
        )

    def _iter_raw(self, start: int, stop: int, names: Sequence[str]) -> Iterator[Chunk]:
        c = self.chunk_rows
        for index in range(start // c, -(-stop // c)):
            data = self.read_chunk(index, names)
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
            )
