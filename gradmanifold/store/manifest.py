"""The manifest: the store's commit point, parsed at the boundary into frozen dataclasses.

A reader trusts `n_rows` here, never the zarr array shapes (zarr grows a shape before the data lands).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gradmanifold.errors import CorruptStoreError, NotAStoreError, SchemaVersionError, StoreNotFoundError
from gradmanifold.store.fields import (
    MISSING,
    check_text,
    int_field,
    is_crc,
    kind,
    opt_int,
    opt_str,
    short,
    str_field,
)
from gradmanifold.store.layout import ROWS, TABLE_BY_NAME, TABLES, write_file
from gradmanifold.store.lock import LOCK_NAME

MANIFEST_NAME = "manifest.json"
SCHEMA = "gradmanifold.store"
SCHEMA_VERSION = 2  # 2: tables besides the main rows ("tables"); version-1 stores are read and continued
CHECKSUM_ALGORITHM = "crc32c"
#: how a writer segment ended: still "open" (or killed: the next writer marks it "interrupted"), "closed",
#: "failed" (the program raised), or "repaired" (a `gradmanifold repair` that dropped rows)


class StorePermissionError(StoreNotFoundError, PermissionError):
    """The store (or its manifest) cannot be read with this user's permissions (exit code 2)."""


SEGMENT_STATUSES = ("open", "closed", "failed", "interrupted", "repaired")
BASE_ARRAYS = TABLE_BY_NAME[ROWS].required
OPTIONAL_ROWS = TABLE_BY_NAME[ROWS].optional
#: how a store's update_sqnorm was obtained: "exact" (the previous parameters were kept) or "projected" (only
#: R theta was kept: update norms unknown, NaN)
UPDATE_NORMS = ("exact", "projected")
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_ROWS = 1 << 48
MAX_CHUNK_ROWS = 1 << 30
MAX_GROUPS = 1 << 16


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
        # dataclasses.replace costs ~10 us; the writer calls this at every appended row
        unknown = changes.keys() - self.__dict__.keys()
        if unknown:
            raise TypeError(f"Segment has no field(s) {sorted(unknown)}")
        new = object.__new__(Segment)
        new.__dict__.update(self.__dict__)
        new.__dict__.update(changes)
        return new

    @classmethod
    def from_dict(cls, s: Any, where: str) -> Segment:
        """Parse one segment; wrong types or values raise CorruptStoreError."""
        if not isinstance(s, dict):
            raise CorruptStoreError(f"{where} must be an object, found {kind(s)}")
        status = s.get("status", "open")
        if status not in SEGMENT_STATUSES:
            raise CorruptStoreError(
                f"{where}: 'status' is {short(status)}, expected one of {list(SEGMENT_STATUSES)}"
            )
        seg = cls(
            host=str_field(s, "host", where),
            pid=int_field(s, "pid", where, lo=0, hi=INT64_MAX),
            started=str_field(s, "started", where),
            status=status,
            ended=opt_str(s, "ended", where),
            first_row=int_field(s, "first_row", where, lo=0, hi=MAX_ROWS, default=0),
            rows=int_field(s, "rows", where, lo=0, hi=INT64_MAX, default=0),
            first_step=opt_int(s, "first_step", where, lo=INT64_MIN, hi=INT64_MAX),
            last_step=opt_int(s, "last_step", where, lo=INT64_MIN, hi=INT64_MAX),
            rewinds=int_field(s, "rewinds", where, lo=0, hi=INT64_MAX, default=0),
            nonfinite=int_field(s, "nonfinite", where, lo=0, hi=INT64_MAX, default=0),
            skipped=int_field(s, "skipped", where, lo=0, hi=INT64_MAX, default=0),
        )
        for text in (seg.host, seg.started, seg.ended or ""):
            check_text(text, where)
        return seg

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
class TableState:
    """What is committed in one table (row axis): its sizes, rows, last step and per-chunk checksums.

    `dims` gives the trailing sizes its arrays are declared with (store.layout.TABLES); `arrays` the arrays it
    holds (the required ones plus the optional ones asked for); `meta` what the table's rows mean (for layer
    tables: the layer names and matrix shapes), fixed when the table is created.
    """

    chunk_rows: int
    dims: dict[str, int]
    arrays: tuple[str, ...]
    n_rows: int = 0
    last_step: int | None = None
    checksums: dict[str, tuple[str, ...]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def with_(self, **changes: Any) -> TableState:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_rows": self.chunk_rows,
            "dims": dict(self.dims),
            "arrays": list(self.arrays),
            "n_rows": self.n_rows,
            "last_step": self.last_step,
            "checksums": {name: list(v) for name, v in sorted(self.checksums.items())},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, name: str, d: Any, where: str) -> TableState:
        """Parse one table's entry; it must match the table's declaration in the registry."""
        spec = TABLE_BY_NAME.get(name)
        if spec is None or name == ROWS:
            raise CorruptStoreError(f"{where}: unknown table {short(name)}")
        if not isinstance(d, dict):
            raise CorruptStoreError(f"{where} must be an object, found {kind(d)}")
        chunk_rows = int_field(d, "chunk_rows", where, lo=1, hi=MAX_CHUNK_ROWS)
        dims_raw = d.get("dims", MISSING)
        if not isinstance(dims_raw, dict) or set(dims_raw) != set(spec.dims):
            raise CorruptStoreError(f"{where}: 'dims' must give exactly {list(spec.dims)}")
        dims = {k: int_field(dims_raw, k, f"{where}: dims", lo=1, hi=1 << 20) for k in spec.dims}
        arrays = d.get("arrays", MISSING)
        if (
            not isinstance(arrays, list)
            or not set(spec.required) <= set(arrays)
            or not set(arrays) <= {a.name for a in spec.arrays}
            or len(set(arrays)) != len(arrays)
        ):
            raise CorruptStoreError(
                f"{where}: 'arrays' must list {list(spec.required)} and some of {list(spec.optional)}, "
                "once each"
            )
        n_rows = int_field(d, "n_rows", where, lo=0, hi=MAX_ROWS)
        last_step = opt_int(d, "last_step", where, lo=INT64_MIN, hi=INT64_MAX)
        if (last_step is None) != (n_rows == 0):
            raise CorruptStoreError(f"{where}: 'last_step' is {last_step} but 'n_rows' is {n_rows}")
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise CorruptStoreError(f"{where}: 'meta' must be an object, found {kind(meta)}")
        _check_layers(meta, dims, where)
        return cls(
            chunk_rows=chunk_rows,
            dims=dims,
            arrays=tuple(arrays),
            n_rows=n_rows,
            last_step=last_step,
            checksums=_checksums(d.get("checksums", MISSING), arrays, -(-n_rows // chunk_rows), where),
            meta=meta,
        )


def _check_layers(meta: dict[str, Any], dims: dict[str, int], where: str) -> None:
    """A layer (or parameter) table's meta names each layer once, with its shape ([m, n] for layers)."""
    for dim in ("layers", "params"):
        if dim not in dims:
            continue
        layers = meta.get(dim)
        if not isinstance(layers, list) or len(layers) != dims[dim]:
            raise CorruptStoreError(f"{where}: meta {dim!r} must list {dims[dim]} entries")
        for i, layer in enumerate(layers):
            lw = f"{where}: meta {dim}[{i}]"
            if not isinstance(layer, dict):
                raise CorruptStoreError(f"{lw} must be an object, found {kind(layer)}")
            check_text(str_field(layer, "name", lw), lw)
            shape = layer.get("shape")
            if (
                not isinstance(shape, list)
                or (dim == "layers" and len(shape) != 2)
                or not all(
                    isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= INT64_MAX for x in shape
                )
            ):
                raise CorruptStoreError(f"{lw}: 'shape' must be a list of sizes ([m, n] for a layer)")
        if len({layer["name"] for layer in layers}) != len(layers):
            raise CorruptStoreError(f"{where}: meta {dim} names are not unique")


def _checksums(raw: Any, names: Any, n_chunks: int, where: str) -> dict[str, tuple[str, ...]]:
    """Per-chunk checksums of each named array: n_chunks strings of 8 hex digits each."""
    if not isinstance(raw, dict):
        raise CorruptStoreError(f"{where}: 'checksums' must be an object, found {kind(raw)}")
    out: dict[str, tuple[str, ...]] = {}
    for name in names:
        v = raw.get(name)
        if (
            not isinstance(v, list)
            or len(v) != n_chunks
            or not all(isinstance(c, str) and is_crc(c) for c in v)
        ):
            raise CorruptStoreError(
                f"{where}: checksums[{name!r}] must list {n_chunks} checksums of 8 hex digits "
                "(one per committed chunk)"
            )
        out[name] = tuple(v)
    return out


@dataclass(frozen=True)
class Manifest:
    """What a reader needs: schema, projection spec and fingerprint, groups, committed rows, checksums."""

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
    # Incremented whenever committed rows are replaced (a rewind over committed rows, a repair); rows
    # before `replaced_from` (the first row the latest increment replaced) kept their bytes. A reader
    # holding an older manifest uses this to tell "the writer moved on" from "the data is damaged".
    generation: int = 0
    replaced_from: int = 0
    # Tables besides the main rows (store.layout.TABLES), by name; the main table's state is the fields above.
    tables: dict[str, TableState] = field(default_factory=dict)
    # With the update arrays: how their norms were obtained (UPDATE_NORMS); None without them.
    updates: str | None = None

    @property
    def k(self) -> int:
        return int(self.projection["k"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def with_(self, **changes: Any) -> Manifest:
        return replace(self, **changes)

    @property
    def table_names(self) -> tuple[str, ...]:
        """The tables this store holds: the main rows first, then the others in registry order."""
        return (ROWS, *(t.name for t in TABLES if t.name in self.tables))

    def table(self, name: str) -> TableState:
        """The committed state of one table (the main rows are read from the top-level fields)."""
        if name != ROWS:
            return self.tables[name]
        spec = TABLE_BY_NAME[ROWS]
        return TableState(
            chunk_rows=self.chunk_rows,
            dims={"groups": len(self.groups), "k": self.k},
            arrays=(*spec.required, *self.optional),
            n_rows=self.n_rows,
            last_step=self.last_step,
            checksums=self.checksums,
        )

    def with_table(self, name: str, state: TableState) -> Manifest:
        """This manifest with one table's committed state replaced (or a table added: schema version 2)."""
        if name == ROWS:
            return self.with_(n_rows=state.n_rows, last_step=state.last_step, checksums=state.checksums)
        return self.with_(tables={**self.tables, name: state}, schema_version=max(self.schema_version, 2))

    def to_dict(self) -> dict[str, Any]:
        extra = (
            {"tables": {n: t.to_dict() for n, t in self.tables.items()}} if self.schema_version >= 2 else {}
        )
        return extra | {
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
            "generation": self.generation,
            "replaced_from": self.replaced_from,
            "updates": self.updates,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> Manifest:
        """Parse and validate; any malformation raises CorruptStoreError naming the field.

        Every field is checked for type and range, so a damaged manifest never reaches the reader as a
        TypeError or a giant allocation. Unknown keys are ignored (a newer writer of the same schema version
        may add optional fields).
        """
        if not isinstance(d, dict):
            raise CorruptStoreError(f"{where}: expected a JSON object, found {kind(d)}")
        if d.get("schema") != SCHEMA:
            raise CorruptStoreError(f"{where}: 'schema' is {short(d.get('schema'))}, expected {SCHEMA!r}")
        version = int_field(d, "schema_version", where, lo=1, hi=1 << 31)
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{where}: store schema version {version} is newer than this gradmanifold reads "
                f"({SCHEMA_VERSION}); upgrade gradmanifold"
            )
        proj = d.get("projection", MISSING)
        if not isinstance(proj, dict):
            raise CorruptStoreError(f"{where}: 'projection' must be an object, found {kind(proj)}")
        k = int_field(proj, "k", f"{where}: projection", lo=1, hi=1 << 20)
        seed = int_field(proj, "seed", f"{where}: projection", lo=0, hi=(1 << 64) - 1)
        proj_kind = proj.get("kind")
        if proj_kind not in ("sparse", "gaussian"):
            raise CorruptStoreError(
                f"{where}: projection 'kind' is {short(proj_kind)}, expected 'sparse' or 'gaussian'"
            )
        s = int_field(proj, "s", f"{where}: projection", lo=1, hi=k)
        fingerprint = str_field(d, "fingerprint", where)
        groups_raw = d.get("groups", MISSING)
        if not isinstance(groups_raw, list) or not groups_raw:
            raise CorruptStoreError(f"{where}: 'groups' must be a non-empty list, found {kind(groups_raw)}")
        if len(groups_raw) > MAX_GROUPS:
            raise CorruptStoreError(
                f"{where}: 'groups' lists {len(groups_raw)} groups (at most {MAX_GROUPS})"
            )
        groups = []
        for i, g in enumerate(groups_raw):
            gw = f"{where}: groups[{i}]"
            if not isinstance(g, dict):
                raise CorruptStoreError(f"{gw} must be an object, found {kind(g)}")
            name = str_field(g, "name", gw)
            if not name:
                raise CorruptStoreError(f"{gw}: 'name' is empty")
            groups.append(GroupInfo(name, int_field(g, "size", gw, lo=0, hi=INT64_MAX)))
        if len({g.name for g in groups}) != len(groups):
            raise CorruptStoreError(f"{where}: group names are not unique")
        chunk_rows = int_field(d, "chunk_rows", where, lo=1, hi=MAX_CHUNK_ROWS)
        n_rows = int_field(d, "n_rows", where, lo=0, hi=MAX_ROWS)
        last_step = opt_int(d, "last_step", where, lo=INT64_MIN, hi=INT64_MAX)
        if (last_step is None) != (n_rows == 0):
            raise CorruptStoreError(
                f"{where}: 'last_step' is {last_step} but 'n_rows' is {n_rows} "
                "(a store with rows has a last step, an empty one has none)"
            )
        optional = d.get("optional", [])
        if (
            not isinstance(optional, list)
            or any(not isinstance(o, str) or o not in OPTIONAL_ROWS for o in optional)
            or len(set(optional)) != len(optional)
        ):
            raise CorruptStoreError(f"{where}: 'optional' must list some of {list(OPTIONAL_ROWS)}, once each")
        n_chunks = -(-n_rows // chunk_rows)
        algorithm = d.get("checksum_algorithm", CHECKSUM_ALGORITHM)
        if algorithm != CHECKSUM_ALGORITHM:
            raise CorruptStoreError(f"{where}: unknown checksum algorithm {short(algorithm)}")
        sums_raw = d.get("checksums", MISSING)
        if not isinstance(sums_raw, dict):
            raise CorruptStoreError(f"{where}: 'checksums' must be an object, found {kind(sums_raw)}")
        checksums = _checksums(sums_raw, (*BASE_ARRAYS, *optional), n_chunks, where)
        updates = d.get("updates")
        if (updates is None) == ("update" in optional) or (
            updates is not None and updates not in UPDATE_NORMS
        ):
            raise CorruptStoreError(
                f"{where}: 'updates' is {short(updates)}; a store with the update arrays says how their "
                f"norms were obtained ({' or '.join(map(repr, UPDATE_NORMS))}), one without them says null"
            )
        if ("update" in optional) != ("update_sqnorm" in optional):
            raise CorruptStoreError(f"{where}: 'optional' lists one of 'update' and 'update_sqnorm' alone")
        tables_raw = d.get("tables", {}) if version >= 2 else {}
        if not isinstance(tables_raw, dict):
            raise CorruptStoreError(f"{where}: 'tables' must be an object, found {kind(tables_raw)}")
        tables = {
            str(n): TableState.from_dict(n, t, f"{where}: tables[{short(n)}]") for n, t in tables_raw.items()
        }
        segs_raw = d.get("segments", [])
        if not isinstance(segs_raw, list):
            raise CorruptStoreError(f"{where}: 'segments' must be a list, found {kind(segs_raw)}")
        segments = tuple(Segment.from_dict(s, f"{where}: segments[{i}]") for i, s in enumerate(segs_raw))
        versions = d.get("versions", {})
        if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
            raise CorruptStoreError(f"{where}: 'versions' must be an object of strings")
        generation = int_field(d, "generation", where, lo=0, hi=INT64_MAX, default=0)
        replaced_from = int_field(d, "replaced_from", where, lo=0, hi=MAX_ROWS, default=0)
        created = str_field(d, "created", where, default="")
        k_top = d.get("k", k)
        if not isinstance(k_top, int) or isinstance(k_top, bool) or k_top != k:
            raise CorruptStoreError(f"{where}: 'k' is {short(k_top)} but the projection's k is {k}")
        for text in (fingerprint, created, *(g.name for g in groups)):
            check_text(text, where)
        return cls(
            projection={"k": k, "seed": seed, "kind": proj_kind, "s": s},
            fingerprint=fingerprint,
            groups=tuple(groups),
            chunk_rows=chunk_rows,
            optional=tuple(optional),
            n_rows=n_rows,
            last_step=last_step,
            checksums=checksums,
            segments=segments,
            created=created,
            versions={str(a): str(b) for a, b in versions.items()},
            schema_version=version,
            generation=generation,
            replaced_from=replaced_from,
            tables=tables,
            updates=updates,
        )


@dataclass(frozen=True)
class PathState:
    """What is at a store path: nothing, a file, a folder (empty or not), with or without a manifest."""

    exists: bool
    is_dir: bool
    empty: bool
    has_manifest: bool
    has_lock: bool


def probe(root: Path) -> PathState:
    """Look at `root` without raising OSError: a name too long, a loop, a parent that cannot be searched
    become StoreNotFoundError (or StorePermissionError), each with the reason."""
    try:
        if not root.exists():
            return PathState(False, False, True, False, False)
        if not root.is_dir():
            return PathState(True, False, False, False, False)
        names = {p.name for p in root.iterdir()}
        has_manifest = MANIFEST_NAME in names and (root / MANIFEST_NAME).is_file()
        return PathState(True, True, not names, has_manifest, LOCK_NAME in names)
    except PermissionError as exc:
        raise StorePermissionError(
            f"{root}: cannot look at it ({exc.strerror}); check the permissions of it and its parents"
        ) from None
    except OSError as exc:
        raise StoreNotFoundError(f"{root}: not a usable path ({exc.strerror or exc})") from None


DAMAGED_MANIFEST_FIX = (
    "the manifest is damaged and the store cannot be read without it: restore manifest.json from a copy "
    "(`gradmanifold repair` keeps the one it replaces in its backup folder)"
)


def read_manifest(root: Path) -> Manifest:
    """Load and validate root/manifest.json."""
    path = root / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotAStoreError(
            f"{root} is not a gradmanifold store (no {MANIFEST_NAME}); "
            "point at a folder written by gradmanifold record or Recorder"
        ) from None
    except PermissionError as exc:
        raise StorePermissionError(
            f"{path}: cannot read the manifest ({exc.strerror}); check its permissions"
        ) from None
    except OSError as exc:
        raise CorruptStoreError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    return parse_manifest(data, str(path))


def parse_manifest(data: bytes, path: str) -> Manifest:
    """Decode and validate the bytes of a manifest; `path` names where they came from (a file or a URL)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptStoreError(f"{path}: manifest is not UTF-8 text; {DAMAGED_MANIFEST_FIX}") from None
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or an integer with too many digits
        raise CorruptStoreError(
            f"{path}: manifest is not valid JSON ({exc.__class__.__name__}); {DAMAGED_MANIFEST_FIX}"
        ) from None
    try:
        return Manifest.from_dict(raw, where=path)
    except CorruptStoreError as exc:
        raise CorruptStoreError(f"{exc}; {DAMAGED_MANIFEST_FIX}") from None


def publish_manifest(root: Path, manifest: Manifest, fsync: bool = True) -> None:
    """Atomically replace root/manifest.json: write a temp file, fsync, rename, fsync the folder."""
    data = (json.dumps(manifest.to_dict(), indent=1, sort_keys=True) + "\n").encode()
    write_file(root / MANIFEST_NAME, data, fsync=fsync)
    if fsync:
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
