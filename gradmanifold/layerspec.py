"""Readouts and fits of a layer's gradient singular spectrum (docs/SPECTRA.md).

From the top singular values sigma_1 >= ... >= sigma_q of a gradient G (m x n) and the exact ||G||_F^2:

    gamma               minus the OLS slope of log sigma_k on log k, k = 1..K (K = min(top, q))
    BIC profiles        OLS fits of y = log sigma_k: power c - gamma log k, exponential c - b k (p = 2),
                        log-normal c + a1 log k + a2 (log k)^2 (p = 3); BIC = K ln(RSS/K) + p ln K,
                        the lowest wins
    participation_ratio (sum sigma^2)^2 / sum sigma^4 over the q values given
    stable_rank         ||G||_F^2 / sigma_1^2
    top2_energy         (sigma_1^2 + sigma_2^2) / ||G||_F^2        two rank-one terms (arXiv 2510.01303)
    gap_23              sigma_2 / sigma_3
    rank_two_residual   sigma_3 / sigma_1

With curvatures h_k = vec(u_k v_k^T)^T Hess vec(u_k v_k^T) along the same directions (arXiv 2606.02596):
alpha = OLS slope of log h_k on log sigma_k over the pairs with h_k > 0; s = minus the OLS slope of log h_(k)
on log k, the positive h SORTED descending and ranked k = 1, 2, ...; the transfer identity s = alpha gamma and
its relative error |s - alpha gamma| / s; PR_h = (sum h)^2 / sum h^2; pr_bound = the PR of k^(-alpha gamma),
k = 1..min(m, n).

Conventions. Logarithms take positive values only: zeros in sigma (an exactly low-rank G) and h <= 0 are left
out of the fits. A fit needs at least MIN_POINTS = 3 usable points (BIC: 4, one more than the log-normal's 3
parameters); anything undefined (too few points, a zero denominator) is NaN, never an exception. Only the
arguments are checked, once, in each public function (UsageError).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gradmanifold.errors import UsageError
from gradmanifold.lowrank import as_matrix_shape, top_singular_values

__all__ = [
    "DEFAULT_TOP",
    "MIN_POINTS",
    "PROFILES",
    "READOUT_KEYS",
    "BicProfiles",
    "SpectralFit",
    "as_matrix_shape",
    "bic_profiles",
    "fit_spectral",
    "gamma_fit",
    "gap_23",
    "participation_ratio",
    "pr_of_power_law",
    "rank_two_residual",
    "readouts",
    "stable_rank",
    "top2_energy",
    "top_singular_values",
    "trend",
]

MIN_POINTS = 3
DEFAULT_TOP = 20
PROFILES = ("power", "exponential", "lognormal")  # readouts()["bic_winner"] is an index into this
READOUT_KEYS = (
    "gamma",
    "r2_gamma",
    "bic_winner",
    "bic_power",
    "bic_exponential",
    "bic_lognormal",
    "participation_ratio",
    "stable_rank",
    "top2_energy",
    "gap_23",
    "rank_two_residual",
)
NAN = float("nan")


@dataclass(frozen=True)
class BicProfiles:
    """BIC of the three rank profiles of log sigma_k (lower is better) and their OLS coefficients.

    power_coef = (c, gamma), exponential_coef = (c, b), lognormal_coef = (c, a1, a2) for
    y = c - gamma log k, y = c - b k, y = c + a1 log k + a2 (log k)^2. winner is None when n < 4.
    """

    power: float
    exponential: float
    lognormal: float
    winner: str | None
    n: int
    power_coef: tuple[float, float]
    exponential_coef: tuple[float, float]
    lognormal_coef: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SpectralFit:
    """Everything fit_spectral computes for one layer; the curvature fields are None when no h was given.

    n: points in the window (min(top, len(sigma))); pr_bound_n: the length of the k^(-alpha gamma) sequence
    (min(m, n) from shape, else n); notes: why a field is NaN, one short line each.
    """

    gamma: float
    r2_gamma: float
    bic: BicProfiles
    n: int
    alpha: float | None = None
    s: float | None = None
    alpha_gamma: float | None = None
    rel_err: float | None = None
    pr_h: float | None = None
    pr_bound: float | None = None
    pr_bound_n: int | None = None
    r2_alpha: float | None = None
    r2_s: float | None = None
    notes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------------
# argument checks (public functions only)


def _vector(x: Any, name: str) -> np.ndarray:
    try:
        v = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{name} is not a numeric vector ({e})") from None
    if v.ndim != 1:
        raise UsageError(f"{name} must be 1-D, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise UsageError(f"{name} holds NaN or Inf at index {int(np.flatnonzero(~np.isfinite(v))[0])}")
    return v


def _sigma(x: Any) -> np.ndarray:
    s = _vector(x, "sigma")
    if (s < 0).any():
        raise UsageError("sigma holds a negative value: singular values are >= 0")
    if (np.diff(s) > 0).any():
        raise UsageError(
            "sigma is not in descending order: pass singular values largest first, as top_singular_values "
            "returns them (a rank profile needs sigma_k at rank k)"
        )
    return s


def _top(top: Any) -> int:
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < MIN_POINTS:
        raise UsageError(f"top={top!r} is invalid: use an integer >= {MIN_POINTS} (points in the fit window)")
    return int(top)


def _frob(frob_sq: Any) -> float:
    if not isinstance(frob_sq, float | int | np.floating | np.integer) or not math.isfinite(frob_sq):
        raise UsageError(f"frob_sq={frob_sq!r} is invalid: pass ||G||_F^2, a finite number >= 0")
    if frob_sq < 0:
        raise UsageError(f"frob_sq={frob_sq!r} is negative: it is a sum of squares")
    return float(frob_sq)


# ---------------------------------------------------------------------------------------------------------
# internals (inputs trusted)


def _div(a: float, b: float) -> float:
    return a / b if b != 0.0 else NAN


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Slope, intercept and R^2 of the OLS line y = intercept + slope x (R^2 = 1 when y is constant)."""
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    if sxx == 0.0:
        return NAN, NAN, NAN
    slope = float(((x - xm) * (y - ym)).sum()) / sxx
    icept = float(ym - slope * xm)
    tss = float(((y - ym) ** 2).sum())
    rss = float(((y - icept - slope * x) ** 2).sum())
    return slope, icept, 1.0 - rss / tss if tss > 0.0 else 1.0


