"""Update statistics: planted truths (SGD, quadratics with and without noise, a glass-like process), the
streaming accumulator against a plain reference, chunking invariance, windows, degenerate inputs.

The reference below is written plainly from the formulas (explicit loops over steps and pairs, whole arrays in
memory), sharing nothing with gradmanifold.updates but the quantile convention (np.quantile, linear).
"""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradmanifold.errors import UsageError
from gradmanifold.updates import (
    MIN_LAGS,
    QUANTILES,
    UpdateAccumulator,
    UpdateStats,
    default_lags,
    fit_glass,
)

# ---------------------------------------------------------------------------------------------------------
# independent reference


def reference(
    z: np.ndarray,
    w: np.ndarray,
    valid: np.ndarray,
    exact: np.ndarray | None,
    lags: tuple[int, ...],
    lo: int = 0,
    hi: int | None = None,
) -> list[dict[str, Any]]:
    """Per scope: per-step values of every row, and the usable rows and lag sums of the pairs whose later
    row lies in [lo, hi)."""
    z = np.asarray(z, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    t_len, n_scopes, _ = z.shape
    hi = t_len if hi is None else hi
    out = []
    for s in range(n_scopes):
        zok = [bool(valid[t, s]) and bool(np.isfinite(z[t, s]).all()) for t in range(t_len)]
        wok = [bool(valid[t, s]) and bool(np.isfinite(w[t, s]).all()) for t in range(t_len)]
        sec, sec_e, ali = np.full(t_len, np.nan), np.full(t_len, np.nan), np.full(t_len, np.nan)
        for t in range(1, t_len):
            if not (zok[t - 1] and wok[t]):
                continue
            wn = math.sqrt(float(np.dot(w[t, s], w[t, s])))
            if wn == 0.0:
                continue
            zn = math.sqrt(float(np.dot(z[t - 1, s], z[t - 1, s])))
            if zn > 0.0:
                ali[t] = -float(np.dot(z[t - 1, s], w[t, s])) / (zn * wn)
            if zok[t]:
                num = math.sqrt(float(((z[t, s] - z[t - 1, s]) ** 2).sum()))
                sec[t] = num / wn
                if exact is not None and math.isfinite(exact[t, s]) and exact[t, s] > 0.0:
                    sec_e[t] = num / math.sqrt(exact[t, s])
        table = []
        for tau in lags:
            dg = dth = 0.0
            n = 0
            for t in range(max(lo, tau), hi):  # the later row t, the earlier t - tau
                if zok[t] and zok[t - tau] and all(wok[t - tau + 1 : t + 1]):
                    dg += float(((z[t, s] - z[t - tau, s]) ** 2).sum())
                    dth += float((w[t - tau + 1 : t + 1, s].sum(axis=0) ** 2).sum())
                    n += 1
            table.append((tau, dg, dth, n))
        out.append(
            {"secant": sec, "secant_exact": sec_e, "alignment": ali, "table": table, "rows": sum(zok[lo:hi])}
        )
    return out


def check_against(st_: UpdateStats, ref: dict[str, Any], lo: int = 0, hi: int | None = None) -> None:
    """One scope's statistics equal the reference's over the later rows lo..hi-1."""
    assert st_.n_rows == ref["rows"]
    for name, summ in (
        ("secant", st_.secant),
        ("secant_exact", st_.secant_exact),
        ("alignment", st_.alignment),
    ):
        v = ref[name][lo:hi]
        v = v[np.isfinite(v)]
        assert summ.n == len(v), name
        if len(v):
            np.testing.assert_allclose(summ.quantiles, np.quantile(v, QUANTILES), rtol=1e-12, atol=1e-14)
        else:
            assert all(math.isnan(q) for q in summ.quantiles)
    cap = ref["rows"] // 4
    want = [(tau, dg / n, dth / n, n) for tau, dg, dth, n in ref["table"] if n > 0 and tau <= cap]
    got = [(r.tau, r.d_g, r.d_theta, r.n) for r in st_.glass.lags]
    assert [(g[0], g[3]) for g in got] == [(x[0], x[3]) for x in want]
    if want:
        np.testing.assert_allclose([g[1:3] for g in got], [x[1:3] for x in want], rtol=1e-12, atol=1e-300)


# ---------------------------------------------------------------------------------------------------------
# helpers: feeding, planted processes


def run(
    z: np.ndarray,
    w: np.ndarray,
    valid: np.ndarray | None = None,
    exact: np.ndarray | None = None,
    chunk: int = 97,
    **kw: Any,
) -> tuple[UpdateAccumulator, list[UpdateStats]]:
    t_len, n_scopes, k = z.shape
    acc = UpdateAccumulator(n_scopes, k, **kw)
    valid = np.ones((t_len, n_scopes), dtype=bool) if valid is None else valid
    for a in range(0, t_len, chunk):
        acc.add(
            z[a : a + chunk],
            w[a : a + chunk],
            valid[a : a + chunk],
            None if exact is None else exact[a : a + chunk],
        )
    return acc, acc.finalize()


def descent(
    a_mat: np.ndarray,
    b: np.ndarray,
    theta0: np.ndarray,
    lr: float,
    steps: int,
    sigma: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Gradient descent on 0.5 theta^T A theta - b^T theta with gradient noise N(0, sigma^2 I): (g, u) rows,
    u_t = theta_t - theta_{t-1} = -lr g_{t-1} (NaN at t = 0)."""
    rng = np.random.default_rng(seed)
    d = len(b)
    g, u = np.zeros((steps, d)), np.full((steps, d), np.nan)
    theta = theta0.astype(np.float64)
    for t in range(steps):
        if t:
            u[t] = -lr * g[t - 1]
            theta = theta + u[t]
        g[t] = a_mat @ theta - b + sigma * rng.standard_normal(d)
    return g, u


def spd(d: int, lo: float, hi: float, seed: int) -> np.ndarray:
    """A symmetric matrix with eigenvalues spread evenly over [lo, hi]."""
    q = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))[0]
    return (q * np.linspace(lo, hi, d)) @ q.T


def staircase_walk(steps: int, d: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random walk theta in d dims and g_i(theta) = sum_j s_ij sign(theta_i - c_ij), m random kinks per
    coordinate with random signs: g_i is itself a random walk in theta_i, so E||g(theta + D) - g(theta)||^2
    grows like sum_i |D_i|, i.e. like ||D||, and D_g ~ D_theta^(1/2): p = 1. Returns (g, u)."""
    rng = np.random.default_rng(seed)
    theta = np.cumsum(rng.standard_normal((steps, d)), axis=0)
    half = 5.0 * math.sqrt(steps)  # the walk stays well inside the kinks
    kinks = np.sort(rng.uniform(-half, half, (d, m)), axis=1)
    signs = np.concatenate([np.zeros((d, 1)), np.cumsum(rng.choice([-1.0, 1.0], (d, m)), axis=1)], axis=1)
    g = np.empty((steps, d))
    for i in range(d):
        below = np.searchsorted(kinks[i], theta[:, i])  # kinks below theta_i
        g[:, i] = 2.0 * signs[i, below] - signs[i, -1]
    u = np.full((steps, d), np.nan)
    u[1:] = np.diff(theta, axis=0)
    return g, u


def gaussian_projection(k: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, d)) / math.sqrt(k)


# ---------------------------------------------------------------------------------------------------------
# planted truths


def test_plain_sgd_alignment_is_exactly_one() -> None:
    rng = np.random.default_rng(0)
    t_len, lr = 300, 0.05
    z = rng.standard_normal((t_len, 2, 12))
    z = np.concatenate([z, z.sum(axis=1, keepdims=True)], axis=1)  # the model scope: sum of the groups
    w = np.full_like(z, np.nan)
    w[1:] = -lr * z[:-1]
    acc, stats = run(z, w)
    ali = acc.per_step()["alignment"]
    assert np.isnan(ali[0]).all()
    np.testing.assert_allclose(ali[1:], 1.0, rtol=0, atol=1e-12)
    for st_ in stats:
        assert st_.alignment.n == t_len - 1
        np.testing.assert_allclose(st_.alignment.quantiles, 1.0, atol=1e-12)
    # teeth: heavy-ball momentum on these uncorrelated gradients turns the step away from -g
    wm = np.full_like(z, np.nan)
    wm[1] = -lr * z[0]
    for t in range(2, t_len):
        wm[t] = 0.9 * wm[t - 1] - lr * z[t - 1]
    assert run(z, wm)[1][0].alignment.median < 0.9


def test_isotropic_quadratic_secant_is_a_under_any_projection() -> None:
    rng = np.random.default_rng(1)
    d, k, a = 64, 16, 2.5
    b, theta0 = rng.standard_normal(d), 40.0 * rng.standard_normal(d)
    g, u = descent(a * np.eye(d), b, theta0, lr=4e-4, steps=1500)
    r = gaussian_projection(k, d, seed=2)
    acc, (st_,) = run((g @ r.T)[:, None], (u @ r.T)[:, None])
    np.testing.assert_allclose(acc.per_step()["secant"][1:, 0], a, rtol=1e-9)
    assert st_.secant.n == 1499
    fit = st_.glass
    assert fit.proxy and fit.n_lags == 12 and fit.note == ""
    assert abs(fit.p - 2.0) < 0.05
    assert fit.c == pytest.approx(a**2, rel=1e-3)
    assert fit.noise_floor < 1e-3 * fit.lags[0].d_g


def test_general_quadratic_secant_per_step_and_p_two() -> None:
    rng = np.random.default_rng(3)
    d = 8
    a_mat = spd(d, 0.5, 2.0, seed=4)
    g, u = descent(a_mat, rng.standard_normal(d), 30.0 * rng.standard_normal(d), lr=5e-4, steps=1000)
    exact = (u**2).sum(axis=1)[:, None]  # R = identity: projected and exact norms agree
    acc, (st_,) = run(g[:, None], u[:, None], exact=exact)
    per = acc.per_step()
    want = np.linalg.norm(u[1:] @ a_mat, axis=1) / np.linalg.norm(u[1:], axis=1)
    np.testing.assert_allclose(per["secant"][1:, 0], want, rtol=1e-9)
    np.testing.assert_allclose(per["secant_exact"][1:, 0], per["secant"][1:, 0], rtol=1e-12)
    np.testing.assert_allclose(per["alignment"][1:, 0], 1.0, atol=1e-12)
    assert st_.secant_exact.n == st_.secant.n == 999
    assert 0.5 <= st_.secant.quantiles[0] <= st_.secant.quantiles[-1] <= 2.0
    assert abs(st_.glass.p - 2.0) < 0.05
    assert st_.glass.noise_floor < 1e-3 * st_.glass.lags[0].d_g


@pytest.mark.parametrize(
    ("d", "lo", "hi", "sigma", "steps", "lr"),
    [(16, 1.0, 1.0, 0.1, 4000, 1e-3), (8, 0.5, 2.0, 0.05, 2000, 5e-4)],
    ids=["isotropic", "general"],
)
def test_noisy_quadratic_noise_floor_is_two_d_sigma2(
    d: int, lo: float, hi: float, sigma: float, steps: int, lr: float
) -> None:
    # E||xi_{t+tau} - xi_t||^2 = 2 d sigma^2: the floor. Its estimate from T rows has relative sd about
    # sqrt(2/(dT)) (< 1%); the cross term <A dtheta, xi_t> biases it by lr * lambda (< 0.2%). Tolerance: 10%.
    rng = np.random.default_rng(5)
    a_mat = spd(d, lo, hi, seed=6)
    g, u = descent(
        a_mat, rng.standard_normal(d), 25.0 * rng.standard_normal(d), lr, steps, sigma=sigma, seed=7
    )
    _, (st_,) = run(g[:, None], u[:, None], chunk=500)
    fit = st_.glass
    assert abs(fit.p - 2.0) < 0.05
    assert fit.noise_floor == pytest.approx(2 * d * sigma**2, rel=0.1)
    assert fit.s2 == pytest.approx(d * sigma**2, rel=0.1)
    assert fit.r2_log > 0.99


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_glass_like_process_has_p_near_one(seed: int) -> None:
    d, k = 64, 32
    g, u = staircase_walk(4000, d, m=400, seed=seed)
    r = gaussian_projection(k, d, seed=seed + 10)
    _, (st_,) = run((g @ r.T)[:, None], (u @ r.T)[:, None], chunk=1000)
    assert abs(st_.glass.p - 1.0) < 0.15
    assert st_.glass.noise_floor < 0.15 * st_.glass.lags[0].d_g
    # teeth: the same walk under a smooth gradient (linear in theta) reads p = 2
    linear = np.cumsum(np.nan_to_num(u), axis=0) @ r.T  # g = theta - theta_0
    _, (smooth,) = run(linear[:, None], (u @ r.T)[:, None], chunk=1000)
    assert abs(smooth.glass.p - 2.0) < 0.05


# ---------------------------------------------------------------------------------------------------------
# the fit


@pytest.mark.parametrize(
    ("p", "a", "c"), [(2.0, 0.0, 3.0), (1.0, 0.5, 2.0), (1.5, 7.0, 0.01), (0.5, 1e-3, 1e4)]
)
def test_fit_recovers_an_exact_law(p: float, a: float, c: float) -> None:
    x = np.geomspace(1e-3, 1e3, 12)
    fit = fit_glass(x, a + c * x ** (p / 2))
    assert fit.p == pytest.approx(p, rel=1e-6)
    assert fit.c == pytest.approx(c, rel=1e-5)
    assert fit.noise_floor == pytest.approx(a, rel=1e-5, abs=1e-9 * c)
    assert fit.r2_log == pytest.approx(1.0, abs=1e-9)
    assert fit.rmse_log < 1e-6
    assert fit == fit_glass(x, a + c * x ** (p / 2))  # deterministic


def test_fit_edges() -> None:
    x = np.geomspace(1.0, 100.0, 6)
    assert "bound" in fit_glass(x, x**3).note  # p = 6: beyond the range
    flat = fit_glass(x, 5.0 + 1e-9 * x)
    assert "floor dominates" in flat.note or "bound" in flat.note
    few = fit_glass(x[:3], x[:3])
    assert math.isnan(few.p) and str(MIN_LAGS) in few.note
    assert "positive" in fit_glass(x, x * 0).note
    with pytest.raises(UsageError):
        fit_glass(x, x[:3])
    with pytest.raises(UsageError):
        fit_glass(x, x, p_range=(2.0, 1.0))


# ---------------------------------------------------------------------------------------------------------
# against the reference; chunking invariance; invalid rows


def _random_stream(seed: int, t_len: int, n_scopes: int, k: int, bad: float) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    z = np.cumsum(rng.standard_normal((t_len, n_scopes, k)), axis=0).astype(np.float32)
    w = rng.standard_normal((t_len, n_scopes, k))
    w[rng.random((t_len, n_scopes)) < 0.05] = 0.0  # a step that did not move
    w[rng.random(t_len) < bad] = np.nan  # segment starts: no previous parameters
    if t_len:
        w[0] = np.nan
    z[rng.random((t_len, n_scopes)) < bad / 2, :] = np.nan
    valid = rng.random((t_len, n_scopes)) >= bad
    exact = (w**2).sum(axis=2) * rng.uniform(0.5, 2.0, (t_len, n_scopes))
    exact[rng.random((t_len, n_scopes)) < 0.2] = np.nan
    return z, w, valid, exact


def _feed(acc: UpdateAccumulator, data: tuple[np.ndarray, ...], cuts: list[int]) -> None:
    t_len = len(data[0])
    edges = [0, *sorted(c for c in cuts if 0 < c < t_len), t_len]
    for a, b in itertools.pairwise(edges):
        acc.add(*(x[a:b] for x in data))


@given(
    seed=st.integers(0, 2**16),
    t_len=st.integers(0, 80),
    n_scopes=st.integers(1, 2),
    k=st.integers(1, 4),
    bad=st.sampled_from([0.0, 0.05, 0.25]),
    block=st.sampled_from([1, 5, 16, 512]),
    lags=st.one_of(st.none(), st.sets(st.integers(1, 12), min_size=1, max_size=5)),
    cuts_a=st.lists(st.integers(0, 80), max_size=5),
    cuts_b=st.lists(st.integers(0, 80), max_size=5),
)
def test_streaming_equals_reference_under_any_chunking(
    seed: int,
    t_len: int,
    n_scopes: int,
    k: int,
    bad: float,
    block: int,
    lags: set[int] | None,
    cuts_a: list[int],
    cuts_b: list[int],
) -> None:
    data = _random_stream(seed, t_len, n_scopes, k, bad)
    kw: dict[str, Any] = {"max_lag": 12, "lags": None if lags is None else sorted(lags), "block_rows": block}
    acc_a, acc_b = UpdateAccumulator(n_scopes, k, **kw), UpdateAccumulator(n_scopes, k, **kw)
    _feed(acc_a, data, cuts_a)
    _feed(acc_b, data, cuts_b)
    got_a, got_b = acc_a.finalize(), acc_b.finalize()
    # chunking changes nothing, not even the last bit
    assert [s.to_dict() for s in got_a] == [s.to_dict() for s in got_b]
    per_a, per_b = acc_a.per_step(), acc_b.per_step()
    for key in per_a:
        np.testing.assert_array_equal(per_a[key], per_b[key])
    ref = reference(*data, lags=acc_a.lags)
    for s, st_ in enumerate(got_a):
        check_against(st_, ref[s])
        for key in per_a:
            np.testing.assert_allclose(per_a[key][:, s], ref[s][key], rtol=1e-12, atol=1e-14)
        json.dumps(st_.to_dict(), allow_nan=False)


def test_chunking_changes_no_bit() -> None:
    # float64 rows over many blocks: one add, row by row, and ragged chunks give identical results
    data = _random_stream(12, 300, 2, 6, 0.05)
    data = (data[0].astype(np.float64) * np.pi, *data[1:])
    results = []
    for cuts in ([], list(range(300)), [5, 17, 18, 100, 161, 250]):
        acc = UpdateAccumulator(2, 6, max_lag=16, block_rows=23)
        _feed(acc, data, cuts)
        results.append([s.to_dict() for s in acc.finalize()])
    assert results[0] == results[1] == results[2]
    assert results[0][0]["glass_exponent"] is not None


def test_windows_against_the_reference() -> None:
    data = _random_stream(11, 230, 2, 5, 0.05)
    acc = UpdateAccumulator(2, 5, max_lag=16, block_rows=37)
    ref_run = reference(*data, lags=acc.lags)
    edges = [0, 100, 200, 230]
    for a, b in itertools.pairwise(edges):
        _feed(acc, tuple(x[a:b] for x in data), [13])
        win = acc.cut()
        ref = reference(*data, lags=acc.lags, lo=a, hi=b)
        for s in range(2):
            check_against(win[s], ref[s], a, b)
    for s, st_ in enumerate(acc.finalize()):
        check_against(st_, ref_run[s])


def test_segment_starts_cut_every_lag_window() -> None:
    # Two segments of 60 rows; w is NaN on each first row. Pairs never cross the boundary; the first row of
    # the second segment still counts as the earlier end of pairs inside it.
    rng = np.random.default_rng(8)
    z = rng.standard_normal((120, 1, 3))
    w = rng.standard_normal((120, 1, 3))
    w[[0, 60]] = np.nan
    _, (st_,) = run(z, w, chunk=7, max_lag=8, block_rows=16)
    assert st_.secant.n == 118
    assert {r.tau: r.n for r in st_.glass.lags} == {tau: 2 * (60 - tau) for tau in default_lags(8)}
    # a flagged row removes its own pairs and every lag window over it
    valid = np.ones((120, 1), dtype=bool)
    valid[30] = False
    _, (st2,) = run(z, w, valid, chunk=7, max_lag=8, block_rows=16)
    assert st2.secant.n == 116
    assert st2.n_rows == 119
    assert {r.tau: r.n for r in st2.glass.lags} == {tau: 2 * (60 - tau) - tau - 1 for tau in default_lags(8)}


# ---------------------------------------------------------------------------------------------------------
# degenerate inputs, arguments, JSON


def _assert_nan_with_note(st_: UpdateStats) -> None:
    assert math.isnan(st_.glass_exponent) and math.isnan(st_.glass.noise_floor)
    assert st_.glass.note and st_.glass.proxy
    d = st_.to_dict()
    assert d["glass_exponent"] is None and d["glass_fit"]["proxy"] is True
    json.dumps(d, allow_nan=False)


def test_degenerate_inputs_give_nan_and_a_note() -> None:
    acc = UpdateAccumulator(2, 3)
    for st_ in acc.finalize():  # nothing added
        assert st_.n_rows == 0 and st_.secant.n == 0 and "usable rows" in st_.note
        _assert_nan_with_note(st_)
    z = np.random.default_rng(0).standard_normal((40, 1, 3))
    w = np.zeros_like(z)
    w[0] = np.nan
    _, (st_,) = run(z, w)  # the parameters never moved
    assert st_.secant.n == 0 and st_.alignment.n == 0 and "nonzero update" in st_.note
    _assert_nan_with_note(st_)
    assert "every update is zero" in st_.glass.note
    _, (st_,) = run(z, z, valid=np.zeros((40, 1), dtype=bool))  # all rows flagged
    assert st_.n_rows == 0
    _assert_nan_with_note(st_)
    _, (st_,) = run(z[:10], z[:10] + 1.0)  # 10 rows: lags up to 2 only
    assert st_.secant.n == 9 and st_.note == ""
    _assert_nan_with_note(st_)
    assert "needs 4" in st_.glass.note
    _, (st_,) = run(np.ones((40, 1, 3)), z)  # a constant gradient: D_g = 0
    assert st_.secant.quantiles == (0.0,) * 5
    _assert_nan_with_note(st_)


def test_to_dict_keys() -> None:
    g, u = staircase_walk(400, 8, m=50, seed=0)
    _, (st_,) = run(g[:, None], u[:, None], exact=(u**2).sum(axis=1)[:, None])
    d = st_.to_dict()
    assert set(d) == {
        "n_rows",
        "n_pairs",
        "secant_smoothness_median",
        "secant_smoothness_quantiles",
        "n_pairs_exact",
        "secant_smoothness_exact_median",
        "secant_smoothness_exact_quantiles",
        "n_alignment",
        "alignment_median",
        "alignment_quantiles",
        "glass_exponent",
        "glass_fit",
        "note",
    }
    assert list(d["secant_smoothness_quantiles"]) == ["0.1", "0.25", "0.5", "0.75", "0.9"]
    assert d["secant_smoothness_median"] == d["secant_smoothness_quantiles"]["0.5"]
    assert set(d["glass_fit"]) == {
        "c",
        "noise_floor",
        "s2",
        "r2_log",
        "rmse_log",
        "n_lags",
        "lags",
        "proxy",
        "note",
    }
    assert d["glass_fit"]["lags"][0].keys() == {"tau", "d_g", "d_theta", "n"}
    assert d["glass_fit"]["n_lags"] == len(d["glass_fit"]["lags"]) == 12
    assert d["glass_exponent"] == st_.glass.p
    json.dumps(d, allow_nan=False)


def test_arguments_are_checked() -> None:
    assert default_lags(64) == (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
    assert default_lags(1) == (1,)
    for bad in (
        {"n_scopes": 0},
        {"k": 0},
        {"max_lag": 0},
        {"lags": [0, 1]},
        {"lags": [65]},
        {"block_rows": 0},
    ):
        kw: dict[str, Any] = {"n_scopes": 1, "k": 2, **bad}
        with pytest.raises(UsageError):
            UpdateAccumulator(**kw)
    acc = UpdateAccumulator(2, 3)
    with pytest.raises(UsageError):
        acc.add(np.zeros((4, 2, 3)), np.zeros((4, 2, 2)), np.ones((4, 2), dtype=bool))
    with pytest.raises(UsageError):
        acc.add(np.zeros((4, 2, 3)), np.zeros((4, 2, 3)), np.ones((4, 2), dtype=bool), np.zeros(4))
