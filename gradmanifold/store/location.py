"""Where a store lives: a local folder, or an fsspec URL (http(s)://, s3://, gs://, memory://) read-only.

The reader asks a location for the manifest, whether a chunk file is known to be missing, a chunk file's
size and the zarr store to open arrays in. A remote location never lists a folder, never reads or takes the
writer lock and never writes: it fetches manifest.json, each array's zarr.json and the chunk files it reads,
by name. fsspec (and aiohttp for http) are imported only when a URL is opened (the `remote` extra).
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gradmanifold.errors import GradManifoldError, NotAStoreError, StoreNotFoundError, UsageError, one_line
from gradmanifold.store.layout import chunk_file
from gradmanifold.store.manifest import (
    MANIFEST_NAME,
    Manifest,
    StorePermissionError,
    parse_manifest,
    probe,
    read_manifest,
)

#: `scheme://` at the start of a string: a URL (a local path never holds "//" after a first "name:")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
#: schemes whose mangled form (pathlib folds "http://h/x" into "http:/h/x") a writer refuses as well
_KNOWN_SCHEMES = ("http", "https", "s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory", "ftp", "sftp")
REMOTE_EXTRA = "pip install 'gradmanifold[remote]'"


class StoreUnreachableError(StoreNotFoundError):
    """A remote store's server cannot be reached or refuses the request (exit code 2)."""


def url_scheme(path: str | os.PathLike[str]) -> str | None:
    """The scheme of `path` when it is a URL ("http", "s3", "memory", ...), else None (a local path)."""
    if not isinstance(path, str):
        return None
    m = _URL.match(path)
    return m.group(1).lower() if m else None


def require_local(path: str | os.PathLike[str], what: str, advice: str) -> Path:
    """The local folder `path` names (a file:// URL resolved); UsageError for a remote URL, also one that
    pathlib folded ("http:/host/x", or made absolute: "/cwd/http:/host/x": a folder named "http:" is taken
    for a folded URL).

    what: what is refused ("writing to a URL"); advice: what to do instead.
    """
    root = local_path(path)
    if root is None:
        raise UsageError(f"{path}: {what} is not supported; {advice}")
    parts = root.parts
    for i, part in enumerate(parts):
        if part.endswith(":") and part[:-1].lower() in _KNOWN_SCHEMES:  # named as the user wrote it
            raise UsageError(f"{part}//{'/'.join(parts[i + 1 :])}: {what} is not supported; {advice}")
    return root


def local_path(path: str | os.PathLike[str]) -> Path | None:
    """The folder `path` names when it is local (a path, or a file:// URL), None when it is a remote URL."""
    scheme = url_scheme(path)
    if scheme is None:
        return Path(path)
    if scheme != "file":
        return None
    assert isinstance(path, str)
    try:
        parts = urlsplit(path)
    except ValueError as exc:  # "file://[": an unclosed IPv6 host
        raise UsageError(f"{path}: not a usable file:// URL ({exc})") from None
    if parts.netloc not in ("", "localhost"):
        raise UsageError(
            f"{path}: a file:// URL must name a folder on this machine (file:///path/to/run.zarr)"
        )
    from urllib.request import url2pathname  # ~15 ms of imports: only for file:// URLs

    return Path(url2pathname(parts.path))


class StoreLocation(ABC):
    """Where a store lives. `path` is what messages name: the folder (a Path) or the URL (a str)."""

    path: Path | str
    remote: bool = False

    def __str__(self) -> str:
        return str(self.path)

    @abstractmethod
    def open_manifest(self) -> Manifest:
        """Check that a store is there and read its manifest (StoreNotFoundError, NotAStoreError, ...)."""

    @abstractmethod
    def read_manifest(self) -> Manifest:
        """Read the manifest again (after a checksum mismatch: has the writer moved on?)."""

    @abstractmethod
    def known_missing(self, name: str, index: int) -> bool:
        """True when chunk `index` of array `name` is known to have no file without reading it.

        A local folder answers with a stat; a remote location answers False and lets the read itself fail
        (its zarr store raises FileNotFoundError for a missing key instead of filling in zeros), which saves a
        request per chunk.
        """

    @abstractmethod
    def chunk_size(self, name: str, index: int) -> int | None:
        """Bytes of one chunk file, None when unknown (to tell a truncated chunk from another failure)."""

    @abstractmethod
    def zarr_root(self) -> Any:
        """What store.layout.open_arrays opens arrays in: the folder (a Path) or a read-only zarr store."""


class LocalLocation(StoreLocation):
    """A store in a local folder."""

    def __init__(self, root: Path) -> None:
        self.path = root
        self.root = root

    def open_manifest(self) -> Manifest:
        state = probe(self.root)
        if not state.exists:
            raise StoreNotFoundError(f"{self.root} does not exist; record a run first (gradmanifold record)")
        if not state.has_manifest:
            raise NotAStoreError(
                f"{self.root} is not a gradmanifold store (no {MANIFEST_NAME}); "
                "point at a folder written by gradmanifold record or Recorder"
            )
        return read_manifest(self.root)

    def read_manifest(self) -> Manifest:
        return read_manifest(self.root)

    def known_missing(self, name: str, index: int) -> bool:
        # the writer writes a file for every chunk, even an all-zero one: no file is damage
        return not chunk_file(self.root, name, index).is_file()

    def chunk_size(self, name: str, index: int) -> int | None:
        try:
            return chunk_file(self.root, name, index).stat().st_size
        except OSError:
            return None

    def zarr_root(self) -> Path:
        return self.root


