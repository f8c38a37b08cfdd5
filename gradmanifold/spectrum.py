"""Increment spectrum readouts and projection error bars (docs/METHOD.md).

From the eigenvalues s_i^2 of H^T H (descending) and the exact total ||H||_F^2:

    tail(r)    = sum_{i > r} s_i^2                      least path length of a rank-r increment predictor
    r*(eps)    = min { r : tail(r) <= eps ||H||_F^2 }   predictable rank
    PR         = (sum s_i^2)^2 / sum s_i^4              participation ratio (effective number of directions)
    top(n)     = sum_{i <= n} s_i^2 / ||H||_F^2         energy share of the top n directions

A degenerate H (all increments zero) has r* = 0, tail 0, PR 0 and top energies 0.

"Is k enough?": the k recorded coordinates of a JL sketch contain nested sub-sketches (the first k/4 and k/2
coordinates are themselves random projections), so r* at k/4, k/2 and k comes from one recording. A sketch
biases r* low when the spectrum is flat; if r* still grows between k/2 and k, k is not enough
(`nested_verdict`).

Error bar on kappa from k: the k coordinates of z = R g are exchangeable draws (each E z_j^2 = ||g||^2 / k),
so kappa = sum_j N_j / sum_j D_j is a ratio of means over k samples, N_j and D_j being the per-coordinate sums
of squared errors and of squared projections. Its standard error is
sqrt(k / (k - 1) * sum_j (N_j - kappa D_j)^2) / sum_j D_j; `kappa_interval` reports kappa +- z standard errors
(z = 3 by default), narrowed with the recorded exact norms where those are known. For `zero` N_j = D_j, so the
interval is the point 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TOP_ENERGY_N = (1, 2, 5, 10)
INTERVAL_Z = 3.0


def tail_sums(eigs: np.ndarray, total: float) -> np.ndarray:
    """tail(r) for r = 0..len(eigs), with tail(0) = total.

    For a full spectrum (sum(eigs) equals total up to rounding) the tail is summed from the small end, which
    keeps small tails accurate, and scaled so tail(0) is exactly `total`; for a truncated (sketched) spectrum
    it is total minus the leading eigenvalues, never below 0.
    """
    eigs = np.asarray(eigs, dtype=np.float64)
    s = float(eigs.sum())
    if s > 0.0 and abs(s - total) <= 1e-9 * total:
        rev = np.concatenate([np.cumsum(eigs[::-1])[::-1], [0.0]])  # rev[r] = sum_{i >= r} eigs[i]
        return rev * (total / s)
    head = np.concatenate([[0.0], np.cumsum(eigs)])
    return np.maximum(total - head, 0.0)


def tail_fractions(eigs: np.ndarray, total: float) -> np.ndarray:
    """tail(r) / ||H||_F^2 for r = 0..len(eigs) (all 0 when total is 0)."""
    if total <= 0.0:
        return np.zeros(len(eigs) + 1)
    return tail_sums(eigs, total) / total


def r_star(eigs: np.ndarray, total: float, eps: float) -> int | None:
    """min r with tail(r) <= eps * total; None when the (truncated) spectrum does not reach it."""
    if total <= 0.0:
        return 0
    tails = tail_sums(eigs, total)
    hit = np.flatnonzero(tails <= eps * total)
    return int(hit[0]) if hit.size else None


def participation_ratio(eigs: np.ndarray) -> float:
    """(sum s_i^2)^2 / sum s_i^4; 0 for an all-zero spectrum."""
    eigs = np.asarray(eigs, dtype=np.float64)
    sq = float(np.dot(eigs, eigs))
    return float(eigs.sum()) ** 2 / sq if sq > 0.0 else 0.0


def top_energy(eigs: np.ndarray, total: float, ns: Sequence[int] = TOP_ENERGY_N) -> dict[str, float]:
    """Energy share of the top n directions, keyed by n as a string."""
    eigs = np.asarray(eigs, dtype=np.float64)
    head = np.concatenate([[0.0], np.cumsum(eigs)])
    out = {}
    for n in ns:
        v = float(head[min(n, len(eigs))]) / total if total > 0.0 else 0.0
        out[str(n)] = min(v, 1.0)
    return out


def nested_levels(k: int) -> tuple[int, ...]:
    """The nested sub-sketch sizes k/4, k/2, k (distinct, at least 1)."""
    return tuple(sorted({max(1, k // 4), max(1, k // 2), k}))


def is_moving(r_half: int | None, r_full: int | None) -> bool:
    """r* still moving with k: it grew from k/2 to k by at least 2 and by more than 10%."""
    if r_half is None or r_full is None:
        return r_full is None and r_half is not None
    grow = r_full - r_half
    return grow >= 2 and grow > 0.1 * r_half


def suggested_k(k: int, r_full: int | None) -> int:
    """The k to record next time: at least 2k and at least 8 r* (a sketch embeds rank r well for k >~ 8 r)."""
    want = max(2 * k, 8 * (r_full or k))
    return 1 << (want - 1).bit_length()


def nested_verdict(
    levels: Sequence[int], r_by_eps: dict[str, list[int | None]]
) -> tuple[bool, int | None, list[str]]:
    """(k_enough, suggested k or None, the eps keys whose r* is still moving) from r* at each nested level."""
    if len(levels) < 2:
        return True, None, []
    moving = [e for e, rs in r_by_eps.items() if is_moving(rs[-2], rs[-1])]
    if not moving:
        return True, None, []
    r_max = max((r_by_eps[e][-1] or levels[-1]) for e in moving)
    return False, suggested_k(levels[-1], r_max), moving


def kappa_interval(
    num: np.ndarray, den: np.ndarray, exact_den: float | None = None, z: float = INTERVAL_Z
) -> tuple[float, float]:
    """Interval for the full-dimensional kappa from per-coordinate sums (see module docstring).

    The ratio estimate sum(num) / sum(den) gets +- z standard errors. With the exact denominator (the recorded
    squared norms) a second estimate sum(num) / exact_den is available, whose error comes from the numerator
    alone: far tighter when the denominator is dominated by a few directions (a large mean gradient) that the
    projection renders with ~sqrt(2/k) relative noise. The interval is then the intersection of the two (each
    covers kappa with probability ~99.7% at z = 3, so the intersection does with ~99.4%); should they not
    overlap, their union. (nan, nan) when kappa is undefined.
    """
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    k = num.shape[0]
    d = float(den.sum())
    if d <= 0.0:
        return (math.nan, math.nan)
    n = float(num.sum())
    kappa = n / d
    if k < 2:
        return (0.0, math.inf)
    resid = num - kappa * den
    se = math.sqrt(k / (k - 1) * float(np.dot(resid, resid))) / d
    lo, hi = max(0.0, kappa - z * se), kappa + z * se
    if exact_den is None or not exact_den > 0.0:
        return (lo, hi)
    dev = num - n / k
    se2 = math.sqrt(k / (k - 1) * float(np.dot(dev, dev))) / exact_den
    k2 = n / exact_den
    lo2, hi2 = max(0.0, k2 - z * se2), k2 + z * se2
    if max(lo, lo2) <= min(hi, hi2):
        return (max(lo, lo2), min(hi, hi2))
    return (min(lo, lo2), max(hi, hi2))


def relative_error(values: np.ndarray, z: float = INTERVAL_Z) -> float:
    """z standard errors of sum(values) relative to it, treating the k entries as exchangeable draws."""
    values = np.asarray(values, dtype=np.float64)
    k = values.shape[0]
    s = float(values.sum())
    if k < 2 or s <= 0.0:
        return math.nan
    resid = values - s / k
    return z * math.sqrt(k / (k - 1) * float(np.dot(resid, resid))) / s
