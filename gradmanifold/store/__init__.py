"""The store: the only package that imports zarr. Layout, manifest (commit point), lock, writer, reader."""

from gradmanifold.store.chunk import FLAG_NONFINITE, FLAG_SKIPPED, ArraySource, Chunk, ChunkSource
from gradmanifold.store.manifest import SCHEMA_VERSION, GroupInfo, Manifest, Segment
from gradmanifold.store.reader import (
    ChunkDamagedError,
    ExcludedChunk,
    StoreChangedError,
    StoreReader,
    open_store,
)
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