class RemoteLocation(StoreLocation):
    """A store at an fsspec URL, read-only: files are fetched by name; nothing is listed, locked, written."""

    remote = True

    def __init__(self, url: str) -> None:
        self.path = self.url = url.rstrip("/")
        self.fs, root = _filesystem(self.url)
        self.root = str(root).rstrip("/")
        self._zarr: Any = None

    def key(self, key: str) -> str:
        """The fsspec path of a file of the store (`key` relative to the store's root)."""
        return f"{self.root}/{key}"

    def open_manifest(self) -> Manifest:
        return self.read_manifest()

    def read_manifest(self) -> Manifest:
        where = f"{self.url}/{MANIFEST_NAME}"
        try:
            data = self.fs.cat_file(self.key(MANIFEST_NAME))
        except FileNotFoundError:
            raise NotAStoreError(
                f"{self.url} is not a gradmanifold store (no {MANIFEST_NAME} at {where}); point at the "
                "folder a gradmanifold record wrote, as the server publishes it"
            ) from None
        except Exception as exc:
            raise remote_error(exc, where) from None
        if not isinstance(data, bytes):
            raise StoreUnreachableError(f"{where}: the server answered {type(data).__name__}, not bytes")
        return parse_manifest(data, where)

    def known_missing(self, name: str, index: int) -> bool:
        return False

    def chunk_size(self, name: str, index: int) -> int | None:
        key = chunk_file(Path(), name, index).as_posix()
        try:
            size = self.fs.info(self.key(key)).get("size")
        except Exception:
            return None
        return int(size) if isinstance(size, int) else None

    def zarr_root(self) -> Any:
        if self._zarr is None:
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper
            from zarr.storage import FsspecStore

            # One (synchronous) fsspec file system serves the manifest and zarr's chunk reads: its connections
            # live and are closed with it. allowed_exceptions=(): a missing chunk raises FileNotFoundError
            # instead of reading as zeros.
            afs = AsyncFileSystemWrapper(self.fs, asynchronous=True)
            self._zarr = FsspecStore(afs, read_only=True, path=self.root, allowed_exceptions=())
        return self._zarr


def locate(path: str | os.PathLike[str]) -> StoreLocation:
    """The location of the store at `path`: a local folder (a path or file:// URL) or a remote URL.

    path: a folder, or a URL fsspec reads (http://, https://, s3://, gs://, memory://, ...).
    Raises UsageError for a URL whose scheme fsspec does not know or whose package is not installed.
    """
    root = local_path(path)
    if root is not None:
        return LocalLocation(root)
    assert isinstance(path, str)
    return RemoteLocation(path)


def _filesystem(url: str) -> tuple[Any, str]:
    """The synchronous fsspec file system for `url` and the store's path in it."""
    try:
        import fsspec
    except ImportError:
        raise UsageError(f"{url}: reading a URL needs fsspec and aiohttp; {REMOTE_EXTRA}") from None
    scheme = url_scheme(url)
    try:
        fs, root = fsspec.url_to_fs(url)
    except ImportError as exc:
        raise UsageError(
            f"{url}: reading {scheme}:// URLs needs a package that is not installed ({_brief(exc)}); "
            f"{REMOTE_EXTRA} installs fsspec and aiohttp (http, https)"
        ) from None
    except ValueError as exc:
        raise UsageError(
            f"{url}: not a URL gradmanifold can read ({_brief(exc)}); use a local folder or an "
            "http(s)://, s3://, gs:// or memory:// URL"
        ) from None
    except Exception as exc:  # a malformed URL: a port that is not a number, bad credentials options, ...
        raise UsageError(f"{url}: not a usable URL ({type(exc).__name__}: {_brief(exc)})") from None
    return fs, str(root)


def remote_error(exc: BaseException, where: str) -> GradManifoldError:
    """A one-line exit-2 error for an exception of fsspec or its backend (aiohttp, s3fs, ...) reading
    `where`: the server is unreachable, refuses access or answers with an error."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "message", None)  # aiohttp's ClientResponseError: the status line's reason
    answer = f"HTTP {status} {reason}" if isinstance(reason, str) and reason else _brief(exc)
    if isinstance(exc, PermissionError) or status in (401, 403):
        return StorePermissionError(f"{where}: access refused ({answer}); check the URL and its credentials")
    if isinstance(status, int):
        return StoreUnreachableError(f"{where}: the server answered {answer}")
    if isinstance(exc, TimeoutError):
        return StoreUnreachableError(f"{where}: the server did not answer in time")
    return StoreUnreachableError(f"{where}: cannot read it ({type(exc).__name__}: {_brief(exc)})")


def _brief(exc: BaseException) -> str:
    return one_line(str(exc), 160) or type(exc).__name__
