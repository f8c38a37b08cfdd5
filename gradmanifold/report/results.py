"""The results of `info`, `verify`, `repair` and `record` as typed models with versioned JSON schemas.

Like the analysis (`gradmanifold.analysis/1`, report/json.py), each JSON object carries a `schema` key:

    gradmanifold.info/1     InfoResult (what a store holds)
    gradmanifold.verify/1   store.verify.VerifyReport.to_dict() plus the schema key
    gradmanifold.repair/1   store.repair.RepairResult.to_dict() plus the schema key
    gradmanifold.record/1   RecordSummary (what `record --from` or `--synthetic` wrote)

Within a version keys are only ever added (docs/JSON.md). A key the store layer adds before this module names
it is kept as it is (`extra`), so the JSON never loses what the library reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

INFO_SCHEMA = "gradmanifold.info/1"
VERIFY_SCHEMA = "gradmanifold.verify/1"
REPAIR_SCHEMA = "gradmanifold.repair/1"
RECORD_SCHEMA = "gradmanifold.record/1"


def document(schema: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON object of one of the schemas above: the `schema` key, then the body's keys.

    schema: the schema id (e.g. VERIFY_SCHEMA); body: the result as plain data (its `to_dict()`).
    """
    return {"schema": schema, **{k: v for k, v in body.items() if k != "schema"}}


@dataclass(frozen=True)
class StoreGroup:
    """One recorded group of a store: its parameter count and its flagged rows."""

    name: str
    size: int
    nonfinite_rows: int
    skipped_rows: int


@dataclass(frozen=True)
class InfoResult:
    """`gradmanifold info`: what a store holds (StoreReader.info() as a typed model)."""

    path: str
    schema_version: int
    n_steps: int
    first_step: int | None
    last_step: int | None
    k: int
    projection: Mapping[str, Any]
    fingerprint: str | None
    groups: tuple[StoreGroup, ...]
    optional: tuple[str, ...]
    updates: Any  # how the stored parameter updates' norms were had, or None
    tables: Mapping[str, Mapping[str, int]]  # tables besides the main rows: rows and dimensions
    chunk_rows: int
    n_chunks: int
    size_bytes: int | None  # None: not known (a store at a URL is never listed)
    created: str | None
    versions: Mapping[str, Any]
    segments: tuple[Mapping[str, Any], ...]
    writer: Mapping[str, Any] | None  # the live writer holding the store, if any
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this model does not name, kept

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InfoResult:
        """The model of a store description (StoreReader.info()); unknown keys go to `extra`.

        d: the description, as returned by StoreReader.info() or read back from `info --json`.
        """
        named = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            path=str(d.get("path")),
            schema_version=int(d.get("schema_version") or 0),
            n_steps=int(d.get("n_steps") or 0),
            first_step=d.get("first_step"),
            last_step=d.get("last_step"),
            k=int(d.get("k") or 0),
            projection=dict(d.get("projection") or {}),
            fingerprint=d.get("fingerprint"),
            groups=tuple(
                StoreGroup(
                    str(g["name"]),
                    int(g.get("size", 0)),
                    int(g.get("nonfinite_rows", 0)),
                    int(g.get("skipped_rows", 0)),
                )
                for g in d.get("groups") or ()
            ),
            optional=tuple(d.get("optional") or ()),
            updates=d.get("updates"),
            tables=dict(d.get("tables") or {}),
            chunk_rows=int(d.get("chunk_rows") or 0),
            n_chunks=int(d.get("n_chunks") or 0),
            size_bytes=d.get("size_bytes"),
            created=d.get("created"),
            versions=dict(d.get("versions") or {}),
            segments=tuple(d.get("segments") or ()),
            writer=d.get("writer"),
            extra={k: v for k, v in d.items() if k not in named and k != "schema"},
        )

    def to_dict(self) -> dict[str, Any]:
        """The `gradmanifold.info/1` JSON object."""
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        body["groups"] = [
            {
                "name": g.name,
                "size": g.size,
                "nonfinite_rows": g.nonfinite_rows,
                "skipped_rows": g.skipped_rows,
            }
            for g in self.groups
        ]
        body["optional"] = list(self.optional)
        body["segments"] = [dict(s) for s in self.segments]
        return document(INFO_SCHEMA, {**body, **self.extra})


_INGEST_KEYS = (
    "files_ingested", "files_skipped", "files_deleted", "first_step", "last_step", "stopped", "groups",
)  # fmt: skip


@dataclass(frozen=True)
class RecordSummary:
    """What `gradmanifold record` wrote from dumps (`mode` dumps, stacked or follow) or a synthetic task.

    The ingest counts are set for dumps, stacked and follow, `task` and `ground_truth` for synthetic; the
    JSON has only the keys of its mode.
    """

    store: str
    mode: str  # synthetic | dumps | stacked | follow
    steps_recorded: int
    files_ingested: int | None = None
    files_skipped: int | None = None
    files_deleted: int | None = None
    first_step: int | None = None
    last_step: int | None = None
    stopped: str | None = None  # follow: why it stopped (done, idle ..., sentinel ...)
    groups: tuple[str, ...] = ()
    task: Mapping[str, Any] | None = None  # synthetic: the task's name, size, seed and options
    ground_truth: Mapping[str, Any] | None = None  # synthetic: the exact values the analysis should find
    extra: Mapping[str, Any] = field(default_factory=dict)  # keys this model does not name, kept

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RecordSummary:
        """The model of a summary dict (ingest's IngestReport.to_dict(), or a synthetic run's summary).

        d: the summary; keys this model does not name go to `extra`.
        """
        named = {f.name for f in fields(cls)} - {"extra"}
        kw: dict[str, Any] = {k: d[k] for k in named if k in d}
        kw["store"], kw["mode"] = str(d.get("store")), str(d.get("mode"))
        kw["steps_recorded"] = int(d.get("steps_recorded") or 0)
        kw["groups"] = tuple(d.get("groups") or ())
        return cls(**kw, extra={k: v for k, v in d.items() if k not in named and k != "schema"})

    def to_dict(self) -> dict[str, Any]:
        """The `gradmanifold.record/1` JSON object: the common keys and those of the mode."""
        body: dict[str, Any] = {"store": self.store, "mode": self.mode, "steps_recorded": self.steps_recorded}
        if self.mode == "synthetic":
            body["task"], body["ground_truth"] = self.task, self.ground_truth
        else:
            body.update({k: getattr(self, k) for k in _INGEST_KEYS})
            body["groups"] = list(self.groups)
        return document(RECORD_SCHEMA, {**body, **self.extra})
