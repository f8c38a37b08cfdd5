"""Committed rows of a local chunk file read straight into a numpy array: no zarr decode, no per-chunk copy.

Only for arrays whose zarr metadata says a chunk file holds the chunk's raw C-order bytes: the `bytes` codec
alone, little endian, no compression, no storage transformer, on a little-endian machine
(store.layout.raw_layout decides). Everything else, and every remote store, is read through zarr. The file's
size is checked against the whole chunk first (a truncated or overlong file is damage, named as the zarr path
names it); then only the leading rows the caller asks for are read, in one large sequential read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gradmanifold.errors import one_line


@dataclass(frozen=True)
class RawLayout:
    """Where the chunk files of one array lie and what each holds when it holds the chunk's raw bytes."""

    dtype: np.dtype
    chunk_shape: tuple[int, ...]
    folder: str  # the array's folder
    encode_key: Callable[[tuple[int, ...]], str]  # chunk coordinates -> '/'-separated path under `folder`
    chunk_bytes: int = field(init=False)  # bytes of one uncompressed chunk file

    def __post_init__(self) -> None:
        size = int(np.prod(self.chunk_shape, dtype=np.int64)) * self.dtype.itemsize
        object.__setattr__(self, "chunk_bytes", size)

    def file(self, index: int) -> str:
        """The file of chunk `index` along the rows (every other chunk coordinate is 0)."""
        key = self.encode_key((index, *(0,) * (len(self.chunk_shape) - 1)))
        return os.path.join(self.folder, *key.split("/"))


def size_problem(size: int, want: int) -> str:
    """Why a chunk file of `size` bytes cannot be a chunk of `want` bytes (the words the zarr path uses)."""
    cut = "truncated" if size < want else "overlong"
    return f"{cut} ({size} bytes, an uncompressed chunk has {want})"


def read_rows(path: str, layout: RawLayout, rows: int) -> tuple[np.ndarray | None, str]:
    """The first `rows` rows of the chunk file at `path` (a fresh, writable array) and "", or (None, why).

    why: "missing" (no file), "truncated (...)" / "overlong (...)" (not the size of a whole chunk), or
    "unreadable (...)" (the read failed).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None, "missing"  # the writer writes a file for every chunk, even an all-zero one
    except OSError as exc:
        return None, _unreadable(exc)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            return None, "missing"  # not a chunk file
        want = layout.chunk_bytes
        if info.st_size != want:
            return None, size_problem(info.st_size, want)
        out = np.empty((rows, *layout.chunk_shape[1:]), layout.dtype)
        view = out.data.cast("B")  # the array's bytes, written in place
        got = os.readv(fd, [view])  # one large sequential read (the kernel may return less: go on)
        while got < len(view):
            n = os.readv(fd, [view[got:]])
            if not n:  # the file shrank under us (changed in place): damage, judged by its size now
                return None, size_problem(min(os.fstat(fd).st_size, got), want)
            got += n
    except OSError as exc:
        return None, _unreadable(exc)
    finally:
        os.close(fd)
    return out, ""


def _unreadable(exc: OSError) -> str:
    return f"unreadable ({type(exc).__name__}: {one_line(str(exc)) or type(exc).__name__})"
