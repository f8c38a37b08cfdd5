"""The sweep table: one row per run with its steps, kappa per predictor, the best EMA and r*(eps) of the model
(the layout of the paper's tables), then the runs that failed and each run's warnings, as plain text."""

from __future__ import annotations

import io
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradmanifold.report.console import WIDTH, _f, _r
from gradmanifold.report.sweep import SweepResult

MAX_WARNINGS = 20  # warning lines printed under the table: the model's and the run's (all are in --json)


def render(sweep: SweepResult, width: int = WIDTH) -> str:
    """The sweep as a text table (no colour codes); `width`: the console width in characters."""
    out = io.StringIO()
    con = Console(file=out, width=width, color_system=None, force_terminal=False, highlight=False)
    for part in _parts(sweep):
        con.print(part)
    return out.getvalue()


def _parts(sweep: SweepResult) -> list[Any]:
    names = sweep.names
    done = [r.result for r in sweep.runs if r.result is not None]
    head = Text()
    head.append(f"sweep of {len(sweep.runs)} runs", style="bold")
    if sweep.failed:
        head.append(f" ({len(sweep.failed)} failed)", style="bold red")
    parts: list[Any] = [head]
    if not done:
        return [*parts, *_failures(sweep)]
    cfg = done[0].config
    head.append(
        f"\nmodel scope; spectrum: {cfg.svd_method}"
        + (f", first {cfg.burn_in} steps as burn-in" if cfg.burn_in else "")
    )
    preds = [p for p in cfg.predictors if p != "zero"]
    t = Table(
        title="predictability kappa and predictable rank r*(eps) of the model, one row per run",
        box=box.SIMPLE,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
    )
    t.add_column("run", no_wrap=True, min_width=min(32, max(len(n) for n in names)))
    for col in ("steps", *preds, "best ema", *(f"r*({e!r})" for e in cfg.eps), "k"):
        t.add_column(col, justify="right", no_wrap=True)
    t.caption = "k: recorded; k->K: r* still grows with k, record with K next time"
    for name, run in zip(names, sweep.runs, strict=True):
        r = run.result
        if r is None:
            t.add_row(name, "failed", *["-"] * (2 + len(preds) + len(cfg.eps)))
            continue
        sc = r.model
        row = [name, str(sc.n_steps)]
        row += [_f(sc.kappa.get(p)) for p in preds]
        row.append(f"{_f(sc.best_ema.kappa)}@{sc.best_ema.beta:g}" if sc.best_ema else "-")
        row += [_r(sc.rank.r_star.get(repr(e))) for e in cfg.eps]
        nested = sc.rank.nested
        row.append(str(r.store.k) if nested.k_enough else f"{r.store.k}->{nested.suggested_k}")
        t.add_row(*row)
    parts.append(t)
    parts += _failures(sweep)
    notes = [
        f"{n}: {w}"
        for n, run in zip(names, sweep.runs, strict=True)
        if run.result is not None
        for w in run.result.warnings
        if _about_the_run(w, run.result.scopes)
    ]
    for line in notes[:MAX_WARNINGS]:
        parts.append(Text(f"warning: {line}", style="yellow"))
    if len(notes) > MAX_WARNINGS:
        parts.append(Text(f"({len(notes) - MAX_WARNINGS} more warnings in --json)"))
    return parts


def _about_the_run(warning: str, scopes: Any) -> bool:
    """A warning on the model or on the whole run (not a group's: `analyze` on the run lists those)."""
    head = warning.split(":", 1)[0]
    return head == "model" or head not in scopes


def _failures(sweep: SweepResult) -> list[Any]:
    return [
        Text(f"failed: {n}: {r.error}", style="bold red")
        for n, r in zip(sweep.names, sweep.runs, strict=True)
        if not r.ok
    ]
