"""Command-line options shared by the commands that run an analysis (`analyze`, `check`, `compare`), defined
once so that a threshold in `check` addresses the JSON of an `analyze` run with the same options."""

from __future__ import annotations

from typing import Annotated, Any

import typer

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
ByModuleOpt = Annotated[
    int | None,
    typer.Option(
        "--by-module",
        metavar="DEPTH",
        help="Scopes per module instead of per group: the groups whose names share their first DEPTH "
        "dot-separated parts, summed (exact kappa and r* of the module; e.g. 3: transformer.h.0).",
        show_default=False,
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
    modules: int | None = None,
) -> dict[str, Any]:
    """Keyword options for `analysis.analyze` from the command line (values are validated by the library).

    The parameters are the options above, as typer parsed them; `modules` is --by-module.
    """
    opts: dict[str, Any] = {
        "skip_corrupt": skip_corrupt,
        "window": window,
        "svd": svd,
        "sketch_rank": sketch_rank,
        "start_step": start,
        "stop_step": stop,
        "burn_in": burn_in,
    }
    if modules is not None:
        opts["modules"] = modules
    if predictors:
        opts["predictors"] = tuple(predictors)
    if ema_grid:
        from gradmanifold.predictors import parse_ema_grid

        opts["ema_grid"] = parse_ema_grid(ema_grid)
    if eps:
        opts["eps"] = tuple(split(eps))
    if groups:
        opts["groups"] = tuple(split(groups))
    return opts


def split(items: list[str]) -> list[str]:
    """Comma-separated or repeated values as one list, blanks dropped."""
    return [p.strip() for item in items for p in item.split(",") if p.strip()]
