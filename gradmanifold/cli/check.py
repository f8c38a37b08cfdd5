"""`gradmanifold check RUN.zarr --max PATH=N --min PATH=N`: thresholds on the analysis JSON as exit codes.

Exit 0 when every bound holds, 1 when any fails (each failure one line on stdout: path, value, bound), 2 for
usage errors or unreadable input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gradmanifold.cli.analyze import (
    BurnInOpt,
    EmaGridOpt,
    EpsOpt,
    GroupsOpt,
    PredictorsOpt,
    SketchRankOpt,
    SkipCorruptOpt,
    StartOpt,
    StopOpt,
    SvdOpt,
    WindowOpt,
    analysis_options,
)
from gradmanifold.cli.app import app, handle_errors, write_out
from gradmanifold.cli.spectrum import LayersOpt, TopOpt
from gradmanifold.errors import EXIT_CHECK_FAILED


@app.command()
@handle_errors
def check(
    path: Annotated[Path, typer.Argument(help="A store written by gradmanifold record or Recorder.")],
    max_: Annotated[
        list[str] | None,
        typer.Option("--max", help="PATH=NUMBER: fail when the value at PATH exceeds NUMBER (repeatable)."),
    ] = None,
    min_: Annotated[
        list[str] | None,
        typer.Option("--min", help="PATH=NUMBER: fail when the value at PATH is below NUMBER (repeatable)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print failures only.")] = False,
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
    spectrum: Annotated[
        bool,
        typer.Option(
            "--spectrum", help="Check the layer-spectra JSON (`spectrum --json`): layers.NAME.gamma.-1=2.5."
        ),
    ] = False,
    top: TopOpt = None,
    layers: LayersOpt = None,
) -> None:
    """Check analysis results against bounds: --max model.kappa.ema:0.9=1.2 --max model.rank.r_star.0.1=64."""
    from gradmanifold.report.checks import evaluate, parse_bounds

    bounds = parse_bounds(max_ or [], min_ or [])
    if spectrum:
        from gradmanifold.layerspectra import layer_spectra
        from gradmanifold.report.spectra import to_dict as spectrum_dict

        doc = spectrum_dict(layer_spectra(path, top=top, layers=layers))
    else:
        from gradmanifold.analysis import analyze as run_analysis
        from gradmanifold.report.json import to_dict

        opts = analysis_options(
            predictors, ema_grid, eps, window, svd, sketch_rank, start, stop, groups, burn_in, skip_corrupt
        )
        doc = to_dict(run_analysis(path, **opts))
    outcomes = evaluate(doc, bounds)
    failed = [o for o in outcomes if not o.ok]
    for o in outcomes:
        if not o.ok or not quiet:
            write_out(o.line() + "\n")
    if failed:
        write_out(f"{len(failed)} of {len(outcomes)} checks failed\n")
        raise typer.Exit(EXIT_CHECK_FAILED)
    if not quiet:
        write_out(f"all {len(outcomes)} checks hold\n")
