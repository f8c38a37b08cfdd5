"""One self-contained HTML page of analyses (`gradmanifold plot -o report.html`): the figures inline as
base64 PNG, each run's description and tables, and with two runs their comparison. Nothing is loaded from
anywhere: no scripts, no fonts, no links; every text from a run is escaped.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gradmanifold.report.model import AnalysisResult, ScopeResult
from gradmanifold.report.spectra import SpectrumResult

MAX_ROWS = 60  # scopes or windows per table; the JSON holds all
CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1320px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 1.6em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.85em; }
th, td { padding: 2px 9px; border-bottom: 1px solid #ddd; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; } .note { color: #7a5a00; font-size: 0.85em; } .desc { font-size: 0.9em; }
"""

Run = tuple[str, AnalysisResult, SpectrumResult | None]


def render_page(runs: Sequence[Run], figures: Sequence[tuple[bytes, str]], notes: Sequence[str] = ()) -> str:
    """The page: title, notes, the figures (PNG bytes with a caption), then per run its description and
    tables; with exactly two runs the comparison table too.

    runs: (label, analysis, spectra or None) per run; figures: (png bytes, caption); notes: lines on top.
    """
    e = html.escape
    title = "gradmanifold: " + " vs ".join(label for label, _, _ in runs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    parts += [f'<p class="note">{e(n)}</p>' for n in notes]
    for png, caption in figures:
        data = base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{e(caption)}</figcaption></figure>"
        )
    if len(runs) == 2:
        parts += _comparison(runs[0], runs[1])
    for label, result, spectra in runs:
        parts += _run(label, result, spectra)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None) -> str:
    e = html.escape
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{e(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool | int | str):
        return str(v)
    if isinstance(v, float):
        return "-" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def _run(label: str, r: AnalysisResult, spectra: SpectrumResult | None) -> list[str]:
    e = html.escape
    st, cfg = r.store, r.config
    proj = ", ".join(f"{k}={v}" for k, v in (st.projection or {}).items())
    groups = ", ".join(f"{g.name} ({g.size:,})" for g in st.groups[:MAX_ROWS])
    more = f" and {len(st.groups) - MAX_ROWS} more" if len(st.groups) > MAX_ROWS else ""
    desc = [
        f"store: {st.path or '(arrays in memory)'}",
        f"{st.n_steps} steps recorded, k = {st.k}" + (f" ({proj})" if proj else ""),
        f"groups (parameters): {groups}{more}",
        f"analyzed steps {cfg.first_step}..{cfg.last_step} ({cfg.n_rows} rows, burn-in {cfg.burn_in}); "
        f"spectrum: {cfg.svd_method}; windows: {cfg.window or 'none'}",
    ]
    out = [f"<h2>{e(label)}</h2>", '<p class="desc">' + "<br>".join(e(d) for d in desc) + "</p>"]
    scopes = list(r.scopes.values())[:MAX_ROWS]
    preds = [p for p in cfg.predictors if p != "zero"]
    out.append(
        _table(
            ["scope", "steps", *preds, "best ema", "distortion"],
            (
                [sc.name, sc.n_steps, *(_kappa(sc, p) for p in preds), _best(sc), sc.projection_distortion]
                for sc in scopes
            ),
            "predictability kappa = P_T(m) / sum ||g||^2 (± the interval to expect from k)",
        )
    )
    eps = list(r.model.rank.r_star)
    out.append(
        _table(
            ["scope", *(f"r*({x})" for x in eps), "PR", "top1", "top10", "k enough?"],
            (
                [
                    sc.name,
                    *(sc.rank.r_star[x] for x in eps),
                    sc.rank.participation_ratio,
                    _pct(sc.rank.top_energy.get("1")),
                    _pct(sc.rank.top_energy.get("10")),
                    "yes" if sc.rank.nested.k_enough else f"no: record k >= {sc.rank.nested.suggested_k}",
                ]
                for sc in scopes
            ),
            "increment spectrum: predictable rank r*(eps), participation ratio, top energy",
        )
    )
    if any(sc.updates for sc in scopes):
        out.append(
            _table(
                ["scope", "secant smoothness (median)", "alignment (median)", "glass exponent p", "note"],
                (
                    [
                        sc.name,
                        u.get("secant_smoothness_median"),
                        u.get("alignment_median"),
                        u.get("glass_exponent"),
                        (u.get("glass_fit") or {}).get("note") or u.get("note") or "",
                    ]
                    for sc in scopes
                    if (u := sc.updates)
                ),
                "updates (a proxy; docs/UPDATES.md)",
            )
        )
    if r.windows:
        out.append(
            _table(
                ["window", "steps", *preds, *(f"r*({x})" for x in eps)],
                (
                    [
                        w.index,
                        f"{w.start_step}..{w.end_step}",
                        *(w.scopes["model"].kappa.get(p) for p in preds),
                        *(w.scopes["model"].r_star.get(x) for x in eps),
                    ]
                    for w in r.windows[:MAX_ROWS]
                    if "model" in w.scopes
                ),
                f"per window (model scope){'; first ' + str(MAX_ROWS) if len(r.windows) > MAX_ROWS else ''}",
            )
        )
    if spectra is not None:
        out += _spectra(spectra)
    out += [f'<p class="note">warning: {e(w)}</p>' for w in r.warnings]
    return out


def _spectra(s: SpectrumResult) -> list[str]:
    out = []
    if s.layers:
        rows = []
        for name, ly in list(s.layers.items())[:MAX_ROWS]:
            sm = ly.summary
            rows.append(
                [
                    name,
                    f"{ly.shape[0]}x{ly.shape[1]}",
                    _arrow(sm.get("gamma")),
                    _arrow(sm.get("top2_energy"), pct=True),
                    _arrow(sm.get("participation_ratio")),
                    len(ly.steps),
                ]
            )
        out.append(
            _table(
                ["layer", "m x n", "gamma", "top-2 energy", "PR", "spectra"],
                rows,
                f"layer gradient spectra, first → last step (fit window K = {s.top})",
            )
        )
    if s.probes:
        rows = [
            [
                p.step,
                name,
                lp.fit.get("gamma"),
                lp.fit.get("alpha"),
                lp.fit.get("s"),
                lp.fit.get("alpha_gamma"),
            ]
            for p in s.probes
            for name, lp in p.layers.items()
        ]
        out.append(
            _table(
                ["step", "layer", "gamma", "alpha", "s", "alpha*gamma"],
                rows[:MAX_ROWS],
                "curvature probes: s against alpha * gamma",
            )
        )
    return out


def _comparison(a: Run, b: Run) -> list[str]:
    from gradmanifold.report.compare import compare

    cmp = compare(a[1], b[1], labels=(a[0], b[0]))
    rows = [
        [c.scope, c.quantity, c.a, c.b, _signed(c.diff), "-" if c.rel is None else f"{100 * c.rel:+.1f}%"]
        for c in cmp.changes
        if c.scope == "model"
    ]
    out = [f"<h2>{html.escape(b[0])} against {html.escape(a[0])}</h2>"]
    out.append(_table(["scope", "quantity", a[0], b[0], "difference", "change"], rows))
    out += [f'<p class="note">note: {html.escape(n)}</p>' for n in cmp.notes]
    return out


def _signed(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:+d}" if isinstance(v, int) else f"{v:+.4g}"


def _kappa(sc: ScopeResult, p: str) -> str:
    v = sc.kappa.get(p)
    if v is None or not math.isfinite(v):
        return "-"
    lo, hi = sc.kappa_interval.get(p, (v, v))
    return f"{v:.4g} ±{(hi - lo) / 2:.2g}"


def _best(sc: ScopeResult) -> str:
    return "-" if sc.best_ema is None else f"{sc.best_ema.kappa:.4g} @{sc.best_ema.beta:g}"


def _pct(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def _arrow(sm: Mapping[str, float] | None, pct: bool = False) -> str:
    if not sm:
        return "-"
    f = _pct if pct else (lambda v: "-" if v is None or not math.isfinite(v) else f"{v:.3g}")
    return f"{f(sm.get('first'))} → {f(sm.get('last'))}"
