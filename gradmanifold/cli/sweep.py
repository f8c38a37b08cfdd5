"""`analyze` and `check` on several stores (a sweep) or on Dask: the options, and the runs' output and exit.

A sweep prints its table (or `--json`: gradmanifold.sweep/1) on stdout; when runs failed it then writes one
line on stderr naming each and why, and exits with the largest of their exit codes (3: a corrupt store);
when every run failed it prints nothing on stdout. One store on Dask prints exactly what `analyze` prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from gradmanifold.cli.app import fail, write_out

if TYPE_CHECKING:
    from gradmanifold.report.checks import Bound
    from gradmanifold.report.model import AnalysisResult
    from gradmanifold.report.sweep import SweepResult

WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Run on Dask: a local cluster of N worker processes (tasks: store, time segment, scope part).",
        show_default=False,
    ),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        metavar="ADDRESS",
        help="Run on the running dask.distributed scheduler at [tcp://]HOST:PORT (its workers must read the "
        "same store paths).",
        show_default=False,
    ),
]
SegmentsOpt = Annotated[
    int,
    typer.Option(
        "--segments",
        help="Cut each store into S time segments analyzed as separate tasks and merged exactly (the results "
        "do not change).",
    ),
]
ConnectTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--connect-timeout",
        metavar="SECONDS",
        help="How long to try to reach --scheduler. [default: 10]",
        show_default=False,
    ),
]


def run_stores(
    paths: list[str],
    opts: dict[str, Any],
    json: bool,
    workers: int | None,
    scheduler: str | None,
    connect_timeout: float | None,
) -> AnalysisResult | None:
    """Analyze the stores (on Dask with --workers/--scheduler): one store's result is returned for the caller
    to print as `analyze` does; a sweep is printed here (None returned), failures as described above.

    Parameters: paths: the stores as given; opts: the analysis options; json: print the sweep's JSON;
    workers, scheduler, connect_timeout: the Dask options (None: not given).
    """
    sweep = _sweep(paths, opts, workers, scheduler, connect_timeout)
    if len(paths) == 1:
        run = sweep.runs[0]
        if run.result is None:
            raise fail(str(run.error), run.exit_code)
        return run.result
    if sweep.failed and len(sweep.failed) == len(sweep.runs):
        raise fail(sweep.failure_line(), sweep.exit_code)
    if json:
        from gradmanifold.report.sweep import render

        write_out(render(sweep))
    else:
        from gradmanifold.report.console import output_width
        from gradmanifold.report.console_sweep import render as render_text

        write_out(render_text(sweep, width=output_width()))
    if sweep.failed:
        raise fail(sweep.failure_line(), sweep.exit_code)
    return None


def check_sweep(paths: list[str], opts: dict[str, Any], bounds: list[Bound], quiet: bool) -> None:
    """`check` on several stores: every bound (paths start with a run's name or index), then the exit code:
    0 all hold, 1 any fails, or a failed run's own code (3: corrupt) with its one stderr line.

    Parameters: paths: the stores; opts: the analysis options; bounds: the parsed --max/--min; quiet: print
    failures only.
    """
    from gradmanifold.errors import EXIT_CHECK_FAILED, UsageError
    from gradmanifold.report.sweep import evaluate_sweep, to_dict

    if not bounds:
        raise UsageError("a sweep is checked with --max/--min NAME.PATH=NUMBER (--baseline compares one run)")
    sweep = _sweep(paths, opts, None, None, None)
    if len(sweep.failed) == len(sweep.runs):
        raise fail(sweep.failure_line(), sweep.exit_code)
    outcomes = evaluate_sweep(to_dict(sweep), bounds)
    bad = [o for o in outcomes if not o.ok]
    for o in outcomes:
        if not o.ok or not quiet:
            write_out(o.line() + "\n")
    if bad:
        write_out(f"{len(bad)} of {len(outcomes)} checks failed\n")
    elif not quiet:
        write_out(f"all {len(outcomes)} checks hold\n")
    if sweep.failed:
        raise fail(sweep.failure_line(), sweep.exit_code)
    if bad:
        raise typer.Exit(EXIT_CHECK_FAILED)


def _sweep(
    paths: list[str],
    opts: dict[str, Any],
    workers: int | None,
    scheduler: str | None,
    connect_timeout: float | None,
) -> SweepResult:
    from gradmanifold.errors import UsageError
    from gradmanifold.sweep import DEFAULT_CONNECT_TIMEOUT, analyze_many

    if connect_timeout is not None and scheduler is None:
        raise UsageError("--connect-timeout is how long to try to reach --scheduler; give --scheduler too")
    timeout = DEFAULT_CONNECT_TIMEOUT if connect_timeout is None else connect_timeout
    return analyze_many(paths, processes=workers, scheduler=scheduler, connect_timeout=timeout, **opts)
