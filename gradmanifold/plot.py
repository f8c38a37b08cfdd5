"""Pictures of analyses (docs/PLOTS.md): kappa per window over training with the paper's reference bands,
the increment tail curve tail(r) with r*(eps) marked, r*(eps) per window, a layer x window heatmap, and, when
a store recorded them, layer spectra (gamma, top-2 energy, probes' s against alpha*gamma) and updates (D_g
against D_theta with the glass fit). Several runs are overlaid (line style = run) or drawn side by side.

    runs = [load_run("a.zarr"), load_run("b.zarr")]
    render_plots(runs, "report.html")        # .png, .svg, or one self-contained .html

matplotlib (the `plot` extra) is imported inside the functions that draw; figures are built with the Agg
canvas and no pyplot state, so nothing here touches a display or the network.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradmanifold.errors import CorruptStoreError, UsageError
from gradmanifold.plot_panels import PLAIN, TITLES, Panel, PlotRun, Style, build_figure, window_note

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FORMATS = {".png": "png", ".svg": "svg", ".html": "html", ".htm": "html"}
LAYOUTS = ("overlay", "side")
DEFAULT_WINDOWS = 20  # a store analyzed without --window is cut into this many windows for the plots


@dataclass(frozen=True)
class PlotResult:
    """What render_plots wrote: the file, its format, the panels drawn (titles), notes, and its size."""

    path: Path
    format: str
    panels: tuple[str, ...]
    notes: tuple[str, ...]
    size_bytes: int


# ---------------------------------------------------------------------------------------------- inputs


def output_format(out: str | os.PathLike[str]) -> str:
    """png, svg or html from the file name; UsageError for another suffix or a folder.

    out: the file to write.
    """
    p = Path(out)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise UsageError(f"-o {os.fspath(out)!r}: give a file ending in .png, .svg or .html")
    if p.is_dir():
        raise UsageError(f"-o {os.fspath(out)!r} is a folder; give a file ending in .{fmt}")
    if not p.parent.is_dir():
        raise UsageError(f"-o {os.fspath(out)!r}: the folder {os.fspath(p.parent)!r} does not exist")
    return fmt


def require_matplotlib() -> None:
    """UsageError naming the extra to install when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'gradmanifold[plot]'") from None


def load_run(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    window: int | None = None,
    spectra: bool = True,
    **options: Any,
) -> PlotRun:
    """Analyze the store at `path` for plotting: with windows (`window`, or T/20 when None) and its layer
    spectra when it recorded any.

    path: the store; label: the run's name in legends (default: the store's file name); window: steps per
    window; spectra: read layer spectra and probes when present; options: further `analyze` options.
    """
    from gradmanifold.analysis import analyze
    from gradmanifold.store import open_store

    reader = open_store(path)
    chosen = window is None
    if window is None:
        start, stop = options.get("start_step"), options.get("stop_step")
        lo, hi = 0, reader.n_steps
        if start is not None or stop is not None:
            with contextlib.suppress(CorruptStoreError):  # the analysis reports it (or skips it)
                lo, hi = reader.row_range(start, stop)
        counted = hi - lo - int(options.get("burn_in") or 0)
        window = max(2, math.ceil(counted / DEFAULT_WINDOWS))
    result = analyze(reader, window=window, **options)
    spec = None
    if spectra and {"spectra", "curvature"} & set(reader.tables):
        from gradmanifold.layerspectra import layer_spectra

        spec = layer_spectra(reader)
    name = label or Path(os.fspath(path)).name or os.fspath(path)
    return PlotRun(label=name, analysis=result, spectra=spec, default_window=chosen)


def parse_heatmap(spec: str | None, runs: Sequence[PlotRun]) -> tuple[str, str]:
    """`kappa:PREDICTOR` or `r_star:EPS` (None: kappa of `last`, else of the first reported predictor).

    spec: the option's text; runs: the runs (their predictors and eps are the choices).
    """
    from gradmanifold.predictors import canonical_id

    preds = [p for p in runs[0].analysis.config.predictors if p != "zero"]
    eps = list(runs[0].analysis.model.rank.r_star)
    if spec is None:
        return ("kappa", "last" if "last" in preds else (preds or ["zero"])[0])
    kind, sep, key = spec.partition(":")
    kind = kind.strip().lower().replace("*", "_star").replace("r_star", "r_star")
    if kind in ("r", "rstar", "r_star") and sep:
        try:
            k = repr(float(key))
        except ValueError:
            k = key
        if k in eps:
            return ("r_star", k)
        raise UsageError(f"--heatmap {spec!r}: eps {key!r} was not analyzed; choose one of: {', '.join(eps)}")
    if kind == "kappa" and sep:
        try:
            p = canonical_id(key.strip())
        except UsageError:
            p = key
        if p in preds:
            return ("kappa", p)
        raise UsageError(
            f"--heatmap {spec!r}: predictor {key!r} not reported; choose one of: {', '.join(preds)}"
        )
    raise UsageError(
        f"--heatmap {spec!r}: give kappa:PREDICTOR (e.g. kappa:last) or r_star:EPS (e.g. r_star:0.1)"
    )


# ---------------------------------------------------------------------------------------------- layout


