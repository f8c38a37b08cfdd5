"""gradmanifold: record projected training gradients and measure how predictable they are.

Public API: Recorder (training loop), open_store (read a store), analyze (the paper's numbers),
ProjectionSpec.
Imports are lazy so that `gradmanifold --help` answers at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gradmanifold._version import __version__

if TYPE_CHECKING:
    from gradmanifold.analysis import analyze
    from gradmanifold.projection import ProjectionSpec
    from gradmanifold.record import Recorder
    from gradmanifold.store import open_store

__all__ = ["ProjectionSpec", "Recorder", "__version__", "analyze", "open_store"]

_LAZY = {
    "Recorder": "gradmanifold.record",
    "open_store": "gradmanifold.store",
    "analyze": "gradmanifold.analysis",
    "ProjectionSpec": "gradmanifold.projection",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gradmanifold' has no attribute {name!r}")
