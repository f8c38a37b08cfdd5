"""Repair: cut a store back to its last sound committed row, keeping a backup of everything it removes.

What it does, in this order (each step leaves a readable store if the process dies there):
1. takes the writer lock (a live writer makes it refuse; a stale lock is broken only when asked);
2. verifies the store; rebuilds unusable array metadata (zarr.json) from the manifest;
3. picks the rows to keep: all committed rows, or up to the first damaged chunk when the damage is a tail
   (damage followed by sound chunks is refused unless drop_sound_tail=True: that would drop good rows);
4. copies into the backup folder the old manifest, every chunk file it will remove and the temp files;
5. publishes the new manifest (a new generation when rows are dropped): this is the commit point;
6. deletes the removed files and releases the lock.
Committed chunk files before the cut are never written or moved.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from gradmanifold.errors import CorruptStoreError, StoreWriteError
from gradmanifold.store.layout import (
    ARRAY_BY_NAME,
    ROWS,
    STORE_ATTRS,
    TABLE_BY_NAME,
    create_arrays,
    leftover_temp_files,
)
from gradmanifold.store.lock import WriterLock
from gradmanifold.store.manifest import (
    MANIFEST_NAME,
    Manifest,
    Segment,
    publish_manifest,
    read_manifest,
)
from gradmanifold.store.reader import StoreReader
from gradmanifold.store.verify import VerifyReport, uncommitted_chunk_files, verify_store

BACKUP_README = "REPAIR.json"


@dataclass(frozen=True)
class RepairResult:
    """What repair did (or, with dry_run, would do)."""

    path: str
    dry_run: bool
    rows_before: int
    rows_after: int
    dropped_steps: tuple[int | None, int | None] | None  # first and last dropped step (None: unknown)
    removed_files: tuple[str, ...]  # relative to the store
    rebuilt_metadata: tuple[str, ...]
    backup: str | None  # folder holding the backup, None when nothing was removed
    reasons: tuple[str, ...] = field(default=())
    # tables besides the main rows that were cut: name -> (rows before, rows after)
    tables_cut: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(
            self.removed_files
            or self.rebuilt_metadata
            or self.rows_after != self.rows_before
            or self.tables_cut
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "dry_run": self.dry_run,
            "changed": self.changed,
            "rows_before": self.rows_before,
            "rows_after": self.rows_after,
            "dropped_steps": None if self.dropped_steps is None else list(self.dropped_steps),
            "removed_files": list(self.removed_files),
            "rebuilt_metadata": list(self.rebuilt_metadata),
            "backup": self.backup,
            "reasons": list(self.reasons),
            "tables_cut": {n: list(v) for n, v in self.tables_cut.items()},
        }


def repair_store(
    path: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    backup_dir: str | os.PathLike[str] | None = None,
    break_lock: bool = False,
    drop_sound_tail: bool = False,
) -> RepairResult:
    """Drop an uncommitted or damaged tail of the store at `path` (see the module docstring)."""
    root = Path(path)
    StoreReader(root)  # not found / not a store / newer schema / damaged manifest: raise before any change
    if dry_run:
        return _plan_and_apply(root, verify_store(root), None, dry_run, backup_dir, drop_sound_tail)
    try:
        lock = WriterLock(root, break_stale=break_lock)
    except OSError as exc:
        raise StoreWriteError(
            f"cannot lock {root} for repair: {exc.strerror or exc}; repair rewrites the manifest, so the "
            "store must be writable (copy it somewhere writable and repair the copy)"
        ) from None
    try:
        return _plan_and_apply(root, verify_store(root), lock, dry_run, backup_dir, drop_sound_tail)
    finally:
        lock.release()


def _plan_and_apply(
    root: Path,
    report: VerifyReport,
    lock: WriterLock | None,
    dry_run: bool,
    backup_dir: str | os.PathLike[str] | None,
    drop_sound_tail: bool,
) -> RepairResult:
    m = read_manifest(root)
    rebuilt: list[str] = []
    backup: Path | None = None
    if not report.damaged_metadata:
        _rows_to_keep(root, m, report, drop_sound_tail)  # refuse before changing anything
    if report.damaged_metadata:
        if dry_run:
            rebuilt = list(report.damaged_metadata)
        else:
            backup = _new_backup_folder(root, backup_dir)
            rebuilt = _rebuild_metadata(root, m, report.damaged_metadata, backup)
            report = verify_store(root)
            # The manifest's checksums judge the rebuild: when the rebuilt arrays' chunks do not verify,
            # the metadata was not the damaged part (the manifest may be): put the old files back.
            failed = sorted(
                {p.array for p in report.problems if p.array in rebuilt} | set(report.damaged_metadata)
            )
            if failed:
                _restore_metadata(root, rebuilt, backup)
                raise CorruptStoreError(
                    f"{root}: the array metadata of {', '.join(failed)} disagrees with the manifest, and "
                    "rebuilding it from the manifest does not make the chunks verify, so the manifest may be "
                    "the damaged part; repair changed nothing (inspect manifest.json, restore it from a copy)"
                )
    try:
        keeps, reasons = _rows_to_keep(root, m, report, drop_sound_tail)
    except CorruptStoreError as exc:
        if rebuilt and not dry_run:
            raise CorruptStoreError(
                f"{exc} (it did rebuild the array metadata of {', '.join(rebuilt)}; the old files are in "
                f"{backup})"
            ) from None
        raise
    keep = keeps[ROWS]
    cut = {n: (m.table(n).n_rows, k) for n, k in keeps.items() if n != ROWS and k < m.table(n).n_rows}
    dropped_steps = None
    if keep < m.n_rows:
        dropped_steps = _dropped_steps(root, m, keep)
    remove = uncommitted_chunk_files(root, m, keeps)
    # A cut at a chunk boundary drops whole chunks; the cut chunk's file stays when it keeps rows.
    remove += [p for p in leftover_temp_files(root) if p not in remove]
    rel = tuple(str(p.relative_to(root)) for p in remove)

    def result(backup_used: Path | None) -> RepairResult:
        return RepairResult(
            path=str(root),
            dry_run=dry_run,
            rows_before=m.n_rows,
            rows_after=keep,
            dropped_steps=dropped_steps,
            removed_files=rel,
            rebuilt_metadata=tuple(rebuilt),
            backup=None if backup_used is None else str(backup_used),
            reasons=tuple(reasons),
            tables_cut=cut,
        )

    if dry_run or (not rel and keep == m.n_rows and not cut):
        return result(backup)
    assert lock is not None
    if backup is None:
        backup = _new_backup_folder(root, backup_dir)
    # 4. backup: the old manifest and every file about to go, under their paths in the store.
    copied = [root / MANIFEST_NAME, *remove]
    for p in copied:
        if p.is_file():
            dest = backup / p.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest)
    _write_backup_record(backup, root, m, keep, dropped_steps, rel, reasons, rebuilt)
    _fsync_tree(backup)
    # 5. commit point: the manifest that no longer names the dropped rows.
    new = m
    for name, k in keeps.items():
        t = m.table(name)
        if k < t.n_rows:
            sums = {a: v[: k // t.chunk_rows] for a, v in t.checksums.items()}
            new = new.with_table(
                name, t.with_(n_rows=k, last_step=_kept_last_step(root, m, name, k), checksums=sums)
            )
    if new is not m:
        new = new.with_(generation=m.generation + 1, replaced_from=keep)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    segments = tuple(s.with_(status="interrupted") if s.status == "open" else s for s in new.segments)
    note = Segment(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=now,
        status="repaired",
        ended=now,
        first_row=keep,
        rows=0,
    )
    try:
        publish_manifest(root, new.with_(segments=(*segments, note)))
    except OSError as exc:
        raise StoreWriteError(
            f"repair could not publish the new manifest of {root}: {exc.strerror or exc}; the store is "
            f"unchanged (a copy of what would be dropped is in {backup})"
        ) from None
    # 6. the removed files are uncommitted now; their copies are in the backup.
    for p in remove:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return result(backup)


def _rows_to_keep(
    root: Path, m: Manifest, report: VerifyReport, drop_sound_tail: bool
) -> tuple[dict[str, int], list[str]]:
    """Rows each table keeps: all, or up to its first damaged chunk when the damage is a tail."""
    if report.problems and not any(p.chunk is not None for p in report.problems):
        # damage that is no chunk's and survived the metadata rebuild
        raise CorruptStoreError(f"{root}: {report.problems[0].message}; repair cannot fix this")
    keeps: dict[str, int] = {}
    for table in m.table_names:
        t = m.table(table)
        bad = report.bad_chunks_of(table)
        if not bad:
            keeps[table] = t.n_rows
            continue
        first = bad[0]
        c = t.chunk_rows
        sound_after = [i for i in range(first + 1, t.n_chunks) if i not in bad]
        if sound_after and not drop_sound_tail:
            lo = sound_after[0] * c
            what = "" if table == ROWS else f" of table {table!r}"
            raise CorruptStoreError(
                f"{root}: damaged chunk(s) {list(bad)}{what} are followed by {len(sound_after)} sound "
                f"chunk(s) (rows from {lo} on); repair only drops a damaged tail, so it dropped nothing. "
                "Read around the damage with `gradmanifold analyze --skip-corrupt`, or cut the store at row "
                f"{first * c} with `gradmanifold repair --drop-sound-tail` (the dropped rows go to a backup)"
            )
        keeps[table] = first * c
    return keeps, [p.message for p in report.problems if p.chunk is not None]


def _dropped_steps(root: Path, m: Manifest, keep: int) -> tuple[int | None, int | None]:
    """First and last step of the dropped rows (None where the step chunk holding it is damaged)."""
    reader = StoreReader(root)
    c = m.chunk_rows

    def step_at(row: int) -> int | None:
        try:
            step = reader.read_chunk(row // c, ("step",))["step"]
        except CorruptStoreError:
            return None
        return int(step[row % c])

    return step_at(keep), (m.last_step if m.last_step is not None else step_at(m.n_rows - 1))


def _kept_last_step(root: Path, m: Manifest, table: str, keep: int) -> int | None:
    if keep == 0:
        return None
    c = m.table(table).chunk_rows
    key = TABLE_BY_NAME[table].step
    step = StoreReader(root).read_chunk((keep - 1) // c, (key,))[key]
    return int(np.asarray(step)[(keep - 1) % c])


def _new_backup_folder(root: Path, backup_dir: str | os.PathLike[str] | None) -> Path:
    """A new folder beside the store (or inside backup_dir): <store>.repair-<UTC time>[-n]."""
    parent = Path(backup_dir) if backup_dir is not None else root.absolute().parent
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        cand = parent / f"{root.absolute().name}.repair-{stamp}{'' if n == 0 else f'-{n}'}"
        try:
            cand.mkdir(parents=True)
            return cand
        except FileExistsError:
            continue
        except OSError as exc:
            raise StoreWriteError(
                f"cannot create the repair backup folder {cand}: {exc.strerror or exc}; choose another "
                "place with --backup DIR (repair keeps a copy of everything it removes)"
            ) from None
    raise StoreWriteError(f"cannot find a free backup folder name in {parent}")


def _write_backup_record(
    backup: Path,
    root: Path,
    m: Manifest,
    keep: int,
    dropped_steps: tuple[int | None, int | None] | None,
    removed: tuple[str, ...],
    reasons: list[str],
    rebuilt: list[str],
) -> None:
    record = {
        "store": str(root.absolute()),
        "repaired": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows_before": m.n_rows,
        "rows_after": keep,
        "dropped_steps": None if dropped_steps is None else list(dropped_steps),
        "reasons": reasons,
        "removed_files": list(removed),
        "rebuilt_metadata": rebuilt,
        "restore": (
            "to undo this repair, copy every file of this folder except REPAIR.json back into the store "
            "under the same relative path, manifest.json last"
        ),
    }
    (backup / BACKUP_README).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


def _rebuild_metadata(root: Path, m: Manifest, damaged: tuple[str, ...], backup: Path) -> list[str]:
    """Rewrite unusable zarr.json files from the manifest (dtype, chunks, shape); keep the old ones."""
    names = [a for table in m.table_names for a in m.table(table).arrays]
    todo = list(names) if "." in damaged else [n for n in damaged if n in names]
    with tempfile.TemporaryDirectory(dir=backup) as tmp:
        template = Path(tmp) / "template.zarr"
        for table in m.table_names:
            t = m.table(table)
            create_arrays(template, t.arrays, t.dims, t.chunk_rows, attrs=STORE_ATTRS)
        files = (["."] if "." in damaged else []) + todo
        for name in files:
            rel = Path("zarr.json") if name == "." else Path(name) / "zarr.json"
            meta = json.loads((template / rel).read_text(encoding="utf-8"))
            if name != ".":
                t = m.table(ARRAY_BY_NAME[name].table)
                meta["shape"][0] = max(t.n_chunks * t.chunk_rows, 0)
            old = root / rel
            if old.exists():
                (backup / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(old, backup / rel)
            old.parent.mkdir(parents=True, exist_ok=True)
            tmp_file = old.with_name(f"zarr.json.{os.getpid()}.partial")
            tmp_file.write_text(json.dumps(meta, indent=2), encoding="utf-8")
            os.replace(tmp_file, old)
    return files


def _restore_metadata(root: Path, rebuilt: list[str], backup: Path) -> None:
    """Undo _rebuild_metadata: put back the backed-up zarr.json files (remove the ones that did not exist)."""
    for name in rebuilt:
        rel = Path("zarr.json") if name == "." else Path(name) / "zarr.json"
        saved = backup / rel
        if saved.exists():
            shutil.copy2(saved, root / rel)
        else:
            (root / rel).unlink(missing_ok=True)
    shutil.rmtree(backup, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for p in [folder, *folder.rglob("*")]:
        with contextlib.suppress(OSError):
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
