"""One exception tree for the library; the CLI maps each class to a one-line message and its exit code.

Exit codes (documented in README): 0 ok, 1 check failed, 2 usage or input error, 3 corrupt store.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_CORRUPT = 3


def one_line(text: str, limit: int = 120) -> str:
    """Another library's error text as part of a one-line message: whitespace runs made single spaces, cut
    to `limit` characters with "..." at the end."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GradManifoldError(Exception):
    """Root of every error the library raises on purpose."""

    exit_code: int = EXIT_USAGE


class UsageError(GradManifoldError, ValueError):
    """A bad argument: unknown predictor or group, eps outside (0, 1), a malformed option."""


class InputError(GradManifoldError, ValueError):
    """A gradient the recorder cannot take: wrong dtype, shape change of a group, unknown group."""


class StepOrderError(GradManifoldError, ValueError):
    """A step at or below the last committed step while rewinding is not allowed."""


class NonFiniteGradientError(GradManifoldError, FloatingPointError):
    """A gradient holds NaN or Inf and the recorder was told to raise."""


class StoreNotFoundError(GradManifoldError, FileNotFoundError):
    """The path does not exist."""


class NotAStoreError(GradManifoldError, ValueError):
    """The path exists but is not a gradmanifold store."""


class SchemaVersionError(GradManifoldError, ValueError):
    """The store was written by a newer gradmanifold with a schema this version cannot read."""


class EmptyStoreError(GradManifoldError, ValueError):
    """The store holds too few committed steps for the requested analysis."""


class SpecMismatchError(GradManifoldError, ValueError):
    """Reopening a store with a projection spec or groups that differ from the recorded ones."""


class StoreExistsError(GradManifoldError, FileExistsError):
    """The store exists and resume="never" forbids appending to it."""


class StoreLockedError(GradManifoldError, RuntimeError):
    """Another writer holds the store's lock."""


class StoreWriteError(GradManifoldError, OSError):
    """Writing to the store failed (disk full, read-only folder); committed data is intact."""


class CorruptStoreError(GradManifoldError, ValueError):
    """Committed data or the manifest fails its checks (checksum, missing chunk, malformed manifest)."""

    exit_code = EXIT_CORRUPT


class StoreChangedError(GradManifoldError, RuntimeError):
    """The writer replaced rows this reader was reading (a rewind or a repair since it opened the store)."""

    exit_code = EXIT_USAGE


class ChunkDamagedError(CorruptStoreError):
    """One committed chunk of one array fails its check; carries which chunk, rows and steps."""

    def __init__(
        self,
        message: str,
        chunk: int,
        array: str,
        rows: tuple[int, int],
        steps: tuple[int, int] | None,
        reason: str,
    ) -> None:
        super().__init__(message)
        self.chunk = chunk
        self.array = array
        self.rows = rows  # [start, stop)
        self.steps = steps  # first and last step, None when the step array's chunk is damaged too
        self.reason = reason
