"""`gradmanifold check RUN.zarr --max PATH=N --min PATH=N`: thresholds on the analysis JSON as exit codes.

Exit 0 when every bound holds, 1 when any fails (each failure one line on stdout: path, value, bound), 2 for
usage errors or unreadable input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gradmanifold.cli.app import app, handle_errors, write_out
from gradmanifold.cli.options import (
    BurnInOpt,
    ByModuleOpt,
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
from gradmanifold.cli.spectrum import LayersOpt, TopOpt
from gradmanifold.errors import EXIT_CHECK_FAILED

if TYPE_CHECKING:
    from gradmanifold.report.checks import Baseline


@app.command()
@handle_errors
def check(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Stores written by gradmanifold record or Recorder; several: a sweep (paths NAME.PATH=N).",
            show_default=False,
        ),
    ],
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
    by_module: ByModuleOpt = None,
    spectrum: Annotated[
        bool,
        typer.Option(
            "--spectrum", help="Check the layer-spectra JSON (`spectrum --json`): layers.NAME.gamma.-1=2.5."
        ),
    ] = False,
    top: TopOpt = None,
    layers: LayersOpt = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            help="A saved `analyze --json` of a reference run: fail when a kappa or r*(eps) moved by more "
            "than --rtol relative (predictors, eps, groups default to the baseline's).",
        ),
    ] = None,
    rtol: Annotated[
        float | None, typer.Option("--rtol", help="Relative tolerance of --baseline (default 0.1).")
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option("--scope", help="Scopes checked against --baseline: model (default), all, or names."),
    ] = None,
) -> None:
    """Check analysis results against bounds: --max model.kappa.ema:0.9=1.2 --max model.rank.r_star.0.1=64."""
    from gradmanifold.report.checks import Drift, Outcome, against_baseline, evaluate, parse_bounds

    base = _baseline(baseline, rtol, scope, spectrum)
    bounds = parse_bounds(max_ or [], min_ or [], required=base is None)
    if len(paths) > 1:  # a sweep: paths start with a run's name or index
        from gradmanifold.cli.sweep import check_sweep
        from gradmanifold.errors import UsageError

        if spectrum or base is not None:
            raise UsageError("--spectrum and --baseline check one store; give one path")
        opts = analysis_options(
            predictors, ema_grid, eps, window, svd, sketch_rank, start, stop, groups, burn_in, skip_corrupt,
            by_module,
        )  # fmt: skip
        return check_sweep(paths, opts, bounds, quiet)
    path = paths[0]
    if spectrum:
        from gradmanifold.layerspectra import layer_spectra
        from gradmanifold.report.spectra import to_dict as spectrum_dict

        doc = spectrum_dict(layer_spectra(path, top=top, layers=layers))
    else:
        from gradmanifold.analysis import analyze as run_analysis
        from gradmanifold.report.json import to_dict

        if base is not None:  # measure the run as the baseline was measured unless told otherwise
            like = base.analysis_options()
            predictors, eps = predictors or like.get("predictors"), eps or like.get("eps")
            groups = groups or like.get("groups")
        opts = analysis_options(
            predictors, ema_grid, eps, window, svd, sketch_rank, start, stop, groups, burn_in, skip_corrupt,
            by_module,
        )  # fmt: skip
        doc = to_dict(run_analysis(path, **opts))
    outcomes: list[Outcome | Drift] = [*evaluate(doc, bounds), *(against_baseline(doc, base) if base else [])]
    failed = [o for o in outcomes if not o.ok]
    for o in outcomes:
        if not o.ok or not quiet:
            write_out(o.line() + "\n")
    if failed:
        write_out(f"{len(failed)} of {len(outcomes)} checks failed\n")
        raise typer.Exit(EXIT_CHECK_FAILED)
    if not quiet:
        write_out(f"all {len(outcomes)} checks hold\n")


def _baseline(path: Path | None, rtol: float | None, scope: str | None, spectrum: bool) -> Baseline | None:
    """The loaded --baseline, or None; UsageError for --rtol/--scope without it or with --spectrum."""
    from gradmanifold.errors import UsageError
    from gradmanifold.report.checks import load_baseline

    if path is None:
        given = [o for o, v in (("--rtol", rtol), ("--scope", scope)) if v is not None]
        if given:
            raise UsageError(f"{' and '.join(given)} need --baseline BASE.json (a saved `analyze --json`)")
        return None
    if spectrum:
        raise UsageError("--baseline compares analysis JSON; it does not work with --spectrum")
    return load_baseline(path, rtol, scope)
