"""The store: the only package that imports zarr. Layout, manifest (commit point), lock, writer, reader."""

from typing import TYPE_CHECKING, Any

from gradmanifold.store.chunk import FLAG_NONFINITE, FLAG_SKIPPED, ArraySource, Chunk, ChunkSource
from gradmanifold.store.manifest import SCHEMA_VERSION, GroupInfo, Manifest, Segment
from gradmanifold.store.reader import (
    ChunkDamagedError,
    ExcludedChunk,
    StoreChangedError,
    StoreReader,
    open_store,
)

if TYPE_CHECKING:
    from gradmanifold.store.writer import StoreWriter

__all__ = [
    "FLAG_NONFINITE",
    "FLAG_SKIPPED",
    "SCHEMA_VERSION",
    "ArraySource",
    "Chunk",
    "ChunkDamagedError",
    "ChunkSource",
    "ExcludedChunk",
    "GroupInfo",
    "Manifest",
    "Segment",
    "StoreChangedError",
    "StoreReader",
    "StoreWriter",
    "open_store",
]


def __getattr__(name: str) -> Any:
    """StoreWriter on first use: reading a store (info, verify, analyze) never loads the writer."""
    if name == "StoreWriter":
        from gradmanifold.store.writer import StoreWriter

        return StoreWriter
    raise AttributeError(f"module 'gradmanifold.store' has no attribute {name!r}")
