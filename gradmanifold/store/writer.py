"""StoreWriter: append rows, buffer them into whole chunks, commit by publishing the manifest.

Crash safety: chunk data is written first (each chunk file to a temp name, then renamed over the old one),
fsynced, and only then the manifest names the new rows. A killed writer leaves every committed row readable.
A rewind (a step at or below the last committed step) is applied at the next commit, so until then the store
keeps its old rows; that commit first publishes the store cut back to the rewind point (a new generation),
then overwrites the replaced rows, then publishes them: no published manifest names bytes being rewritten.
Format and protocol: docs/FORMAT.md; guarantees and the tests behind them: docs/RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from gradmanifold.errors import (
    CorruptStoreError,
    InputError,
    NotAStoreError,
    SpecMismatchError,
    StoreExistsError,
    StoreNotFoundError,
    StoreWriteError,
)
from gradmanifold.projection import ProjectionSpec, fingerprint
from gradmanifold.store.chunk import FLAG_NONFINITE
from gradmanifold.store.commit import BackgroundCommits, with_segment
from gradmanifold.store.layout import (
    ARRAY_BY_NAME,
    ROWS,
    STORE_ATTRS,
    TABLE_BY_NAME,
    array_shape,
    create_arrays,
    default_chunk_rows,
    fsync_files,
    remove_partials,
    row_bytes,
)
from gradmanifold.store.location import require_local
from gradmanifold.store.lock import WriterLock
from gradmanifold.store.manifest import (
    MAX_CHUNK_ROWS,
    UPDATE_NORMS,
    GroupInfo,
    Manifest,
    Segment,
    TableState,
    probe,
    publish_manifest,
    read_manifest,
)
from gradmanifold.store.resume import check_spec, check_table, load_committed_steps
from gradmanifold.store.support import missing_parents, now, update_row, versions, write_error
from gradmanifold.store.tables import TableBuffer, open_writable

Resume = Literal["allow", "must", "never"]
DEFAULT_OPTIONAL = ("loss", "lr")
RESERVED_SCOPE = "model"


class StoreWriter(BackgroundCommits):
    """The one writer of a store: appends rows (one per recorded step) and commits them."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        spec: ProjectionSpec,
        groups: Sequence[tuple[str, int]],
        *,
        resume: Resume = "allow",
        optional: Sequence[str] = DEFAULT_OPTIONAL,
        chunk_rows: int | None = None,
        break_lock: bool = False,
        fsync: bool = True,
        updates: str | None = None,
        commit_thread: bool = False,
    ) -> None:
        if resume not in ("allow", "must", "never"):
            raise InputError(f"resume must be 'allow', 'must' or 'never', not {resume!r}")
        self.root = require_local(path, "writing to a URL", "record to a local folder and copy it")
        self._fsync = fsync
        self._commit_thread = bool(commit_thread)  # full chunks are committed on a thread (store.commit)
        self._inflight = None
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
        bad_opt = [o for o in optional if o not in DEFAULT_OPTIONAL]
        if bad_opt:
            raise InputError(f"unknown optional rows {bad_opt}; choose from {list(DEFAULT_OPTIONAL)}")
        if updates is not None and updates not in UPDATE_NORMS:
            raise InputError(f"updates must be None or one of {list(UPDATE_NORMS)}, not {updates!r}")
        self._updates = updates
        if updates is not None:
            optional = (*optional, "update", "update_sqnorm")
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
        self._made = missing_parents(self.root)
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
        self._tables: dict[str, TableBuffer] = {}
        for name in m.table_names:
            self._open_table(name)
        self._dirty = False
        self._closed = False
        self._segment = Segment(host=socket.gethostname(), pid=os.getpid(), started=now(), first_row=m.n_rows)
        self._segment_index = len(m.segments)
        self._commit_manifest()

    def _open_table(self, name: str) -> TableBuffer:
        """Open a committed table's arrays, verify its committed steps, load its partial last chunk."""
        m = self._manifest
        state = m.table(name)
        try:
            arrays = open_writable(self.root, state.arrays, state.dims, state.chunk_rows)
        except OSError as exc:
            raise StoreWriteError(f"cannot open the arrays of {self.root}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise CorruptStoreError(
                f"{self.root}: the zarr arrays cannot be opened ({type(exc).__name__}: {exc}); "
                "run `gradmanifold verify` on the store"
            ) from None
        steps = load_committed_steps(self.root, arrays, m, name)
        t = self._tables[name] = TableBuffer(name, arrays, steps, state.chunk_rows)
        t.load_tail(self.root, m, state.n_rows)
        return t

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
        dims = {"groups": len(groups), "k": spec.k}
        rows = default_chunk_rows(row_bytes(ROWS, dims)) if chunk_rows is None else int(chunk_rows)
        if not 1 <= rows <= MAX_CHUNK_ROWS:
            raise InputError(f"chunk_rows must be between 1 and {MAX_CHUNK_ROWS}, not {rows}")
        remove_partials(self.root)
        base = TABLE_BY_NAME[ROWS].required
        try:
            top = self._made[-1].parent if self._made else None  # holds the name of the first folder made
            create_arrays(self.root, (*base, *optional), dims, rows, STORE_ATTRS, self._fsync, top)
        except OSError as exc:
            raise StoreWriteError(f"cannot create the store at {self.root}: {exc.strerror or exc}") from None
        return Manifest(
            projection=spec.to_dict(),
            fingerprint=fingerprint(spec),
            groups=groups,
            chunk_rows=rows,
            optional=optional,
            checksums={name: () for name in (*base, *optional)},
            updates=self._updates,
            created=now(),
            versions=versions(),
        )

    def _reopen(self, spec: ProjectionSpec, groups: tuple[GroupInfo, ...]) -> Manifest:
        m = read_manifest(self.root)
        check_spec(self.root, m, spec, groups)
        if m.updates != self._updates:
            have = "without parameter updates" if m.updates is None else f"with updates ({m.updates} norms)"
            want = "none" if self._updates is None else f"updates ({self._updates} norms)"
            raise SpecMismatchError(
                f"cannot append to {self.root}: it was recorded {have} and the writer asks for {want}; "
                "resume with the store's setting (--updates as before), or record to a new store"
            )
        removed = remove_partials(self.root)
        segments = tuple(s.with_(status="interrupted") if s.status == "open" else s for s in m.segments)
        if removed:
            warnings.warn(
                f"{self.root}: removed {removed} temp files left by an interrupted writer", stacklevel=3
            )
        return m.with_(segments=segments)

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
        return self._tables[ROWS].n_rows

    @property
    def last_step(self) -> int | None:
        """The last step appended (buffered or committed), None when empty."""
        return self._tables[ROWS].last_step

    def table_last_step(self, table: str) -> int | None:
        """The last step appended to `table` (None when it is empty or does not exist)."""
        t = self._tables.get(table)
        return None if t is None else t.last_step

    def append(
        self,
        step: int,
        proj: np.ndarray,
        sqnorm: np.ndarray,
        flags: np.ndarray | None = None,
        loss: float | None = None,
        lr: float | None = None,
        update: np.ndarray | None = None,
        update_sqnorm: np.ndarray | None = None,
    ) -> None:
        """Append one row; a step at or below the last one rewinds the store to before that step.

        update, update_sqnorm: the projected parameter update [G, k] and its squared norms [G] (stores with
        updates only; None stores NaN: unknown).
        """
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
        if proj.dtype == np.float32:  # the Recorder's rows: nothing can overflow
            p32 = proj.copy()
        else:
            with np.errstate(over="ignore", invalid="ignore"):
                p32 = proj.astype(np.float32)
        sqnorm = sqnorm.copy()
        if not (np.isfinite(p32).all() and np.isfinite(sqnorm).all()):
            bad = ~np.isfinite(p32).all(axis=1) | ~np.isfinite(sqnorm)
            p32 = np.where(bad[:, None], np.float32(0), p32)
            fl = fl | np.where(bad, FLAG_NONFINITE, np.uint8(0)).astype(np.uint8)
        if self._updates is None and (update is not None or update_sqnorm is not None):
            raise InputError(f"{self.root} records no parameter updates (open the writer with updates=...)")
        self.append_owned(step, p32, sqnorm, fl, loss, lr, update, update_sqnorm)

    def append_owned(
        self,
        step: int,
        p32: np.ndarray,
        sqnorm: np.ndarray,
        flags: np.ndarray,
        loss: float | None = None,
        lr: float | None = None,
        update: np.ndarray | None = None,
        update_sqnorm: np.ndarray | None = None,
    ) -> None:
        """append() of a row already in stored form, handed over (kept, not copied): p32 float32 [G, k] zero
        where non-finite, sqnorm float64 [G], flags uint8 [G] with FLAG_NONFINITE where p32 or sqnorm is not
        finite (kernels.segments.finish gives such rows); update, update_sqnorm: as append() takes them. The
        Recorder's path: ~5 us a row instead of ~25."""
        self._check_open()
        if self._inflight is not None and self._inflight.done:
            self._settle()  # a finished commit: apply it (or raise its error) now
        main = self._tables[ROWS]
        last = main.last_step
        if last is not None and step <= last:
            self._rewind(main, step)
            for t in self._tables.values():  # the other tables' rows from that step on are re-recorded too
                if t is not main and t.last_step is not None and step <= t.last_step:
                    self._rewind(t, step, quiet=True)
        row: dict[str, np.ndarray] = {
            "proj": p32,
            "sqnorm": sqnorm,
            "step": np.int64(step),  # type: ignore[dict-item]
            "flags": flags,
            "loss": np.float64(np.nan if loss is None else loss),  # type: ignore[dict-item]
            "lr": np.float64(np.nan if lr is None else lr),  # type: ignore[dict-item]
        }
        if self._updates is not None:
            row["update"] = update_row(update, p32.shape, np.float32, "update")
            row["update_sqnorm"] = update_row(update_sqnorm, sqnorm.shape, np.float64, "update_sqnorm")
        main.push(row)
        self._dirty = True
        seg = self._segment
        self._segment = seg.with_(
            rows=seg.rows + 1,
            first_step=step if seg.first_step is None else seg.first_step,
            last_step=step,
            nonfinite=seg.nonfinite + (1 if flags.any() and (flags & FLAG_NONFINITE).any() else 0),
        )
        if main.n_buffered >= main.chunk_rows:
            self._full(main)

    def add_table(
        self,
        name: str,
        dims: dict[str, int],
        meta: dict[str, Any] | None = None,
        chunk_rows: int | None = None,
    ) -> None:
        """Make sure the store holds table `name` with these sizes and meta (store.layout.TABLES).

        A new table is created empty and committed at once (chunk_rows: rows per chunk, default ~64 KiB of
        its widest array); an existing one (a resumed run) must match, else SpecMismatchError names the
        difference.
        """
        self._check_open()
        self._settle()
        spec = TABLE_BY_NAME.get(name)
        if spec is None or name == ROWS:
            raise InputError(f"unknown table {name!r}; the store declares {sorted(TABLE_BY_NAME)}")
        if set(dims) != set(spec.dims) or any(int(v) < 1 for v in dims.values()):
            raise InputError(f"table {name!r} needs the sizes {list(spec.dims)}, each >= 1; got {dims}")
        dims = {d: int(dims[d]) for d in spec.dims}
        meta = json.loads(json.dumps(meta or {}))  # plain JSON values, as a reader will see them
        if name in self._manifest.tables:
            check_table(self.root, name, self._manifest.tables[name], dims, meta)
            return
        rows = default_chunk_rows(row_bytes(name, dims), spec.target_chunk_bytes)
        rows = rows if chunk_rows is None else int(chunk_rows)
        if not 1 <= rows <= MAX_CHUNK_ROWS:
            raise InputError(f"chunk_rows must be between 1 and {MAX_CHUNK_ROWS}, not {rows}")
        try:
            create_arrays(self.root, spec.required, dims, rows, STORE_ATTRS, self._fsync)
        except OSError as exc:
            raise StoreWriteError(
                f"cannot add table {name!r} to {self.root}: {exc.strerror or exc}"
            ) from None
        state = TableState(
            chunk_rows=rows,
            dims=dims,
            arrays=spec.required,
            checksums={a: () for a in spec.required},
            meta=meta,
        )
        self._commit_manifest(self._manifest.with_table(name, state))
        self._open_table(name)

    def append_row(self, table: str, step: int, values: dict[str, Any]) -> None:
        """Append one row to a table other than the main rows (values: each of its arrays but the step).

        A step at or below the table's last one rewinds that table to before the step.
        """
        self._check_open()
        t = self._tables.get(table)
        if t is None or table == ROWS:
            raise InputError(f"the store holds no table {table!r} to append to (add_table first)")
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise InputError(f"step must be an integer, not {type(step).__name__}")
        dims = self._manifest.tables[table].dims
        row = {t.spec.step: np.asarray(int(step), np.int64)}
        for name in t.arrays:
            if name == t.spec.step:
                continue
            if name not in values:
                raise InputError(f"a row of table {table!r} needs {name!r}")
            want = array_shape(name, 1, dims)[1:]
            value = np.asarray(values[name], dtype=ARRAY_BY_NAME[name].dtype)
            if value.shape != want:
                raise InputError(f"{name!r} must have shape {want}, got {value.shape}")
            row[name] = value
        last = t.last_step
        if last is not None and step <= last:
            self._rewind(t, int(step))
        self._push(t, row)
        if t.n_buffered >= t.chunk_rows:
            self._full(t)

    def note_skipped(self) -> None:
        """Count a step that was seen but not recorded (non-finite gradient with nonfinite='skip')."""
        self._segment = self._segment.with_(skipped=self._segment.skipped + 1)

    def flush(self, wait: bool = True) -> None:
        """Write buffered rows as whole chunks and publish the manifest (the commit point).

        wait: False, on a writer opened with commit_thread=True, commits on the thread and returns at once
        (store.commit); the default waits for every commit, that one too.
        """
        self._check_open()
        if not wait and self._commit_thread:
            self._commit_later()
            return
        self._settle()
        if not self._dirty:
            return
        replaced = {
            t.name: t.replace_from
            for t in self._tables.values()
            if t.replace_from is not None and t.replace_from < self._manifest.table(t.name).n_rows
        }
        if replaced:
            # A rewind replaces committed rows: first commit the store truncated to the rewind point, so
            # that no published manifest ever names rows whose bytes are being overwritten.
            self._commit_truncated(replaced)
        self._commit_manifest(self._write_buffer())
        self._dirty = False
        for t in self._tables.values():
            t.trim(self._manifest.table(t.name).n_rows)

    def close(self, status: str = "closed") -> None:
        """Commit what is buffered, mark the writer segment `status`, release the lock."""
        if self._closed:
            return
        try:
            self._settle()
            if self._dirty:
                self.flush()
            self._segment = self._segment.with_(status=status, ended=now())
            self._commit_manifest()
        except BaseException:
            # Say in the manifest that this writer failed, if the disk still takes a small write.
            self._segment = self._segment.with_(status="failed", ended=now())
            with contextlib.suppress(Exception):
                self._commit_manifest()
            raise
        finally:
            self._closed = True
            self._lock.release()

    def abandon(self) -> None:
        """Release the lock without committing buffered rows (after a write error)."""
        self._drop_commit()
        if not self._closed:
            self._closed = True
            self._lock.release()

    # ---------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._closed:
            raise InputError(f"the writer of {self.root} is closed")

    def _push(self, t: TableBuffer, row: dict[str, np.ndarray]) -> None:
        t.push(row)
        self._dirty = True

    def _full(self, t: TableBuffer) -> None:
        """A chunk of t is full: commit it (on the commit thread when the writer has one)."""
        if self._commit_thread:
            self._chunk_filled(t)
        else:
            self.flush()

    def _rewind(self, t: TableBuffer, step: int, quiet: bool = False) -> None:
        """Drop table t's rows whose step is >= `step` (applied to the store at the next commit)."""
        self._settle()  # the cut reads the committed state
        dropped_from = t.last_step
        keep = t.cut(self.root, self._manifest, step)
        if not quiet:
            what = "" if t.name == ROWS else f"{t.name}: "
            warnings.warn(
                f"{self.root}: {what}step {step} is not after the last recorded step {dropped_from}; "
                f"rewinding: rows from step {step} on are replaced (a job resumed from a checkpoint)",
                stacklevel=4,
            )
        if t.name == ROWS:
            self._segment = self._segment.with_(
                rewinds=self._segment.rewinds + 1, first_row=min(self._segment.first_row, keep)
            )
        self._dirty = True

    def _commit_truncated(self, keeps: dict[str, int]) -> None:
        """Publish the store with each named table cut back to its first `keep` rows (a new generation)
        before rows are replaced."""
        m = self._manifest
        for name, keep in keeps.items():
            m = m.with_table(name, self._tables[name].truncated(m.table(name), keep))
        main = keeps.get(ROWS, m.n_rows)
        self._commit_manifest(m.with_(generation=m.generation + 1, replaced_from=min(main, m.n_rows)))

    def _write_buffer(self) -> Manifest:
        """Write every table's buffered chunks (data only); returns the manifest that commits them."""
        m = self._manifest
        for t in self._tables.values():
            if t.n_buffered or t.n_rows != m.table(t.name).n_rows:
                m = m.with_table(t.name, self._write_table(t, m.table(t.name)))
        return m

    def _write_table(self, t: TableBuffer, state: TableState) -> TableState:
        """Write table t's buffered chunks and fsync them; returns its state that commits them."""
        what, need = t.pending(state.dims)
        try:
            new, touched = t.write(self.root, state)
            if self._fsync:
                fsync_files(touched, self.root)
        except OSError as exc:
            raise self._write_error(exc, what, need) from None
        return new

    def _write_error(self, exc: OSError, what: str, need: int) -> StoreWriteError:
        return write_error(self.root, self._manifest, exc, what, need)

    def _commit_manifest(self, new: Manifest | None = None) -> None:
        """Publish `new` (default: the current manifest) with this writer's segment; on success it is current.

        On failure the manifest published before stays current (on disk and here), so a later flush retries.
        """
        m = with_segment(self._manifest if new is None else new, self._segment, self._segment_index)
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


__all__ = ["StoreWriter"]
