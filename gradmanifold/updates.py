"""Passive statistics of how the gradient changes with the step taken (arXiv 2411.16914, docs/UPDATES.md).

Per recorded row t and scope the store holds the projected gradient z_t = R g_t and the projected update
w_t = R u_t, u_t = theta_t - theta_{t-1} (NaN on the first row of a run or segment), optionally ||u_t||^2.
R is linear, so R (theta_{t+tau} - theta_t) = w_{t+1} + ... + w_{t+tau}. Readouts per scope:

    secant smoothness   L_t = ||z_t - z_{t-1}|| / ||w_t||          (primary: one projection above and below)
                        L_t^exact = ||z_t - z_{t-1}|| / ||u_t||     (with the exact ||u_t||^2)
    alignment           cos_t = <z_{t-1}, -w_t> / (||z_{t-1}|| ||w_t||)   (1 for plain SGD)
    lag means           D_g(tau) = mean_t ||z_{t+tau} - z_t||^2
                        D_th(tau) = mean_t ||w_{t+1} + ... + w_{t+tau}||^2     (the same pairs t)
    glass exponent      D_g = a + c D_th^(p/2), fitted in log space; a = 2 s^2 the noise floor, p ~ 2 smooth
                        curvature, p ~ 1 glass-like (many kinks). A proxy: every fit says so (`proxy`).

Usable data. A row's z is usable when its row is valid and z is finite, its w when the row is valid and w is
finite (the first row of a segment keeps a usable z). A quantity counts only if every z and w it reads
is usable: L_t needs z_{t-1}, z_t, w_t and ||w_t|| > 0; cos_t needs z_{t-1}, w_t, ||w_t|| > 0 and
||z_{t-1}|| > 0; the lag pair (t, t + tau) needs z_t, z_{t+tau} and all of w_{t+1..t+tau}, so D_g and
D_th average over the same pairs. The fit uses the lags tau <= (usable rows) / 4 that have pairs and
positive D_g, D_th.

Streaming and memory. Rows are processed in blocks of `block_rows` at fixed positions in the stream (a
partial block waits for the next add, `finalize` or `cut`), so how the caller chunks the rows changes no
result, not even in the last bit. The state is the last max_lag rows of z and w (the carry), the pending
block, the lag sums, and 3 floats per row per scope (L_t, L_t^exact, cos_t) kept for exact medians and
quantiles. Window sums of w come from prefix sums restarted at every block (the carry plus at most
block_rows rows), which keeps their rounding at the level of the window rather than of the whole run.

Windows: `cut()` closes a window and returns its statistics: the pairs whose later row came in since the
previous cut (lag pairs may reach back into the previous window, like the analysis' increments); the run
totals of `finalize()` are unaffected. For windows that see nothing outside themselves, use one accumulator
per window: construction allocates almost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from gradmanifold.errors import UsageError

__all__ = [
    "BLOCK_ROWS",
    "MIN_LAGS",
    "P_RANGE",
    "QUANTILES",
    "GlassFit",
    "LagMean",
    "Summary",
    "UpdateAccumulator",
    "UpdateStats",
    "default_lags",
    "fit_glass",
]

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
P_RANGE = (0.25, 4.0)
MIN_LAGS = 4
BLOCK_ROWS = 256
_FLOOR_DOMINATES = 0.1  # signal c D_th^(p/2) below this share of the floor at every lag: p is not identified


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def default_lags(max_lag: int) -> tuple[int, ...]:
    """The geometric lag set 1, 2, 3, 4, 6, 8, 12, 16, ... (2^j and 3 * 2^j) up to max_lag."""
    vals = {b << e for e in range(max_lag.bit_length() + 1) for b in (1, 3)}
    return tuple(sorted(v for v in vals if v <= max_lag))


@dataclass(frozen=True)
class Summary:
    """A distribution of per-step values: how many, and the QUANTILES (linear interpolation; NaN if n = 0)."""

    n: int
    quantiles: tuple[float, ...]

    @property
    def median(self) -> float:
        return self.quantiles[QUANTILES.index(0.5)]

    def quantile_dict(self) -> dict[str, float | None]:
        return {repr(q): _finite_or_none(v) for q, v in zip(QUANTILES, self.quantiles, strict=True)}

    @classmethod
    def of(cls, values: np.ndarray) -> Summary:
        """The summary of the finite entries of `values`."""
        v = values[np.isfinite(values)]
        if v.size == 0:
            return cls(0, (math.nan,) * len(QUANTILES))
        return cls(int(v.size), tuple(float(x) for x in np.quantile(v, QUANTILES)))


@dataclass(frozen=True)
class LagMean:
    """One row of the lag table: D_g(tau) and D_th(tau) as means over n pairs."""

    tau: int
    d_g: float
    d_theta: float
    n: int


@dataclass(frozen=True)
class GlassFit:
    """D_g = a + c D_th^(p/2) fitted in log space; NaN fields and a note when there is nothing to fit.

    noise_floor is a = 2 s^2 (s2 = a / 2, the per-row noise energy); r2_log and rmse_log measure the fit of
    log D_g; n_lags counts the lags fitted, `lags` is their table. `proxy` is always True: p summarises the
    lag means of one run, it is not a measured property of the loss landscape.
    """

    p: float = math.nan
    c: float = math.nan
    noise_floor: float = math.nan
    r2_log: float = math.nan
    rmse_log: float = math.nan
    n_lags: int = 0
    lags: tuple[LagMean, ...] = ()
    note: str = ""
    proxy: bool = True

    @property
    def s2(self) -> float:
        return self.noise_floor / 2.0

    def to_dict(self) -> dict[str, Any]:
        f = _finite_or_none
        out: dict[str, Any] = {
            key: f(getattr(self, key)) for key in ("c", "noise_floor", "s2", "r2_log", "rmse_log")
        }
        out["lags"] = [{"tau": r.tau, "d_g": f(r.d_g), "d_theta": f(r.d_theta), "n": r.n} for r in self.lags]
        return {**out, "n_lags": self.n_lags, "proxy": self.proxy, "note": self.note}


@dataclass(frozen=True)
class UpdateStats:
    """The readouts of one scope over a span of rows (the run or a window); see the module docstring.

    n_rows counts the rows with a usable z; secant (projected denominator, primary), secant_exact (exact
    denominator) and alignment summarise the per-step values; note says in one line why something is NaN.
    """

    n_rows: int
    secant: Summary
    secant_exact: Summary
    alignment: Summary
    glass: GlassFit
    note: str = ""

    @property
    def glass_exponent(self) -> float:
        return self.glass.p

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready keys; NaN becomes None."""
        f = _finite_or_none
        return {
            "n_rows": self.n_rows,
            "n_pairs": self.secant.n,
            "secant_smoothness_median": f(self.secant.median),
            "secant_smoothness_quantiles": self.secant.quantile_dict(),
            "n_pairs_exact": self.secant_exact.n,
            "secant_smoothness_exact_median": f(self.secant_exact.median),
            "secant_smoothness_exact_quantiles": self.secant_exact.quantile_dict(),
            "n_alignment": self.alignment.n,
            "alignment_median": f(self.alignment.median),
            "alignment_quantiles": self.alignment.quantile_dict(),
            "glass_exponent": f(self.glass.p),
            "glass_fit": self.glass.to_dict(),
            "note": self.note,
        }


