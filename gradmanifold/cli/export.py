"""`gradmanifold export RUN.zarr --tensorboard DIR`: kappa and r*(eps) per window as TensorBoard scalars."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gradmanifold.cli.app import app, handle_errors, write_out
from gradmanifold.cli.options import (
    BurnInOpt,
    ByModuleOpt,
    EpsOpt,
    GroupsOpt,
    PredictorsOpt,
    SketchRankOpt,
    SkipCorruptOpt,
    StartOpt,
    StopOpt,
    SvdOpt,
    analysis_options,
)
from gradmanifold.cli.progress import ProgressBar

if TYPE_CHECKING:
    from gradmanifold.export import ExportResult


@app.command()
@handle_errors
def export(
    path: Annotated[
        str, typer.Argument(help="A store written by gradmanifold record or Recorder: a folder or a URL.")
    ],
    tensorboard: Annotated[
        Path,
        typer.Option(
            "--tensorboard",
            metavar="DIR",
            help="Folder for the event file (created when missing); give each run its own folder.",
            show_default=False,
        ),
    ],
    window: Annotated[
        int | None,
        typer.Option(
            "--window",
            "-w",
            help="Steps per window (default: the counted steps cut into 20 windows).",
            show_default=False,
        ),
    ] = None,
    predictors: PredictorsOpt = None,
    eps: EpsOpt = None,
    svd: SvdOpt = "auto",
    sketch_rank: SketchRankOpt = 512,
    start: StartOpt = None,
    stop: StopOpt = None,
    groups: GroupsOpt = None,
    burn_in: BurnInOpt = 0,
    skip_corrupt: SkipCorruptOpt = False,
    by_module: ByModuleOpt = None,
    wall_time: Annotated[
        float | None,
        typer.Option(
            "--wall-time",
            metavar="SECONDS",
            help="Time the events carry, in seconds since the epoch (default: now); the same store, options "
            "and time give the same file, byte for byte.",
            show_default=False,
        ),
    ] = None,
    json: Annotated[
        bool, typer.Option("--json", help="Print what was written as JSON (docs/JSON.md) on stdout.")
    ] = False,
) -> None:
    """Write kappa per predictor and r*(eps) per window, per scope, as TensorBoard scalars (docs/EXPORT.md).

    Tags kappa/SCOPE/PREDICTOR and r_star/SCOPE/EPS; the step is the window's last training step.
    """
    from gradmanifold.export import export_tensorboard

    # no --ema-grid: it only chooses the whole run's best EMA, which windows do not report
    opts = analysis_options(
        predictors,
        ema_grid=None,
        eps=eps,
        window=None,
        svd=svd,
        sketch_rank=sketch_rank,
        start=start,
        stop=stop,
        groups=groups,
        burn_in=burn_in,
        skip_corrupt=skip_corrupt,
        modules=by_module,
    )
    del opts["window"]  # export's own: 20 windows when not given
    with ProgressBar("analyzing") as progress:
        result = export_tensorboard(
            path, tensorboard, window=window, wall_time=wall_time, progress=progress, **opts
        )
    if json:
        from gradmanifold.report.json import dumps

        write_out(dumps(result.to_dict()))  # schema gradmanifold.export/1
    else:
        write_out(render(result))


def render(result: ExportResult) -> str:
    """The lines `export` prints: the file, what it holds, notes, and how to open it.

    result: what export_tensorboard wrote.
    """
    kappa = sum(1 for t in result.tags if t.startswith("kappa/"))
    lines = [
        f"wrote {result.file} ({result.size_bytes:,} bytes)",
        f"  {result.n_scalars:,} scalars under {len(result.tags)} tags ({kappa} kappa, "
        f"{len(result.tags) - kappa} r*) for {len(result.scopes)} scope(s): {', '.join(result.scopes)}",
    ]
    if result.first_step is None:
        lines.append(f"  no window holds a defined value (windows of {result.window} steps)")
    else:
        lines.append(
            f"  {result.n_windows} window(s) of {result.window} steps, at steps "
            f"{result.first_step}..{result.last_step} (each window's last step)"
        )
    lines.extend(f"note: {note}" for note in result.notes)
    lines.append(f"view: tensorboard --logdir {result.folder}")
    return "\n".join(lines) + "\n"
