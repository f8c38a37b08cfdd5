"""The panels of `gradmanifold plot` (docs/PLOTS.md), drawn on matplotlib axes: kappa per window with the
paper's bands, the increment tail with r*(eps), r*(eps) per window, a layer x window heatmap, layer spectra
(gamma, top-2 energy), curvature probes (s against alpha*gamma) and updates (D_g against D_theta, glass fit).

Plain results in, a matplotlib Figure out (Agg canvas, no pyplot state); gradmanifold.plot plans the grid,
loads the runs and writes the files. matplotlib is imported inside the functions that draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from gradmanifold.report.model import AnalysisResult
from gradmanifold.report.spectra import SpectrumResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: the paper's kappa ranges on real training runs (arXiv 2601.04270; README's worked example)
PAPER_BANDS = {"last": (1.3, 3.2), "ema": (0.97, 1.10), "trend": (3.4, 11.0)}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
MAX_HEATMAP_ROWS = 40
PANEL_SIZE = (6.4, 4.2)  # inches, one panel
SHARED_Y = ("kappa", "tail", "r_star", "gamma", "top2", "updates")


@dataclass(frozen=True)
class PlotRun:
    """One run to draw: its analysis (with windows), its layer spectra when recorded, and a label."""

    label: str
    analysis: AnalysisResult
    spectra: SpectrumResult | None = None
    default_window: bool = False  # the window was chosen by load_run (T/20), not asked for


@dataclass(frozen=True)
class Panel:
    """One axes of the figure: what it shows (key), its title, and the runs drawn in it."""

    key: str  # kappa | tail | r_star | heatmap | gamma | top2 | probes | updates
    title: str
    runs: tuple[PlotRun, ...]


@dataclass
class Style:
    """Colours and line styles shared by every panel, so that a predictor, eps, layer or run looks the same
    everywhere; and the options the panels read."""

    scope: str
    heatmap: tuple[str, str]  # ("kappa", predictor) or ("r_star", eps key)
    runs: Sequence[PlotRun]
    colors: dict[str, Any] = field(default_factory=dict)

    def run_style(self, run: PlotRun) -> str:
        return LINESTYLES[[r.label for r in self.runs].index(run.label) % len(LINESTYLES)]

    def run_marker(self, run: PlotRun) -> str:
        return MARKERS[[r.label for r in self.runs].index(run.label) % len(MARKERS)]

    def color(self, kind: str, key: str) -> Any:
        """A stable colour for (kind, key): predictors and layers from tab10, eps from a dark-to-light map."""
        name = f"{kind}:{key}"
        if name not in self.colors:
            from matplotlib import colormaps

            n = sum(1 for c in self.colors if c.startswith(kind + ":"))
            cmap = colormaps["plasma" if kind == "eps" else "tab10"]
            self.colors[name] = cmap(0.1 + 0.22 * (n % 4)) if kind == "eps" else cmap(n % 10)
        return self.colors[name]


def build_figure(grid: Sequence[Sequence[Panel | None]], style: Style, title: str | None = None) -> Figure:
    """Draw a grid of panels on a new Agg figure (no pyplot); the caller saves it.

    grid: rows of panels (plan_panels); style: colours and options; title: the figure's title.
    """
    from matplotlib.figure import Figure

    nrows, ncols = len(grid), max(len(row) for row in grid)
    fig = Figure(
        figsize=(PANEL_SIZE[0] * ncols, PANEL_SIZE[1] * nrows + (0.5 if title else 0)), layout="constrained"
    )
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, row in enumerate(grid):
        for j in range(ncols):
            ax = axes[i][j]
            panel = row[j] if j < len(row) else None
            if panel is None:
                if j < len(row):
                    ax.text(0.5, 0.5, "not recorded in this run", ha="center", va="center", color="0.4")
                    ax.set_axis_off()
                else:
                    ax.set_visible(False)
                continue
            ax.set_gid(f"panel-{panel.key}-{i}-{j}")  # names the panel's group in SVG output
            DRAW[panel.key](fig, ax, panel, style)
        _share_y([axes[i][j] for j, p in enumerate(row) if p is not None], [p for p in row if p is not None])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _share_y(axes: Sequence[Axes], panels: Sequence[Panel]) -> None:
    """Side by side (a row of the same kind of line panel): one y range, so that the runs compare by eye."""
    if len(panels) < 2 or len({p.key for p in panels}) != 1 or panels[0].key not in SHARED_Y:
        return
    lims = [ax.get_ylim() for ax in axes]
    lo, hi = min(lo for lo, _ in lims), max(hi for _, hi in lims)
    for ax in axes:
        ax.set_ylim(lo, hi)


def _windows(run: PlotRun, scope: str) -> tuple[np.ndarray, list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Window centres, kappa dicts and r* dicts of `scope`; without windows one: the whole run."""
    a = run.analysis
    if not a.windows:
        sc = a.scopes[scope]
        return np.array([(a.config.first_step + a.config.last_step) / 2]), [sc.kappa], [sc.rank.r_star]
    ws = [w for w in a.windows if scope in w.scopes]
    xs = np.array([(w.start_step + w.end_step) / 2 for w in ws], dtype=float)
    return xs, [w.scopes[scope].kappa for w in ws], [w.scopes[scope].r_star for w in ws]


