"""Rich tables of an analysis and of `gradmanifold info`: `render(result, width) -> str`, from plain results.

Every line fits `width` and no cell wraps. Scope names leave out the prefix they all share and are elided in
the middle when long (report/names.py); when the columns do not fit, the least needed ones are left out (or
narrowed: the ± intervals first) and one line says which; the JSON has everything. `output_width()` is the
width to use: $COLUMNS when set, else the terminal's, else WIDTH. Warnings: one line per kind of finding
(report/findings.py). `--sort` and `--top` choose the rows (report/order.py).
"""

from __future__ import annotations

import io
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradmanifold.report.findings import summarize
from gradmanifold.report.model import AnalysisResult, ScopeResult
from gradmanifold.report.names import common_prefix, shorten
from gradmanifold.report.order import SortKey, order_scopes
from gradmanifold.report.results import InfoResult

WIDTH = 120  # when the output is neither a terminal nor COLUMNS is set (a file, a pipe)
MIN_WIDTH = 60  # narrower terminals get this width (lines then run past the edge)
NAME_KEEP = 24  # columns are left out before scope names get narrower than this
MAX_GROUP_ROWS = 40  # more scopes than this: the tables show the first ones and say so


def output_width(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Columns to render for: $COLUMNS when it is a positive number, else the width of the terminal that
    `stream` (default stdout) writes to, else WIDTH; at least MIN_WIDTH."""
    env = os.environ if environ is None else environ
    cols = env.get("COLUMNS", "").strip()
    width = int(cols) if cols.isdigit() and int(cols) > 0 else 0
    if not width:
        out = sys.stdout if stream is None else stream
        try:
            width = os.get_terminal_size(out.fileno()).columns if out.isatty() else 0
        except (AttributeError, OSError, ValueError):
            width = 0
    return max(MIN_WIDTH, min(width or WIDTH, 1000))


def render(
    result: AnalysisResult, width: int = WIDTH, sort: SortKey | None = None, top: int | None = None
) -> str:
    """The analysis as text tables (no colour codes), every line at most `width` columns.

    result: the analysis; width: columns (at least MIN_WIDTH is used); sort, top: which scopes the tables
    show and in which order (report/order.py; default: all, in store order).
    """
    width = max(MIN_WIDTH, int(width))
    rows = order_scopes(result, sort, top)
    view = _View(result, rows[: MAX_GROUP_ROWS + 1], width)
    for part in _parts(result, rows, view, sort, top):
        view.con.print(part)
    if view.left_out:
        note = (
            f"at {width} columns some columns are left out ({', '.join(view.left_out)}); --json has them all"
        )
        view.con.print(Text(note, style="dim"))
    for w in summarize(result):
        view.con.print(Text(f"warning: {w}", style="yellow"))
    return view.text()


class _View:
    """The console being written, the display names of the scopes shown, what was left out."""

    def __init__(self, result: AnalysisResult, shown: list[ScopeResult], width: int) -> None:
        self.out = io.StringIO()
        self.width = width
        self.con = Console(
            file=self.out,
            width=width,
            color_system=None,
            force_terminal=False,
            highlight=False,
            soft_wrap=False,
        )
        others = [n for n in result.scopes if n != "model"]
        self.prefix = common_prefix(others) if len(others) > 1 else ""
        self.shown = shown
        self.names = [sc.name if sc.name == "model" else sc.name[len(self.prefix) :] for sc in shown]
        self.left_out: list[str] = []

    def text(self) -> str:
        return "".join(line.rstrip() + "\n" for line in self.out.getvalue().splitlines())

    def table(
        self, title: str, short: str, cols: list[_Col], names: list[str] | None = None, scopes: bool = True
    ) -> Table:
        """A fitted table; its name column holds `names` (default: the scopes shown), none if not scopes."""
        rows = (names if names is not None else self.names) if scopes else None
        t, left = _fit(title, short, rows, cols, self.width)
        self.left_out += [c for c in left if c not in self.left_out]
        return t


def _parts(
    r: AnalysisResult, rows: list[ScopeResult], view: _View, sort: SortKey | None, top: int | None
) -> list[Any]:
    st, cfg = r.store, r.config
    shown = view.shown
    parts: list[Any] = []
    proj = ""
    if st.projection:
        proj = ", ".join(f"{k}={v}" for k, v in st.projection.items() if k != "k")
    head = Text()
    head.append(f"{st.path or '(arrays in memory)'}\n", style="bold")
    head.append(
        f"{st.n_steps} steps recorded, k = {st.k}{' (' + proj + ')' if proj else ''}, "
        f"{len(st.groups)} group{'s' if len(st.groups) != 1 else ''}\n"
    )
    rng = f"steps {cfg.first_step}..{cfg.last_step} ({cfg.n_rows} rows"
    rng += f", first {cfg.burn_in} as burn-in)" if cfg.burn_in else ")"
    head.append(f"analyzed {rng}; spectrum: {cfg.svd_method}")
    if cfg.sketch_rank:
        head.append(f" (sketch rank {cfg.sketch_rank})")
    n_other = len([n for n in r.scopes if n != "model"])
    if cfg.modules is not None and n_other > 1:
        head.append(
            f"\nscopes: the model and {n_other} modules (groups summed by the first {cfg.modules} "
            f"dot-separated part{'s' if cfg.modules != 1 else ''} of their names)"
        )
    if view.prefix:
        head.append(f"\nscope names leave out their common prefix {view.prefix!r}")
    parts.append(head)

    ok = all(sc.kappa.get("zero") == 1.0 for sc in r.scopes.values())
    parts.append(
        Text(
            "self-test: kappa(zero) = 1 exactly in every scope: " + ("ok" if ok else "FAILED"),
            style="green" if ok else "bold red",
        )
    )
    parts.append(_kappa_table(view, cfg.predictors))
    parts.append(_rank_table(view, cfg.eps))
    parts.append(_bounds_table(view))
    if any(sc.updates for sc in shown):
        parts += _updates_table(view)
    if r.windows:
        parts.append(_window_table(r, view))
    hidden = n_other - (len(rows) - 1)
    if sort is not None or top is not None:
        what = "least predictable first (best kappa)" if sort is None else f"sorted by {sort.text}"
        some = f"the first {len(rows) - 1} of {n_other} scopes" if hidden else f"all {n_other} scopes"
        parts.append(Text(f"rows: the model, then {some}, {what}; --json has every scope"))
    if len(rows) > len(shown):
        parts.append(
            Text(f"({len(rows) - len(shown)} more scopes in --json; --top N shows the N least predictable)")
        )
    return parts


# ---------------------------------------------------------------------------------------------- fitting


@dataclass
class _Col:
    """A column: its cells, and when it gives way (drop: the rank at which it is left out, 0 never;
    narrow: narrower cells used from rank narrow_at on, `note` naming what they leave out)."""

    header: str
    cells: list[str]
    justify: str = "right"
    drop: int = 0
    narrow: list[str] | None = None
    narrow_at: int = 0
    note: str = ""

    def width(self, level: int) -> int:
        cells = self.narrow if self.narrow is not None and level >= self.narrow_at else self.cells
        return max([cell_len(self.header), *(cell_len(c) for c in cells)])

    def shown(self, level: int) -> bool:
        return not self.drop or level < self.drop


def _fit(
    title: str,
    short: str,
    names: Sequence[str] | None,
    cols: list[_Col],
    width: int,
    name_header: str = "scope",
) -> tuple[Table, list[str]]:
    """A table of the name column (None: none) and `cols` in `width` columns: columns give way in rank order
    until the names keep min(longest, NAME_KEEP) characters; the names get the rest. Returns the table and
    what gave way (headers of left-out columns, notes of narrowed ones)."""
    longest = max([cell_len(name_header), *(cell_len(n) for n in names)]) if names is not None else 0
    want = min(longest, NAME_KEEP)
    levels = sorted({0} | {c.drop for c in cols if c.drop} | {c.narrow_at for c in cols if c.narrow})

    def need(level: int) -> int:  # width of everything but the names: cells plus 2 per column plus 2 edges
        kept = [c for c in cols if c.shown(level)]
        return sum(c.width(level) for c in kept) + 2 * (len(kept) + (names is not None)) + 2

    level = next((lv for lv in levels if need(lv) + want <= width), levels[-1])
    name_w = max(min(longest, width - need(level)), min(longest, 6))
    table_w = need(level) + (name_w if names is not None else 0)
    kept = [c for c in cols if c.shown(level)]
    left = [c.header for c in cols if not c.shown(level)]
    left += [c.note for c in kept if c.narrow is not None and level >= c.narrow_at and c.note]
    t = Table(
        title=title if cell_len(title) <= table_w and not left else short,
        box=box.SIMPLE,
        collapse_padding=True,
        min_width=min(cell_len(short), width) if cell_len(short) > table_w else None,
    )
    if names is not None:
        t.add_column(name_header, no_wrap=True, overflow="ellipsis")
    for c in kept:
        t.add_column(c.header, justify=c.justify, no_wrap=True, overflow="ellipsis")  # type: ignore[arg-type]
    short_names = shorten(list(names), name_w) if names is not None else []
    n_rows = max((len(c.cells) for c in cols), default=len(short_names))
    for i in range(n_rows):
        row = [short_names[i]] if names is not None else []
        for c in kept:
            cells = c.narrow if c.narrow is not None and level >= c.narrow_at else c.cells
            row.append(cells[i])
        t.add_row(*row)
    return t, list(dict.fromkeys(left))


# ---------------------------------------------------------------------------------------------- tables


def _kappa_table(view: _View, predictors: tuple[str, ...]) -> Table:
    scopes = view.shown
    uniform = len({sc.n_steps for sc in scopes}) == 1 and not any(sc.excluded_steps for sc in scopes)
    cols = [_Col("steps", [_steps(sc) for sc in scopes], drop=1 if uniform else 7)]
    preds = [p for p in predictors if p != "zero"]
    for i, p in enumerate(preds):
        wide = []
        for sc in scopes:
            lo, hi = sc.kappa_interval[p]
            wide.append(f"{_f(sc.kappa[p])} ±{_f((hi - lo) / 2, 2)}")
        narrow = [_f(sc.kappa[p]) for sc in scopes]
        cols.append(_Col(p, wide, narrow=narrow, narrow_at=2, note="±", drop=20 - i if i else 0))
    cols.append(
        _Col(
            "best ema",
            [f"{_f(sc.best_ema.kappa)} @{sc.best_ema.beta:g}" if sc.best_ema else "-" for sc in scopes],
            drop=5,
        )
    )
    dist = []
    for sc in scopes:
        d = sc.projection_distortion
        dist.append("-" if d is None else f"{d:.3f} ±{_f(sc.distortion_rel_error, 2)}")
    narrow = ["-" if sc.projection_distortion is None else f"{sc.projection_distortion:.3f}" for sc in scopes]
    cols.append(_Col("distortion", dist, narrow=narrow, narrow_at=2, note="±", drop=3))
    return view.table(
        "predictability kappa = P_T(m) / sum ||g||^2  (+- : interval to expect from k)",
        "predictability kappa = P_T(m) / sum ||g||^2",
        cols,
    )


def _rank_table(view: _View, eps: tuple[float, ...]) -> Table:
    scopes = view.shown
    cols = [
        _Col(f"r*({e!r})", [_r(sc.rank.r_star.get(repr(e))) for sc in scopes], drop=20 - i if i else 0)
        for i, e in enumerate(eps)
    ]
    cols.append(_Col("PR", [_f(sc.rank.participation_ratio) for sc in scopes], drop=4))
    for n, rank in (("1", 5), ("2", 3), ("5", 2), ("10", 1)):
        cols.append(_Col(f"top{n}", [f"{100 * sc.rank.top_energy[n]:.1f}%" for sc in scopes], drop=rank))
    verdict = [sc.rank.nested for sc in scopes]
    cols.append(
        _Col(
            "k enough?",
            ["yes" if v.k_enough else f"no: record k >= {v.suggested_k}" for v in verdict],
            justify="left",
            narrow=["yes" if v.k_enough else f"no: k >= {v.suggested_k}" for v in verdict],
            narrow_at=1,
        )
    )
    return view.table(
        "increment spectrum: predictable rank r*(eps), participation ratio, top energy",
        "increment spectrum: predictable rank r*(eps)",
        cols,
    )


def _bounds_table(view: _View) -> Table:
    b = [sc.bounds for sc in view.shown]
    cols = [
        _Col("best predictor", [x.min_kappa_predictor for x in b], justify="left"),
        _Col("sqrt(min kappa)", [_f(x.sqrt_min_kappa) for x in b], drop=4),
        _Col("P_T/(T+1) best", [_f(x.min_avg_proxy_error) for x in b], drop=3),
        _Col("P_T/(T+1) zero", [_f(x.avg_proxy_error.get("zero")) for x in b], drop=2),
    ]
    return view.table("bound readouts", "bound readouts", cols)


def _updates_table(view: _View) -> list[Any]:
    pairs = [(name, sc) for name, sc in zip(view.names, view.shown, strict=True) if sc.updates]
    us = [sc.updates or {} for _, sc in pairs]
    q = [u["secant_smoothness_quantiles"] for u in us]
    fit = [u["glass_fit"] for u in us]
    cols = [
        _Col("pairs", [str(u["n_pairs"]) for u in us], drop=2),
        _Col("secant", [_f(u["secant_smoothness_median"]) for u in us]),
        _Col("(q25..q75)", [f"{_f(x.get('0.25'))}..{_f(x.get('0.75'))}" for x in q], drop=1),
        _Col("alignment", [_f(u["alignment_median"]) for u in us]),
        _Col("p", [_f(u["glass_exponent"]) for u in us]),
        _Col("fit R^2", [_f(f.get("r2_log")) for f in fit], drop=3),
        _Col("2s^2 floor", [_f(f.get("noise_floor")) for f in fit], drop=4),
    ]
    t = view.table(
        "parameter updates u_t (projected; a proxy): secant ||g_t - g_t-1|| / ||u_t||, "
        "alignment cos(g_t-1, -u_t), glass exponent p of D_g = 2s^2 + c D_theta^(p/2)",
        "parameter updates u_t (projected; a proxy)",
        cols,
        names=[n for n, _ in pairs],
    )
    notes: dict[str, list[str]] = {}  # the same caveat of many scopes: one line
    for (name, _), f in zip(pairs, fit, strict=True):
        if f.get("note"):
            notes.setdefault(f["note"], []).append(name)
    lines = [
        f"update norms: {us[0]['norms']}; secant ||g_t - g_t-1|| / ||u_t||, alignment cos(g_t-1, -u_t), "
        "glass exponent p of D_g = 2s^2 + c D_theta^(p/2): p near 2 smooth curvature, near 1 glass-like",
    ]
    for note, names in list(notes.items())[:3]:
        who = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"{who}: {note}")
    return [t, Text("\n".join(lines) + "\n", style="dim")]


def _window_table(r: AnalysisResult, view: _View) -> Table:
    preds = [p for p in r.config.predictors if p != "zero"]
    ws = [w.scopes["model"] for w in r.windows]
    cols = [_Col("steps", [f"{w.start_step}..{w.end_step}" for w in r.windows], justify="left")]
    cols += [_Col(p, [_f(x.kappa.get(p)) for x in ws], drop=20 - i if i else 0) for i, p in enumerate(preds)]
    cols += [
        _Col(f"r*({e!r})", [_r(x.r_star.get(repr(e))) for x in ws], drop=10 - i if i else 0)
        for i, e in enumerate(r.config.eps)
    ]
    title = f"windows of {r.config.window} steps (model)"
    return view.table(title, title, cols, scopes=False)


# ---------------------------------------------------------------------------------------------- info


def render_info(info: InfoResult, width: int = WIDTH) -> str:
    """`gradmanifold info` as text: what the store holds, its size, chunking, segments, flagged rows.

    info: the store description; width: columns (at least MIN_WIDTH is used).
    """
    width = max(MIN_WIDTH, int(width))
    out = io.StringIO()
    con = Console(file=out, width=width, color_system=None, force_terminal=False, highlight=False)
    head = Text()
    head.append(f"{info.path}\n", style="bold")
    head.append(
        f"schema v{info.schema_version}, {info.n_steps} steps "
        f"({info.first_step}..{info.last_step}), k = {info.k}, "
        f"projection {', '.join(f'{k}={v}' for k, v in info.projection.items())}\n"
    )
    head.append(f"{_bytes(info.size_bytes)} on disk, {info.n_chunks} chunks of {info.chunk_rows} rows")
    if info.optional:
        head.append(f"; per-step {', '.join(info.optional)}")
    names = [g.name for g in info.groups]
    prefix = common_prefix(names) if len(names) > 1 else ""
    if prefix:
        head.append(f"\ngroup names leave out their common prefix {prefix!r}")
    con.print(head)
    cols = [
        _Col("parameters", [f"{g.size:,}" for g in info.groups]),
        _Col("non-finite rows", [str(g.nonfinite_rows) for g in info.groups]),
        _Col("skipped rows", [str(g.skipped_rows) for g in info.groups]),
    ]
    t, _ = _fit("groups", "groups", [n[len(prefix) :] for n in names], cols, width, name_header="group")
    con.print(t)
    segs = info.segments
    if segs:
        keys = ("host", "pid", "started", "ended", "status", "rows", "steps", "rewinds")
        cells = {
            "steps": [f"{s.get('first_step')}..{s.get('last_step')}" for s in segs],
            "ended": [str(s.get("ended") or "-") for s in segs],
        }
        scols = [
            _Col(k, cells.get(k) or [str(s.get(k)) for s in segs], justify="left", drop=rank)
            for k, rank in zip(keys, (0, 3, 0, 2, 0, 0, 0, 1), strict=True)
        ]
        s, _ = _fit("writer segments", "writer segments", None, scols, width)
        con.print(s)
    if info.writer:
        w = info.writer
        con.print(
            Text(f"a writer holds the store: {w.get('host')} pid {w.get('pid')} since {w.get('since')}")
        )
    return "".join(line.rstrip() + "\n" for line in out.getvalue().splitlines())


# ---------------------------------------------------------------------------------------------- cells


def _steps(sc: ScopeResult) -> str:
    return f"{sc.n_steps}" + (f" (-{sc.excluded_steps})" if sc.excluded_steps else "")


def _f(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}"


def _r(v: int | None) -> str:
    return "-" if v is None else str(v)


def _bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
