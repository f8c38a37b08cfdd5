"""`gradmanifold analyze RUN.zarr`: the paper's numbers as tables, or the versioned JSON with --json."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from gradmanifold.cli.app import app, handle_errors, write_out
from gradmanifold.cli.options import (  # re-exported: commands that import them from here keep working
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
from gradmanifold.cli.progress import ProgressBar
from gradmanifold.cli.sweep import ConnectTimeoutOpt, SchedulerOpt, SegmentsOpt, WorkersOpt

if TYPE_CHECKING:
    from gradmanifold.report.order import SortKey

__all__ = [
    "BurnInOpt",
    "ByModuleOpt",
    "EmaGridOpt",
    "EpsOpt",
    "GroupsOpt",
    "PredictorsOpt",
    "ProgressBar",
    "SketchRankOpt",
    "SkipCorruptOpt",
    "StartOpt",
    "StopOpt",
    "SvdOpt",
    "WindowOpt",
    "analysis_options",
    "analyze",
]

SortOpt = Annotated[
    str | None,
    typer.Option(
        "--sort",
        metavar="KEY",
        help="Order of the table rows after the model: store, name, kappa (best kappa, least predictable "
        "first), kappa:<predictor>, r_star:<eps>, pr. Default: store, or kappa with --top.",
        show_default=False,
    ),
]
TopOpt = Annotated[
    int | None,
    typer.Option(
        "--top",
        metavar="N",
        help="Show only the first N scopes after the model in the tables: the N least predictable (highest "
        "best kappa) unless --sort says otherwise. --json always has every scope.",
        show_default=False,
    ),
]


@app.command()
@handle_errors
def analyze(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Stores written by gradmanifold record or Recorder (paths or URLs); several: a sweep table.",
            show_default=False,
        ),
    ],
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
    sort: SortOpt = None,
    top: TopOpt = None,
    workers: WorkersOpt = None,
    scheduler: SchedulerOpt = None,
    segments: SegmentsOpt = 1,
    connect_timeout: ConnectTimeoutOpt = None,
    json: Annotated[
        bool, typer.Option("--json", help="Print the versioned JSON (docs/JSON.md) on stdout.")
    ] = False,
) -> None:
    """Path length, kappa per predictor, predictable rank and its spectrum, per group and for the model."""
    from gradmanifold.analysis import analyze as run_analysis

    opts = analysis_options(
        predictors,
        ema_grid,
        eps,
        window,
        svd,
        sketch_rank,
        start,
        stop,
        groups,
        burn_in,
        skip_corrupt,
        by_module,
    )
    order = _table_order(sort, top, json, opts)
    opts["segments"] = segments
    if len(paths) > 1 or workers is not None or scheduler is not None or connect_timeout is not None:
        if len(paths) > 1 and (sort is not None or top is not None):
            from gradmanifold.errors import UsageError

            raise UsageError("--sort and --top order one run's tables; a sweep has one row per run")
        from gradmanifold.cli.sweep import run_stores

        one = run_stores(paths, opts, json, workers, scheduler, connect_timeout)
        if one is None:  # a sweep: printed
            return
        result = one
    else:
        with ProgressBar("analyzing") as progress:
            result = run_analysis(paths[0], progress=progress, **opts)
    if json:
        from gradmanifold.report.json import render

        write_out(render(result))
    else:
        from gradmanifold.report.console import output_width
        from gradmanifold.report.console import render as render_text

        write_out(render_text(result, width=output_width(), sort=order, top=top))


def _table_order(sort: str | None, top: int | None, json: bool, opts: dict[str, Any]) -> SortKey | None:
    """The parsed --sort key, checked before the analysis runs (UsageError: a bad key, a predictor or eps the
    analysis will not report, --top below 1, or either with --json)."""
    from gradmanifold.errors import UsageError
    from gradmanifold.report.order import check_sort, check_top, parse_sort

    if json and (sort is not None or top is not None):
        raise UsageError("--sort and --top choose the rows of the tables; --json always holds every scope")
    check_top(top)
    if sort is None:
        return None
    key = parse_sort(sort)
    from gradmanifold.analysis import DEFAULT_EPS
    from gradmanifold.predictors import DEFAULT_PREDICTORS, parse_predictors

    predictors = [p.id for p in parse_predictors(opts.get("predictors") or DEFAULT_PREDICTORS)]
    check_sort(key, predictors, [float(e) for e in opts.get("eps") or DEFAULT_EPS if _is_number(e)])
    return key


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True
