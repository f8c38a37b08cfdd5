"""Ground truth for the synthetic tasks: plain numpy references and exact second moments of linear streams.

References (float64, written plainly; docs/METHOD.md): `path_lengths`, `kappa_reference` and
`rank_reference` on rows g_0..g_{T-1}; `rank_from_energies` turns squared singular values into r*(eps).

Exact moments: a stream that splits into independent coordinate classes, each a scalar linear system
s_{t+1} = M s_t + N w_t, g_t = c s_t + e w_t (w_t standard normal, `weight` copies of a class), has exactly
computable E||g_t - m_t||^2 for every predictor in the table: `moments` propagates the second-moment matrix of
(s, g_{t-1}, g_{t-2}, one EMA per beta). gradmanifold.synthetic describes each task in these terms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradmanifold.errors import UsageError

PREDICTORS: tuple[str, ...] = ("zero", "last", "ema:0.9", "ema:0.99", "trend")
EPS: tuple[float, ...] = (0.5, 0.1, 0.05, 0.01)


@dataclass(frozen=True)
class GroundTruth:
    """What analyze should find on a task's raw gradients (and, within the JL error, on its projections).

    kappa: expected kappa per predictor at this T; kappa_sd: its spread over runs (estimated tasks only);
    kappa_limit: the T -> infinity closed form where METHOD.md gives one; rank: r* per eps at this T and d
    (key: repr of eps, as in the analysis JSON), the median over independent replicas of the task;
    rank_limit: r* of the expected increment Gram (the T >> d value; the planted rank for lowrank-drift);
    method: how kappa was obtained, "exact" or "estimated from N replicas".
    """

    task: str
    steps: int
    dim: int
    kappa: dict[str, float]
    rank: dict[str, int]
    method: str
    kappa_limit: dict[str, float] = field(default_factory=dict)
    kappa_sd: dict[str, float] = field(default_factory=dict)
    rank_limit: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "steps": self.steps,
            "dim": self.dim,
            "method": self.method,
            "kappa": dict(self.kappa),
            "kappa_limit": dict(self.kappa_limit),
            "kappa_sd": dict(self.kappa_sd),
            "rank": dict(self.rank),
            "rank_limit": dict(self.rank_limit),
        }


# ---------------------------------------------------------------------------------------------- references


def predictor_filter(pid: str) -> tuple[str, float]:
    if pid in ("zero", "last", "trend"):
        return pid, 0.0
    if pid.startswith("ema:"):
        try:
            beta = float(pid[4:])
        except ValueError:
            beta = -1.0
        if 0.0 <= beta < 1.0:
            return "ema", beta
    raise UsageError(f"unknown predictor {pid!r}; use zero, last, trend or ema:<beta> with 0 <= beta < 1")


def path_lengths(g: np.ndarray, predictors: Sequence[str] = PREDICTORS) -> dict[str, float]:
    """P_T(m) for each predictor on rows g_0..g_{T-1} (float64 numpy reference of docs/METHOD.md)."""
    g = np.asarray(g, dtype=np.float64).reshape(len(g), -1)
    out = {}
    for pid in predictors:
        kind, beta = predictor_filter(pid)
        m = np.zeros_like(g)
        if kind == "last":
            m[1:] = g[:-1]
        elif kind == "trend":
            m[1:2] = g[:1]
            m[2:] = 2 * g[1:-1] - g[:-2]
        elif kind == "ema":
            e = np.zeros(g.shape[1])
            for t in range(len(g)):
                m[t] = e
                e = beta * e + (1 - beta) * g[t]
        out[pid] = float(np.sum((g - m) ** 2))
    return out


def kappa_reference(g: np.ndarray, predictors: Sequence[str] = PREDICTORS) -> dict[str, float]:
    """kappa = P_T(m) / sum ||g_t||^2 for each predictor (numpy reference)."""
    g = np.asarray(g, dtype=np.float64).reshape(len(g), -1)
    total = float(np.sum(g**2))
    return {pid: p / total for pid, p in path_lengths(g, predictors).items()}


def rank_reference(g: np.ndarray, eps: float) -> int:
    """r*(eps) of the increments H = diff(g) (numpy reference: singular values of H)."""
    return rank_from_energies(increment_energies(g), eps)


def increment_energies(g: np.ndarray) -> np.ndarray:
    """Squared singular values of H = diff(g)."""
    h = np.diff(np.asarray(g, dtype=np.float64).reshape(len(g), -1), axis=0)
    return np.linalg.svd(h, compute_uv=False) ** 2


def rank_from_energies(energies: np.ndarray, eps: float, multiplicity: np.ndarray | None = None) -> int:
    """min r: the r largest energies hold (1 - eps) of the total (energy i counted multiplicity[i] times)."""
    e = np.asarray(energies, dtype=np.float64)
    mult = np.ones(len(e)) if multiplicity is None else np.asarray(multiplicity, dtype=np.float64)
    order = np.argsort(-e, kind="stable")
    e, mult = e[order], mult[order]
    total = float(np.sum(e * mult))
    if total <= 0:
        return 0
    need = (1.0 - eps) * total
    done, r = 0.0, 0
    for ei, mi in zip(e, mult, strict=True):
        if done + ei * mi >= need * (1 - 1e-12):
            return r + max(1, math.ceil((need - done) / ei - 1e-9)) if ei > 0 else r
        done += ei * mi
        r += int(mi)
    return r


# ---------------------------------------------------------------------------------------------- exact moments


@dataclass(frozen=True)
class Classes:
    """Independent scalar linear systems: s' = M s + N w, g = c s + e w, s_0 given; `weight` copies of each.

    Deterministic classes (N = e = 0) are the mean part; `partner[i]` is the noise class whose coordinates
    hold mean direction i (or -1), so that r* counts the mean directions once.
    """

    m: np.ndarray
    n: np.ndarray
    c: np.ndarray
    e: np.ndarray
    s0: np.ndarray
    weight: np.ndarray
    partner: np.ndarray


def moments(cl: Classes, steps: int, predictors: Sequence[str]) -> tuple[dict[str, float], float, Any]:
    """Expected path lengths, expected sum ||g||^2 and (per class) increment energies / mean increments.

    Joint state u = (s, g_{t-1}, g_{t-2}, ema_1, ...) per class; its second moment S = E[u u^T] evolves as
    S' = A S A^T + b b^T. A predictor's error g_t - m_t = v . u + e w has E[err^2] = v^T S v + e^2.
    """
    betas = sorted({predictor_filter(p)[1] for p in predictors if p.startswith("ema:")})
    nb = len(betas)
    n = 3 + nb
    d = len(cl.c)
    a = np.zeros((d, n, n))
    b = np.zeros((d, n))
    a[:, 0, 0] = cl.m
    b[:, 0] = cl.n
    a[:, 1, 0] = cl.c
    b[:, 1] = cl.e
    for j, beta in enumerate(betas):
        a[:, 3 + j, 0] = (1 - beta) * cl.c
        a[:, 3 + j, 3 + j] = beta
        b[:, 3 + j] = (1 - beta) * cl.e
    a_first = a.copy()  # t = 0: the g_{t-2} slot takes g_0, so that trend's m_1 = 2 g_0 - g_0 = g_0
    a_first[:, 2, 0] = cl.c
    b_first = b.copy()
    b_first[:, 2] = cl.e
    a[:, 2, 1] = 1.0
    vecs = {}
    for pid in predictors:
        kind, beta = predictor_filter(pid)
        v = np.zeros((d, n))
        v[:, 0] = cl.c
        if kind == "last":
            v[:, 1] = -1
        elif kind == "trend":
            v[:, 1], v[:, 2] = -2, 1
        elif kind == "ema":
            v[:, 3 + betas.index(beta)] = -1
        vecs[pid] = v
    u0 = np.zeros((d, n))
    u0[:, 0] = cl.s0
    s = u0[:, :, None] * u0[:, None, :]
    e2 = cl.e**2
    err = {pid: np.zeros(d) for pid in predictors}
    energy = np.zeros(d)
    incr = np.zeros(d)  # sum over t >= 1 of E[(g_t - g_{t-1})^2]
    mean_g = np.zeros((steps, d))
    mu = cl.s0.astype(np.float64).copy()
    v_last = np.zeros((d, n))
    v_last[:, 0], v_last[:, 1] = cl.c, -1
    v_g = np.zeros((d, n))
    v_g[:, 0] = cl.c
    for t in range(steps):
        for pid, v in vecs.items():
            err[pid] += np.einsum("di,dij,dj->d", v, s, v) + e2
        energy += np.einsum("di,dij,dj->d", v_g, s, v_g) + e2
        if t:
            incr += np.einsum("di,dij,dj->d", v_last, s, v_last) + e2
        mean_g[t] = cl.c * mu
        mu = cl.m * mu
        aa, bb = (a_first, b_first) if t == 0 else (a, b)
        s = aa @ s @ np.swapaxes(aa, 1, 2) + bb[:, :, None] * bb[:, None, :]
    w = cl.weight
    return (
        {pid: float(np.sum(w * v)) for pid, v in err.items()},
        float(np.sum(w * energy)),
        (incr, np.diff(mean_g, axis=0)),
    )


def exact_truth(
    task: Any,
    cl: Classes,
    predictors: tuple[str, ...],
    eps: tuple[float, ...],
    kappa_limit: dict[str, float] | None = None,
) -> GroundTruth:
    """Expected kappa from the classes' second moments, r* from the expected increment Gram and replicas."""
    p, total, (incr, mean_h) = moments(cl, task.steps, predictors)
    kappa = {pid: v / total for pid, v in p.items()}
    det = (cl.n == 0) & (cl.e == 0)
    # noise classes: diagonal energies (fluctuation only: the mean is zero for them)
    energies, mult = [], []
    mean_idx = np.flatnonzero(det & (np.abs(mean_h).sum(axis=0) > 0))
    taken = np.zeros(len(cl.c))
    for i in mean_idx:
        if cl.partner[i] >= 0:
            taken[cl.partner[i]] += 1
    for i in np.flatnonzero(~det):
        extra = max(cl.weight[i] - taken[i], 0)
        if extra:
            energies.append(incr[i])
            mult.append(extra)
    if len(mean_idx):
        hm = mean_h[:, mean_idx]
        gram = hm.T @ hm
        gram[np.diag_indices_from(gram)] += [
            incr[cl.partner[i]] if cl.partner[i] >= 0 else 0 for i in mean_idx
        ]
        for ev in np.linalg.eigvalsh(gram):
            energies.append(max(float(ev), 0.0))
            mult.append(1)
    limit = {repr(float(x)): rank_from_energies(np.array(energies), x, np.array(mult)) for x in eps}
    return GroundTruth(
        task.name,
        task.steps,
        task.dim,
        kappa,
        task.replica_ranks(eps),
        "exact",
        kappa_limit=kappa_limit or {},
        rank_limit=limit,
    )


def classes(rows: Sequence[tuple[float, ...]]) -> Classes:
    arr = np.array([r[:6] for r in rows], dtype=np.float64)
    return Classes(*arr.T, partner=np.array([int(r[6]) for r in rows], dtype=np.int64))  # type: ignore[misc]
