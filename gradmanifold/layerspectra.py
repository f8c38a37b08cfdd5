"""Layer spectra over training, from a store: per recorded layer and step the readouts of docs/SPECTRA.md
(gamma, BIC rank profile, participation ratio, stable rank, two-rank-one dominance), a summary over training,
and the curvature probes stored in the run (alpha, s = alpha * gamma).

The spectra tables are small (q values per layer every N steps), so they are read whole; the main rows are
never touched.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradmanifold.errors import UsageError
from gradmanifold.layerspec import DEFAULT_TOP, MIN_POINTS, PROFILES, fit_spectral, readouts, trend
from gradmanifold.report.spectra import (
    SERIES,
    GlassRecord,
    LayerProbe,
    LayerSpectrum,
    ProbeRecord,
    SpectrumResult,
)
from gradmanifold.store import StoreReader, open_store


def layer_spectra(
    path: str | os.PathLike[str] | StoreReader,
    *,
    top: int | None = None,
    layers: Sequence[str] | None = None,
) -> SpectrumResult:
    """Readouts of every recorded layer spectrum and stored probe of the store at `path`.

    top: the fit window K (the first K singular values; at most the q recorded; None: 20, or q when fewer
    were recorded). layers: glob patterns of
    layer names to keep (None: all). UsageError when the store holds neither spectra nor probes, when `top`
    exceeds q or is below 3, or when the patterns match no layer.
    """
    reader = path if isinstance(path, StoreReader) else open_store(path)
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < MIN_POINTS):
        raise UsageError(f"--top {top!r} is invalid: the fit window needs at least {MIN_POINTS} values")
    tables = reader.tables
    if not {"spectra", "curvature", "glass"} & set(tables):
        raise UsageError(
            f"{reader.path} holds no layer spectra: record with --spectra-every N "
            "(Recorder(spectra_every=N)) "
            "or store a probe with Recorder.probe"
        )
    q = every = None
    names: list[str] = []
    if "spectra" in tables:
        t = reader.table("spectra")
        q, every = t.dims["q"], t.meta.get("every")
        names = [ly["name"] for ly in t.meta["layers"]]
        if top is None:
            top = min(DEFAULT_TOP, q)
        if top > q:
            raise UsageError(
                f"--top {top} is more than the {q} singular values recorded per layer; use <= {q}"
            )
    fit_top = DEFAULT_TOP if top is None else top
    probe_names = (
        [ly["name"] for ly in reader.table("curvature").meta["layers"]] if "curvature" in tables else []
    )
    probe_names += [p["name"] for p in reader.table("glass").meta["params"]] if "glass" in tables else []
    keep = _select(list(dict.fromkeys([*names, *probe_names])), layers)
    out: dict[str, LayerSpectrum] = {}
    if "spectra" in tables:
        t = reader.table("spectra")
        data = reader.read_table("spectra")
        for i, ly in enumerate(t.meta["layers"]):
            if ly["name"] in keep:
                out[ly["name"]] = _layer(
                    ly["name"],
                    ly["shape"],
                    data["spectra_step"],
                    data["spectra_sigma"][:, i],
                    data["spectra_frob_sq"][:, i],
                    fit_top,
                )
    probes = _probes(reader, keep, fit_top) if "curvature" in tables else ()
    n = reader.n_steps
    store = {"path": str(reader.path), "n_steps": n, "k": reader.k, "groups": list(reader.group_names)}
    glass = _glass(reader, keep) if "glass" in tables else ()
    return SpectrumResult(store=store, top=fit_top, q=q, every=every, layers=out, probes=probes, glass=glass)


def _glass(reader: StoreReader, keep: set[str]) -> tuple[GlassRecord, ...]:
    meta = reader.table("glass").meta["params"]
    data = reader.read_table("glass")
    out = []
    for j, step in enumerate(data["glass_step"]):
        params = {
            p["name"]: (tuple(p["shape"]), float(data["glass_rho"][j, i]), float(data["glass_h"][j, i]))
            for i, p in enumerate(meta)
            if p["name"] in keep and math.isfinite(data["glass_rho"][j, i])
        }
        out.append(GlassRecord(step=int(step), sigma=float(data["glass_sigma"][j]), params=params))
    return tuple(out)


def _select(names: list[str], patterns: Sequence[str] | None) -> set[str]:
    if not patterns:
        return set(names)
    keep = {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}
    if not keep:
        shown = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        raise UsageError(f"--layers {','.join(patterns)!r} matches no recorded layer; layers: {shown}")
    return keep


def _finite_prefix(sigma: np.ndarray) -> np.ndarray:
    """The recorded values of one row: NaN pads a layer with fewer than q values (or a skipped step)."""
    ok = np.isfinite(sigma)
    return sigma[: int(np.argmin(ok)) if not ok.all() else len(sigma)]


def _layer(
    name: str, shape: list[int], steps: np.ndarray, sigma: np.ndarray, frob: np.ndarray, top: int
) -> LayerSpectrum:
    n_steps = len(steps)
    series = {key: np.full(n_steps, np.nan) for key in SERIES}
    bic = {p: np.full(n_steps, np.nan) for p in PROFILES}
    winners: list[str | None] = []
    for j in range(n_steps):
        s = _finite_prefix(sigma[j])
        if len(s) == 0 or not math.isfinite(frob[j]):
            winners.append(None)
            continue
        r = readouts(s, float(frob[j]), top=top)
        for key in SERIES:
            series[key][j] = r[key]
        for p in PROFILES:
            bic[p][j] = r[f"bic_{p}"]
        w = r["bic_winner"]
        winners.append(None if math.isnan(w) else PROFILES[int(w)])
    summary = {key: _summary(steps, series[key]) for key in SERIES}
    return LayerSpectrum(
        name=name,
        shape=(int(shape[0]), int(shape[1])),
        steps=steps.astype(np.int64),
        sigma=sigma,
        frobenius_sq=frob,
        series=series,
        bic=bic,
        bic_winner=tuple(winners),
        summary=summary,
    )


def _summary(steps: np.ndarray, v: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(v)
    if not ok.any():
        return {"first": math.nan, "last": math.nan, "min": math.nan, "max": math.nan, "trend": math.nan}
    f = v[ok]
    return {
        "first": float(f[0]),
        "last": float(f[-1]),
        "min": float(f.min()),
        "max": float(f.max()),
        "trend": trend(steps.astype(np.float64), v) if len(steps) else math.nan,
    }


def _probes(reader: StoreReader, keep: set[str], top: int) -> tuple[ProbeRecord, ...]:
    t = reader.table("curvature")
    data = reader.read_table("curvature")
    out = []
    for j, step in enumerate(data["curvature_step"]):
        layers: dict[str, LayerProbe] = {}
        for i, ly in enumerate(t.meta["layers"]):
            name = ly["name"]
            sigma = _finite_prefix(data["curvature_sigma"][j, i])
            if name not in keep or len(sigma) == 0:
                continue
            h = data["curvature_h"][j, i][: len(sigma)]
            fit = fit_spectral(
                sigma,
                h,
                top=min(top, len(sigma)) if len(sigma) >= MIN_POINTS else MIN_POINTS,
                shape=ly["shape"],
            )
            layers[name] = LayerProbe(
                name=name,
                shape=(int(ly["shape"][0]), int(ly["shape"][1])),
                sigma=sigma,
                h=h,
                frobenius_sq=float(data["curvature_frob_sq"][j, i]),
                fit=_fit_fields(fit),
            )
        out.append(ProbeRecord(step=int(step), layers=layers))
    return tuple(out)


def _fit_fields(fit: Any) -> dict[str, Any]:
    keys = (
        "gamma",
        "alpha",
        "s",
        "alpha_gamma",
        "rel_err",
        "pr_h",
        "pr_bound",
        "r2_gamma",
        "r2_alpha",
        "r2_s",
    )
    out: dict[str, Any] = {k: getattr(fit, k) for k in keys}
    out["bic_winner"] = fit.bic.winner
    return out