def plan_panels(runs: Sequence[PlotRun], layout: str = "overlay") -> list[list[Panel | None]]:
    """The figure's grid: rows of panels. overlay: every run in each line panel, two panels a row, one
    heatmap per run; side: one column per run, one row per kind of panel (None where a run lacks the data).

    runs: the runs; layout: overlay or side.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"--layout {layout!r}: use overlay or side")
    kinds = ["kappa", "tail", "r_star", "heatmap"]
    if any(r.spectra is not None and r.spectra.layers for r in runs):
        kinds += ["gamma", "top2"]
    if any(r.spectra is not None and r.spectra.probes for r in runs):
        kinds.append("probes")
    if any(sc.updates for r in runs for sc in r.analysis.scopes.values()):
        kinds.append("updates")
    if layout == "side" and len(runs) > 1:
        return [[Panel(k, TITLES[k], (r,)) if _has(k, r) else None for r in runs] for k in kinds]
    flat: list[Panel] = []
    for k in kinds:
        if k == "heatmap":
            flat += [Panel(k, TITLES[k], (r,)) for r in runs]
        else:
            have = tuple(r for r in runs if _has(k, r))
            if have:
                flat.append(Panel(k, TITLES[k], have))
    return [list(flat[i : i + 2]) for i in range(0, len(flat), 2)]


def _has(kind: str, run: PlotRun) -> bool:
    if kind in ("gamma", "top2"):
        return run.spectra is not None and bool(run.spectra.layers)
    if kind == "probes":
        return run.spectra is not None and bool(run.spectra.probes)
    if kind == "updates":
        return any(sc.updates for sc in run.analysis.scopes.values())
    return True


# ---------------------------------------------------------------------------------------------- output


def render_plots(
    runs: Sequence[PlotRun],
    out: str | os.PathLike[str],
    *,
    scope: str = "model",
    heatmap: str | None = None,
    layout: str = "overlay",
    dpi: int = 100,
) -> PlotResult:
    """Draw every panel the runs support and write `out` (.png, .svg, or .html: one self-contained page with
    the figures inline as base64 PNG, the tables and each run's description; nothing from the network).

    runs: the runs (load_run); out: the file; scope: the scope of the line panels (model or a group);
    heatmap: kappa:PREDICTOR or r_star:EPS for the layer x window heatmap (default kappa:last); layout:
    overlay (runs in the same axes) or side (a column per run); dpi: resolution of PNG output.
    """
    fmt = output_format(out)
    require_matplotlib()
    if not runs:
        raise UsageError("no runs to plot; give at least one store")
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"two runs share a label ({', '.join(labels)}); give distinct --labels")
    missing = [r.label for r in runs if scope not in r.analysis.scopes]
    if missing:
        have = ", ".join(runs[0].analysis.scopes)
        raise UsageError(f"--scope {scope!r} is not a scope of {', '.join(missing)}; scopes: {have}")
    if isinstance(dpi, bool) or not isinstance(dpi, int) or not 20 <= dpi <= 600:
        raise UsageError(f"dpi {dpi!r} is invalid; give 20..600")
    style = Style(scope=scope, heatmap=parse_heatmap(heatmap, runs), runs=runs)
    grid = plan_panels(runs, layout)
    titles = tuple(p.title for row in grid for p in row if p is not None)
    notes = tuple(_notes(runs))
    if fmt == "html":
        from gradmanifold.report.html import render_page

        figures = [(_png(build_figure([row], style), dpi), _row_caption(row, style)) for row in grid]
        data = render_page([(r.label, r.analysis, r.spectra) for r in runs], figures, notes).encode()
    else:
        fig = build_figure(grid, style, title=_title(runs))
        data = _png(fig, dpi) if fmt == "png" else _svg(fig)
    _write(Path(out), data)
    return PlotResult(Path(out), fmt, titles, notes, len(data))


def _title(runs: Sequence[PlotRun]) -> str:
    """The figure's title: the runs (with steps, k and groups) and how the panels are windowed."""
    parts = []
    for r in runs:
        st = r.analysis.store
        n = len(st.groups)
        parts.append(f"{r.label} ({st.n_steps} steps, k = {st.k}, {n} group{'s' if n != 1 else ''})")
    if len(parts) > 6:
        parts = [*parts[:5], f"and {len(parts) - 5} more runs"]
    return "\n".join(parts) + "\n" + window_note(runs)


def _row_caption(row: Sequence[Panel | None], style: Style) -> str:
    """The panels of one HTML figure as plain text (no mathtext); with several runs, whose panel it is."""
    names = []
    for p in row:
        if p is None:
            continue
        text = p.title
        if p.key == "heatmap":
            kind, key = style.heatmap
            text = f"{kind}({key}) {text}"
        for math_text, plain in PLAIN.items():
            text = text.replace(math_text, plain)
        if len(style.runs) > 1 and len(p.runs) == 1:
            text += f" ({p.runs[0].label})"
        names.append(text)
    return "; ".join(names)


def _notes(runs: Sequence[PlotRun]) -> list[str]:
    out = []
    for r in runs:
        if r.default_window:
            out.append(
                f"{r.label}: analyzed without --window; the over-training panels use windows of "
                f"{r.analysis.config.window} steps (T/{DEFAULT_WINDOWS})"
            )
    return out


def _png(fig: Figure, dpi: int) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _svg(fig: Figure) -> bytes:
    import io

    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.hashsalt": "gradmanifold", "svg.fonttype": "path"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written picture."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {os.fspath(path)!r}: {exc.strerror or exc}") from None