def _gamma(sig: np.ndarray) -> tuple[float, float]:
    pos = sig[sig > 0]  # sigma is descending, so the positive values are sigma_1..sigma_K' at ranks 1..K'
    if len(pos) < MIN_POINTS:
        return NAN, NAN
    slope, _, r2 = _ols(np.log(np.arange(1.0, len(pos) + 1)), np.log(pos))
    return -slope, r2


def _bic(sig: np.ndarray) -> BicProfiles:
    y = np.log(sig[sig > 0])
    kk = len(y)
    nan2, nan3 = (NAN, NAN), (NAN, NAN, NAN)
    if kk < MIN_POINTS + 1:
        return BicProfiles(NAN, NAN, NAN, None, kk, nan2, nan2, nan3)
    k = np.arange(1.0, kk + 1)
    lk = np.log(k)
    # RSS floored just above rounding so that profiles fitting exactly tie (then the simpler one wins)
    # instead of rounding noise in ln(RSS) deciding.
    floor = kk * (1e-10 * max(1.0, float(np.abs(y).max()))) ** 2
    fits = {}
    for name, cols in (("power", [lk]), ("exponential", [k]), ("lognormal", [lk, lk**2])):
        x = np.column_stack([np.ones(kk), *cols])
        coef = np.linalg.lstsq(x, y, rcond=None)[0]
        rss = max(float(((y - x @ coef) ** 2).sum()), floor)
        fits[name] = (kk * math.log(rss / kk) + x.shape[1] * math.log(kk), coef)
    winner = min(PROFILES, key=lambda p: fits[p][0])  # ties go to the earlier (simpler) profile
    c_pw, c_ex, c_ln = fits["power"][1], fits["exponential"][1], fits["lognormal"][1]
    return BicProfiles(
        power=fits["power"][0],
        exponential=fits["exponential"][0],
        lognormal=fits["lognormal"][0],
        winner=winner,
        n=kk,
        power_coef=(float(c_pw[0]), -float(c_pw[1])),
        exponential_coef=(float(c_ex[0]), -float(c_ex[1])),
        lognormal_coef=(float(c_ln[0]), float(c_ln[1]), float(c_ln[2])),
    )


def _pr(x: np.ndarray) -> float:
    return _div(float(x.sum()) ** 2, float((x * x).sum()))


def _pr_power(p: float, n: int) -> float:
    if not math.isfinite(p) or n < 1:
        return NAN
    return _pr(np.arange(1.0, n + 1) ** -p)


def _ratio(sig: np.ndarray, i: int, j: int) -> float:
    """sigma_i / sigma_j (1-based); NaN when fewer than max(i, j) values, inf when only the divisor is 0."""
    if len(sig) < max(i, j):
        return NAN
    a, b = float(sig[i - 1]), float(sig[j - 1])
    if b == 0.0:
        return math.inf if a > 0.0 else NAN
    return a / b


