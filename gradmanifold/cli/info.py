"""`gradmanifold info RUN.zarr`: what a store holds, its size, chunking, writer segments and flagged rows."""

from __future__ import annotations

from typing import Annotated

import typer

from gradmanifold.cli.app import app, handle_errors, write_out


@app.command()
@handle_errors
def info(
    path: Annotated[
        str, typer.Argument(help="A store written by gradmanifold record or Recorder: a folder or a URL.")
    ],
    json: Annotated[
        bool, typer.Option("--json", help="Print the store description as JSON on stdout.")
    ] = False,
) -> None:
    """Describe a store: steps, k, projection, groups, size on disk, chunking, segments, flagged rows."""
    from gradmanifold.report.results import InfoResult
    from gradmanifold.store import open_store

    description = InfoResult.from_dict(open_store(path).info())
    if json:
        from gradmanifold.report.json import dumps

        write_out(dumps(description.to_dict()))  # schema gradmanifold.info/1 (docs/JSON.md)
    else:
        from gradmanifold.report.console import output_width, render_info

        write_out(render_info(description, width=output_width()))
