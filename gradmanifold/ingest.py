"""Ingest gradient dumps into a store: per-step files in a folder (or a glob), one stacked [T, d] file, or a
folder that a running job is still writing (follow mode).

File names. A per-step dump is `<anything><STEP>[<anything without digits>].<ext>`: the step is the last run
of digits in the name before the extension (`step_000120.npy` -> 120, `grads-7.pt` -> 7,
`00042.safetensors` -> 42, `rank0_step12.npz` -> 12). Names starting with `.` or `~`, and names ending in
`.tmp`, `.part`, `.partial` or `.lock`, are in-progress files and never read.

Formats (the same set of names in every file of a run):
    .npy           one array: one tensor, named "all"
    .npz           one array per tensor, keyed by name (np.savez(path, **{"fc1.weight": g, ...}))
    .pt / .pth     a tensor or a (nested) dict name -> tensor, read with torch.load(weights_only=True);
                   entries that are not tensors are left out (needs torch)
    .safetensors   name -> tensor, taken in name order (the format keeps no insertion order; needs the
                   safetensors package, and torch for bfloat16)
A single file given as the source holds a whole run: a .npy of shape [T, ...] (row t is step t) or a .npz of
arrays [T, ...], one per tensor, with an optional int array "step" [T] giving the steps.

With `--updates`, a dump also holds the parameters at that step, each under its gradient's name with the
prefix `params/` (`np.savez(path, **{"fc1.weight": g, "params/fc1.weight": w})`, the same keys in a .pt
or .safetensors dict): the recorder projects their differences between consecutive steps (docs/UPDATES.md).

Steps already committed in the store (at or below its last step) are skipped, so ingesting the same folder
again, or restarting a follow, appends only what is new. A file that cannot be read stops the ingest with an
InputError naming the file; every step before it is committed.
"""

from __future__ import annotations

import glob as globlib
import itertools
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradmanifold.errors import InputError, NotAStoreError, StoreNotFoundError, UsageError

FORMATS = (".npy", ".npz", ".pt", ".pth", ".safetensors")
STEP_PATTERN = re.compile(r"(\d+)(?!.*\d)")
TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".lock")
SINGLE = "all"
COMMIT_EVERY = 256  # files between commits when deleting ingested dumps

Progress = Callable[[int, "int | None"], None]


@dataclass(frozen=True)
class Dump:
    path: Path
    step: int


@dataclass
class IngestReport:
    """What an ingest did (plain data; `to_dict` for the CLI's JSON)."""

    store: str
    mode: str
    steps_recorded: int = 0
    files_ingested: int = 0
    files_skipped: int = 0
    files_deleted: int = 0
    first_step: int | None = None
    last_step: int | None = None
    stopped: str = "done"
    groups: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------- discovery


def step_of(path: str | os.PathLike[str]) -> int | None:
    """The step in a dump's file name (the last run of digits before the extension), or None."""
    name = Path(path).name
    ext = _ext(name)
    stem = name[: len(name) - len(ext)] if ext else name
    found = STEP_PATTERN.search(stem)
    return int(found.group(1)) if found else None


def _ext(name: str) -> str:
    lower = name.lower()
    return next((e for e in FORMATS if lower.endswith(e)), "")


def _is_candidate(path: Path) -> bool:
    name = path.name
    if name.startswith((".", "~")) or name.lower().endswith(TEMP_SUFFIXES):
        return False
    return bool(_ext(name)) and path.is_file()


def _split_source(source: str | os.PathLike[str]) -> tuple[Path, str]:
    """(folder, glob pattern of names) for a folder or a glob whose folder part has no wildcards."""
    src = os.fspath(source)
    p = Path(src)
    if p.is_dir():
        return p, "*"
    if not globlib.has_magic(src):
        raise StoreNotFoundError(
            f"{src} does not exist; give a folder of dumps, a glob or one .npy/.npz file"
        )
    if globlib.has_magic(str(p.parent)):
        raise UsageError(f"--from {src!r}: wildcards only in the file-name part, e.g. 'dumps/step_*.npy'")
    if not p.parent.is_dir():
        raise StoreNotFoundError(f"{p.parent} is not a folder (from --from {src!r})")
    return p.parent, p.name


def discover(source: str | os.PathLike[str]) -> list[Dump]:
    """The per-step dumps of a folder or glob, in step order; UsageError on a nameless step or a repeat."""
    folder, pattern = _split_source(source)
    return _order([p for p in folder.glob(pattern) if _is_candidate(p)])