def _series(dicts: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if d.get(key) is None else float(d[key]) for d in dicts], dtype=float)


def window_note(runs: Sequence[PlotRun]) -> str:
    """How the over-training panels are windowed, e.g. `windows of 40 steps (T/20 by default: ...)`."""
    ws = sorted({r.analysis.config.window for r in runs if r.analysis.config.window})
    if not ws:
        return "no windows: one point for the whole run"
    text = f"windows of {', '.join(map(str, ws))} steps"
    if any(r.default_window for r in runs):
        text += " (T/20 by default: the store was analyzed without --window)"
    return text


def _step_label(runs: Sequence[PlotRun]) -> str:
    ws = sorted({r.analysis.config.window for r in runs if r.analysis.config.window})
    if not ws:
        return "training step (whole run)"
    default = ", T/20 by default" if any(r.default_window for r in runs) else ""
    return f"training step (centres of {'/'.join(map(str, ws))}-step windows{default})"


def _set_title(ax: Axes, panel: Panel, style: Style, text: str) -> None:
    """The panel's title; named after its run when the figure has several runs and the panel only one."""
    if len(style.runs) > 1 and len(panel.runs) == 1:
        text += f" — {panel.runs[0].label}"
    ax.set_title(text, fontsize=10)


def _headroom(ax: Axes, share: float = 0.3) -> None:
    """Raise the top of a log y axis so that the top `share` of the axes is free for legends."""
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * (hi / lo) ** (share / (1 - share)))


def _run_legend(ax: Axes, panel: Panel, style: Style, loc: Any = "upper right") -> None:
    """A second legend naming the runs by line style (only with more than one run in the panel)."""
    if len(panel.runs) < 2:
        return
    from matplotlib.lines import Line2D

    first = ax.get_legend()
    handles = [
        Line2D([], [], color="0.2", ls=style.run_style(r), marker=style.run_marker(r)) for r in panel.runs
    ]
    ax.legend(handles, [r.label for r in panel.runs], loc=loc, fontsize=7, title="run", title_fontsize=7)
    if first is not None:
        ax.add_artist(first)


