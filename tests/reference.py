"""Independent float64 reference for the analysis, written plainly from docs/METHOD.md (the test oracle).

Whole arrays in memory, explicit loops, np.linalg.svd for the spectrum: nothing shared with the package's
streaming code, kernels or spectrum helpers.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def predictions(g: np.ndarray, pred: str) -> np.ndarray:
    """m_t for t = 0..T of one predictor over rows g [T+1, k]; m_0 = 0 for every predictor."""
    g = np.asarray(g, dtype=np.float64)
    m = np.zeros_like(g)
    if pred == "zero":
        return m
    if pred == "last":
        for t in range(1, len(g)):
            m[t] = g[t - 1]
        return m
    if pred == "trend":
        for t in range(1, len(g)):
            m[t] = g[0] if t == 1 else 2.0 * g[t - 1] - g[t - 2]
        return m
    if pred.startswith("ema:"):
        beta = float(pred[4:])
        e = np.zeros(g.shape[1])  # e_{-1} = 0
        for t in range(len(g)):
            m[t] = e  # m_t = e_{t-1}
            e = beta * e + (1.0 - beta) * g[t]
        return m
    raise ValueError(pred)


def path_length(g: np.ndarray, pred: str, counted: np.ndarray | None = None) -> float:
    """P_T(m) = sum over (counted) t of ||g_t - m_t||^2."""
    g = np.asarray(g, dtype=np.float64)
    err = ((g - predictions(g, pred)) ** 2).sum(axis=1)
    if counted is not None:
        err = err[counted]
    return float(err.sum())


def kappa(g: np.ndarray, pred: str, counted: np.ndarray | None = None) -> float:
    return path_length(g, pred, counted) / path_length(g, "zero", counted)


def increments(g: np.ndarray, counted: np.ndarray | None = None) -> np.ndarray:
    """Rows h_t = g_t - g_{t-1}, t = 1..T (only those with t counted)."""
    g = np.asarray(g, dtype=np.float64)
    h = g[1:] - g[:-1]
    if counted is not None:
        h = h[counted[1:]]
    return h


def spectrum(h: np.ndarray) -> np.ndarray:
    """s_i^2 of H, descending (np.linalg.svd)."""
    if h.shape[0] == 0:
        return np.zeros(h.shape[1])
    s = np.linalg.svd(h, compute_uv=False)
    out = np.zeros(h.shape[1])
    out[: len(s)] = s**2
    return out


def r_star(s2: np.ndarray, eps: float) -> int:
    total = float(s2.sum())
    if total == 0.0:
        return 0
    for r in range(len(s2) + 1):
        if float(s2[r:].sum()) <= eps * total:
            return r
    return len(s2)


def tail_curve(s2: np.ndarray) -> np.ndarray:
    total = float(s2.sum())
    return np.array([float(s2[r:].sum()) / total if total else 0.0 for r in range(len(s2) + 1)])


def participation_ratio(s2: np.ndarray) -> float:
    return float(s2.sum()) ** 2 / float((s2**2).sum()) if s2.any() else 0.0


def scope_rows(proj: np.ndarray, flags: np.ndarray, groups: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(x [T, k] float64 sums of the groups, valid [T]) for a scope made of `groups`."""
    x = np.zeros((proj.shape[0], proj.shape[2]))
    for gi in groups:
        x += proj[:, gi, :].astype(np.float64)
    valid = (flags[:, groups] == 0).all(axis=1)
    return x, valid


def reference_analysis(
    proj: np.ndarray,
    flags: np.ndarray | None = None,
    predictors: tuple[str, ...] = ("zero", "last", "ema:0.9", "ema:0.99", "trend"),
    eps: tuple[float, ...] = (0.5, 0.1, 0.05, 0.01),
    burn_in: int = 0,
    window: int | None = None,
    sqnorm: np.ndarray | None = None,
) -> dict[str, Any]:
    """Numbers per scope ("model" = all groups, then "g<i>"), and per window when asked, for proj [T, G, k].

    Flagged rows are dropped from a scope's stream before anything else; burn-in counts rows of the stream
    as given (flagged ones included), like the package.
    """
    t_all, n_groups, _ = proj.shape
    flags = np.zeros((t_all, n_groups), np.uint8) if flags is None else flags
    scopes = {"model": list(range(n_groups))} | {f"g{i}": [i] for i in range(n_groups)}
    out: dict[str, Any] = {}
    rows_idx = np.arange(t_all)
    for name, groups in scopes.items():
        x, valid = scope_rows(proj, flags, groups)
        xs = x[valid]
        idx = rows_idx[valid]
        counted = idx >= burn_in
        res: dict[str, Any] = {
            "n_steps": int(counted.sum()),
            "excluded_steps": int((~valid & (rows_idx >= burn_in)).sum()),
            "path_length": {p: path_length(xs, p, counted) for p in predictors},
            "kappa": {p: kappa(xs, p, counted) for p in predictors},
        }
        h = increments(xs, counted)
        s2 = spectrum(h)
        res["frobenius_sq"] = float((h**2).sum())
        res["s2"] = s2
        res["r_star"] = {repr(e): r_star(s2, e) for e in eps}
        res["tail"] = tail_curve(s2)
        res["participation_ratio"] = participation_ratio(s2)
        if sqnorm is not None:
            exact = sqnorm[:, groups].sum(axis=1)[valid][counted].sum()
            res["projection_distortion"] = path_length(xs, "zero", counted) / exact
        if window is not None:
            res["windows"] = []
            starts = range(burn_in, t_all, window)
            for a in starts:
                b = min(a + window, t_all)
                in_w = counted & (idx >= a) & (idx < b)
                w = {
                    "kappa": {p: kappa(xs, p, in_w) if in_w.any() else None for p in predictors},
                    "path_length": {p: path_length(xs, p, in_w) for p in predictors},
                }
                hw = increments(xs, in_w)
                s2w = spectrum(hw)
                w["r_star"] = {repr(e): (r_star(s2w, e) if hw.shape[0] else None) for e in eps}
                res["windows"].append(w)
        out[name] = res
    return out