def _order(paths: list[Path]) -> list[Dump]:
    dumps = []
    for p in paths:
        step = step_of(p)
        if step is None:
            raise UsageError(
                f"{p}: no step in the file name; name per-step dumps like step_000123{_ext(p.name)} "
                "(the last number in the name is the step)"
            )
        dumps.append(Dump(p, step))
    dumps.sort(key=lambda d: (d.step, d.path.name))
    for a, b in itertools.pairwise(dumps):
        if a.step == b.step:
            raise UsageError(f"{a.path.name} and {b.path.name} both hold step {a.step}; keep one of them")
    return dumps


# ---------------------------------------------------------------------------------------------- readers


def read_dump(path: str | os.PathLike[str]) -> dict[str, Any]:
    """name -> array (or CPU tensor) from one dump file; InputError naming the file when it cannot be read."""
    p = Path(path)
    ext = _ext(p.name)
    try:
        if ext == ".npy":
            out: dict[str, Any] = {SINGLE: np.load(p, allow_pickle=False)}
        elif ext == ".npz":
            with open(p, "rb") as fh, np.load(fh, allow_pickle=False) as z:  # own handle: closed on a bad zip
                out = {name: z[name] for name in z.files}
        elif ext in (".pt", ".pth"):
            out = _read_torch(p)
        elif ext == ".safetensors":
            out = _read_safetensors(p)
        else:
            raise InputError(f"{p}: unknown dump format; use one of {', '.join(FORMATS)}")
    except InputError:
        raise
    except Exception as exc:  # every reader's own error for a damaged or truncated file
        detail = " ".join(str(exc).split()) or "no detail"
        raise InputError(
            f"{p}: cannot read this dump ({type(exc).__name__}: {detail}); "
            "it may be truncated or damaged: remove or rewrite it and ingest again (steps before it are kept)"
        ) from None
    if not out:
        raise InputError(f"{p}: holds no arrays")
    return out


def _read_torch(p: Path) -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        raise InputError(
            f"{p}: reading .pt/.pth dumps needs torch (pip install 'gradmanifold[torch]')"
        ) from None
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, torch.Tensor):
        return {SINGLE: obj.detach()}
    if not isinstance(obj, Mapping):
        raise InputError(f"{p}: holds a {type(obj).__name__}; save a tensor or a dict name -> tensor")
    out: dict[str, Any] = {}

    def walk(prefix: str, m: Mapping[Any, Any]) -> None:
        for key, value in m.items():
            name = f"{prefix}{key}"
            if isinstance(value, torch.Tensor):
                out[name] = value.detach()
            elif isinstance(value, Mapping):
                walk(name + ".", value)

    walk("", obj)
    return out


def _read_safetensors(p: Path) -> dict[str, Any]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise InputError(
            f"{p}: reading .safetensors needs the safetensors package (pip install safetensors)"
        ) from None
    try:
        data: Mapping[str, Any] = load_file(p)
    except TypeError:  # bfloat16 has no numpy dtype: read through torch
        from safetensors.torch import load_file as load_torch

        data = load_torch(p)
    return {name: data[name] for name in sorted(data)}  # the file keeps no insertion order: take name order


