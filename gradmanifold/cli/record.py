"""`gradmanifold record`: wrap a training command, ingest gradient dumps, or record a synthetic task."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from gradmanifold.cli.app import app, fail, handle_errors, write_out
from gradmanifold.cli.progress import ProgressBar

_MODES = "one of: -- COMMAND ARGS (wrap a training job), --from DIR_OR_GLOB (dumps), --synthetic NAME"


@app.command(context_settings={"allow_interspersed_args": False})
@handle_errors
def record(
    out: Annotated[Path, typer.Option("--out", "-o", help="Store to write (created, or appended to).")],
    command: Annotated[
        list[str] | None,
        typer.Argument(help="Training command to wrap, after `--` (e.g. -- python train.py --lr 3e-4)."),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Projection dims per group.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Projection seed.")] = 0,
    kind: Annotated[str, typer.Option("--kind", help="Projection kind: sparse or gaussian.")] = "sparse",
    s: Annotated[
        int | None, typer.Option("--s", help="Nonzeros per coordinate (sparse). [default: projection's]")
    ] = None,
    every: Annotated[int, typer.Option("--every", help="Record every N-th step.")] = 1,
    groups: Annotated[
        str,
        typer.Option(
            "--groups",
            help="auto | single | tensor | module | NAME=GLOB[|GLOB],... (tensor names matched by glob).",
        ),
    ] = "auto",
    resume: Annotated[
        str, typer.Option("--resume", help="An existing store: allow appending, must exist, or never.")
    ] = "allow",
    source: Annotated[
        str | None,
        typer.Option("--from", help="Folder or glob of per-step dumps, or one [T, d] .npy/.npz file."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep ingesting a folder that a running job still writes.")
    ] = False,
    idle_timeout: Annotated[
        float | None, typer.Option("--idle-timeout", help="--follow: stop after this many idle seconds.")
    ] = None,
    sentinel: Annotated[
        str, typer.Option("--sentinel", help="--follow: stop once this file appears in the folder.")
    ] = "DONE",
    delete_ingested: Annotated[
        bool, typer.Option("--delete-ingested", help="Delete each dump once its step is committed.")
    ] = False,
    poll: Annotated[float, typer.Option("--poll", help="--follow: seconds between folder scans.")] = 0.5,
    synthetic: Annotated[
        str | None,
        typer.Option(
            "--synthetic",
            help="white-noise | random-walk | lowrank-drift | noisy-quadratic | lqr | spiked-two-layer "
            "(docs/RECORD.md).",
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="--synthetic: steps T.")] = 1000,
    dim: Annotated[int, typer.Option("--dim", help="--synthetic: gradient dims d.")] = 1024,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="--synthetic: task parameter KEY=VALUE (repeatable), e.g. q=0.8."),
    ] = None,
    spectra_every: Annotated[
        int,
        typer.Option(
            "--spectra-every",
            help="Every N steps: top singular values of each weight gradient (0: off; docs/SPECTRA.md).",
        ),
    ] = 0,
    spectra_top: Annotated[
        int, typer.Option("--spectra-top", help="--spectra-every: singular values kept per layer.")
    ] = 20,
    updates: Annotated[
        bool,
        typer.Option(
            "--updates", help="Also the parameter update of each recorded step, projected (docs/UPDATES.md)."
        ),
    ] = False,
    threads: Annotated[
        str,
        typer.Option(
            "--threads",
            help="auto: a background thread for large steps; 1: for every step; 0: the training thread.",
        ),
    ] = "auto",
    json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Record projected gradients into a store, from a wrapped job, from dump files, or a synthetic task.

    Wrap a job (no code changes): gradmanifold record --out run.zarr -- python train.py ARGS

    Every optimizer step is recorded; the job's exit code is passed through. See docs/RECORD.md.
    """
    from gradmanifold.wrap.options import RecordOptions

    modes = [bool(command), source is not None, synthetic is not None]
    if sum(modes) != 1:
        raise fail(("choose " if not any(modes) else "choose only ") + _MODES)
    if (follow or delete_ingested or idle_timeout is not None) and source is None:
        raise fail("--follow, --idle-timeout and --delete-ingested go with --from")
    opts = RecordOptions(
        out=str(out.absolute()),
        k=k,
        seed=seed,
        kind=kind,
        s=s,
        every=every,
        groups=groups,
        resume=resume,
        spectra_every=spectra_every,
        spectra_top=spectra_top,
        updates="exact" if updates else None,
        threads=threads,
    )
    if command:
        from gradmanifold.wrap import run_wrapped

        result = run_wrapped(command, opts)
        for path, n in result.stores:
            state = f"{n} steps committed" if n >= 0 else "unreadable (see gradmanifold verify)"
            print(f"gradmanifold: {path}: {state}", file=sys.stderr)
        if not result.stores:
            print("gradmanifold: no optimizer step was recorded (no store written)", file=sys.stderr)
        raise typer.Exit(result.exit_code)
    progress = ProgressBar("recording")
    try:
        if synthetic is not None:
            summary = _synthetic(synthetic, steps, dim, seed, param or [], opts, progress)
        else:
            from gradmanifold.ingest import follow_folder, ingest

            assert source is not None
            if follow:
                summary = follow_folder(
                    source,
                    opts,
                    poll=poll,
                    idle_timeout=idle_timeout,
                    sentinel=sentinel,
                    delete_ingested=delete_ingested,
                    progress=progress,
                ).to_dict()
            else:
                summary = ingest(source, opts, delete_ingested=delete_ingested, progress=progress).to_dict()
    finally:
        progress.close()
    from gradmanifold.report.results import RecordSummary

    typed = RecordSummary.from_dict(summary)
    if json:
        from gradmanifold.report.json import dumps

        write_out(dumps(typed.to_dict()))  # schema gradmanifold.record/1 (docs/JSON.md)
    else:
        write_out(_render(typed.to_dict()))