def _top2(sig: np.ndarray, frob: float) -> float:
    return _div(float((sig[:2] ** 2).sum()), frob) if len(sig) >= 2 else NAN


def _stable(sig: np.ndarray, frob: float) -> float:
    return _div(frob, float(sig[0]) ** 2) if len(sig) else NAN


# ---------------------------------------------------------------------------------------------------------
# public readouts


def gamma_fit(sigma: Sequence[float] | np.ndarray, top: int = DEFAULT_TOP) -> tuple[float, float]:
    """(gamma, R^2): minus the OLS slope of log sigma_k on log k over the first `top` values (positive ones).

    sigma: singular values, descending. top: window size K (the fit uses k = 1..min(top, len(sigma))).
    NaN, NaN when fewer than 3 positive values are in the window.
    """
    return _gamma(_sigma(sigma)[: _top(top)])


def bic_profiles(sigma: Sequence[float] | np.ndarray, top: int = DEFAULT_TOP) -> BicProfiles:
    """BIC of the power, exponential and log-normal rank profiles of log sigma_k, k = 1..K, and the winner.

    sigma: singular values, descending. top: window size K. Zeros are left out (log 0); fewer than 4 positive
    values give NaN BICs and winner None. An exactly fitting profile's RSS is floored at rounding level, so
    on an exact power law the power profile beats the log-normal one that contains it.
    """
    return _bic(_sigma(sigma)[: _top(top)])


def participation_ratio(sigma: Sequence[float] | np.ndarray) -> float:
    """(sum sigma^2)^2 / sum sigma^4 over all values given: the effective number of directions of the energy.

    sigma: singular values, descending. NaN for an all-zero spectrum.
    """
    s = _sigma(sigma)
    return _pr(s * s)


def stable_rank(sigma: Sequence[float] | np.ndarray, frob_sq: float) -> float:
    """||G||_F^2 / sigma_1^2 (>= 1; the whole spectrum counts through ||G||_F^2). NaN when sigma_1 = 0.

    sigma: singular values, descending. frob_sq: the exact ||G||_F^2.
    """
    return _stable(_sigma(sigma), _frob(frob_sq))


def top2_energy(sigma: Sequence[float] | np.ndarray, frob_sq: float) -> float:
    """(sigma_1^2 + sigma_2^2) / ||G||_F^2: the energy share of the two leading rank-one terms.

    sigma: singular values, descending (at least 2, else NaN). frob_sq: ||G||_F^2 (0 gives NaN).
    """
    return _top2(_sigma(sigma), _frob(frob_sq))


def gap_23(sigma: Sequence[float] | np.ndarray) -> float:
    """sigma_2 / sigma_3: how far the second rank-one term stands above the rest.

    sigma: singular values, descending. NaN with fewer than 3 values or sigma_2 = sigma_3 = 0; inf when
    sigma_3 = 0 < sigma_2 (G of rank exactly two).
    """
    return _ratio(_sigma(sigma), 2, 3)


def rank_two_residual(sigma: Sequence[float] | np.ndarray) -> float:
    """sigma_3 / sigma_1: the largest singular value left after the top two, relative to the first.

    sigma: singular values, descending. NaN with fewer than 3 values or sigma_1 = 0.
    """
    return _ratio(_sigma(sigma), 3, 1)


