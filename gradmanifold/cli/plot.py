"""`gradmanifold plot RUN.zarr [RUN2 ...] -o FILE.{png,svg,html}`: analyses as pictures (docs/PLOTS.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


@app.command()
@handle_errors
def plot(
    runs: Annotated[list[Path], typer.Argument(help="One or more stores written by gradmanifold record.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The file to write: .png, .svg or .html.")],
    window: Annotated[
        int | None,
        typer.Option("--window", "-w", help="Steps per window of the over-training panels (default T/20)."),
    ] = None,
    predictors: PredictorsOpt = None,
    eps: EpsOpt = None,
    svd: SvdOpt = "auto",
    start: StartOpt = None,
    stop: StopOpt = None,
    groups: GroupsOpt = None,
    burn_in: BurnInOpt = 0,
    skip_corrupt: SkipCorruptOpt = False,
    scope: Annotated[
        str, typer.Option("--scope", help="Scope of the line panels: model or a group name.")
    ] = "model",
    heatmap: Annotated[
        str | None,
        typer.Option("--heatmap", help="Heatmap value: kappa:PREDICTOR or r_star:EPS (default kappa:last)."),
    ] = None,
    layout: Annotated[
        str, typer.Option("--layout", help="Several runs: overlay (same axes) or side (a column each).")
    ] = "overlay",
    labels: Annotated[
        str | None, typer.Option("--labels", help="Names of the runs in legends, comma-separated.")
    ] = None,
    dpi: Annotated[int, typer.Option("--dpi", help="Resolution of PNG output (and of HTML figures).")] = 100,
) -> None:
    """kappa and r*(eps) over training, the increment tail, a layer x window heatmap, spectra and updates.

    Spectra and updates panels appear when the store recorded them; without --window, 20 windows."""
    from gradmanifold.errors import UsageError
    from gradmanifold.plot import LAYOUTS, load_run, output_format, render_plots, require_matplotlib

    output_format(out)  # a bad -o, or no matplotlib, fails before any analysis
    require_matplotlib()
    if layout not in LAYOUTS:
        raise UsageError(f"--layout {layout!r}: use overlay or side")
    names: list[str | None] = [None] * len(runs)
    if labels is not None:
        given = [s.strip() for s in labels.split(",")]
        if len(given) != len(runs) or not all(given):
            raise UsageError(f"--labels {labels!r}: give {len(runs)} non-empty names, comma-separated")
        names = list(given)
    elif len({p.name for p in runs}) < len(runs):
        names = ["/".join(p.parts[-2:]) for p in runs]
    opts = analysis_options(predictors, None, eps, None, svd, 512, start, stop, groups, burn_in, skip_corrupt)
    del opts["window"]  # load_run's own: T/20 when not given
    loaded = [load_run(p, label=n, window=window, **opts) for p, n in zip(runs, names, strict=True)]
    res = render_plots(loaded, out, scope=scope, heatmap=heatmap, layout=layout, dpi=dpi)
    write_out(f"wrote {res.path} ({res.format}, {res.size_bytes:,} bytes, {len(res.panels)} panels)\n")
    for note in res.notes:
        write_out(f"note: {note}\n")
