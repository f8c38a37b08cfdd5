"""Result of `gradmanifold spectrum`: per layer, its recorded gradient spectra and their readouts over
training, plus stored curvature probes; and the versioned JSON form (schema gradmanifold.spectrum/1).

Plain data only: built by gradmanifold.layerspectra, rendered by report/console_spectra.py and to_dict here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA = "gradmanifold.spectrum/1"
#: readouts per recorded step, in table order (docs/SPECTRA.md)
SERIES = (
    "gamma",
    "r2_gamma",
    "participation_ratio",
    "stable_rank",
    "top2_energy",
    "gap_23",
    "rank_two_residual",
)
SUMMARY_KEYS = ("first", "last", "min", "max", "trend")


@dataclass(frozen=True)
class LayerSpectrum:
    """One layer's recorded spectra: sigma [S, q] (NaN beyond min(m, n)), ||G||_F^2 [S], readouts [S]."""

    name: str
    shape: tuple[int, int]
    steps: np.ndarray
    sigma: np.ndarray
    frobenius_sq: np.ndarray
    series: dict[str, np.ndarray]  # SERIES key -> [S]
    bic: dict[str, np.ndarray]  # power / exponential / lognormal -> [S]
    bic_winner: tuple[str | None, ...]
    summary: dict[str, dict[str, float]]  # SERIES key -> SUMMARY_KEYS -> value (trend: change per 1000 steps)


@dataclass(frozen=True)
class LayerProbe:
    """One layer of a stored curvature probe: the full-batch gradient's top sigma, h along u_k v_k^T, fits."""

    name: str
    shape: tuple[int, int]
    sigma: np.ndarray
    h: np.ndarray
    frobenius_sq: float
    fit: dict[str, Any]  # gamma, alpha, s, alpha_gamma, rel_err, pr_h, pr_bound, r2_* (NaN where undefined)


@dataclass(frozen=True)
class ProbeRecord:
    step: int
    layers: dict[str, LayerProbe]


@dataclass(frozen=True)
class GlassRecord:
    """One stored glass probe: its sigma and, per probed parameter, (shape, rho_mean, h_mean)."""

    step: int
    sigma: float
    params: dict[str, tuple[tuple[int, ...], float, float]]


@dataclass(frozen=True)
class SpectrumResult:
    """What `spectrum` reports for a store: its description, the fit window, layers and probes."""

    store: dict[str, Any]
    top: int
    q: int | None  # singular values recorded per layer (None: no spectra recorded)
    every: int | None
    layers: dict[str, LayerSpectrum]
    probes: tuple[ProbeRecord, ...] = ()
    notes: tuple[str, ...] = field(default=())
    glass: tuple[GlassRecord, ...] = ()


def _num(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _list(a: np.ndarray) -> list[Any]:
    if a.ndim > 1:
        return [_list(row) for row in a]
    return [_num(x) for x in a]


def to_dict(res: SpectrumResult) -> dict[str, Any]:
    """The JSON document of docs/JSON.md (gradmanifold.spectrum/1); NaN becomes null."""
    layers = {}
    for name, ly in res.layers.items():
        d: dict[str, Any] = {
            "shape": list(ly.shape),
            "steps": [int(s) for s in ly.steps],
            "sigma": _list(ly.sigma),
            "frobenius_sq": _list(ly.frobenius_sq),
            "bic_winner": list(ly.bic_winner),
            "bic": {k: _list(v) for k, v in ly.bic.items()},
            "summary": {k: {s: _num(v) for s, v in d.items()} for k, d in ly.summary.items()},
        }
        for key in SERIES:
            d[key] = _list(ly.series[key])
        layers[name] = d
    probes = [
        {
            "step": p.step,
            "layers": {
                n: {
                    "shape": list(lp.shape),
                    "sigma": _list(lp.sigma),
                    "h": _list(lp.h),
                    "frobenius_sq": _num(lp.frobenius_sq),
                    **{k: (_num(v) if isinstance(v, float | int) else v) for k, v in lp.fit.items()},
                }
                for n, lp in p.layers.items()
            },
        }
        for p in res.probes
    ]
    return {
        "schema": SCHEMA,
        "store": res.store,
        "top": res.top,
        "q": res.q,
        "every": res.every,
        "layers": layers,
        "probes": probes,
        "glass_probes": [
            {
                "step": g.step,
                "sigma": _num(g.sigma),
                "params": {
                    n: {"shape": list(shape), "rho_mean": _num(rho), "h_mean": _num(h)}
                    for n, (shape, rho, h) in g.params.items()
                },
            }
            for g in res.glass
        ],
        "notes": list(res.notes),
    }