def pr_of_power_law(p: float, n: int) -> float:
    """PR of the sequence k^(-p), k = 1..n: (sum k^-p)^2 / sum k^-2p (NaN for a non-finite p or n < 1)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer):
        raise UsageError(f"n={n!r} is invalid: use an integer (the length of the sequence)")
    return _pr_power(float(p), int(n))


def readouts(sigma: Sequence[float] | np.ndarray, frob_sq: float, top: int = DEFAULT_TOP) -> dict[str, float]:
    """All per-step readouts of one recorded spectrum, keyed by READOUT_KEYS (NaN where undefined).

    sigma: the recorded top-q singular values, descending. frob_sq: the exact ||G||_F^2. top: the fit window.
    bic_winner is a float index into PROFILES (0 power, 1 exponential, 2 log-normal; NaN when undefined) so
    every value can go into one float array.
    """
    s, f, t = _sigma(sigma), _frob(frob_sq), _top(top)
    gamma, r2 = _gamma(s[:t])
    bic = _bic(s[:t])
    return {
        "gamma": gamma,
        "r2_gamma": r2,
        "bic_winner": float(PROFILES.index(bic.winner)) if bic.winner is not None else NAN,
        "bic_power": bic.power,
        "bic_exponential": bic.exponential,
        "bic_lognormal": bic.lognormal,
        "participation_ratio": _pr(s * s),
        "stable_rank": _stable(s, f),
        "top2_energy": _top2(s, f),
        "gap_23": _ratio(s, 2, 3),
        "rank_two_residual": _ratio(s, 3, 1),
    }


def trend(
    steps: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, per: float = 1000.0
) -> float:
    """OLS slope of values on steps, times `per` (change per 1000 steps by default), over the finite values.

    steps, values: 1-D, same length; non-finite values (a NaN readout) are left out. NaN with fewer than 2
    usable points or when they all share one step.
    """
    st, va = _vector(steps, "steps"), np.asarray(values, dtype=np.float64)
    if va.shape != st.shape:
        raise UsageError(f"steps and values differ in shape: {st.shape} vs {va.shape}")
    if not (isinstance(per, float | int) and math.isfinite(per) and per > 0):
        raise UsageError(f"per={per!r} is invalid: use a positive number of steps, e.g. 1000")
    ok = np.isfinite(va)
    if ok.sum() < 2:
        return NAN
    return _ols(st[ok], va[ok])[0] * float(per)


def fit_spectral(
    sigma: Sequence[float] | np.ndarray,
    h: Sequence[float] | np.ndarray | None = None,
    top: int = DEFAULT_TOP,
    *,
    shape: Sequence[int] | None = None,
) -> SpectralFit:
    """gamma and the BIC profiles of sigma; with curvatures h also alpha, s, alpha*gamma, PR_h and its bound.

    sigma: top singular values, descending. h: curvature h_k along u_k v_k^T, same order and length as sigma
    (None: passive fit only). top: fit window, the first min(top, len(sigma)) entries of sigma and h.
    shape: the parameter's shape; pr_bound sums k^(-alpha gamma) over k = 1..min(m, n) of its matrix shape
    (without it over the window only, a bound for the PR of the top values alone).
    """
    s, t = _sigma(sigma), _top(top)
    hv = None if h is None else _vector(h, "h")
    if hv is not None and hv.shape != s.shape:
        raise UsageError(f"h has {len(hv)} values and sigma {len(s)}: they pair up direction by direction")
    full = None
    if shape is not None:
        m, n = as_matrix_shape(shape)
        full = min(m, n)
        if len(s) > full:
            raise UsageError(f"sigma has {len(s)} values but a {m} x {n} matrix has at most {full}")
    s = s[:t]
    notes: list[str] = []
    gamma, r2_gamma = _gamma(s)
    if math.isnan(gamma):
        notes.append(f"gamma: {int((s > 0).sum())} positive sigma in the window, {MIN_POINTS} needed")
    bic = _bic(s)
    if bic.winner is None:
        notes.append(f"bic: {bic.n} positive sigma in the window, {MIN_POINTS + 1} needed")
    if hv is None:
        return SpectralFit(gamma=gamma, r2_gamma=r2_gamma, bic=bic, n=len(s), notes=tuple(notes))
    hv = hv[:t]
    pos = (hv > 0) & (s > 0)
    alpha, r2_alpha = NAN, NAN
    if pos.sum() >= MIN_POINTS:
        alpha, _, r2_alpha = _ols(np.log(s[pos]), np.log(hv[pos]))
    if math.isnan(alpha):
        notes.append(f"alpha: {int(pos.sum())} pairs with h > 0 (and distinct sigma), {MIN_POINTS} needed")
    hs = np.sort(hv[hv > 0])[::-1]
    s_exp, r2_s = NAN, NAN
    if len(hs) >= MIN_POINTS:
        slope, _, r2_s = _ols(np.log(np.arange(1.0, len(hs) + 1)), np.log(hs))
        s_exp = -slope
    else:
        notes.append(f"s: {len(hs)} positive h in the window, {MIN_POINTS} needed")
    ag = alpha * gamma
    rel = abs(s_exp - ag) / s_exp if s_exp > 0 else NAN
    pr_n = full if full is not None else len(s)
    return SpectralFit(
        gamma=gamma,
        r2_gamma=r2_gamma,
        bic=bic,
        n=len(s),
        alpha=alpha,
        s=s_exp,
        alpha_gamma=ag,
        rel_err=rel,
        pr_h=_pr(hv),
        pr_bound=_pr_power(ag, pr_n),
        pr_bound_n=pr_n,
        r2_alpha=r2_alpha,
        r2_s=r2_s,
        notes=tuple(notes),
    )
