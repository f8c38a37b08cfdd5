"""`gradmanifold verify RUN.zarr` (every check, exit 3 on damage) and `gradmanifold repair RUN.zarr`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gradmanifold.cli.app import app, fail, handle_errors, write_out
from gradmanifold.errors import EXIT_CORRUPT
from gradmanifold.report.results import REPAIR_SCHEMA, VERIFY_SCHEMA

PathArg = Annotated[
    str, typer.Argument(help="A store written by gradmanifold record or Recorder: a folder or a URL.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]


@app.command()
@handle_errors
def verify(path: PathArg, json: JsonOpt = False) -> None:
    """Check a store: manifest, array metadata, every chunk's checksum, steps, flags; list every bad chunk.

    Exit code 0 when the store is sound, 3 when anything is damaged.

    A store at a URL is read, never listed: its committed chunks are checked, not leftovers or the lock.
    """
    from gradmanifold.store.location import url_scheme
    from gradmanifold.store.verify import verify_store

    report = verify_store(path)
    if json:
        write_out(_json(VERIFY_SCHEMA, report.to_dict()))
    else:
        write_out(_render_verify(report.to_dict()))
    if not report.ok:
        bad = report.bad_chunks
        what = f"{len(bad)} damaged chunk(s)" if bad else f"{len(report.problems)} problem(s)"
        fix = (
            "a store at a URL is read-only: copy it to a local folder to repair it"
            if url_scheme(path) not in (None, "file")
            else f"`gradmanifold repair {path}` drops a damaged tail"
        )
        raise fail(
            f"{path}: {what} (listed above); {fix}, "
            "`gradmanifold analyze --skip-corrupt` reads around the damage",
            EXIT_CORRUPT,
        )


@app.command()
@handle_errors
def repair(
    path: PathArg,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be done; change nothing.")
    ] = False,
    backup: Annotated[
        Path | None,
        typer.Option("--backup", help="Folder to put the backup in. [default: beside the store]"),
    ] = None,
    break_lock: Annotated[
        bool, typer.Option("--break-lock", help="Remove a stale lock left by a writer that no longer runs.")
    ] = False,
    drop_sound_tail: Annotated[
        bool,
        typer.Option(
            "--drop-sound-tail",
            help="When damage sits before sound chunks, cut at the first damage anyway (backed up).",
        ),
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Drop an uncommitted or damaged tail back to the last sound committed step, keeping a backup.

    Never touches committed chunks before the cut; refuses while a live writer holds the store.
    """
    from gradmanifold.store.location import require_local
    from gradmanifold.store.repair import repair_store

    root = require_local(
        path, "repairing a store at a URL", "copy it to a local folder, repair that and publish it again"
    )
    result = repair_store(
        root, dry_run=dry_run, backup_dir=backup, break_lock=break_lock, drop_sound_tail=drop_sound_tail
    )
    if json:
        write_out(_json(REPAIR_SCHEMA, result.to_dict()))
    else:
        write_out(_render_repair(result.to_dict()))


def _json(schema: str, body: dict[str, Any]) -> str:
    """The versioned JSON of a report (docs/JSON.md): its keys with the schema's id added."""
    from gradmanifold.report.json import dumps
    from gradmanifold.report.results import document

    return dumps(document(schema, body))


def _render_verify(r: dict[str, Any]) -> str:
    lines = []
    first = "?" if r["first_step"] is None else r["first_step"]
    steps = f"steps {first}..{r['last_step']}" if r["n_rows"] else "no steps"
    lines.append(
        f"{r['path']}: {r['n_rows']} committed rows ({steps}) in {r['n_chunks']} chunk(s) of "
        f"{r['chunk_rows']} rows"
    )
    for g in r["groups"]:
        lines.append(
            f"  group {g['name']}: {g['nonfinite_rows']} non-finite row(s) (flagged, left out of the "
            f"analysis), {g['skipped_rows']} skipped row(s)"
        )
    for p in r["problems"]:
        lines.append(f"  BAD: {p['message']}")
    for note in r["notes"]:
        lines.append(f"  note: {note}")
    if r["ok"]:
        lines.append("sound: every committed chunk matches its checksum")
    else:
        lines.append(f"DAMAGED: bad chunk(s) {r['bad_chunks']}" if r["bad_chunks"] else "DAMAGED")
    return "\n".join(lines) + "\n"


def _render_repair(r: dict[str, Any]) -> str:
    verb = "would" if r["dry_run"] else "did"
    if not r["changed"]:
        return f"{r['path']}: nothing to repair ({r['rows_after']} committed rows, all sound)\n"
    lines = [f"{r['path']}:"]
    if r["rebuilt_metadata"]:
        arrays = ", ".join("the group" if a == "." else a for a in r["rebuilt_metadata"])
        lines.append(f"  {verb} rebuild the array metadata (zarr.json) of {arrays} from the manifest")
    if r["rows_after"] != r["rows_before"]:
        ds = r["dropped_steps"]
        steps = f" (steps {'?' if ds[0] is None else ds[0]}..{ds[1]})" if ds else ""
        lines.append(
            f"  {verb} drop committed rows {r['rows_after']}..{r['rows_before'] - 1}{steps}; "
            f"{r['rows_after']} rows remain"
        )
        for reason in r["reasons"]:
            lines.append(f"    because: {reason}")
    if r["removed_files"]:
        lines.append(f"  {verb} remove {len(r['removed_files'])} uncommitted or dropped file(s)")
    if r["backup"]:
        lines.append(f"  backup of everything removed: {r['backup']} (REPAIR.json there says how to undo)")
    return "\n".join(lines) + "\n"
