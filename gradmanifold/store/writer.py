"""StoreWriter: append rows, buffer them into whole chunks, commit by publishing the manifest.

Crash safety: chunk data is written first (zarr writes each chunk file to a temp name and renames it),
fsynced, and only then the manifest names the new rows. A killed writer leaves every committed row readable.
A rewind (a step at or below the last committed step) is applied at the next commit, so until then the store
keeps its old rows; that commit first publishes the store cut back to the rewind point (a new generation),
then overwrites the replaced rows, then publishes them: no published manifest names bytes being rewritten.
Format and protocol: docs/FORMAT.md; guarantees and the tests behind them: docs/RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import sys
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np

from gradmanifold._version import __version__
from gradmanifold.errors import (
    CorruptStoreError,
    InputError,
    NotAStoreError,
    StoreExistsError,
    StoreNotFoundError,
    StoreWriteError,
)
from gradmanifold.projection import ProjectionSpec, fingerprint
from gradmanifold.store.chunk import FLAG_NONFINITE
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
    MAX_CHUNK_ROWS,
    OPTIONAL_ROWS,
    GroupInfo,
    Manifest,
    Segment,
    probe,
    publish_manifest,
    read_manifest,
)
from gradmanifold.store.resume import check_spec, load_committed_steps, read_committed_chunk

Resume = Literal["allow", "must", "never"]
BASE_ARRAYS = ("proj", "sqnorm", "step", "flags")
RESERVED_SCOPE = "model"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _size(n: int) -> str:
    """Bytes for messages: exact, with a readable unit beside."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n} bytes, {n / scale:.1f} {unit}"
    return f"{n} bytes"


