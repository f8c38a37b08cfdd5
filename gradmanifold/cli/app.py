"""The typer application and the one place where library errors become one-line messages and exit codes."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from gradmanifold.errors import EXIT_USAGE, GradManifoldError

EXIT_INTERNAL = 70  # a bug in gradmanifold: the message asks for a report

app = typer.Typer(
    name="gradmanifold",
    help="Record projected gradients of a training run and measure how predictable they are.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

F = TypeVar("F", bound=Callable[..., Any])


def _printable(text: str) -> str:
    """A path holding bytes that are not UTF-8 (decoded by Python as lone surrogates) with those bytes
    escaped (\\xff), so that printing it never fails."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def write_out(text: str) -> None:
    """Write a command's result to stdout (the only way commands print results)."""
    sys.stdout.write(_printable(text))


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print `gradmanifold: error: message` on stderr and return the Exit to raise."""
    print(_printable(f"gradmanifold: error: {message}"), file=sys.stderr)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Run a command body; map library errors to one stderr line and their exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except GradManifoldError as exc:
            raise fail(_one_line(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:
            raise typer.Exit(0) from None
        except Exception as exc:
            if os.environ.get("GRADMANIFOLD_DEBUG"):
                raise
            raise fail(
                f"internal error: {type(exc).__name__}: {_one_line(exc)} "
                "(a bug in gradmanifold; rerun with GRADMANIFOLD_DEBUG=1 for the traceback and report it)",
                EXIT_INTERNAL,
            ) from None

    return wrapper  # type: ignore[return-value]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