def _synthetic(
    name: str, steps: int, dim: int, seed: int, params: list[str], opts: Any, progress: Any
) -> dict[str, Any]:
    from gradmanifold.synthetic import make_task, record_task

    kv: dict[str, float] = {}
    for item in params:
        key, sep, value = item.partition("=")
        try:
            kv[key.strip()] = float(value)
        except ValueError:
            raise fail(f"--param {item!r}: expected KEY=NUMBER, e.g. q=0.8") from None
        if not sep:
            raise fail(f"--param {item!r}: expected KEY=NUMBER, e.g. q=0.8")
    task = make_task(name, steps, dim, seed, kv)
    with opts.recorder() as rec:
        n = record_task(task, rec, progress)
    truth = task.ground_truth()
    return {
        "store": opts.out,
        "mode": "synthetic",
        "steps_recorded": n,
        "task": {"name": task.name, "steps": task.steps, "dim": task.dim, "seed": task.seed, **task.options},
        "ground_truth": truth.to_dict(),
    }


def _render(summary: dict[str, Any]) -> str:
    lines = [f"{summary['store']}: {summary['steps_recorded']} steps recorded ({summary['mode']})"]
    for key in ("files_ingested", "files_skipped", "files_deleted", "stopped"):
        if key in summary and (key != "stopped" or summary["mode"] == "follow"):
            lines.append(f"  {key.replace('_', ' ')}: {summary[key]}")
    truth = summary.get("ground_truth")
    if truth:
        lines.append(
            f"ground truth of {truth['task']} (T={truth['steps']}, d={truth['dim']}, {truth['method']}):"
        )
        for pid, v in truth["kappa"].items():
            extra = ""
            if pid in truth["kappa_limit"]:
                extra = f"   (T -> inf: {truth['kappa_limit'][pid]:.4g})"
            if pid in truth["kappa_sd"]:
                extra = f"   (sd over runs {truth['kappa_sd'][pid]:.2g})"
            lines.append(f"  kappa {pid:<9} {v:.4g}{extra}")
        for eps, r in truth["rank"].items():
            lim = truth["rank_limit"].get(eps)
            lines.append(f"  r*({eps}) {r}" + (f"   (T >> d: {lim})" if lim is not None else ""))
    return "\n".join(lines) + "\n"
