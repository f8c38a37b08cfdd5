"""Numba kernels: the only package that imports numba. Each kernel has a plain numpy twin used as test oracle.

numba's on-disk cache (cache=True) needs a writable folder; when the package folder is read-only (a system
install) point NUMBA_CACHE_DIR at a user cache folder before numba is imported, or numba fails at import.

numba's first compilation or cache load imports numba.np.arraymath, whose import-time BLAS check imports
scipy.linalg: ~0.25 s (half of it scipy importing numpy.f2py) and ~30 MB, for a check that gradmanifold's
kernels never need (none calls BLAS). `_import_arraymath` answers that check without the import; scipy is a
dependency, so the answer is the one the check would give, and numba still imports scipy's BLAS itself when a
kernel (anyone's) calls it.
"""

from __future__ import annotations

import os
import sys
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


def _import_arraymath() -> None:
    """Import numba.np.arraymath with numba.np.linalg.ensure_blas answering "available" without importing
    scipy.linalg, then put the real function back (in both modules). Nothing is done when arraymath or
    scipy.linalg is already imported, or when numba's layout differs from the one this expects."""
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return
    try:
        import numba.np.linalg as nplinalg
    except Exception:  # numba's own import error surfaces where a kernel module imports numba
        return
    real = getattr(nplinalg, "ensure_blas", None)
    if not callable(real):
        return
    nplinalg.ensure_blas = lambda: None
    try:
        import numba.np.arraymath as arraymath
    except Exception:
        return
    finally:
        nplinalg.ensure_blas = real
    if getattr(arraymath, "ensure_blas", None) is not None:
        arraymath.ensure_blas = real


_ensure_cache_dir()
_import_arraymath()
