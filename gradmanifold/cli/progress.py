"""The one progress bar of the command line: on stderr, only on a terminal, once work has taken a second."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any


class ProgressBar:
    """Call it as `progress(done, total)` (total None when unknown); `close()` or leaving a `with` ends it.

    label: what is being done ("analyzing", "recording"); unit: what is counted ("steps"). Nothing is drawn
    when stderr is not a terminal, nor before `delay` seconds have passed, nor when the work ends first.
    """

    def __init__(self, label: str = "analyzing", unit: str = "steps", delay: float = 1.0) -> None:
        self.label, self.unit, self.delay = label, unit, delay
        self.enabled = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if time.monotonic() - self.t0 < self.delay or (total is not None and done >= total):
                return
            self._start(total)
        count = f"{done}/{total} {self.unit}" if total is not None else f"{done} {self.unit}"
        self.bar.update(self.task, completed=done, total=total, count=count)

    def _start(self, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn(self.label),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TimeRemainingColumn() if total is not None else TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=total, count="")

    def close(self) -> None:
        """Remove the bar (a no-op when none is shown)."""
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
