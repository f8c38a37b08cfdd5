"""Rich table of `gradmanifold compare`: `render(comparison) -> str`, from the plain Comparison only."""

from __future__ import annotations

import io
import math

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradmanifold.report.compare import Comparison

WIDTH = 120


def render(cmp: Comparison, width: int = WIDTH, rtol: float | None = None) -> str:
    """The comparison as text: both stores, one table of every scope's quantities, then the notes.

    cmp: the comparison; width: console width; rtol: mark rows whose relative change exceeds it with `*`.
    """
    out = io.StringIO()
    con = Console(file=out, width=width, color_system=None, force_terminal=False, highlight=False)
    head = Text()
    for tag, label, st in zip("AB", cmp.labels, cmp.stores, strict=True):
        head.append(f"{tag}: {label}", style="bold")
        head.append(f"  {st.get('path') or '(in memory)'} ({st.get('n_steps')} steps, k = {st.get('k')})\n")
    con.print(head, end="")
    t = Table(title="B against A: the difference B - A and the change (B - A) / |A|", box=box.SIMPLE)
    t.add_column("scope", no_wrap=True)
    t.add_column("quantity", no_wrap=True)
    for name in ("A", "B", "B - A", "change"):
        t.add_column(name, justify="right", no_wrap=True)
    if rtol is not None:
        t.add_column(f"moved > {100 * rtol:g}%", justify="center")
    last = None
    for c in cmp.changes:
        row = [
            c.scope if c.scope != last else "",
            c.quantity,
            _fmt(c.a),
            _fmt(c.b),
            _fmt(c.diff, signed=True),
            _pct(c.rel),
        ]
        if rtol is not None:
            row.append("*" if c.rel is not None and abs(c.rel) > rtol else "")
        t.add_row(*row, end_section=False)
        last = c.scope
    con.print(t)
    for label, only in zip(cmp.labels, cmp.only, strict=True):
        if only:
            con.print(Text(f"only in {label}: {', '.join(only)}"))
    for note in cmp.notes:
        con.print(Text(f"note: {note}", style="yellow"))
    return out.getvalue()


def _fmt(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    if isinstance(v, int):  # r*, step counts
        return f"{v:+d}" if signed else str(v)
    return f"{v:+.4g}" if signed else f"{v:.4g}"


def _pct(rel: float | None) -> str:
    if rel is None:
        return "-"
    if math.isinf(rel):
        return "+inf" if rel > 0 else "-inf"
    return f"{100 * rel:+.1f}%"
