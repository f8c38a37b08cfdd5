"""The analysis per window as TensorBoard scalars (docs/EXPORT.md): one event file, written by tfevents.py.

    export_tensorboard("run.zarr", "tb/run", window=50)   # analyze, then write tb/run/events.out.tfevents...
    write_tensorboard(result, "tb/run")                   # an AnalysisResult with windows, already computed

Tags: `kappa/<scope>/<predictor>` (every reported predictor but `zero`, whose kappa is 1 by definition) and
`r_star/<scope>/<eps>`, with scopes, predictor ids and eps keys exactly as the analysis JSON names them. The
step of a window's scalars is its last training step. Values are float32 (simple_value); a value the analysis
leaves undefined (null in its JSON) is not written.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from gradmanifold.errors import CorruptStoreError, UsageError
from gradmanifold.report.model import AnalysisResult
from gradmanifold.report.results import document

EXPORT_SCHEMA = "gradmanifold.export/1"
DEFAULT_WINDOWS = 20  # without --window the counted steps are cut into this many windows (as `plot` does)
SUFFIX = "gradmanifold"  # the event file's name ends with it: tells its writer among others in a folder

Scalars = tuple[tuple[int, tuple[tuple[str, float], ...]], ...]


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the event file, its windows, scalars and tags, and notes worth reading."""

    store: str | None  # the analyzed store (None for a result of arrays in memory)
    folder: str  # the folder given (TensorBoard's --logdir, or a run below it)
    file: str  # the event file written
    window: int  # steps per window
    window_default: bool  # True when no window was given and T/20 was used
    n_windows: int  # windows written (a window holding no defined value writes nothing)
    n_scalars: int  # scalar values written
    n_undefined: int  # values the analysis left undefined (null), not written
    tags: tuple[str, ...]
    scopes: tuple[str, ...]
    first_step: int | None  # step of the first window's scalars (None: nothing written)
    last_step: int | None
    wall_time: float  # the time every event carries
    size_bytes: int
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The `gradmanifold.export/1` JSON object (docs/JSON.md)."""
        body = {f.name: getattr(self, f.name) for f in fields(self)}
        for key in ("tags", "scopes", "notes"):
            body[key] = list(body[key])
        return document(EXPORT_SCHEMA, body)


def tag_kappa(scope: str, predictor: str) -> str:
    """The tag of a window's kappa. Parameters: scope: `model` or a group/module; predictor: its id."""
    return f"kappa/{scope}/{predictor}"


def tag_r_star(scope: str, eps: str) -> str:
    """The tag of a window's r*(eps). Parameters: scope: `model` or a group/module; eps: the JSON eps key."""
    return f"r_star/{scope}/{eps}"


def window_scalars(result: AnalysisResult) -> tuple[Scalars, int]:
    """Per window in order, (its last step, its (tag, value) scalars), and the count of undefined values.

    result: an analysis run with a window. Scopes in the result's order; per scope kappa per predictor (`zero`
    left out), then r* per eps, in the result's key order. Windows with no defined value are left out.
    """
    out = []
    undefined = 0
    for w in result.windows:
        values: list[tuple[str, float]] = []
        for scope, ws in w.scopes.items():
            for pid, kappa in ws.kappa.items():
                if pid == "zero":
                    continue
                if kappa is None or not math.isfinite(kappa):
                    undefined += 1
                else:
                    values.append((tag_kappa(scope, pid), float(kappa)))
            for eps, r in ws.r_star.items():
                if r is None:
                    undefined += 1
                else:
                    values.append((tag_r_star(scope, eps), float(r)))
        if values:
            out.append((int(w.end_step), tuple(values)))
    return tuple(out), undefined


def check_folder(out_dir: str | os.PathLike[str]) -> Path:
    """The output folder as a Path, checked before any work: UsageError when it is a file, lies below a file,
    or cannot be written (it is created when missing). Parameters: out_dir: the folder."""
    text = os.fspath(out_dir)
    if not text.strip():
        raise UsageError("--tensorboard needs a folder, e.g. --tensorboard runs/tb")
    folder = Path(text)
    try:
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--tensorboard {text!r} is a file; give a folder (it is created when missing)")
        existing = folder
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"--tensorboard {text!r}: {os.fspath(existing)!r} is a file, not a folder")
        if (folder / "manifest.json").is_file() and (folder / "zarr.json").is_file():
            raise UsageError(f"--tensorboard {text!r} is a gradmanifold store; give a folder outside it")
    except OSError as exc:
        raise UsageError(f"--tensorboard {text!r}: {exc.strerror or exc}") from None
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(
            f"--tensorboard {text!r}: the folder {os.fspath(existing)!r} is not writable; give another folder"
        )
    return folder


def event_file_name(wall_time: float, host: str | None = None) -> str:
    """TensorBoard's naming, `events.out.tfevents.<seconds>.<host>`, with `.gradmanifold` after it.

    wall_time: seconds since the epoch; host: the machine's name (None: this one's; odd characters become _).
    """
    name = socket.gethostname() if host is None else host
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".") or "localhost"
    return f"events.out.tfevents.{int(wall_time):010d}.{name}.{SUFFIX}"