def _draw_kappa(fig: Figure, ax: Axes, panel: Panel, style: Style) -> None:
    preds: list[str] = []
    for run in panel.runs:
        preds += [p for p in run.analysis.config.predictors if p != "zero" and p not in preds]
        xs, kappas, _ = _windows(run, style.scope)
        for p in preds:
            ys = _series(kappas, p)
            ax.plot(
                xs,
                ys,
                ls=style.run_style(run),
                marker=style.run_marker(run),
                ms=3,
                lw=1.4,
                color=style.color("pred", p),
                label=p if run is panel.runs[0] else None,
            )
    ax.axhline(1.0, color="0.3", lw=0.8, ls=(0, (4, 3)), label=r"zero ($\kappa$ = 1)")
    shown = set()
    for p in preds:
        family = "ema" if p.startswith("ema:") else p
        if family in PAPER_BANDS and family not in shown:
            shown.add(family)
            lo, hi = PAPER_BANDS[family]
            ax.axhspan(
                lo, hi, color=style.color("pred", p), alpha=0.12, lw=0, label=f"paper: {family} {lo:g}–{hi:g}"
            )
    ax.set_yscale("log")
    _headroom(ax, 0.22)
    _log_ticks(ax)
    ax.set_xlabel(_step_label(panel.runs))
    ax.set_ylabel(r"$\kappa = P_T(m)\,/\,\sum_t \|g_t\|^2$  (ratio)")
    _set_title(ax, panel, style, f"{panel.title} ({style.scope})")
    ax.legend(fontsize=7, ncol=2, loc="upper left", framealpha=0.85)
    _run_legend(ax, panel, style)
    ax.grid(alpha=0.3, which="both")


def _draw_tail(fig: Figure, ax: Axes, panel: Panel, style: Style) -> None:
    eps_keys: list[str] = []
    for run in panel.runs:
        eps_keys += [e for e in run.analysis.scopes[style.scope].rank.r_star if e not in eps_keys]
    # below eps/1000 the tail is rounding noise (a spectrum of rank < k ends near 1e-16): not shown
    floor = min(float(e) for e in eps_keys) / 1000 if eps_keys else 1e-6
    xmax = 1
    for run in panel.runs:
        rank = run.analysis.scopes[style.scope].rank
        tail = np.asarray(rank.tail, dtype=float)
        r = np.arange(len(tail))
        keep = tail > 0
        color = "0.15" if len(panel.runs) == 1 else style.color("run", run.label)
        label = f"{run.label}" if len(panel.runs) > 1 else "tail(r)"
        ax.plot(r[keep], tail[keep], color=color, ls=style.run_style(run), lw=1.5, label=label)
        below = np.flatnonzero(tail < floor)
        end = int(below[0] * 1.15) + 2 if below.size else len(tail) - 1
        stars = [rs for rs in rank.r_star.values() if rs is not None]
        xmax = max(xmax, min(len(tail) - 1, max([end, *(int(1.3 * x) + 2 for x in stars)])))
        for e, rs in rank.r_star.items():
            if rs is not None and rs < len(tail):
                ax.plot(
                    [rs],
                    [max(tail[rs], floor)],
                    marker=style.run_marker(run),
                    ms=6,
                    ls="none",
                    color=style.color("eps", e),
                    label=f"r*({e}) = {rs}" if len(panel.runs) == 1 else None,
                    zorder=3,
                    clip_on=False,
                )
    for e in eps_keys:
        ax.axhline(float(e), color=style.color("eps", e), lw=0.8, ls=":")
        ax.annotate(
            rf"$\varepsilon$ = {e}",
            (1.0, float(e)),
            xycoords=("axes fraction", "data"),
            xytext=(-2, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize=7,
            color=style.color("eps", e),
        )
    ax.set_yscale("log")
    ax.set_ylim(floor, 1.5)
    ax.set_xlim(0, xmax)
    ax.set_xlabel("r  (number of leading increment directions)")
    ax.set_ylabel(r"tail(r) $/\, \|H\|_F^2$  (energy share left out)")
    _set_title(ax, panel, style, f"{panel.title} ({style.scope})")
    ax.legend(fontsize=7, loc="lower left", framealpha=0.85)
    ax.grid(alpha=0.3, which="both")


def _draw_r_star(fig: Figure, ax: Axes, panel: Panel, style: Style) -> None:
    eps_keys: list[str] = []
    for run in panel.runs:
        xs, _, rstars = _windows(run, style.scope)
        for e in run.analysis.model.rank.r_star:
            if e not in eps_keys:
                eps_keys.append(e)
            ys = _series(rstars, e)
            ax.plot(
                xs,
                ys,
                ls=style.run_style(run),
                marker=style.run_marker(run),
                ms=3,
                lw=1.4,
                color=style.color("eps", e),
                label=rf"$\varepsilon$ = {e}" if run is panel.runs[0] else None,
            )
    ax.set_yscale("log")
    _log_ticks(ax, integer=True)
    ax.set_xlabel(_step_label(panel.runs))
    ax.set_ylabel(r"$r^*(\varepsilon)$  (increment directions)")
    _set_title(ax, panel, style, f"{panel.title} ({style.scope})")
    _headroom(ax, 0.25)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.85, ncol=4 if len(panel.runs) == 1 else 2)
    _run_legend(ax, panel, style)
    ax.grid(alpha=0.3, which="both")


