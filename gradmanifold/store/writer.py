"""StoreWriter: append rows, buffer them into whole chunks, commit by publishing the manifest.

Crash safety: chunk data is written first (zarr writes each chunk file to a temp name and renames it), fsynced,
and only then the manifest names the new rows. A killed writer leaves every committed row readable.
A rewind (a step at or below the last committed step) is applied at the next commit, so until then the store
keeps its old rows.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import zarr

from gradmanifold._version import __version__
from gradmanifold.errors import (
    InputError,
    NotAStoreError,
    SpecMismatchError,
    StepOrderError,
    StoreExistsError,
    StoreNotFoundError,
    StoreWriteError,
)
from gradmanifold.projection import ProjectionSpec, fingerprint
from gradmanifold.store.layout import (
    ARRAY_BY_NAME,
    array_shape,
    checksum,
    chunk_file,
    create_arrays,
    default_chunk_rows,
    fsync_files,
    open_arrays,
    remove_partials,
)
from gradmanifold.store.lock import WriterLock
from gradmanifold.store.manifest import (
    MANIFEST_NAME,
    OPTIONAL_ROWS,
    GroupInfo,
    Manifest,
    Segment,
    publish_manifest,
    read_manifest,
)

Resume = Literal["allow", "must", "never"]
BASE_ARRAYS = ("proj", "sqnorm", "step", "flags")
RESERVED_SCOPE = "model"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"gradmanifold": __version__, "python": sys.version.split()[0]}
    for dist in ("numpy", "zarr", "numba", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


class StoreWriter:
    """The one writer of a store: appends rows (one per recorded step) and commits them."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        spec: ProjectionSpec,
        groups: Sequence[tuple[str, int]],
        *,
        resume: Resume = "allow",
        optional: Sequence[str] = OPTIONAL_ROWS,
        chunk_rows: int | None = None,
        break_lock: bool = False,
        fsync: bool = True,
    ) -> None:
        if resume not in ("allow", "must", "never"):
            raise InputError(f"resume must be 'allow', 'must' or 'never', not {resume!r}")
        self.root = Path(path)
        self._fsync = fsync
        group_infos = tuple(GroupInfo(str(n), int(s)) for n, s in groups)
        if not group_infos:
            raise InputError("a store needs at least one group")
        names = [g.name for g in group_infos]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise InputError(f"group names must be unique; repeated: {', '.join(dup)}")
        if RESERVED_SCOPE in names:
            raise InputError(
                f"{RESERVED_SCOPE!r} is reserved for the whole-model sum of the groups; rename that group"
            )
        bad_opt = [o for o in optional if o not in OPTIONAL_ROWS]
        if bad_opt:
            raise InputError(f"unknown optional rows {bad_opt}; choose from {list(OPTIONAL_ROWS)}")
        exists = (self.root / MANIFEST_NAME).exists()
        if exists and resume == "never":
            raise StoreExistsError(f"{self.root} already holds a store and resume='never'; choose a new path")
        if not exists:
            if resume == "must":
                raise StoreNotFoundError(f"{self.root} holds no store to resume (resume='must')")
            if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
                raise NotAStoreError(
                    f"{self.root} exists and is not a gradmanifold store; choose a new or empty folder"
                )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreWriteError(f"cannot create {self.root}: {exc.strerror or exc}") from None
        try:
            self._lock = WriterLock(self.root, break_stale=break_lock)
        except PermissionError as exc:
            raise StoreWriteError(f"cannot lock {self.root}: {exc.strerror or exc}") from None
        try:
            if exists:
                self._manifest = self._reopen(spec, group_infos)
            else:
                self._manifest = self._create(spec, group_infos, tuple(optional), chunk_rows)
        except BaseException:
            self._lock.release()
            raise
        m = self._manifest
        self.spec = spec
        self.n_groups = len(m.groups)
        self.k = m.k
        self.chunk_rows = m.chunk_rows
        self.optional = m.optional
        self._arrays = open_arrays(self.root, (*BASE_ARRAYS, *m.optional), writable=True)
        self._steps = self._load_steps(m.n_rows)
        # Buffer of rows from row `_base` on: the committed prefix of the base chunk, then new rows.
        self._base = 0
        self._buf: dict[str, list[np.ndarray]] = {}
        self._load_tail(m.n_rows)
        self._dirty = False
        self._closed = False
        self._segment = Segment(
            host=socket.gethostname(), pid=os.getpid(), started=_now(), first_row=m.n_rows
        )
        self._segment_index = len(m.segments)
        self._commit_manifest()

    # ---------------------------------------------------------------- open / create
    def _create(
        self, spec: ProjectionSpec, groups: tuple[GroupInfo, ...], optional: tuple[str, ...], chunk_rows: int | None
    ) -> Manifest:
        rows = chunk_rows or default_chunk_rows(len(groups), spec.k)
        if rows < 1:
            raise InputError(f"chunk_rows must be >= 1, not {rows}")
        remove_partials(self.root)
        try:
            create_arrays(
                self.root,
                (*BASE_ARRAYS, *optional),
                len(groups),
                spec.k,
                rows,
                attrs={"gradmanifold": {"schema": "gradmanifold.store", "manifest": MANIFEST_NAME}},
            )
        except OSError as exc:
            raise StoreWriteError(f"cannot create the store at {self.root}: {exc.strerror or exc}") from None
        return Manifest(
            projection=spec.to_dict(),
            fingerprint=fingerprint(spec),
            groups=groups,
            chunk_rows=rows,
            optional=optional,
            checksums={name: () for name in (*BASE_ARRAYS, *optional)},
            created=_now(),
            versions=_versions(),
        )

    def _reopen(self, spec: ProjectionSpec, groups: tuple[GroupInfo, ...]) -> Manifest:
        m = read_manifest(self.root)
        problems = []
        for key, want in spec.to_dict().items():
            have = m.projection.get(key)
            if have != want:
                problems.append(f"projection {key}: store has {have!r}, writer asks {want!r}")
        if not problems and m.fingerprint != fingerprint(spec):
            problems.append(
                f"projection fingerprint: store has {m.fingerprint}, this gradmanifold computes "
                f"{fingerprint(spec)} (the projection code changed)"
            )
        have_names = [g.name for g in m.groups]
        want_names = [g.name for g in groups]
        if have_names != want_names:
            missing = [n for n in have_names if n not in want_names]
            extra = [n for n in want_names if n not in have_names]
            detail = []
            if missing:
                detail.append(f"missing {missing}")
            if extra:
                detail.append(f"new {extra}")
            if not detail:
                detail.append("same names in another order")
            problems.append(f"groups differ: {'; '.join(detail)}")
        else:
            for a, b in zip(m.groups, groups, strict=True):
                if a.size != b.size:
                    problems.append(f"group {a.name!r} size: store has {a.size}, writer has {b.size}")
        if problems:
            raise SpecMismatchError(f"cannot append to {self.root}: " + "; ".join(problems))
        removed = remove_partials(self.root)
        segments = tuple(s.with_(status="interrupted") if s.status == "open" else s for s in m.segments)
        if removed:
            warnings.warn(f"{self.root}: removed {removed} temp files left by an interrupted writer", stacklevel=3)
        return m.with_(segments=segments)

    def _load_steps(self, n_rows: int) -> np.ndarray:
        if n_rows == 0:
            return np.zeros(0, np.int64)
        return np.asarray(self._arrays["step"][:n_rows], dtype=np.int64)

    def _load_tail(self, row: int) -> None:
        """Make `row` the end of the buffer: load the committed prefix of its chunk into the buffer."""
        base = (row // self.chunk_rows) * self.chunk_rows
        self._base = base
        self._buf = {name: [] for name in self._arrays}
        if row > base:
            for name, arr in self._arrays.items():
                self._buf[name] = list(np.asarray(arr[base:row]))

    # ---------------------------------------------------------------- public API
    @property
    def manifest(self) -> Manifest:
        """The last published manifest."""
        return self._manifest

    @property
    def n_committed(self) -> int:
        return self._manifest.n_rows

    @property
    def n_rows(self) -> int:
        """Rows committed plus buffered."""
        return self._base + len(self._buf["step"])

    @property
    def last_step(self) -> int | None:
        """The last step appended (buffered or committed), None when empty."""
        if self._buf["step"]:
            return int(self._buf["step"][-1])
        n = self._base
        return int(self._steps[n - 1]) if n else None

    def append(
        self,
        step: int,
        proj: np.ndarray,
        sqnorm: np.ndarray,
        flags: np.ndarray | None = None,
        loss: float | None = None,
        lr: float | None = None,
    ) -> None:
        """Append one row; a step at or below the last one rewinds the store to before that step."""
        self._check_open()
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise InputError(f"step must be an integer, not {type(step).__name__}")
        step = int(step)
        g, k = self.n_groups, self.k
        proj = np.asarray(proj)
        if proj.shape != (g, k):
            raise InputError(f"proj must have shape ({g}, {k}) (groups, k), got {proj.shape}")
        sqnorm = np.asarray(sqnorm, dtype=np.float64).reshape(-1)
        if sqnorm.shape != (g,):
            raise InputError(f"sqnorm must have {g} entries (one per group), got {sqnorm.shape[0]}")
        fl = np.zeros(g, np.uint8) if flags is None else np.asarray(flags, np.uint8).reshape(g)
        last = self.last_step
        if last is not None and step <= last:
            self._rewind(step)
        row = {
            "proj": proj.astype(np.float32, copy=False),
            "sqnorm": sqnorm,
            "step": np.int64(step),
            "flags": fl,
            "loss": np.float64(np.nan if loss is None else loss),
            "lr": np.float64(np.nan if lr is None else lr),
        }
        for name, rows in self._buf.items():
            rows.append(row[name])
        self._dirty = True
        seg = self._segment
        self._segment = seg.with_(
            rows=seg.rows + 1,
            first_step=step if seg.first_step is None else seg.first_step,
            last_step=step,
            nonfinite=seg.nonfinite + int(bool((fl & 1).any())),
        )
        if len(self._buf["step"]) >= self.chunk_rows:
            self.flush()

    def note_skipped(self) -> None:
        """Count a step that was seen but not recorded (non-finite gradient with nonfinite='skip')."""
        self._segment = self._segment.with_(skipped=self._segment.skipped + 1)

    def flush(self) -> None:
        """Write buffered rows as whole chunks and publish the manifest (the commit point)."""
        self._check_open()
        if not self._dirty:
            return
        self._write_buffer()
        self._commit_manifest()
        self._dirty = False
        # Keep only the committed prefix of the last (partial) chunk in the buffer.
        n = self._manifest.n_rows
        base = (n // self.chunk_rows) * self.chunk_rows
        drop = base - self._base
        if drop:
            for rows in self._buf.values():
                del rows[:drop]
            self._base = base

    def close(self, status: str = "closed") -> None:
        """Commit what is buffered, mark the writer segment `status`, release the lock."""
        if self._closed:
            return
        try:
            if self._dirty:
                self.flush()
            self._segment = self._segment.with_(status=status, ended=_now())
            self._commit_manifest()
        finally:
            self._closed = True
            self._lock.release()

    def abandon(self) -> None:
        """Release the lock without committing buffered rows (after a write error)."""
        if not self._closed:
            self._closed = True
            self._lock.release()

    # ---------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._closed:
            raise InputError(f"the writer of {self.root} is closed")

    def _rewind(self, step: int) -> None:
        """Drop rows whose step is >= `step` (applied to the store at the next commit)."""
        dropped_from = self.last_step
        buffered = np.asarray(self._buf["step"], dtype=np.int64)
        all_steps = np.concatenate([self._steps[: self._base], buffered])
        keep = int(np.searchsorted(all_steps, step, side="left"))
        if keep >= self._base:
            for rows in self._buf.values():
                del rows[keep - self._base :]
        else:
            self._load_tail(keep)
        warnings.warn(
            f"{self.root}: step {step} is not after the last recorded step {dropped_from}; "
            f"rewinding: rows from step {step} on are replaced (a job resumed from a checkpoint)",
            stacklevel=4,
        )
        self._segment = self._segment.with_(
            rewinds=self._segment.rewinds + 1, first_row=min(self._segment.first_row, keep)
        )
        self._dirty = True

    def _write_buffer(self) -> None:
        n_buf = len(self._buf["step"])
        lo, hi = self._base, self._base + n_buf
        g, k, c = self.n_groups, self.k, self.chunk_rows
        capacity = -(-hi // c) * c
        data = {name: np.stack(rows) if rows else None for name, rows in self._buf.items()}
        touched: list[Path] = []
        try:
            with zarr.config.set({"array.write_empty_chunks": True}):
                for name, arr in self._arrays.items():
                    if arr.shape[0] < capacity:
                        arr.resize(array_shape(name, capacity, g, k))
                    if n_buf:
                        arr[lo:hi] = data[name]
                    touched += [chunk_file(self.root, name, i) for i in range(lo // c, -(-hi // c))]
            if self._fsync:
                fsync_files(touched)
        except OSError as exc:
            raise StoreWriteError(
                f"writing rows {lo}..{hi - 1} to {self.root} failed: {exc.strerror or exc} "
                f"(about {sum(d.nbytes for d in data.values() if d is not None)} bytes); "
                "the store keeps every row committed before"
            ) from None
        sums = dict(self._manifest.checksums)
        first_chunk = lo // c
        for name in self._arrays:
            kept = list(sums.get(name, ()))[:first_chunk]
            d = data[name]
            for i in range(first_chunk, -(-hi // c)):
                a, b = i * c - lo, min((i + 1) * c, hi) - lo
                assert d is not None
                kept.append(checksum(d[a:b]))
            sums[name] = tuple(kept)
        steps = data["step"]
        self._steps = np.concatenate([self._steps[:lo], steps if steps is not None else np.zeros(0, np.int64)])
        self._manifest = self._manifest.with_(
            n_rows=hi, last_step=int(self._steps[-1]) if hi else None, checksums=sums
        )

    def _commit_manifest(self) -> None:
        m = self._manifest
        segs = list(m.segments)
        if self._segment_index < len(segs):
            segs[self._segment_index] = self._segment
        else:
            segs.append(self._segment)
        self._manifest = m.with_(segments=tuple(segs))
        try:
            publish_manifest(self.root, self._manifest, fsync=self._fsync)
        except OSError as exc:
            raise StoreWriteError(
                f"publishing the manifest of {self.root} failed: {exc.strerror or exc}; "
                "the previous manifest (and every row it commits) is intact"
            ) from None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            try:
                self.close(status="failed")
            except Exception:
                self.abandon()


__all__ = ["ARRAY_BY_NAME", "StoreWriter"]