def write_tensorboard(
    result: AnalysisResult,
    out_dir: str | os.PathLike[str],
    *,
    wall_time: float | None = None,
    host: str | None = None,
    window_default: bool = False,
) -> ExportResult:
    """Write the windows of an analysis as one event file in `out_dir` (created when missing).

    result: an AnalysisResult computed with a window; out_dir: the folder; wall_time: the time the events
    carry (None: now; equal inputs and wall_time give byte-identical files of the same name); host: the name
    in the file name (None: this machine's); window_default: the window was chosen for the caller (a note).
    """
    from gradmanifold.tfevents import event_file

    folder = check_folder(out_dir)
    if result.config.window is None or not result.windows:
        raise UsageError("the analysis has no windows to export; analyze with a window (e.g. window=50)")
    wall = _wall_time(wall_time)
    scalars, undefined = window_scalars(result)
    data = event_file(wall, scalars)
    name = event_file_name(wall, host)
    target = folder / name
    notes = _notes(folder, name, result.config.window, window_default, undefined)
    _write(folder, target, data)
    tags = tuple(dict.fromkeys(tag for _, values in scalars for tag, _ in values))
    return ExportResult(
        store=result.store.path,
        folder=os.fspath(folder),
        file=os.fspath(target),
        window=int(result.config.window),
        window_default=window_default,
        n_windows=len(scalars),
        n_scalars=sum(len(values) for _, values in scalars),
        n_undefined=undefined,
        tags=tags,
        scopes=tuple(result.scopes),
        first_step=scalars[0][0] if scalars else None,
        last_step=scalars[-1][0] if scalars else None,
        wall_time=wall,
        size_bytes=len(data),
        notes=notes,
    )


def export_tensorboard(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    window: int | None = None,
    wall_time: float | None = None,
    host: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> ExportResult:
    """Analyze the store at `path` per window and write kappa and r*(eps) as TensorBoard scalars in `out_dir`.

    path: the store (a folder or URL); out_dir: the folder for the event file (checked before the analysis,
    created when missing); window: steps per window (None: the counted steps cut into 20 windows); wall_time,
    host: as in write_tensorboard; progress: the analysis's progress callback; options: further `analyze`
    options (predictors, eps, start_step, stop_step, groups, burn_in, modules, skip_corrupt, ...).
    """
    from gradmanifold.analysis import analyze
    from gradmanifold.store import open_store

    check_folder(out_dir)
    _wall_time(wall_time)
    if window is not None:
        try:
            if isinstance(window, bool):
                raise TypeError
            window = operator.index(window)
        except TypeError:
            raise UsageError(f"window {window!r} must be a whole number of steps (at least 2)") from None
    options.pop("window", None)
    reader = open_store(path)
    chosen = window is None
    if window is None:
        window = _default_window(reader, options)
    result = analyze(reader, window=window, progress=progress, **options)
    return write_tensorboard(result, out_dir, wall_time=wall_time, host=host, window_default=chosen)


def _default_window(reader: Any, options: dict[str, Any]) -> int:
    """Steps per window that cut the counted steps into DEFAULT_WINDOWS windows (at least 2)."""
    start, stop = options.get("start_step"), options.get("stop_step")
    lo, hi = 0, int(reader.n_steps)
    if start is not None or stop is not None:
        # the analysis reports a bad range or damaged steps, with its own message
        with contextlib.suppress(CorruptStoreError, TypeError, ValueError):
            lo, hi = reader.row_range(start, stop)
    try:
        counted = hi - lo - int(options.get("burn_in") or 0)
    except (TypeError, ValueError):
        counted = hi - lo  # the analysis reports the bad burn-in
    return max(2, math.ceil(counted / DEFAULT_WINDOWS))


def _wall_time(wall_time: float | None) -> float:
    if wall_time is None:
        return time.time()
    if isinstance(wall_time, bool) or not isinstance(wall_time, int | float) or not math.isfinite(wall_time):
        raise UsageError(f"wall time {wall_time!r} must be a finite number of seconds since the epoch")
    if wall_time < 0:
        raise UsageError(f"wall time {wall_time!r} is negative; give seconds since the epoch")
    return float(wall_time)


def _notes(folder: Path, name: str, window: int, window_default: bool, undefined: int) -> tuple[str, ...]:
    notes = []
    if window_default:
        notes.append(
            f"no --window given: windows of {window} steps (the counted steps in {DEFAULT_WINDOWS} windows)"
        )
    if undefined:
        notes.append(
            f"{undefined} value(s) the analysis leaves undefined were not written "
            "(a window without increments has no r*, one without gradient energy no kappa)"
        )
    try:
        others = sorted(p.name for p in folder.iterdir() if "tfevents" in p.name and p.name != name)
    except OSError:
        others = []  # a folder still to be created
    if others:
        notes.append(
            f"{os.fspath(folder)!r} already holds {len(others)} other event file(s); TensorBoard shows the "
            "files of one folder as one run: give each run its own folder"
        )
    if (folder / name).exists():
        notes.append(f"replaced {name} (an export of the same second)")
    return tuple(notes)


def _write(folder: Path, target: Path, data: bytes) -> None:
    """Create the folder, write through a temporary file beside the target, then rename: TensorBoard never
    reads a half-written file (the temporary name holds no "tfevents")."""
    tmp = folder / f".{SUFFIX}-export.tmp{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {os.fspath(target)!r}: {exc.strerror or exc}") from None