def _missing_parents(path: Path) -> list[Path]:
    """The folders from `path` up that do not exist yet, deepest first."""
    out = []
    p = path.absolute()
    while not os.path.lexists(p) and p != p.parent:
        out.append(p)
        p = p.parent
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"gradmanifold": __version__, "python": sys.version.split()[0]}
    for dist in ("numpy", "zarr", "numba", "torch"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
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
        state = probe(self.root)
        exists = state.has_manifest
        if exists and resume == "never":
            raise StoreExistsError(f"{self.root} already holds a store and resume='never'; choose a new path")
        if not exists:
            if resume == "must":
                raise StoreNotFoundError(f"{self.root} holds no store to resume (resume='must')")
            # A folder with a lock is a store being created (or whose creation was killed): the lock decides.
            if state.exists and (not state.is_dir or (not state.empty and not state.has_lock)):
                raise NotAStoreError(
                    f"{self.root} exists and is not a gradmanifold store; choose a new or empty folder"
                )
        # Folders this writer creates; removed again when opening fails, so a failed open leaves no trace.
        self._made = _missing_parents(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._undo_create(created=False)
            raise StoreWriteError(
                f"cannot create {self.root}: {exc.strerror or exc}; choose a writable location"
            ) from None
        try:
            self._lock = WriterLock(self.root, break_stale=break_lock)
        except OSError as exc:
            self._undo_create(created=False)
            raise StoreWriteError(
                f"cannot lock {self.root}: {exc.strerror or exc} ({exc.filename or self.root}); "
                "a store is written in place, so its folder must be writable"
            ) from None
        except BaseException:
            self._undo_create(created=False)
            raise
        try:
            self._open(spec, group_infos, exists, tuple(optional), chunk_rows)
        except BaseException:
            self._lock.release()
            self._undo_create(created=not exists)
            raise

    def _open(
        self,
        spec: ProjectionSpec,
        group_infos: tuple[GroupInfo, ...],
        exists: bool,
        optional: tuple[str, ...],
        chunk_rows: int | None,
    ) -> None:
        if exists:
            self._manifest = self._reopen(spec, group_infos)
        else:
            self._manifest = self._create(spec, group_infos, optional, chunk_rows)
        m = self._manifest
        self.spec = spec
        self.n_groups = len(m.groups)
        self.k = m.k
        self.chunk_rows = m.chunk_rows
        self.optional = m.optional
        try:
            self._arrays = open_arrays(self.root, (*BASE_ARRAYS, *m.optional), writable=True)
        except OSError as exc:
            raise StoreWriteError(f"cannot open the arrays of {self.root}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise CorruptStoreError(
                f"{self.root}: the zarr arrays cannot be opened ({type(exc).__name__}: {exc}); "
                "run `gradmanifold verify` on the store"
            ) from None
        self._steps = self._load_steps(m.n_rows)
        # Buffer of rows from row `_base` on: the committed prefix of the base chunk, then new rows.
        self._base = 0
        self._buf: dict[str, list[np.ndarray]] = {}
        self._load_tail(m.n_rows)
        self._dirty = False
        self._closed = False
        # Lowest committed row a rewind replaced since the last commit (None: no committed row replaced).
        self._replace_from: int | None = None
        self._segment = Segment(
            host=socket.gethostname(), pid=os.getpid(), started=_now(), first_row=m.n_rows
        )
        self._segment_index = len(m.segments)
        self._commit_manifest()

    def _undo_create(self, created: bool) -> None:
        """After a failed open: remove what this writer created (a new store's files, new folders)."""
        if created and self.root.is_dir():
            for child in list(self.root.iterdir()):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        for d in self._made:  # deepest first; only folders that are empty again
            with contextlib.suppress(OSError):
                d.rmdir()

    # ---------------------------------------------------------------- open / create
    def _create(
        self,
        spec: ProjectionSpec,
        groups: tuple[GroupInfo, ...],
        optional: tuple[str, ...],
        chunk_rows: int | None,
    ) -> Manifest:
        rows = default_chunk_rows(len(groups), spec.k) if chunk_rows is None else int(chunk_rows)
        if not 1 <= rows <= MAX_CHUNK_ROWS:
            raise InputError(f"chunk_rows must be between 1 and {MAX_CHUNK_ROWS}, not {rows}")
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
        check_spec(self.root, m, spec, groups)
        removed = remove_partials(self.root)
        segments = tuple(s.with_(status="interrupted") if s.status == "open" else s for s in m.segments)
        if removed:
            warnings.warn(
                f"{self.root}: removed {removed} temp files left by an interrupted writer", stacklevel=3
            )
        return m.with_(segments=segments)

    def _committed_chunk(self, index: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        return read_committed_chunk(self.root, self._arrays, self._manifest, index, names)

    def _load_steps(self, n_rows: int) -> np.ndarray:
        return load_committed_steps(self.root, self._arrays, self._manifest)

    def _load_tail(self, row: int) -> None:
        """Make `row` the end of the buffer: load the committed prefix of its chunk into the buffer."""
        base = (row // self.chunk_rows) * self.chunk_rows
        self._base = base
        self._buf = {name: [] for name in self._arrays}
        if row > base:
            data = self._committed_chunk(base // self.chunk_rows, tuple(self._arrays))
            for name in self._arrays:
                self._buf[name] = list(data[name][: row - base])

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
        fl = np.zeros(g, np.uint8) if flags is None else np.asarray(flags, np.uint8).reshape(g).copy()
        # The store never holds a non-finite projection: a row that is (or overflows float32 to) NaN/Inf is
        # flagged non-finite and stored as zeros, whoever the caller is.
        with np.errstate(over="ignore", invalid="ignore"):
            p32 = proj.astype(np.float32)
        bad = ~np.isfinite(p32).all(axis=1) | ~np.isfinite(sqnorm)
        if bad.any():
            p32 = np.where(bad[:, None], np.float32(0), p32)
            fl = fl | np.where(bad, FLAG_NONFINITE, np.uint8(0)).astype(np.uint8)
        last = self.last_step
        if last is not None and step <= last:
            self._rewind(step)
        row: dict[str, np.ndarray] = {
            "proj": p32,
            "sqnorm": sqnorm,
            "step": np.asarray(step, np.int64),
            "flags": fl,
            "loss": np.asarray(np.nan if loss is None else loss, np.float64),
            "lr": np.asarray(np.nan if lr is None else lr, np.float64),
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
        if self._replace_from is not None and self._replace_from < self._manifest.n_rows:
            # A rewind replaces committed rows: first commit the store truncated to the rewind point, so
            # that no published manifest ever names rows whose bytes are being overwritten.
            self._commit_truncated(self._replace_from)
        self._commit_manifest(self._write_buffer())
        self._dirty = False
        self._replace_from = None
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
        except BaseException:
            # Say in the manifest that this writer failed, if the disk still takes a small write.
            self._segment = self._segment.with_(status="failed", ended=_now())
            with contextlib.suppress(Exception):
                self._commit_manifest()
            raise
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
        if keep < self._manifest.n_rows:
            self._replace_from = keep if self._replace_from is None else min(self._replace_from, keep)
        self._dirty = True

    def _commit_truncated(self, keep: int) -> None:
        """Publish the store cut back to its first `keep` rows (a new generation) before rows are replaced."""
        m, c = self._manifest, self.chunk_rows
        n_full, rem = divmod(keep, c)
        sums = {name: tuple(v[:n_full]) for name, v in m.checksums.items()}
        if rem:
            # The cut chunk's kept rows are in the buffer (the buffer starts at a chunk boundary <= keep).
            a = n_full * c - self._base
            for name, rows in self._buf.items():
                sums[name] = (*sums[name], checksum(np.stack(rows[a : a + rem])))
        self._commit_manifest(
            m.with_(
                n_rows=keep,
                last_step=int(self._steps[keep - 1]) if keep else None,
                checksums=sums,
                generation=m.generation + 1,
                replaced_from=keep,
            )
        )

    def _write_buffer(self) -> Manifest:
        """Write the buffer's chunks (data only); returns the manifest that commits them."""
        n_buf = len(self._buf["step"])
        lo, hi = self._base, self._base + n_buf
        g, k, c = self.n_groups, self.k, self.chunk_rows
        capacity = -(-hi // c) * c
        data: dict[str, np.ndarray | None] = {
            name: np.stack(rows) if rows else None for name, rows in self._buf.items()
        }
        touched: list[Path] = []
        n_chunks = -(-hi // c) - lo // c
        need = n_chunks * sum(
            c
            * np.dtype(ARRAY_BY_NAME[name].dtype).itemsize
            * (g * k if name == "proj" else g if ARRAY_BY_NAME[name].per_group else 1)
            for name in self._arrays
        )
        try:
            for name, arr in self._arrays.items():
                if arr.shape[0] < capacity:
                    arr.resize(array_shape(name, capacity, g, k))
                    touched.append(self.root / name / "zarr.json")
                block = data[name]
                if block is not None:
                    arr[lo:hi] = block
                touched += [chunk_file(self.root, name, i) for i in range(lo // c, -(-hi // c))]
            if self._fsync:
                fsync_files(touched, self.root)
        except OSError as exc:
            what = f"writing rows {lo}..{hi - 1} ({n_chunks} chunk(s) per array)"
            raise self._write_error(exc, what, need) from None
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
        new_steps = np.zeros(0, np.int64) if steps is None else steps.astype(np.int64)
        self._steps = np.concatenate([self._steps[:lo], new_steps])
        last = int(self._steps[-1]) if hi else None
        return self._manifest.with_(n_rows=hi, last_step=last, checksums=sums)

    def _write_error(self, exc: OSError, what: str, need: int) -> StoreWriteError:
        """What happened (file, bytes), why (the OS error), what is safe, and how to go on."""
        m = self._manifest
        # Name the file being written (not the temp name zarr and the manifest write it under first).
        target = re.sub(r"\.[0-9a-f]{32}\.partial$", "", str(exc.filename)) if exc.filename else ""
        where = f" at {target}" if target else ""
        kept = f"{m.n_rows} rows up to step {m.last_step}" if m.n_rows else "no rows yet"
        hint = {
            errno.ENOSPC: "free space on that disk",
            errno.EDQUOT: "free space within your disk quota",
            errno.EFBIG: "raise the file size limit (ulimit -f)",
            errno.EROFS: "record to a writable location",
            errno.EACCES: "make the store writable",
            errno.EPERM: "make the store writable",
        }.get(exc.errno or 0, "fix the cause")
        return StoreWriteError(
            f"{what} to {self.root} failed{where}: {exc.strerror or exc} (needs about {_size(need)}); "
            f"the store keeps every committed row ({kept}); {hint}, then flush again or resume the run "
            "(rows not yet committed are lost if the program stops now)"
        )

    def _commit_manifest(self, new: Manifest | None = None) -> None:
        """Publish `new` (default: the current manifest) with this writer's segment; on success it is current.

        On failure the manifest published before stays current (on disk and here), so a later flush retries.
        """
        m = self._manifest if new is None else new
        segs = list(m.segments)
        if self._segment_index < len(segs):
            segs[self._segment_index] = self._segment
        else:
            segs.append(self._segment)
        m = m.with_(segments=tuple(segs))
        try:
            publish_manifest(self.root, m, fsync=self._fsync)
        except OSError as exc:
            raise self._write_error(exc, "publishing the manifest", len(json.dumps(m.to_dict()))) from None
        self._manifest = m

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
