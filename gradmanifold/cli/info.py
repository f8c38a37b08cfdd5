"""`gradmanifold info RUN.zarr`: what a store holds, its size, chunking, writer segments and flagged rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gradmanifold.cli.app import app, handle_errors, write_out


@app.command()
@handle_errors
def info(
    path: Annotated[Path, typer.Argument(help="A store written by gradmanifold record or Recorder.")],
    json: Annotated[
        bool, typer.Option("--json", help="Print the store description as JSON on stdout.")
    ] = False,
) -> None:
    """Describe a store: steps, k, projection, groups, size on disk, chunking, segments, flagged rows."""
    from gradmanifold.store import open_store

    description = open_store(path).info()
    if json:
        from gradmanifold.report.json import render_info

        write_out(render_info(description))
    else:
        from gradmanifold.report.console import render_info as render_text

        write_out(render_text(description))
