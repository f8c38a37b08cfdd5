"""Command line: the only package that imports typer. One module per command; each parses, calls, renders."""

from __future__ import annotations

from gradmanifold.cli.app import app

# Command modules register themselves on `app`; heavy imports stay inside the command bodies.
for _name in ("record", "analyze", "check", "info", "verify"):
    try:
        __import__(f"gradmanifold.cli.{_name}")
    except ModuleNotFoundError as _exc:  # a command module not written yet
        if _exc.name != f"gradmanifold.cli.{_name}":
            raise


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