def fit_glass(d_theta: np.ndarray, d_g: np.ndarray, p_range: tuple[float, float] = P_RANGE) -> GlassFit:
    """Fit D_g = a + c D_th^(p/2) with a >= 0, c > 0, p in p_range, least squares on log D_g.

    Parameters: d_theta, d_g: the lag means, 1-D of equal length, finite and > 0 (at least MIN_LAGS of them,
    else the fit is NaN with a note); p_range: the bounds of p.
    Why so: the noise floor a enters additively, so the power law shows only above it and a must be fitted
    with it; log space gives every lag the same weight whatever the size of D_g. Both axes are divided by
    their geometric means first (the fit is then scale free), and it runs from a fixed grid of starting
    points (p in 0.5, 1, 2, 3 times a at 0, 0.5 and 0.9 of the smallest D_g), the lowest cost winning, so the
    result is deterministic. The returned GlassFit has no lag table (the caller adds it).
    """
    from scipy.optimize import least_squares

    x = np.asarray(d_theta, dtype=np.float64)
    y = np.asarray(d_g, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise UsageError(f"d_theta and d_g must be 1-D of equal length, got {x.shape} and {y.shape}")
    if not (p_range[0] > 0.0 and p_range[1] > p_range[0]):
        raise UsageError(f"p_range={p_range!r} is invalid: give (lo, hi) with 0 < lo < hi")
    if len(x) < MIN_LAGS:
        return GlassFit(note=f"{len(x)} lags to fit; the fit needs {MIN_LAGS}")
    if not (np.isfinite(x).all() and np.isfinite(y).all() and (x > 0).all() and (y > 0).all()):
        return GlassFit(note="a lag mean is zero or not finite; the fit needs positive D_g and D_theta")
    xs, ys = math.exp(float(np.log(x).mean())), math.exp(float(np.log(y).mean()))
    lx, ly, yn = np.log(x / xs), np.log(y / ys), y / ys

    def model(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        e = np.exp(q[1] + 0.5 * q[2] * lx)
        return e, q[0] + e

    def resid(q: np.ndarray) -> np.ndarray:
        return np.log(model(q)[1]) - ly

    def jac(q: np.ndarray) -> np.ndarray:
        e, m = model(q)
        return np.column_stack([1.0 / m, e / m, 0.5 * lx * e / m])

    lo = np.array([0.0, -60.0, p_range[0]])
    hi = np.array([float(yn.max()), 60.0, p_range[1]])
    best: Any = None
    for p0 in (0.5, 1.0, 2.0, 3.0):
        p0 = min(max(p0, p_range[0]), p_range[1])
        for share in (0.0, 0.5, 0.9):
            a0 = share * float(yn.min())
            lc0 = float(np.mean(np.log(np.maximum(yn - a0, 1e-3 * yn)) - 0.5 * p0 * lx))
            q0 = np.clip(np.array([a0, lc0, p0]), lo, hi)
            r = least_squares(resid, q0, jac=jac, bounds=(lo, hi), method="trf", xtol=1e-12, ftol=1e-12)
            if best is None or r.cost < best.cost:
                best = r
    a_n, lc, p = (float(v) for v in best.x)
    ss_res = float(np.sum(resid(best.x) ** 2))
    ss_tot = float(np.sum((ly - ly.mean()) ** 2))
    a, c = a_n * ys, math.exp(lc) * ys / xs ** (0.5 * p)
    note = ""
    if min(p - p_range[0], p_range[1] - p) <= 1e-6:
        note = f"p at the bound of the fit range {p_range}: no power law inside it"
    elif c * float(x.max()) ** (0.5 * p) < _FLOOR_DOMINATES * a:
        note = "the noise floor dominates every lag: p is not identified"
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0.0 else math.nan
    return GlassFit(p, c, a, r2, math.sqrt(ss_res / len(x)), len(x), note=note)


class _Span:
    """What one span of rows (the run, or the current window) has accumulated, per scope and lag."""

    def __init__(self, n_scopes: int, n_lags: int) -> None:
        self.rows = np.zeros(n_scopes, dtype=np.int64)
        self.sum_dg = np.zeros((n_scopes, n_lags))
        self.sum_dth = np.zeros((n_scopes, n_lags))
        self.pairs = np.zeros((n_scopes, n_lags), dtype=np.int64)
        self.steps: list[np.ndarray] = []  # [3, n, S] per block: L_t, L_t^exact, cos_t (NaN: not counted)

    def add(
        self, rows: np.ndarray, dg: np.ndarray, dth: np.ndarray, pairs: np.ndarray, steps: np.ndarray
    ) -> None:
        self.rows += rows
        self.sum_dg += dg
        self.sum_dth += dth
        self.pairs += pairs
        self.steps.append(steps)

    def step_values(self) -> np.ndarray:
        if not self.steps:
            return np.zeros((3, 0, len(self.rows)))
        return np.concatenate(self.steps, axis=1)

    def stats(self, lags: tuple[int, ...]) -> list[UpdateStats]:
        steps = self.step_values()
        return [self._scope(s, steps[:, :, s], lags) for s in range(len(self.rows))]

    def _scope(self, s: int, steps: np.ndarray, lags: tuple[int, ...]) -> UpdateStats:
        n_rows = int(self.rows[s])
        secant = Summary.of(steps[0])
        note = ""
        if n_rows < 2:
            note = f"{n_rows} usable rows; step statistics need 2 consecutive ones"
        elif secant.n == 0:
            note = "no step with usable neighbouring rows and a nonzero update"
        cap = n_rows // 4
        table = tuple(
            LagMean(tau, float(self.sum_dg[s, i] / n), float(self.sum_dth[s, i] / n), int(n))
            for i, tau in enumerate(lags)
            if (n := self.pairs[s, i]) > 0 and tau <= cap
        )
        use = [r for r in table if r.d_g > 0.0 and r.d_theta > 0.0]
        if table and all(r.d_theta == 0.0 for r in table):
            glass = GlassFit(lags=table, note="every update is zero: D_theta = 0 at every lag")
        elif len(use) < MIN_LAGS:
            why = f"{len(use)} lags with pairs and positive D_g, D_theta among tau <= {cap} (usable rows / 4)"
            glass = GlassFit(lags=table, note=f"{why}; the fit needs {MIN_LAGS}")
        else:
            fit = fit_glass(np.array([r.d_theta for r in use]), np.array([r.d_g for r in use]))
            glass = replace(fit, lags=table)
        return UpdateStats(n_rows, secant, Summary.of(steps[1]), Summary.of(steps[2]), glass, note)


class UpdateAccumulator:
    """Streaming secant smoothness, alignment and glass-exponent lag means of every scope (module docstring).

    Parameters: n_scopes (S) and k, the shape of a row; max_lag, the largest lag (also the rows of carry);
    lags, the lags to accumulate (default `default_lags(max_lag)`, each in 1..max_lag); block_rows, the rows
    processed at once: the work space is about 4 (block_rows + max_lag) S k float64 (24 MB at S = 9, k = 256
    and the defaults), besides the copy of the chunk being added.
    """

    def __init__(
        self,
        n_scopes: int,
        k: int,
        max_lag: int = 64,
        lags: Sequence[int] | None = None,
        *,
        block_rows: int = BLOCK_ROWS,
    ) -> None:
        if n_scopes < 1 or k < 1 or max_lag < 1 or block_rows < 1:
            raise UsageError(
                f"n_scopes={n_scopes}, k={k}, max_lag={max_lag}, block_rows={block_rows}: all >= 1"
            )
        chosen = default_lags(max_lag) if lags is None else tuple(sorted({int(t) for t in lags}))
        if not chosen or chosen[0] < 1 or chosen[-1] > max_lag:
            raise UsageError(f"lags={lags!r} is invalid: give lags in 1..max_lag={max_lag}")
        self.n_scopes, self.k, self.max_lag = n_scopes, k, max_lag
        self.lags, self.block_rows = chosen, block_rows
        # the carry starts as one unusable row, so every block has a row before it
        self._cz = np.zeros((1, n_scopes, k))
        self._cw = np.zeros((1, n_scopes, k))
        self._czok = np.zeros((1, n_scopes), dtype=bool)
        self._cwok = np.zeros((1, n_scopes), dtype=bool)
        self._pending: list[tuple[np.ndarray, ...]] = []
        self._n_pending = 0
        self._run = _Span(n_scopes, len(chosen))
        self._window = _Span(n_scopes, len(chosen))

    def add(
        self, z: np.ndarray, w: np.ndarray, valid: np.ndarray, exact_sqnorm: np.ndarray | None = None
    ) -> None:
        """Take the next rows, in order.

        Parameters: z, w: [n, S, k] projected gradients and updates (any float dtype; NaN/Inf make that row's
        z or w unusable, as the first row of a segment has it for w); valid: [n, S] bool, False leaves both
        out; exact_sqnorm: [n, S] the exact ||u_t||^2 (NaN where unknown), or None.
        """
        n, s, k = len(z), self.n_scopes, self.k
        shape = (n, s, k)
        if np.shape(z) != shape or np.shape(w) != shape or np.shape(valid) != shape[:2]:
            raise UsageError(
                f"z, w, valid: want shapes {shape}, {shape}, {shape[:2]}, got "
                f"{np.shape(z)}, {np.shape(w)}, {np.shape(valid)}"
            )
        if exact_sqnorm is not None and np.shape(exact_sqnorm) != shape[:2]:
            raise UsageError(f"exact_sqnorm: want shape {shape[:2]}, got {np.shape(exact_sqnorm)}")
        ok = np.asarray(valid, dtype=bool)
        zt, zok = _usable(z, ok)
        wt, wok = _usable(w, ok)
        e = np.full((n, s), np.nan) if exact_sqnorm is None else np.array(exact_sqnorm, dtype=np.float64)
        e[~(wok & np.isfinite(e) & (e > 0.0))] = np.nan
        self._pending.append((zt, wt, zok, wok, e))
        self._n_pending += n
        if self._n_pending >= self.block_rows:
            self._drain(full_only=True)

    def finalize(self) -> list[UpdateStats]:
        """The statistics of every row added so far, one per scope. Later adds continue the same run."""
        self._drain(full_only=False)
        return self._run.stats(self.lags)

    def cut(self) -> list[UpdateStats]:
        """Close the current window and return its statistics, one per scope (module docstring)."""
        self._drain(full_only=False)
        out = self._window.stats(self.lags)
        self._window = _Span(self.n_scopes, len(self.lags))
        return out

    def per_step(self) -> dict[str, np.ndarray]:
        """Row-aligned per-step values of the run so far, each [rows, S], NaN where the step is not counted.

        Keys "secant", "secant_exact", "alignment"; row t holds the step from row t-1 to row t.
        """
        self._drain(full_only=False)
        v = self._run.step_values()
        return {name: v[i].copy() for i, name in enumerate(("secant", "secant_exact", "alignment"))}

    def _drain(self, full_only: bool) -> None:
        if not self._pending:
            return
        pending = self._pending
        parts = (
            list(pending[0]) if len(pending) == 1 else [np.concatenate(p) for p in zip(*pending, strict=True)]
        )
        n, b = self._n_pending, self.block_rows
        stop = n - n % b if full_only else n
        for a in range(0, stop, b):
            self._block(*(p[a : a + b] for p in parts))
        self._pending = [tuple(p[stop:] for p in parts)] if stop < n else []
        self._n_pending = n - stop

    def _block(self, z: np.ndarray, w: np.ndarray, zok: np.ndarray, wok: np.ndarray, e: np.ndarray) -> None:
        """One block of rows [n, S, k] (masks, e: [n, S]) after the m carried rows; i indexes both."""
        m, n = len(self._cz), len(z)
        hi = m + n
        zz, ww = np.concatenate([self._cz, z]), np.concatenate([self._cw, w])
        zzok, wwok = np.concatenate([self._czok, zok]), np.concatenate([self._cwok, wok])
        steps = _step_values(zz[m - 1 : hi - 1], z, w, zzok[m - 1 : hi - 1], zok, wok, e)
        # prefix sums over the carry and this block only: window sums of w, counts of unusable w. A loop over
        # rows: as exact as np.cumsum and several times faster on this layout.
        cw = np.zeros((hi + 1, *ww.shape[1:]))
        for i in range(hi):
            np.add(cw[i], ww[i], out=cw[i + 1])
        bad = np.zeros((hi + 1, self.n_scopes), dtype=np.int64)
        np.cumsum(~wwok, axis=0, out=bad[1:])
        shape = (len(self.lags), self.n_scopes)
        dg, dth, pairs = np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=np.int64)
        buf = np.empty(z.shape)
        for li, tau in enumerate(self.lags):
            lo = max(m, tau)  # later rows i in lo..hi-1, earlier rows i - tau >= 0
            if lo >= hi:
                continue
            d = buf[: hi - lo]
            ok = zzok[lo:hi] & zzok[lo - tau : hi - tau]
            ok &= bad[lo + 1 : hi + 1] == bad[lo - tau + 1 : hi - tau + 1]
            np.subtract(zz[lo:hi], zz[lo - tau : hi - tau], out=d)
            dg[li] = _masked_sqsum(d, ok)
            np.subtract(cw[lo + 1 : hi + 1], cw[lo - tau + 1 : hi - tau + 1], out=d)
            dth[li] = _masked_sqsum(d, ok)
            pairs[li] = ok.sum(axis=0)
        keep = min(self.max_lag, hi)
        self._cz, self._cw = zz[-keep:].copy(), ww[-keep:].copy()
        self._czok, self._cwok = zzok[-keep:].copy(), wwok[-keep:].copy()
        rows = zok.sum(axis=0)
        for span in (self._run, self._window):
            span.add(rows, dg.T, dth.T, pairs.T, steps)


def _usable(x: np.ndarray, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, S, k] -> (a float64 copy with unusable rows zeroed, the usable mask [n, S])."""
    xt = np.array(x, dtype=np.float64)
    good = ok & np.isfinite(xt).all(axis=2)
    xt[~good] = 0.0
    return xt, good


def _masked_sqsum(d: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per scope, the sum over rows with ok of ||d_row||^2: d [n, S, k], ok [n, S] -> [S]."""
    sq = np.einsum("nsk,nsk->ns", d, d)
    return np.where(ok, sq, 0.0).sum(axis=0)


def _step_values(
    zp: np.ndarray,
    z: np.ndarray,
    w: np.ndarray,
    zpok: np.ndarray,
    zok: np.ndarray,
    wok: np.ndarray,
    e: np.ndarray,
) -> np.ndarray:
    """[3, n, S]: L_t, L_t^exact and cos_t for each row t of a block (NaN where not counted).

    zp: the rows before (z_{t-1}), z, w: this block's rows [n, S, k]; zpok, zok, wok: which of z_{t-1}, z_t,
    w_t are usable [n, S]; e: exact ||u_t||^2 (NaN where unusable).
    """
    dz = z - zp
    num = np.sqrt(np.einsum("nsk,nsk->ns", dz, dz))
    wn = np.sqrt(np.einsum("nsk,nsk->ns", w, w))
    zn = np.sqrt(np.einsum("nsk,nsk->ns", zp, zp))
    moved = zpok & wok & (wn > 0.0)
    out = np.full((3, *num.shape), np.nan)
    np.divide(num, wn, out=out[0], where=moved & zok)
    np.divide(num, np.sqrt(e), out=out[1], where=moved & zok & np.isfinite(e))
    np.divide(-np.einsum("nsk,nsk->ns", zp, w), zn * wn, out=out[2], where=moved & (zn > 0.0))
    return out
