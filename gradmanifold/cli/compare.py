"""`gradmanifold compare A B`: two runs side by side (stores, or saved `analyze --json`), with differences."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gradmanifold.cli.app import app, handle_errors, write_out
from gradmanifold.cli.options import (
    BurnInOpt,
    EpsOpt,
    GroupsOpt,
    PredictorsOpt,
    SkipCorruptOpt,
    StartOpt,
    StopOpt,
    SvdOpt,
    analysis_options,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from gradmanifold.report.model import AnalysisResult

RunArg = Annotated[Path, typer.Argument(help="A store, or a saved `gradmanifold analyze --json`.")]


@app.command()
@handle_errors
def compare(
    a: RunArg,
    b: RunArg,
    predictors: PredictorsOpt = None,
    eps: EpsOpt = None,
    svd: SvdOpt = "auto",
    start: StartOpt = None,
    stop: StopOpt = None,
    groups: GroupsOpt = None,
    burn_in: BurnInOpt = 0,
    skip_corrupt: SkipCorruptOpt = False,
    scope: Annotated[
        str | None, typer.Option("--scope", help="Scopes to show, comma-separated (default: every scope).")
    ] = None,
    rtol: Annotated[
        float | None, typer.Option("--rtol", help="Mark quantities whose relative change exceeds this.")
    ] = None,
    json: Annotated[
        bool, typer.Option("--json", help="Print gradmanifold.compare/1 JSON on stdout.")
    ] = False,
) -> None:
    """kappa per predictor, r*(eps), participation ratio of every scope in A and B; B - A and the change."""
    from gradmanifold.errors import UsageError
    from gradmanifold.report.compare import compare as run_compare

    if rtol is not None and not (rtol >= 0 and rtol != float("inf")):
        raise UsageError(f"--rtol {rtol!r} is invalid; give a relative tolerance >= 0 such as 0.1 (10%)")
    scopes = None
    if scope is not None:
        scopes = [s.strip() for s in scope.split(",") if s.strip()]
        if not scopes:
            raise UsageError(f"--scope {scope!r} names no scope; give scope names such as model,fc1")
    opts = analysis_options(predictors, None, eps, None, svd, 512, start, stop, groups, burn_in, skip_corrupt)
    cmp = run_compare(_load(a, opts), _load(b, opts), labels=_labels(a, b), scopes=scopes)
    if json:
        from gradmanifold.report.compare import to_dict
        from gradmanifold.report.json import dumps

        write_out(dumps(to_dict(cmp)))
    else:
        from gradmanifold.report.console_compare import render

        write_out(render(cmp, width=shutil.get_terminal_size((120, 24)).columns, rtol=rtol))


def _load(path: Path, opts: dict[str, Any]) -> AnalysisResult | Mapping[str, Any]:
    """A regular file is a saved analysis JSON; anything else is analyzed as a store."""
    if path.is_file():
        from gradmanifold.report.compare import load_document

        return load_document(path)
    from gradmanifold.analysis import analyze

    return analyze(path, **opts)


def _labels(a: Path, b: Path) -> tuple[str, str]:
    """The names of the two runs: their file names, with the parent folder when those are equal."""
    la, lb = a.name or str(a), b.name or str(b)
    if la == lb:
        la, lb = "/".join(a.parts[-2:]), "/".join(b.parts[-2:])
    return (la, lb) if la != lb else ("A", "B")