def read_stacked(path: str | os.PathLike[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(steps [T], name -> array [T, ...]) from one file holding a whole run."""
    p = Path(path)
    data = read_dump(p)
    ext = _ext(p.name)
    if ext not in (".npy", ".npz"):
        raise UsageError(
            f"{p}: a single file must be a stacked .npy or .npz of shape [T, d]; for per-step "
            "dumps give their folder or a glob"
        )
    steps = data.pop("step", None) if ext == ".npz" else None
    if not data:
        raise InputError(f"{p}: holds only a step array")
    lengths = {name: (a.shape[0] if a.ndim >= 2 else -1) for name, a in data.items()}
    if any(n < 0 for n in lengths.values()) or len(set(lengths.values())) != 1:
        raise InputError(
            f"{p}: a stacked file needs arrays of shape [T, d] with the same T; found "
            + ", ".join(f"{n} {tuple(data[n].shape)}" for n in list(data)[:4])
        )
    t = next(iter(lengths.values()))
    if steps is None:
        steps = np.arange(t, dtype=np.int64)
    steps = np.asarray(steps)
    if steps.shape != (t,) or not np.issubdtype(steps.dtype, np.integer):
        raise InputError(
            f"{p}: 'step' must be an integer array of length {t}, found {steps.dtype} {steps.shape}"
        )
    if t > 1 and not np.all(np.diff(steps) > 0):
        raise InputError(f"{p}: 'step' must increase strictly")
    return steps.astype(np.int64), data


# ---------------------------------------------------------------------------------------------- ingest


def _last_committed(path: str) -> int | None:
    from gradmanifold.store import open_store

    if not Path(path).exists():
        return None
    try:
        return open_store(path).manifest.last_step
    except (StoreNotFoundError, NotAStoreError):
        return None  # an empty folder; anything else is refused by the writer with its own message


PARAMS_PREFIX = "params/"


class _Sink:
    """Makes the Recorder at the first dump (tensor names known then); names the file in every error."""

    def __init__(self, opts: Any, report: IngestReport) -> None:
        self.opts = opts
        self.report = report
        self.rec: Any = None
        self.pending: list[Path] = []

    def put(self, step: int, data: Mapping[str, Any], origin: str) -> None:
        grads = {n: v for n, v in data.items() if not n.startswith(PARAMS_PREFIX)}
        params = {n[len(PARAMS_PREFIX) :]: v for n, v in data.items() if n.startswith(PARAMS_PREFIX)}
        if self.opts.updates and not params:
            raise InputError(
                f"{origin}: --updates needs the parameters in every dump, under their gradients' names with "
                f"the prefix {PARAMS_PREFIX!r} (e.g. 'params/fc1.weight')"
            )
        if self.rec is None:
            self.rec = self.opts.recorder(list(grads))
        try:
            ok = self.rec.record(int(step), grads, params=params if self.opts.updates else None)
        except InputError as exc:
            raise InputError(f"{origin}: {exc}") from None
        r = self.report
        r.steps_recorded += bool(ok)
        r.first_step = step if r.first_step is None else r.first_step
        r.last_step = step
        if not r.groups and self.rec.group_names:
            r.groups = list(self.rec.group_names)

    def commit_and_delete(self, delete: bool) -> None:
        if self.rec is not None:
            self.rec.flush()
        if delete:
            for p in self.pending:
                try:
                    p.unlink()
                    self.report.files_deleted += 1
                except FileNotFoundError:
                    pass
        self.pending.clear()

    def close(self, ok: bool) -> None:
        if self.rec is not None:
            self.rec.close(status="closed" if ok else "failed")


def ingest(
    source: str | os.PathLike[str],
    opts: Any,
    *,
    delete_ingested: bool = False,
    progress: Progress | None = None,
) -> IngestReport:
    """Record every dump of a folder/glob (or one stacked file) into the store `opts.out` (RecordOptions)."""
    src = Path(source)
    if src.is_file():
        return _ingest_stacked(src, opts, progress)
    dumps = discover(source)
    if not dumps:
        raise UsageError(f"{source}: no dump files ({', '.join(FORMATS)}) found")
    report = IngestReport(store=opts.out, mode="dumps")
    last = _last_committed(opts.out)
    sink = _Sink(opts, report)
    ok = False
    try:
        for i, d in enumerate(dumps):
            if last is not None and d.step <= last:
                report.files_skipped += 1
                sink.pending.append(d.path)
            else:
                sink.put(d.step, read_dump(d.path), str(d.path))
                report.files_ingested += 1
                sink.pending.append(d.path)
            if delete_ingested and len(sink.pending) >= COMMIT_EVERY:
                sink.commit_and_delete(True)
            if progress is not None:
                progress(i + 1, len(dumps))
        ok = True
    finally:
        sink.close(ok)
        if delete_ingested:
            sink.commit_and_delete(True)
    return report


def _ingest_stacked(path: Path, opts: Any, progress: Progress | None) -> IngestReport:
    steps, data = read_stacked(path)
    report = IngestReport(store=opts.out, mode="stacked")
    last = _last_committed(opts.out)
    sink = _Sink(opts, report)
    ok = False
    try:
        for i, step in enumerate(steps.tolist()):
            if last is not None and step <= last:
                report.files_skipped += 1
                continue
            sink.put(step, {name: a[i] for name, a in data.items()}, f"{path} row {i}")
            if progress is not None:
                progress(i + 1, len(steps))
        report.files_ingested = 1
        ok = True
    finally:
        sink.close(ok)
    return report


# ---------------------------------------------------------------------------------------------- follow


def follow_folder(
    source: str | os.PathLike[str],
    opts: Any,
    *,
    poll: float = 0.5,
    idle_timeout: float | None = None,
    sentinel: str | None = "DONE",
    delete_ingested: bool = False,
    settle: float | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> IngestReport:
    """Ingest a folder that a job is still writing, until the sentinel file appears or nothing new came for
    `idle_timeout` seconds (None: no limit).

    A file is taken once complete: its size and modification time did not change between two scans and it
    reads cleanly. Writers should write to a temporary name (`.tmp`, `.part`, a leading dot) and rename; a
    file that stays unreadable and unchanged for `settle` seconds (default max(2 s, 4 polls)) is reported as
    damaged. Files are ingested in step order; one whose step is not after the last ingested one is skipped
    with a warning. Every scan that ingested something commits, then deletes those dumps when asked.
    """
    folder, pattern = _split_source(source)
    settle = max(2.0, 4 * poll) if settle is None else settle
    report = IngestReport(store=opts.out, mode="follow")
    last = _last_committed(opts.out)
    sink = _Sink(opts, report)
    seen: set[Path] = set()
    sizes: dict[Path, tuple[int, int, float]] = {}  # path -> (size, mtime_ns, time first seen so)
    idle_since = time.monotonic()
    ok = False
    try:
        while True:
            done_marker = bool(sentinel) and (folder / str(sentinel)).exists()
            ready, waiting = _scan(folder, pattern, seen, sizes)
            took = False
            for d in _in_order(ready, waiting):
                data = _try_read(d, sizes, settle)
                if data is None:
                    break  # not complete yet: keep step order, retry at the next scan
                seen.add(d.path)
                sizes.pop(d.path, None)
                sink.pending.append(d.path)
                if last is not None and d.step <= last:
                    if report.files_ingested:
                        warnings.warn(
                            f"{d.path.name}: step {d.step} is not after the last ingested step {last}; "
                            "skipped",
                            stacklevel=2,
                        )
                    report.files_skipped += 1
                    continue
                sink.put(d.step, data, str(d.path))
                report.files_ingested += 1
                last = d.step
                took = True
                if progress is not None:
                    progress(report.files_ingested, None)
            if took or sink.pending:
                sink.commit_and_delete(delete_ingested)
                idle_since = time.monotonic()
            pending = [p for p in sizes if p not in seen]
            if done_marker and not pending:
                report.stopped = f"sentinel {sentinel}"
                break
            if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                report.stopped = f"idle for {idle_timeout:g} s"
                break
            if should_stop is not None and should_stop():
                report.stopped = "stopped"
                break
            time.sleep(poll)
        ok = True
    finally:
        sink.close(ok)
    return report


def _scan(
    folder: Path, pattern: str, seen: set[Path], sizes: dict[Path, tuple[int, int, float]]
) -> tuple[list[Path], list[Path]]:
    """(files unchanged since the last scan, files new or still changing)."""
    ready, waiting = [], []
    now = time.monotonic()
    for p in folder.glob(pattern):
        if p in seen or not _is_candidate(p):
            continue
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        prev = sizes.get(p)
        if prev is not None and prev[:2] == (st.st_size, st.st_mtime_ns):
            ready.append(p)
        else:
            sizes[p] = (st.st_size, st.st_mtime_ns, now)
            waiting.append(p)
    return ready, waiting


def _in_order(ready: list[Path], waiting: list[Path]) -> Iterator[Dump]:
    """Ready dumps in step order, up to the first step that is still being written."""
    blocked = min((s for p in waiting if (s := step_of(p)) is not None), default=None)
    for d in _order(ready):
        if blocked is not None and d.step > blocked:
            return
        yield d


def _try_read(d: Dump, sizes: dict[Path, tuple[int, int, float]], settle: float) -> dict[str, Any] | None:
    try:
        return read_dump(d.path)
    except InputError:
        if time.monotonic() - sizes[d.path][2] >= settle:
            raise
        return None


__all__ = [
    "FORMATS",
    "STEP_PATTERN",
    "Dump",
    "IngestReport",
    "discover",
    "follow_folder",
    "ingest",
    "read_dump",
    "read_stacked",
    "step_of",
]
