"""Command line: the only package that imports typer. One module per command; each parses, calls, renders."""

from __future__ import annotations

# Each command module registers its command(s) on `app`; heavy imports stay inside the command bodies.
from gradmanifold.cli import analyze, check, compare, export, info, plot, record, spectrum, verify  # noqa: F401
from gradmanifold.cli.app import app


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
