"""What the writer needs besides its protocol: row values, messages for write errors, versions, times."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from gradmanifold._version import __version__
from gradmanifold.errors import InputError, StoreWriteError
from gradmanifold.store.manifest import Manifest


def update_row(value: np.ndarray | None, shape: tuple[int, ...], dtype: type, name: str) -> np.ndarray:
    """An update row as stored: NaN when unknown, else the value (non-finite values become NaN too)."""
    if value is None:
        return np.full(shape, np.nan, dtype)
    a = np.asarray(value, np.float64)
    if a.shape != shape:
        raise InputError(f"{name} must have shape {shape}, got {a.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        out: np.ndarray = a.astype(dtype)
    return np.where(np.isfinite(out), out, np.nan).astype(dtype)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def size_text(n: int) -> str:
    """Bytes for messages: exact, with a readable unit beside."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n} bytes, {n / scale:.1f} {unit}"
    return f"{n} bytes"


def missing_parents(path: Path) -> list[Path]:
    """The folders from `path` up that do not exist yet, deepest first."""
    out = []
    p = path.absolute()
    while not os.path.lexists(p) and p != p.parent:
        out.append(p)
        p = p.parent
    return out


@functools.lru_cache(maxsize=1)
def _versions() -> tuple[tuple[str, str], ...]:
    from importlib.metadata import PackageNotFoundError, version

    out = [("gradmanifold", __version__), ("python", sys.version.split()[0])]
    for dist in ("numpy", "zarr", "numba", "torch"):
        module = sys.modules.get(dist)
        have = getattr(module, "__version__", None)
        if isinstance(have, str):  # already imported: no METADATA file to parse
            out.append((dist, str(have)))
            continue
        with contextlib.suppress(PackageNotFoundError):
            out.append((dist, version(dist)))
    return tuple(out)


def versions() -> dict[str, str]:
    """Versions of gradmanifold, python and the installed numpy, zarr, numba, torch (the manifest's record).

    Found once per process (importlib.metadata parses files: ~5 ms), from an imported module's __version__
    where there is one; a package not installed is left out."""
    return dict(_versions())


def write_error(root: Path, m: Manifest, exc: OSError, what: str, need: int) -> StoreWriteError:
    """What happened (file, bytes), why (the OS error), what is safe, and how to go on."""
    # Name the file being written (not the temp name zarr and the manifest write it under first).
    target = re.sub(r"\.[0-9a-f]{32}\.partial$", "", str(exc.filename)) if exc.filename else ""
    where = f" at {target}" if target else ""
    kept = f"{m.n_rows} rows up to step {m.last_step}" if m.n_rows else "no rows yet"
    hint = {
        errno.ENOSPC: "free space on that disk",
        errno.EDQUOT: "free space within your disk quota",
        errno.EFBIG: "raise the file size limit (ulimit -f)",
        errno.EROFS: "record to a writable location",
        errno.EACCES: "make the store writable",
        errno.EPERM: "make the store writable",
    }.get(exc.errno or 0, "fix the cause")
    return StoreWriteError(
        f"{what} to {root} failed{where}: {exc.strerror or exc} (needs about {size_text(need)}); "
        f"the store keeps every committed row ({kept}); {hint}, then flush again or resume the run "
        "(rows not yet committed are lost if the program stops now)"
    )
