"""Commits on a thread: the writer hands a full chunk to a commit thread and goes on appending.

A commit is file I/O (chunk files, fsyncs, the manifest), ~20-40 ms for one chunk on a local disk, and it
waits on the disk with the GIL released; done on the appending thread it costs a small model's training loop
tens of microseconds a step. Here the appending thread only snapshots the buffered rows (lists of references)
and this writer's segment; the thread writes, checksums, fsyncs and publishes exactly what a synchronous
flush would, in the same order (docs/RELIABILITY.md: chunks and fsyncs, then the manifest).

One commit at a time. Anything that reads or changes committed state (flush, close, a rewind, a new table)
first waits for it and applies it ("settles"); an append only looks whether it is done. A commit that failed
raises its StoreWriteError at the next append, flush or close; its rows stay buffered, and the manifest
published before stays current. The buffer is bounded: with one commit in flight, an append that finds
COMMIT_BEHIND_CHUNKS chunks buffered waits for it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from gradmanifold.store.layout import fsync_files
from gradmanifold.store.manifest import Manifest, Segment, publish_manifest
from gradmanifold.store.support import write_error
from gradmanifold.store.tables import TableBuffer

#: chunks of the main table that may wait in the buffer while a commit is in flight, before appends wait
COMMIT_BEHIND_CHUNKS = 3


class Commit:
    """One commit running on its own thread; `result` (the published manifest and each written table's
    committed steps) or `error` once `done`."""

    def __init__(self, run: Callable[[], tuple[Manifest, dict[str, np.ndarray]]]) -> None:
        self.done = False
        self.error: BaseException | None = None
        self.result: tuple[Manifest, dict[str, np.ndarray]] | None = None
        self.thread = threading.Thread(
            target=self._main, args=(run,), name="gradmanifold-commit", daemon=True
        )
        self.thread.start()

    def _main(self, run: Callable[[], tuple[Manifest, dict[str, np.ndarray]]]) -> None:
        try:
            self.result = run()
        except BaseException as exc:  # handed to the appending thread when it settles
            self.error = exc
        finally:
            self.done = True


def with_segment(m: Manifest, segment: Segment, index: int) -> Manifest:
    """The manifest with this writer's segment at `index` (appended when new)."""
    segs = list(m.segments)
    if index < len(segs):
        segs[index] = segment
    else:
        segs.append(segment)
    return m.with_(segments=tuple(segs))


class BackgroundCommits:
    """The StoreWriter's side of commits on a thread (the writer's state these methods use is below)."""

    root: Path
    _fsync: bool
    _manifest: Manifest
    _tables: dict[str, TableBuffer]
    _segment: Segment
    _segment_index: int
    _dirty: bool
    _inflight: Commit | None

    def flush(self) -> None:
        raise NotImplementedError  # the writer's

    def _commit_later(self) -> None:
        """Commit the buffered rows on a thread (a synchronous flush when a rewind replaces committed rows or
        an array is written through zarr). Waits for a commit in flight first."""
        self._settle()
        if not self._dirty:
            return
        tables = self._tables.values()
        if any(t.replace_from is not None or not t.plain for t in tables):
            self.flush()
            return
        m, root, fsync = self._manifest, self.root, self._fsync
        work = []
        for t in tables:
            state = m.table(t.name)
            if t.n_buffered or t.n_rows != state.n_rows:
                work.append((t, state, t.pending(state.dims), t.snapshot()))
        segment, index = self._segment, self._segment_index

        def run() -> tuple[Manifest, dict[str, np.ndarray]]:
            new, steps = m, {}
            for t, state, (what, need), snap in work:
                try:
                    table_state, touched, steps[t.name] = t.write_snapshot(root, state, snap)
                    if fsync:
                        fsync_files(touched, root)
                except OSError as exc:
                    raise write_error(root, m, exc, what, need) from None
                new = new.with_table(t.name, table_state)
            new = with_segment(new, segment, index)
            try:
                publish_manifest(root, new, fsync=fsync)
            except OSError as exc:
                raise write_error(
                    root, m, exc, "publishing the manifest", len(json.dumps(new.to_dict()))
                ) from None
            return new, steps

        self._dirty = False
        self._inflight = Commit(run)

    def _chunk_filled(self, t: TableBuffer) -> None:
        """A chunk of t is full: commit it on the thread, or, with one in flight, go on buffering up to
        COMMIT_BEHIND_CHUNKS chunks."""
        c = self._inflight
        if c is not None and not c.done and t.n_buffered < COMMIT_BEHIND_CHUNKS * t.chunk_rows:
            return
        self._commit_later()

    def _settle(self) -> None:
        """Wait for the commit in flight and apply it: the published manifest becomes current and the
        committed rows leave the buffer; raise its error (rows kept, to be written again)."""
        c = self._inflight
        if c is None:
            return
        self._inflight = None
        c.thread.join()
        if c.error is not None or c.result is None:
            self._dirty = True
            raise c.error if c.error is not None else RuntimeError("the commit thread ended without a result")
        m, steps = c.result
        for name, s in steps.items():
            self._tables[name].steps = s
        self._manifest = m
        for t in self._tables.values():
            t.trim(m.table(t.name).n_rows)

    def _drop_commit(self) -> None:
        """Wait for a commit in flight and forget it, its error too (the writer is being abandoned)."""
        c, self._inflight = self._inflight, None
        if c is not None:
            c.thread.join()
