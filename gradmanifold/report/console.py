"""Rich tables of an analysis and of `gradmanifold info`: `render(result) -> str`, from plain results only."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradmanifold.report.model import AnalysisResult, ScopeResult

WIDTH = 120
MAX_GROUP_ROWS = 40  # more groups than this: the tables show the first ones and say so


def render(result: AnalysisResult, width: int = WIDTH) -> str:
    """The analysis as text tables (no colour codes)."""
    out = io.StringIO()
    con = Console(file=out, width=width, color_system=None, force_terminal=False, highlight=False)
    for part in _parts(result):
        con.print(part)
    return out.getvalue()


def _parts(r: AnalysisResult) -> list[Any]:
    st, cfg = r.store, r.config
    scopes = list(r.scopes.values())
    shown = scopes[: MAX_GROUP_ROWS + 1]
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
    parts.append(head)

    ok = all(sc.kappa.get("zero") == 1.0 for sc in scopes)
    parts.append(
        Text(
            "self-test: kappa(zero) = 1 exactly in every scope: " + ("ok" if ok else "FAILED"),
            style="green" if ok else "bold red",
        )
    )
    parts.append(_kappa_table(shown, cfg.predictors))
    parts.append(_rank_table(shown, cfg.eps))
    parts.append(_bounds_table(shown))
    if any(sc.updates for sc in shown):
        parts.append(_updates_table(shown))
    if r.windows:
        parts.append(_window_table(r))
    if len(scopes) > len(shown):
        parts.append(Text(f"({len(scopes) - len(shown)} more groups in --json)"))
    for w in r.warnings:
        parts.append(Text(f"warning: {w}", style="yellow"))
    return parts


def _kappa_table(scopes: list[ScopeResult], predictors: tuple[str, ...]) -> Table:
    t = Table(
        title="predictability kappa = P_T(m) / sum ||g||^2  (+- : interval to expect from k)", box=box.SIMPLE
    )
    t.add_column("scope")
    t.add_column("steps", justify="right")
    for p in predictors:
        if p != "zero":
            t.add_column(p, justify="right")
    t.add_column("best ema", justify="right")
    t.add_column("distortion", justify="right")
    for sc in scopes:
        row = [sc.name, _steps(sc)]
        for p in predictors:
            if p != "zero":
                lo, hi = sc.kappa_interval[p]
                row.append(f"{_f(sc.kappa[p])} ±{_f((hi - lo) / 2, 2)}")
        row.append(f"{_f(sc.best_ema.kappa)} @{sc.best_ema.beta:g}" if sc.best_ema else "-")
        d = sc.projection_distortion
        row.append("-" if d is None else f"{d:.3f} ±{_f(sc.distortion_rel_error, 2)}")
        t.add_row(*row)
    return t


def _rank_table(scopes: list[ScopeResult], eps: tuple[float, ...]) -> Table:
    t = Table(
        title="increment spectrum: predictable rank r*(eps), participation ratio, top energy", box=box.SIMPLE
    )
    t.add_column("scope")
    for e in eps:
        t.add_column(f"r*({e!r})", justify="right")
    t.add_column("PR", justify="right")
    for n in ("1", "2", "5", "10"):
        t.add_column(f"top{n}", justify="right")
    t.add_column("k enough?")
    for sc in scopes:
        rk = sc.rank
        row = [sc.name]
        row += [_r(rk.r_star.get(repr(e))) for e in eps]
        row.append(_f(rk.participation_ratio))
        row += [f"{100 * rk.top_energy[n]:.1f}%" for n in ("1", "2", "5", "10")]
        nested = rk.nested
        row.append("yes" if nested.k_enough else f"no: record k >= {nested.suggested_k}")
        t.add_row(*row)
    return t


def _bounds_table(scopes: list[ScopeResult]) -> Table:
    t = Table(title="bound readouts", box=box.SIMPLE)
    t.add_column("scope")
    t.add_column("best predictor")
    t.add_column("sqrt(min kappa)", justify="right")
    t.add_column("P_T/(T+1) best", justify="right")
    t.add_column("P_T/(T+1) zero", justify="right")
    for sc in scopes:
        b = sc.bounds
        t.add_row(
            sc.name,
            b.min_kappa_predictor,
            _f(b.sqrt_min_kappa),
            _f(b.min_avg_proxy_error),
            _f(b.avg_proxy_error.get("zero")),
        )
    return t


def _updates_table(scopes: list[ScopeResult]) -> Table:
    norms = next(sc.updates["norms"] for sc in scopes if sc.updates)
    t = Table(
        title="parameter updates u_t (projected; a proxy): secant ||g_t - g_t-1|| / ||u_t||, "
        "alignment cos(g_t-1, -u_t), glass exponent p of D_g = 2s^2 + c D_theta^(p/2)",
        box=box.SIMPLE,
    )
    for col in ("scope", "pairs", "secant", "(q25..q75)", "alignment", "p", "fit R^2", "2s^2 floor"):
        t.add_column(col, justify="left" if col == "scope" else "right", no_wrap=True)
    notes = []
    for sc in scopes:
        u = sc.updates
        if not u:
            continue
        q = u["secant_smoothness_quantiles"]
        fit = u["glass_fit"]
        t.add_row(
            sc.name,
            str(u["n_pairs"]),
            _f(u["secant_smoothness_median"]),
            f"{_f(q.get('0.25'))}..{_f(q.get('0.75'))}",
            _f(u["alignment_median"]),
            _f(u["glass_exponent"]),
            _f(fit.get("r2_log")),
            _f(fit.get("noise_floor")),
        )
        if fit.get("note"):
            notes.append(f"{sc.name}: {fit['note']}")
    t.caption = f"update norms: {norms}; p near 2: smooth curvature, near 1: glass-like" + "".join(
        f"\n{n}" for n in notes[:3]
    )
    return t


def _window_table(r: AnalysisResult) -> Table:
    preds = [p for p in r.config.predictors if p != "zero"]
    t = Table(title=f"windows of {r.config.window} steps (model)", box=box.SIMPLE)
    t.add_column("steps")
    for p in preds:
        t.add_column(p, justify="right")
    for e in r.config.eps:
        t.add_column(f"r*({e!r})", justify="right")
    for w in r.windows:
        ws = w.scopes["model"]
        row = [f"{w.start_step}..{w.end_step}"]
        row += [_f(ws.kappa.get(p)) for p in preds]
        row += [_r(ws.r_star.get(repr(e))) for e in r.config.eps]
        t.add_row(*row)
    return t


def render_info(info: Mapping[str, Any], width: int = WIDTH) -> str:
    """`gradmanifold info` as text: what the store holds, its size, chunking, segments, flagged rows."""
    out = io.StringIO()
    con = Console(file=out, width=width, color_system=None, force_terminal=False, highlight=False)
    proj = info.get("projection") or {}
    head = Text()
    head.append(f"{info.get('path')}\n", style="bold")
    head.append(
        f"schema v{info.get('schema_version')}, {info.get('n_steps')} steps "
        f"({info.get('first_step')}..{info.get('last_step')}), k = {info.get('k')}, "
        f"projection {', '.join(f'{k}={v}' for k, v in proj.items())}\n"
    )
    head.append(
        f"{_bytes(info.get('size_bytes'))} on disk, "
        f"{info.get('n_chunks')} chunks of {info.get('chunk_rows')} rows"
    )
    if info.get("optional"):
        head.append(f"; per-step {', '.join(info['optional'])}")
    con.print(head)
    t = Table(title="groups", box=box.SIMPLE)
    for c in ("group", "parameters", "non-finite rows", "skipped rows"):
        t.add_column(c, justify="left" if c == "group" else "right")
    for g in info.get("groups", []):
        t.add_row(str(g["name"]), f"{g['size']:,}", str(g["nonfinite_rows"]), str(g["skipped_rows"]))
    con.print(t)
    segs = info.get("segments") or []
    if segs:
        s = Table(title="writer segments", box=box.SIMPLE)
        for c in ("host", "pid", "started", "ended", "status", "rows", "steps", "rewinds"):
            s.add_column(c)
        for seg in segs:
            s.add_row(
                str(seg.get("host")),
                str(seg.get("pid")),
                str(seg.get("started")),
                str(seg.get("ended") or "-"),
                str(seg.get("status")),
                str(seg.get("rows")),
                f"{seg.get('first_step')}..{seg.get('last_step')}",
                str(seg.get("rewinds")),
            )
        con.print(s)
    if info.get("writer"):
        w = info["writer"]
        con.print(
            Text(f"a writer holds the store: {w.get('host')} pid {w.get('pid')} since {w.get('since')}")
        )
    return out.getvalue()


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
