"""Rich tables of `gradmanifold spectrum`: `render(result, width) -> str`, from a SpectrumResult only."""

from __future__ import annotations

import io
import math
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from gradmanifold.report.spectra import LayerSpectrum, SpectrumResult

WIDTH = 120


def render(res: SpectrumResult, width: int = WIDTH, per_step: bool = False) -> str:
    """Summary per layer over training; each recorded step per layer with per_step; stored probes."""
    out = io.StringIO()
    con = Console(file=out, width=max(width, 60), color_system=None, force_terminal=False, highlight=False)
    head = Text()
    head.append(f"{res.store['path']}\n", style="bold")
    if res.q is not None:
        steps = max((len(ly.steps) for ly in res.layers.values()), default=0)
        head.append(
            f"layer spectra: {len(res.layers)} layer{'s' if len(res.layers) != 1 else ''}, "
            f"top {res.q} singular values every {res.every} steps "
            f"({steps} recorded); fit window K = {res.top}"
        )
    else:
        head.append("no layer spectra recorded; probes only")
    con.print(head)
    if res.layers:
        con.print(_summary_table(res, width))
        if per_step:
            for ly in res.layers.values():
                con.print(_step_table(ly, res.top, width))
    if res.probes:
        con.print(_probe_table(res, width))
    if res.glass:
        con.print(_glass_table(res, width))
    for note in res.notes:
        con.print(Text(f"note: {note}"))
    return out.getvalue()


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}g}"


