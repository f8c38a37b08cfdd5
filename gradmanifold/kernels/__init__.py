"""Numba kernels: the only package that imports numba. Each kernel has a plain numpy twin used as test oracle.

numba's on-disk cache (cache=True) needs a writable folder; when the package folder is read-only (a system
install) point NUMBA_CACHE_DIR at a user cache folder before numba is imported, or numba fails at import.
"""

from __future__ import annotations

import os
from pathlib import Path


def _ensure_cache_dir() -> None:
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    here = Path(__file__).resolve().parent
    if os.access(here, os.W_OK):
        return
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = base / "gradmanifold" / "numba"
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    os.environ["NUMBA_CACHE_DIR"] = str(target)


_ensure_cache_dir()