def _draw_heatmap(fig: Figure, ax: Axes, panel: Panel, style: Style) -> None:
    from matplotlib.colors import LogNorm, Normalize

    run = panel.runs[0]
    a = run.analysis
    groups = [s for s in a.scopes if s != "model"] or ["model"]
    names = groups[:MAX_HEATMAP_ROWS]
    kind, key = style.heatmap
    cols = []
    for s in names:
        _, kappas, rstars = _windows(run, s)
        cols.append(_series(kappas if kind == "kappa" else rstars, key))
    data = np.ma.masked_invalid(np.array(cols, dtype=float))
    ws = a.windows
    starts = [w.start_step for w in ws] if ws else [a.config.first_step]
    positive = data.compressed()
    positive = positive[positive > 0]
    norm: Any = Normalize() if data.count() else Normalize(0.0, 1.0)
    if kind == "kappa" and positive.size and positive.max() / positive.min() > 3:
        norm = LogNorm(positive.min(), positive.max())
    cmap = _cmap("viridis")
    im = ax.imshow(data, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    label = rf"$\kappa$({key})" if kind == "kappa" else rf"$r^*$({key})"
    bar = fig.colorbar(
        im, ax=ax, label=label + (" (ratio)" if kind == "kappa" else " (directions)"), pad=0.01
    )
    if isinstance(norm, LogNorm):
        from matplotlib.ticker import FuncFormatter, LogLocator

        narrow = positive.max() / positive.min() < 10
        subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0) if narrow else (1.0, 2.0, 5.0)
        bar.ax.yaxis.set_major_locator(LogLocator(subs=subs))
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        bar.ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    if data.size <= 160:
        lo, hi = (float(data.min()), float(data.max())) if data.count() else (0.0, 1.0)
        for (i, j), v in np.ndenumerate(data.filled(np.nan)):
            if math.isfinite(v):
                frac = float(norm(v)) if hi > lo else 0.5
                ax.text(
                    j,
                    i,
                    _cell(v) if kind == "kappa" else f"{int(v)}",
                    ha="center",
                    va="center",
                    fontsize=6.5,
                    color="white" if frac < 0.6 else "black",
                )
    step = max(1, len(starts) // 8)
    ax.set_xticks(range(0, len(starts), step), [str(s) for s in starts[::step]], fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8 if len(names) < 20 else 6)
    ax.set_xlabel("window start (training step)")
    ax.set_ylabel("layer (group)")
    more = f", first {len(names)} of {len(groups)}" if len(groups) > len(names) else ""
    ax.set_title(f"{label} per layer and window — {run.label}{more}", fontsize=10)


def _cell(v: float) -> str:
    """A kappa in a heatmap cell: at most four characters where possible (0.83, 0.035, 1.65, 12.3)."""
    return f"{v:.2g}" if v < 1 else f"{v:.2f}" if v < 10 else f"{v:.3g}"


def _draw_layer_series(fig: Figure, ax: Axes, panel: Panel, style: Style, key: str) -> None:
    for run in panel.runs:
        if run.spectra is None:
            continue
        for name, ly in run.spectra.layers.items():
            ys = np.asarray(ly.series[key], dtype=float) * (100 if key == "top2_energy" else 1)
            ax.plot(
                ly.steps,
                ys,
                ls=style.run_style(run),
                marker=style.run_marker(run),
                ms=2.5,
                lw=1.3,
                color=style.color("layer", name),
                label=name if run is panel.runs[0] else None,
            )
    ax.set_xlabel("training step")
    if key == "gamma":
        ax.set_ylabel(r"$\gamma$  (decay exponent, $\sigma_k \sim k^{-\gamma}$)")
    else:
        ax.set_ylabel(r"top-2 energy $(\sigma_1^2+\sigma_2^2)/\|G\|_F^2$  (%)")
        lo, _ = ax.get_ylim()
        ax.set_ylim(max(0.0, lo), 100)
    _set_title(ax, panel, style, panel.title)
    ax.legend(fontsize=7, loc="best", framealpha=0.85)
    _run_legend(ax, panel, style)
    ax.grid(alpha=0.3)


def _draw_probes(fig: Figure, ax: Axes, panel: Panel, style: Style) -> None:
    seen: set[str] = set()
    vals: list[float] = []
    for run in panel.runs:
        for probe in run.spectra.probes if run.spectra is not None else ():
            for name, lp in probe.layers.items():
                x, y = float(lp.fit.get("alpha_gamma", np.nan)), float(lp.fit.get("s", np.nan))
                if not (math.isfinite(x) and math.isfinite(y)):
                    continue
                vals += [x, y]
                ax.plot(
                    [x],
                    [y],
                    marker=style.run_marker(run),
                    ms=6,
                    ls="none",
                    color=style.color("layer", name),
                    label=name if name not in seen else None,
                )
                seen.add(name)
                ax.annotate(str(probe.step), (x, y), xytext=(4, 3), textcoords="offset points", fontsize=6)
    if vals:
        lo, hi = min(vals), max(vals)
        pad = 0.08 * (hi - lo or 1.0)
        ax.plot(
            [lo - pad, hi + pad],
            [lo - pad, hi + pad],
            color="0.4",
            lw=0.9,
            ls="--",
            label=r"$s = \alpha\gamma$",
        )
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
    else:
        ax.text(0.5, 0.5, "no probe with finite s and alpha*gamma", ha="center", transform=ax.transAxes)
    ax.set_xlabel(r"$\alpha\gamma$  (predicted exponent of sorted $h_k$)")
    ax.set_ylabel(r"$s$  (measured exponent, $h_{(k)} \sim k^{-s}$)")
    _set_title(ax, panel, style, panel.title + " (labels: probe step)")
    ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    _run_legend(ax, panel, style)
    ax.grid(alpha=0.3)


def _draw_updates(fig: Figure, ax: Axes, panel: Panel, style: Style) -> None:
    notes = []
    for run in panel.runs:
        sc = run.analysis.scopes.get(style.scope)
        up = sc.updates if sc is not None else None
        fit = (up or {}).get("glass_fit") or {}
        lags = [lag for lag in fit.get("lags") or () if lag.get("d_g") and lag.get("d_theta")]
        if not lags:
            continue
        color = style.color("run", run.label)
        dth = np.array([lag["d_theta"] for lag in lags], dtype=float)
        dg = np.array([lag["d_g"] for lag in lags], dtype=float)
        ax.plot(
            dth,
            dg,
            marker=style.run_marker(run),
            ls="none",
            ms=5,
            color=color,
            label=f"{run.label}: lags" if len(panel.runs) > 1 else "lag means",
        )
        for lag in (lags[0], lags[-1]):
            ax.annotate(
                rf"$\tau$={lag['tau']}",
                (lag["d_theta"], lag["d_g"]),
                xytext=(5, 2),
                textcoords="offset points",
                fontsize=6,
            )
        p, a, c = up.get("glass_exponent") if up else None, fit.get("noise_floor"), fit.get("c")
        if p is not None and a is not None and c is not None:
            grid = np.geomspace(dth.min(), dth.max(), 100)
            ax.plot(
                grid,
                a + c * grid ** (p / 2),
                color=color,
                ls=style.run_style(run),
                lw=1.3,
                label=rf"fit $a + c\,D_\theta^{{p/2}}$: p = {p:.2f}",
            )
            ax.axhline(a, color=color, lw=0.8, ls=":", label=f"noise floor a = 2s² = {a:.3g}")
        if fit.get("note"):
            notes.append(str(fit["note"]))
    ax.set_xscale("log")
    ax.set_yscale("log")
    _headroom(ax, 0.25)
    _log_ticks(ax)
    ax.set_xlabel(r"$D_\theta(\tau)$ = mean $\|\theta_{t+\tau}-\theta_t\|^2$  (parameter units$^2$)")
    ax.set_ylabel(r"$D_g(\tau)$ = mean $\|z_{t+\tau}-z_t\|^2$  (projected grad.$^2$)")
    _set_title(ax, panel, style, f"{panel.title} ({style.scope})")
    if notes:
        ax.text(
            0.99,
            0.02,
            "\n".join(sorted(set(notes)))[:150],
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=6,
            color="0.35",
            wrap=True,
        )
    ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
    ax.grid(alpha=0.3, which="both")


def _log_ticks(ax: Axes, integer: bool = False, which: str = "y") -> None:
    """Plain numbers on a log axis (0.5, 1, 2, 5, 10 rather than 10^0); within a factor of 3 the minor
    ticks are labelled too, so that a narrow axis still reads."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    axis = ax.yaxis if which == "y" else ax.xaxis

    def text(v: float) -> str:
        return f"{v:.0f}" if integer or v >= 10 else f"{v:.3g}"

    def minor(v: float, _: Any) -> str:
        lo, hi = sorted(ax.get_ylim() if which == "y" else ax.get_xlim())
        return text(v) if lo > 0 and hi / lo < 3 else ""

    axis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: text(v)))
    axis.set_minor_formatter(FuncFormatter(minor))


def _cmap(name: str) -> Any:
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="0.85")  # windows without a value: light grey


#: mathtext of the titles as plain text (HTML captions)
PLAIN = {
    r"$\kappa$": "kappa",
    r"$r^*(\varepsilon)$": "r*(eps)",
    r"$\gamma$": "gamma",
    r"$s$": "s",
    r"$\alpha\gamma$": "alpha*gamma",
    r"$D_g$": "D_g",
    r"$D_\theta$": "D_theta",
}
TITLES = {
    "kappa": r"predictability $\kappa$ per window over training",
    "tail": r"increment spectrum: tail(r) with $r^*(\varepsilon)$",
    "r_star": r"predictable rank $r^*(\varepsilon)$ per window",
    "heatmap": "per layer and window",
    "gamma": r"layer spectra: exponent $\gamma$ over training",
    "top2": "layer spectra: top-2 energy over training",
    "probes": r"curvature probes: $s$ against $\alpha\gamma$",
    "updates": r"updates: $D_g$ against $D_\theta$ with the glass fit",
}
DRAW: dict[str, Callable[[Any, Any, Panel, Style], None]] = {
    "kappa": _draw_kappa,
    "tail": _draw_tail,
    "r_star": _draw_r_star,
    "heatmap": _draw_heatmap,
    "gamma": lambda f, a, p, s: _draw_layer_series(f, a, p, s, "gamma"),
    "top2": lambda f, a, p, s: _draw_layer_series(f, a, p, s, "top2_energy"),
    "probes": _draw_probes,
    "updates": _draw_updates,
}