def _pct(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{100 * v:.0f}%"


def _name(name: str, width: int) -> str:
    """Elide the middle of a long layer name, keeping its distinguishing tail."""
    if len(name) <= width:
        return name
    keep = width - 1
    return name[: keep // 3] + "…" + name[-(keep - keep // 3) :]


PROFILE_SHORT = {"power": "power", "exponential": "exp", "lognormal": "lognorm"}


def _span(first: float, last: float, fmt: Any = None) -> str:
    fmt = fmt or (lambda v: _f(v, 2))
    return f"{fmt(first)}→{fmt(last)}"


def _columns(
    width: int, wide: tuple[str, ...], narrow: tuple[str, ...], cost: dict[str, int]
) -> tuple[str, ...]:
    """The wide column set when it fits the width (layer names keep at least 16 characters), else narrow."""
    need = 16 + sum(cost[c] + 2 for c in wide)
    return wide if need <= width else narrow


def _summary_table(res: SpectrumResult, width: int) -> Table:
    cost = {
        "m x n": 9,
        "gamma": 9,
        "/1k": 6,
        "R^2": 4,
        "profile": 7,
        "PR": 9,
        "stable rk": 9,
        "top-2": 11,
        "s2/s3": 5,
        "s3/s1": 5,
    }
    cols = _columns(width, tuple(cost), ("gamma", "/1k", "profile", "top-2", "s2/s3"), cost)
    name_w = max(12, min(48, width - sum(cost[c] + 2 for c in cols) - 4))
    t = Table(
        title=f"layer gradient spectra, first→last step (gamma on k = 1..{res.top})",
        box=box.SIMPLE,
    )
    t.add_column("layer", no_wrap=True, max_width=name_w)
    for c in cols:
        t.add_column(c, justify="left" if c == "profile" else "right", no_wrap=True)
    for ly in res.layers.values():
        sm = ly.summary
        winners = [w for w in ly.bic_winner if w]
        cells = {
            "m x n": f"{ly.shape[0]}x{ly.shape[1]}",
            "gamma": _span(sm["gamma"]["first"], sm["gamma"]["last"]),
            "/1k": _f(sm["gamma"]["trend"], 2),
            "R^2": _f(sm["r2_gamma"]["last"], 2),
            "profile": PROFILE_SHORT[winners[-1]] if winners else "-",
            "PR": _span(sm["participation_ratio"]["first"], sm["participation_ratio"]["last"]),
            "stable rk": _span(sm["stable_rank"]["first"], sm["stable_rank"]["last"]),
            "top-2": _span(sm["top2_energy"]["first"], sm["top2_energy"]["last"], _pct),
            "s2/s3": _f(sm["gap_23"]["last"], 3),
            "s3/s1": _f(sm["rank_two_residual"]["last"], 2),
        }
        t.add_row(_name(ly.name, name_w), *(cells[c] for c in cols))
    return t


def _step_table(ly: LayerSpectrum, top: int, width: int) -> Table:
    cost = {
        "gamma": 5,
        "R^2": 4,
        "profile": 7,
        "BIC pow/exp/logn": 20,
        "PR": 5,
        "stable rk": 9,
        "top-2": 5,
        "s2/s3": 5,
        "s3/s1": 5,
    }
    narrow = ("gamma", "R^2", "profile", "PR", "top-2", "s2/s3", "s3/s1")
    cols = _columns(width, tuple(cost), narrow, cost)
    t = Table(title=f"{ly.name} ({ly.shape[0]} x {ly.shape[1]}) per recorded step", box=box.SIMPLE)
    t.add_column("step", justify="right", no_wrap=True)
    for c in cols:
        t.add_column(c, justify="left" if c == "profile" else "right", no_wrap=True)
    for j, step in enumerate(ly.steps):
        s = ly.series
        cells = {
            "gamma": _f(s["gamma"][j]),
            "R^2": _f(s["r2_gamma"][j], 2),
            "profile": PROFILE_SHORT.get(ly.bic_winner[j] or "", "-"),
            "BIC pow/exp/logn": "/".join(_f(ly.bic[p][j], 3) for p in ("power", "exponential", "lognormal")),
            "PR": _f(s["participation_ratio"][j]),
            "stable rk": _f(s["stable_rank"][j]),
            "top-2": _pct(s["top2_energy"][j]),
            "s2/s3": _f(s["gap_23"][j]),
            "s3/s1": _f(s["rank_two_residual"][j], 2),
        }
        t.add_row(str(int(step)), *(cells[c] for c in cols))
    return t


def _probe_table(res: SpectrumResult, width: int) -> Table:
    cost = {"gamma": 6, "alpha": 6, "s": 6, "alpha*gamma": 11, "rel. err": 8, "PR_h": 6, "PR bound": 8}
    cols = _columns(width, tuple(cost), ("gamma", "alpha", "s", "alpha*gamma", "rel. err"), cost)
    name_w = max(12, min(40, width - sum(cost[c] + 2 for c in cols) - 12))
    t = Table(title="curvature probes (exact Hessian-vector products): s vs alpha * gamma", box=box.SIMPLE)
    t.add_column("step", justify="right", no_wrap=True)
    t.add_column("layer", no_wrap=True, max_width=name_w)
    for c in cols:
        t.add_column(c, justify="right", no_wrap=True)
    for p in res.probes:
        for name, lp in p.layers.items():
            f = lp.fit
            rel = f.get("rel_err")
            cells = {
                "gamma": _f(f.get("gamma"), 4),
                "alpha": _f(f.get("alpha"), 4),
                "s": _f(f.get("s"), 4),
                "alpha*gamma": _f(f.get("alpha_gamma"), 4),
                "rel. err": "-" if rel is None or not math.isfinite(rel) else f"{100 * rel:.2f}%",
                "PR_h": _f(f.get("pr_h"), 4),
                "PR bound": _f(f.get("pr_bound"), 4),
            }
            t.add_row(str(p.step), _name(name, name_w), *(cells[c] for c in cols))
    return t


def _glass_table(res: SpectrumResult, width: int) -> Table:
    name_w = max(12, min(48, width - 50))
    t = Table(
        title="glass probes: rho = glass density, h = curvature (at theta +- sigma s)",
        box=box.SIMPLE,
    )
    for col in ("step", "parameter", "sigma", "rho mean", "h mean"):
        t.add_column(
            col,
            justify="left" if col == "parameter" else "right",
            no_wrap=True,
            max_width=name_w if col == "parameter" else None,
        )
    for g in res.glass:
        for name, (_, rho, h) in g.params.items():
            t.add_row(str(g.step), _name(name, name_w), _f(g.sigma, 3), _f(rho, 4), _f(h, 4))
    return t
