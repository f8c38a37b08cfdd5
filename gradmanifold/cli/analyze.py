"""`gradmanifold analyze RUN.zarr`: the paper's numbers as tables, or the versioned JSON with --json."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from gradmanifold.cli.app import app, handle_errors, write_out

# Options shared with `check` (its thresholds address the JSON of an analysis run with these options).
PredictorsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--predictors",
        "-p",
        help="Predictors, comma-separated or repeated: zero, last, trend, ema:<beta>. "
        "Default: zero,last,ema:0.9,ema:0.99,trend.",
        show_default=False,
    ),
]
EmaGridOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--ema-grid",
        help="EMA betas searched for the best one, comma-separated. "
        "Default: 0.5,0.8,0.9,0.95,0.98,0.99,0.995,0.999.",
        show_default=False,
    ),
]
EpsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--eps",
        help="Energy left out by r*(eps), each in (0, 1). Default: 0.5,0.1,0.05,0.01.",
        show_default=False,
    ),
]
WindowOpt = Annotated[
    int | None, typer.Option("--window", "-w", help="Also report kappa and r* per window of W steps.")
]
SvdOpt = Annotated[
    str, typer.Option("--svd", help="Increment spectrum: exact (float64 Gram), randomized (sketch) or auto.")
]
SketchRankOpt = Annotated[int, typer.Option("--sketch-rank", help="Rank of the randomized sketch.")]
StartOpt = Annotated[int | None, typer.Option("--start", help="First training step analyzed (inclusive).")]
StopOpt = Annotated[int | None, typer.Option("--stop", help="End of the analyzed steps (exclusive).")]
GroupsOpt = Annotated[
    list[str] | None,
    typer.Option("--groups", "-g", help="Groups to analyze, comma-separated; the model total sums them."),
]
BurnInOpt = Annotated[
    int, typer.Option("--burn-in", help="Leave the first N steps out of both sums of kappa.")
]
SkipCorruptOpt = Annotated[
    bool,
    typer.Option(
        "--skip-corrupt",
        help="Leave damaged chunks out (their rows count as missing, listed in the warnings) instead of "
        "failing with exit 3; `gradmanifold verify` lists them.",
    ),
]


def analysis_options(
    predictors: list[str] | None,
    ema_grid: list[str] | None,
    eps: list[str] | None,
    window: int | None,
    svd: str,
    sketch_rank: int,
    start: int | None,
    stop: int | None,
    groups: list[str] | None,
    burn_in: int,
    skip_corrupt: bool = False,
) -> dict[str, Any]:
    """Keyword options for `analyze` from the command line (values are validated by the library)."""
    opts: dict[str, Any] = {
        "skip_corrupt": skip_corrupt,
        "window": window,
        "svd": svd,
        "sketch_rank": sketch_rank,
        "start_step": start,
        "stop_step": stop,
        "burn_in": burn_in,
    }
    if predictors:
        opts["predictors"] = tuple(predictors)
    if ema_grid:
        from gradmanifold.predictors import parse_ema_grid

        opts["ema_grid"] = parse_ema_grid(ema_grid)
    if eps:
        opts["eps"] = tuple(_split(eps))
    if groups:
        opts["groups"] = tuple(_split(groups))
    return opts


def _split(items: list[str]) -> list[str]:
    return [p.strip() for item in items for p in item.split(",") if p.strip()]


class ProgressBar:
    """A progress bar on stderr that appears once a run has taken a second (only on a terminal)."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            if time.monotonic() - self.t0 < 1.0 or done >= total:
                return
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("analyzing"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("analyze", total=total)
        self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@app.command()
@handle_errors
def analyze(
    path: Annotated[Path, typer.Argument(help="A store written by gradmanifold record or Recorder.")],
    predictors: PredictorsOpt = None,
    ema_grid: EmaGridOpt = None,
    eps: EpsOpt = None,
    window: WindowOpt = None,
    svd: SvdOpt = "auto",
    sketch_rank: SketchRankOpt = 512,
    start: StartOpt = None,
    stop: StopOpt = None,
    groups: GroupsOpt = None,
    burn_in: BurnInOpt = 0,
    skip_corrupt: SkipCorruptOpt = False,
    json: Annotated[
        bool, typer.Option("--json", help="Print the versioned JSON (docs/JSON.md) on stdout.")
    ] = False,
) -> None:
    """Path length, kappa per predictor, predictable rank and its spectrum, per group and for the model."""
    from gradmanifold.analysis import analyze as run_analysis

    opts = analysis_options(
        predictors, ema_grid, eps, window, svd, sketch_rank, start, stop, groups, burn_in, skip_corrupt
    )
    progress = ProgressBar()
    try:
        result = run_analysis(path, progress=progress, **opts)
    finally:
        progress.close()
    if json:
        from gradmanifold.report.json import render

        write_out(render(result))
    else:
        from gradmanifold.report.console import render as render_text

        write_out(render_text(result))
