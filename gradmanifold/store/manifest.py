"""The manifest: the store's commit point, parsed at the boundary into frozen dataclasses.

A reader trusts `n_rows` here, never the zarr array shapes (zarr grows a shape before the data lands).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gradmanifold.errors import CorruptStoreError, SchemaVersionError

MANIFEST_NAME = "manifest.json"
SCHEMA = "gradmanifold.store"
SCHEMA_VERSION = 1
CHECKSUM_ALGORITHM = "crc32c"
OPTIONAL_ROWS = ("loss", "lr")
SEGMENT_STATUSES = ("open", "closed", "failed", "interrupted")


@dataclass(frozen=True)
class GroupInfo:
    """One recorded group: its name and parameter count (the length of its flattened gradient)."""

    name: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size}


@dataclass(frozen=True)
class Segment:
    """One writer's session on the store: who appended which rows, when, and how it ended."""

    host: str
    pid: int
    started: str
    status: str = "open"
    ended: str | None = None
    first_row: int = 0
    rows: int = 0
    first_step: int | None = None
    last_step: int | None = None
    rewinds: int = 0
    nonfinite: int = 0
    skipped: int = 0

    def with_(self, **changes: Any) -> Segment:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
            "status": self.status,
            "ended": self.ended,
            "first_row": self.first_row,
            "rows": self.rows,
            "first_step": self.first_step,
            "last_step": self.last_step,
            "rewinds": self.rewinds,
            "nonfinite": self.nonfinite,
            "skipped": self.skipped,
        }


