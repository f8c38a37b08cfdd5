"""An array's zarr.json read as plain JSON, without importing zarr: the metadata the direct chunk path takes
(and the group's, which `verify` checks the same way).

The reader of a local store reads each array's zarr.json itself and reads its chunk files straight into numpy
(store.rawchunk) when, and only when, the metadata is exactly the plain layout the writer writes: zarr format
3, an array of the data type the store layout names, a regular chunk grid, the "default" or "v2" chunk key
encoding, the `bytes` codec alone (little endian; no endian for 1-byte types), no storage transformer, on a
little-endian machine. Anything else (another codec, an unknown key, a file that is not valid JSON or is
missing) answers None, and the array is opened through zarr, which decides and names any damage.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: the keys zarr v3 array metadata may hold; any other key sends the array through zarr
_KEYS = frozenset(
    {
        "zarr_format",
        "node_type",
        "shape",
        "data_type",
        "chunk_grid",
        "chunk_key_encoding",
        "fill_value",
        "codecs",
        "attributes",
        "storage_transformers",
        "dimension_names",
    }
)
_FLOAT_SPECIALS = ("NaN", "Infinity", "-Infinity")


@dataclass(frozen=True)
class ChunkKeys:
    """A chunk key encoding: zarr v3's "default" ('c' first) or "v2", with its separator ('/' or '.')."""

    default: bool
    separator: str

    def __call__(self, coords: tuple[int, ...]) -> str:
        """The key of the chunk at `coords` (what zarr's encode_chunk_key gives)."""
        if self.default:
            return self.separator.join(("c", *map(str, coords)))
        return self.separator.join(map(str, coords)) or "0"


@dataclass(frozen=True)
class PlainArray:
    """An array whose chunk files hold raw little-endian C-order bytes, as its zarr.json describes it."""

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    encode_key: ChunkKeys


def read_plain(path: Path, dtype: str) -> PlainArray | None:
    """The array whose metadata file is `path` when it is plain (see the module's words) and its data type is
    `dtype` (a store layout name: "float32", "int64", ...); None for anything else, unreadable included."""
    if sys.byteorder != "little":
        return None
    try:
        doc = json.loads(path.read_bytes())
        return _plain(doc, dtype)
    except Exception:  # missing, unreadable, not JSON, nested too deep: zarr opens it and names the problem
        return None


def plain_group(path: Path) -> bool:
    """Whether the file at `path` is a zarr 3 group's metadata as the writer writes it (zarr_format 3,
    node_type "group", attributes an object, no other key). False for anything else, unreadable included:
    zarr then opens it and names any damage."""
    try:
        doc = json.loads(path.read_bytes())
    except Exception:
        return False
    return (
        isinstance(doc, dict)
        and {"zarr_format", "node_type", "attributes"}.issuperset(doc)
        and _is_int(doc.get("zarr_format"), 3, 3)
        and doc.get("node_type") == "group"
        and isinstance(doc.get("attributes", {}), dict)
    )


def _plain(doc: Any, dtype: str) -> PlainArray | None:
    if not isinstance(doc, dict) or not _KEYS.issuperset(doc):
        return None
    if not _is_int(doc.get("zarr_format"), 3, 3) or doc.get("node_type") != "array":
        return None
    if doc.get("data_type") != dtype or doc.get("storage_transformers", []) != []:
        return None
    if not isinstance(doc.get("attributes", {}), dict):
        return None
    shape = _ints(doc.get("shape"), 0)
    chunks = _chunk_shape(doc.get("chunk_grid"))
    if shape is None or chunks is None or len(chunks) != len(shape) or not shape:
        return None
    names = doc.get("dimension_names")
    if names is not None and not (
        isinstance(names, list)
        and len(names) == len(shape)
        and all(n is None or isinstance(n, str) for n in names)
    ):
        return None
    keys = _chunk_keys(doc.get("chunk_key_encoding"))
    dt = np.dtype(dtype)
    if keys is None or not _plain_bytes(doc.get("codecs"), dt.itemsize) or not _fill_ok(doc, dt):
        return None
    return PlainArray(shape, chunks, dt.newbyteorder("="), keys)


def _is_int(x: Any, lo: int, hi: int | None = None) -> bool:
    return type(x) is int and x >= lo and (hi is None or x <= hi)


def _ints(x: Any, lo: int) -> tuple[int, ...] | None:
    if not isinstance(x, list) or not all(_is_int(v, lo) for v in x):
        return None
    return tuple(x)


def _named(x: Any) -> tuple[Any, dict[str, Any]] | None:
    """(name, configuration) of a zarr "named configuration" object; None when it is not one."""
    if not isinstance(x, dict) or not {"name", "configuration"}.issuperset(x):
        return None
    config = x.get("configuration", {})
    return (x.get("name"), config) if isinstance(config, dict) else None


def _chunk_shape(grid: Any) -> tuple[int, ...] | None:
    named = _named(grid)
    if named is None or named[0] != "regular" or set(named[1]) != {"chunk_shape"}:
        return None
    return _ints(named[1]["chunk_shape"], 1)


def _chunk_keys(encoding: Any) -> ChunkKeys | None:
    named = _named(encoding)
    if named is None or named[0] not in ("default", "v2") or not {"separator"}.issuperset(named[1]):
        return None
    default = named[0] == "default"
    separator = named[1].get("separator", "/" if default else ".")
    return ChunkKeys(default, separator) if separator in ("/", ".") else None


def _plain_bytes(codecs: Any, itemsize: int) -> bool:
    """The codecs are the `bytes` codec alone, little endian (no endian only for 1-byte types)."""
    if not isinstance(codecs, list) or len(codecs) != 1:
        return False
    named = _named(codecs[0])
    if named is None or named[0] != "bytes" or not {"endian"}.issuperset(named[1]):
        return False
    endian = named[1].get("endian")
    return endian == "little" or (endian is None and itemsize == 1)


def _fill_ok(doc: dict[str, Any], dt: np.dtype) -> bool:
    """A fill value zarr takes for the data type (its value never matters here: every chunk has a file)."""
    if "fill_value" not in doc:
        return False
    fill = doc["fill_value"]
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return _is_int(fill, int(info.min), int(info.max))
    if dt.kind == "f":
        return fill in _FLOAT_SPECIALS or (
            type(fill) in (int, float) and abs(fill) <= float(np.finfo(dt).max)
        )
    return False
