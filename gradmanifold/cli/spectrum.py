"""`gradmanifold spectrum RUN.zarr`: per-layer gradient singular spectra over training, and stored probes."""

from __future__ import annotations

import shutil
from typing import Annotated

import typer

from gradmanifold.cli.app import app, handle_errors, write_out

TopOpt = Annotated[
    int | None,
    typer.Option("--top", help="Fit window K: the first K singular values (>= 3). [default: 20, at most q]"),
]
LayersOpt = Annotated[
    list[str] | None,
    typer.Option("--layers", help="Glob of layer names to show, e.g. 'blocks.*.attn*' (repeatable)."),
]


@app.command()
@handle_errors
def spectrum(
    path: Annotated[str, typer.Argument(help="A store recorded with --spectra-every N: a folder or a URL.")],
    top: TopOpt = None,
    layers: LayersOpt = None,
    per_step: Annotated[
        bool, typer.Option("--per-step", help="Also a table per layer, one row a step.")
    ] = False,
    json: Annotated[
        bool, typer.Option("--json", help="Print gradmanifold.spectrum/1 JSON on stdout.")
    ] = False,
) -> None:
    """Per layer: gamma, rank profile (BIC), participation ratio, stable rank, two-rank-one dominance."""
    from gradmanifold.layerspectra import layer_spectra

    result = layer_spectra(path, top=top, layers=layers)
    if json:
        import json as jsonlib

        from gradmanifold.report.spectra import to_dict

        write_out(jsonlib.dumps(to_dict(result), indent=1, sort_keys=True) + "\n")
    else:
        from gradmanifold.report.console_spectra import render

        write_out(render(result, width=shutil.get_terminal_size((120, 24)).columns, per_step=per_step))