@dataclass(frozen=True)
class Manifest:
    """Everything a reader needs: schema, projection spec and fingerprint, groups, committed rows, checksums."""

    projection: dict[str, Any]
    fingerprint: str
    groups: tuple[GroupInfo, ...]
    chunk_rows: int
    optional: tuple[str, ...] = ()
    n_rows: int = 0
    last_step: int | None = None
    checksums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    segments: tuple[Segment, ...] = ()
    created: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def k(self) -> int:
        return int(self.projection["k"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def with_(self, **changes: Any) -> Manifest:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "schema_version": self.schema_version,
            "created": self.created,
            "versions": dict(sorted(self.versions.items())),
            "projection": dict(self.projection),
            "fingerprint": self.fingerprint,
            "k": self.k,
            "groups": [g.to_dict() for g in self.groups],
            "chunk_rows": self.chunk_rows,
            "optional": list(self.optional),
            "n_rows": self.n_rows,
            "last_step": self.last_step,
            "checksum_algorithm": CHECKSUM_ALGORITHM,
            "checksums": {name: list(v) for name, v in sorted(self.checksums.items())},
            "segments": [s.to_dict() for s in self.segments],
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> Manifest:
        """Parse and validate; any malformation raises CorruptStoreError naming the field."""
        if not isinstance(d, dict):
            raise CorruptStoreError(f"{where}: expected a JSON object, found {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise CorruptStoreError(f"{where}: 'schema' is {d.get('schema')!r}, expected {SCHEMA!r}")
        version = _int(d, "schema_version", where, lo=1)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{where}: store schema version {version} is newer than this gradmanifold reads "
                f"({SCHEMA_VERSION}); upgrade gradmanifold"
            )
        proj = d.get("projection")
        if not isinstance(proj, dict):
            raise CorruptStoreError(f"{where}: 'projection' must be an object")
        k = _int(proj, "k", f"{where}: projection", lo=1, hi=1 << 20)
        _int(proj, "seed", f"{where}: projection", lo=0, hi=(1 << 64) - 1)
        if proj.get("kind") not in ("sparse", "gaussian"):
            raise CorruptStoreError(f"{where}: projection 'kind' is {proj.get('kind')!r}")
        _int(proj, "s", f"{where}: projection", lo=1, hi=k)
        groups_raw = d.get("groups")
        if not isinstance(groups_raw, list) or not groups_raw:
            raise CorruptStoreError(f"{where}: 'groups' must be a non-empty list")
        groups = []
        for i, g in enumerate(groups_raw):
            if not isinstance(g, dict) or not isinstance(g.get("name"), str):
                raise CorruptStoreError(f"{where}: groups[{i}] must be an object with a string 'name'")
            groups.append(GroupInfo(g["name"], _int(g, "size", f"{where}: groups[{i}]", lo=0)))
        if len({g.name for g in groups}) != len(groups):
            raise CorruptStoreError(f"{where}: group names are not unique")
        chunk_rows = _int(d, "chunk_rows", where, lo=1, hi=1 << 30)
        n_rows = _int(d, "n_rows", where, lo=0, hi=1 << 48)
        last_step = d.get("last_step")
        if last_step is not None and (not isinstance(last_step, int) or isinstance(last_step, bool)):
            raise CorruptStoreError(f"{where}: 'last_step' must be an integer or null")
        optional = d.get("optional", [])
        if not isinstance(optional, list) or any(o not in OPTIONAL_ROWS for o in optional):
            raise CorruptStoreError(f"{where}: 'optional' must list some of {OPTIONAL_ROWS}")
        n_chunks = -(-n_rows // chunk_rows)
        if d.get("checksum_algorithm", CHECKSUM_ALGORITHM) != CHECKSUM_ALGORITHM:
            raise CorruptStoreError(f"{where}: unknown checksum algorithm {d.get('checksum_algorithm')!r}")
        sums_raw = d.get("checksums")
        if not isinstance(sums_raw, dict):
            raise CorruptStoreError(f"{where}: 'checksums' must be an object")
        checksums: dict[str, tuple[str, ...]] = {}
        for name in ("proj", "sqnorm", "step", "flags", *optional):
            v = sums_raw.get(name)
            if not isinstance(v, list) or len(v) != n_chunks or not all(isinstance(s, str) for s in v):
                raise CorruptStoreError(
                    f"{where}: checksums[{name!r}] must list {n_chunks} strings (one per committed chunk)"
                )
            checksums[name] = tuple(v)
        segs_raw = d.get("segments", [])
        if not isinstance(segs_raw, list):
            raise CorruptStoreError(f"{where}: 'segments' must be a list")
        segments = []
        for i, s in enumerate(segs_raw):
            try:
                seg = Segment(**s)
            except TypeError as exc:
                raise CorruptStoreError(f"{where}: segments[{i}] is malformed ({exc})") from None
            segments.append(seg)
        versions = d.get("versions", {})
        if not isinstance(versions, dict):
            raise CorruptStoreError(f"{where}: 'versions' must be an object")
        return cls(
            projection={"k": k, "seed": proj["seed"], "kind": proj["kind"], "s": proj["s"]},
            fingerprint=str(d.get("fingerprint", "")),
            groups=tuple(groups),
            chunk_rows=chunk_rows,
            optional=tuple(optional),
            n_rows=n_rows,
            last_step=last_step,
            checksums=checksums,
            segments=tuple(segments),
            created=str(d.get("created", "")),
            versions={str(a): str(b) for a, b in versions.items()},
            schema_version=version,
        )


def _int(d: dict[str, Any], key: str, where: str, lo: int | None = None, hi: int | None = None) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise CorruptStoreError(f"{where}: {key!r} must be an integer, found {type(v).__name__}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise CorruptStoreError(f"{where}: {key!r} = {v} is out of range")
    return v


def read_manifest(root: Path) -> Manifest:
    """Load and validate root/manifest.json."""
    path = root / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CorruptStoreError(f"{path}: manifest is not UTF-8 text") from None
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CorruptStoreError(f"{path}: manifest is not valid JSON ({exc.__class__.__name__})") from None
    return Manifest.from_dict(raw, where=str(path))


def publish_manifest(root: Path, manifest: Manifest, fsync: bool = True) -> None:
    """Atomically replace root/manifest.json: write a temp file, fsync, rename, fsync the folder."""
    path = root / MANIFEST_NAME
    tmp = root / f"{MANIFEST_NAME}.{uuid.uuid4().hex}.partial"
    data = (json.dumps(manifest.to_dict(), indent=1, sort_keys=True) + "\n").encode()
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
