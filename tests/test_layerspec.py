"""Spectral readouts and fits: laws that hold exactly, an independent reference, and the published paper-b
fits of 24 layers (tests/data/paper_b, arXiv 2606.02596) reproduced from their sigma and h.

The reference below is written plainly from the formulas (np.polyfit for every OLS, explicit sums), sharing
nothing with gradmanifold.layerspec.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradmanifold import layerspec as ls
from gradmanifold.errors import UsageError

DATA = Path(__file__).parent / "data" / "paper_b"


# ---------------------------------------------------------------------------------------------------------
# independent reference


def ref_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """OLS slope and R^2 by np.polyfit."""
    slope, icept = np.polyfit(x, y, 1)
    resid = y - (slope * x + icept)
    return float(slope), 1.0 - float((resid**2).sum()) / float(((y - y.mean()) ** 2).sum())


def ref_bic(sigma: np.ndarray) -> dict[str, float]:
    y = np.log(sigma)
    kk = len(y)
    k = np.arange(1, kk + 1, dtype=float)
    out = {}
    for name, x, p in (("power", np.log(k), 1), ("exponential", k, 1), ("lognormal", np.log(k), 2)):
        coef = np.polyfit(x, y, p)
        rss = float(((y - np.polyval(coef, x)) ** 2).sum())
        out[name] = kk * math.log(rss / kk) + (p + 1) * math.log(kk)
    return out


def ref_pr(x: np.ndarray) -> float:
    return float(x.sum()) ** 2 / float((x**2).sum())


def paper_layers() -> list[dict[str, Any]]:
    doc = json.loads((DATA / "results_alpha_triangle.json").read_text())
    return [dict(layer, experiment=exp["experiment"]) for exp in doc for layer in exp["results"]]


def paper_bics() -> dict[tuple[str, str], dict[str, Any]]:
    doc = json.loads((DATA / "results_model_fit_comparison.json").read_text())
    return {(row["experiment"], row["name"]): row for row in doc["layers"]}


LAYERS = paper_layers()
BICS = paper_bics()
NAMES = {"power_law": "power", "exponential": "exponential", "lognormal": "lognormal"}


# ---------------------------------------------------------------------------------------------------------
# the acceptance vector (docs/SPECTRA.md): ResNet-18 conv1, 64 x 27, top 20


def test_acceptance_vector() -> None:
    layer = LAYERS[0]
    assert (layer["experiment"], layer["name"], layer["shape"]) == ("resnet18_triangle", "conv1", [64, 27])
    fit = ls.fit_spectral(layer["sigma"], layer["h_exact"], top=20, shape=layer["shape"])
    assert fit.alpha == pytest.approx(1.8012, abs=5e-5)
    assert fit.gamma == pytest.approx(1.7297, abs=5e-5)
    assert fit.s == pytest.approx(3.1687, abs=5e-5)
    assert fit.alpha_gamma == pytest.approx(3.1155, abs=5e-5)
    assert fit.rel_err == pytest.approx(0.0168, abs=5e-5)
    assert fit.pr_h == pytest.approx(1.816, abs=5e-4)
    assert fit.bic.winner == "lognormal"
    assert fit.bic.power == pytest.approx(-38.825, abs=5e-4)
    assert fit.bic.exponential == pytest.approx(-53.864, abs=5e-4)
    assert fit.bic.lognormal == pytest.approx(-77.550, abs=5e-4)
    assert fit.pr_bound_n == 27
    assert fit.pr_bound == pytest.approx(ref_pr(np.arange(1.0, 28) ** -fit.alpha_gamma), rel=1e-12)
    assert fit.notes == ()


def test_s_needs_the_sorted_h() -> None:
    """s ranks h in descending order; regressing h in its sigma order gives 3.1314 on conv1 (wrong)."""
    layer = LAYERS[0]
    h = np.asarray(layer["h_exact"])
    k = np.arange(1.0, len(h) + 1)
    unsorted = -ref_slope(np.log(k), np.log(h))[0]
    assert unsorted == pytest.approx(3.1314, abs=5e-5)
    fit = ls.fit_spectral(layer["sigma"], h, top=20)
    assert fit.s == pytest.approx(-ref_slope(np.log(k), np.log(np.sort(h)[::-1]))[0], rel=1e-12)
    assert abs(fit.s - unsorted) > 0.03  # type: ignore[operator]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda r: f"{r['experiment']}:{r['name']}")
def test_paper_b_layer(layer: dict[str, Any]) -> None:
    """Every published alpha, gamma, s, alpha gamma, transfer error and R^2 from the layer's sigma and h."""
    sigma, h = np.asarray(layer["sigma"]), np.asarray(layer["h_exact"])
    assert len(sigma) == layer["top_k"]
    fit = ls.fit_spectral(sigma, h, top=20, shape=layer["shape"])
    tol = {"rel": 1e-9, "abs": 1e-12}  # the same formulas in float64 (the design asks 1e-3)
    assert fit.gamma == pytest.approx(layer["gamma"], **tol)
    assert fit.alpha == pytest.approx(layer["alpha"], **tol)
    assert fit.s == pytest.approx(layer["s_hessian"], **tol)
    assert fit.alpha_gamma == pytest.approx(layer["predicted_s"], **tol)
    assert fit.rel_err == pytest.approx(layer["triangle_relative_error"], **tol)
    assert fit.rel_err * fit.s == pytest.approx(layer["triangle_error"], **tol)  # type: ignore[operator]
    assert fit.r2_gamma == pytest.approx(layer["r2_gamma"], **tol)
    assert fit.r2_alpha == pytest.approx(layer["r2_alpha"], **tol)
    assert fit.r2_s == pytest.approx(layer["r2_s_hessian"], **tol)
    assert fit.pr_h == pytest.approx(ref_pr(h), rel=1e-12)
    assert fit.pr_bound_n == min(layer["shape"])
    assert fit.pr_bound == pytest.approx(ref_pr(np.arange(1.0, min(layer["shape"]) + 1) ** -fit.alpha_gamma))

    published = BICS[(layer["experiment"], layer["name"])]
    assert fit.bic.winner == NAMES[published["best_model_bic"]]
    fits = published["fits"]
    for ours, theirs in (("power", "power_law"), ("exponential", "exponential"), ("lognormal", "lognormal")):
        assert fits[theirs]["valid"] and fits[theirs]["n"] == len(sigma) == fit.bic.n
        assert getattr(fit.bic, ours) == pytest.approx(fits[theirs]["bic"], rel=1e-9)
    assert fit.bic.power_coef == pytest.approx((fits["power_law"]["log_c"], fits["power_law"]["gamma"]))
    assert fit.bic.exponential_coef == pytest.approx(
        (fits["exponential"]["log_c"], fits["exponential"]["beta"])
    )
    ln = fits["lognormal"]  # published `a` multiplies (log k)^2, `b` multiplies log k
    assert fit.bic.lognormal_coef == pytest.approx((ln["log_c"], ln["b"], ln["a"]))
    ref = ref_bic(sigma)
    assert (fit.bic.power, fit.bic.exponential, fit.bic.lognormal) == pytest.approx(
        (ref["power"], ref["exponential"], ref["lognormal"]), rel=1e-9
    )


def test_paper_b_summary_counts() -> None:
    winners = [ls.bic_profiles(r["sigma"], top=20).winner for r in LAYERS]
    assert len(winners) == 24
    assert (winners.count("power"), winners.count("exponential"), winners.count("lognormal")) == (1, 2, 21)


# ---------------------------------------------------------------------------------------------------------
# laws


descending = st.lists(st.floats(1e-6, 1e6), min_size=3, max_size=40).map(lambda v: sorted(v, reverse=True))


@given(sigma=descending, c=st.floats(1e-8, 1e8), extra=st.floats(0.0, 10.0))
def test_scale_invariance(sigma: list[float], c: float, extra: float) -> None:
    """gamma, BIC differences, PR, stable rank, top-2 energy, gap and residual do not change when G -> c G."""
    s = np.asarray(sigma)
    frob = float((s**2).sum()) * (1.0 + extra)  # a tail beyond the recorded values
    a, b = ls.readouts(s, frob), ls.readouts(c * s, c * c * frob)
    for key in ("gamma", "participation_ratio", "stable_rank", "top2_energy", "gap_23", "rank_two_residual"):
        assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-9, nan_ok=True), key
    # log c shifts every intercept, not the residuals: BICs unchanged (where no fit is exact to rounding,
    # whose RSS is floored on the scale of log sigma)
    kk = min(len(s), 20)
    keys = ("bic_power", "bic_exponential", "bic_lognormal")
    if kk >= 4 and min(a[k] for k in keys) > kk * math.log(1e-8 / kk) + 3 * math.log(kk):
        for key in (*keys, "bic_winner"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), key


@given(g=st.floats(0.05, 4.0), c=st.floats(1e-6, 1e6), n=st.integers(3, 40))
def test_exact_power_law(g: float, c: float, n: int) -> None:
    s = c * np.arange(1.0, n + 1) ** -g
    gamma, r2 = ls.gamma_fit(s, top=n)
    assert gamma == pytest.approx(g, rel=1e-9)
    assert r2 == pytest.approx(1.0, abs=1e-12)
    if n >= 4:
        assert ls.bic_profiles(s, top=n).winner == "power"  # log-normal fits as well, with one more parameter


@given(b=st.floats(0.01, 2.0), c=st.floats(1e-3, 1e3), n=st.integers(4, 40))
def test_exact_exponential_wins(b: float, c: float, n: int) -> None:
    s = c * np.exp(-b * np.arange(1.0, n + 1))
    bic = ls.bic_profiles(s, top=n)
    assert bic.winner == "exponential"
    assert bic.exponential_coef[1] == pytest.approx(b, rel=1e-8)


@given(g=st.floats(0.2, 3.0), alpha=st.floats(0.3, 3.0), n=st.integers(3, 30))
def test_transfer_identity_is_exact_on_exact_laws(g: float, alpha: float, n: int) -> None:
    """sigma_k = k^-g and h_k = sigma_k^alpha give alpha, gamma and s = alpha gamma exactly."""
    s = np.arange(1.0, n + 1) ** -g
    fit = ls.fit_spectral(s, s**alpha, top=n, shape=(n + 5, 4 * n))
    assert (fit.gamma, fit.alpha, fit.s) == pytest.approx((g, alpha, alpha * g), rel=1e-9)
    assert fit.rel_err == pytest.approx(0.0, abs=1e-9)
    assert fit.pr_h == pytest.approx(ref_pr(s**alpha), rel=1e-12)
    assert fit.pr_bound == pytest.approx(ref_pr(np.arange(1.0, n + 6) ** -(alpha * g)), rel=1e-9)


def test_readouts_of_a_known_spectrum() -> None:
    s = np.array([4.0, 2.0, 1.0, 0.5])
    frob = 16 + 4 + 1 + 0.25 + 3.75  # 25: a tail of 3.75 beyond the recorded values
    r = ls.readouts(s, frob, top=20)
    assert set(r) == set(ls.READOUT_KEYS)
    assert r["gamma"] == pytest.approx(-ref_slope(np.log([1.0, 2, 3, 4]), np.log(s))[0])
    assert r["participation_ratio"] == pytest.approx(21.25**2 / (256 + 16 + 1 + 0.0625))
    assert r["stable_rank"] == pytest.approx(25 / 16)
    assert r["top2_energy"] == pytest.approx(20 / 25)
    assert r["gap_23"] == pytest.approx(2.0)
    assert r["rank_two_residual"] == pytest.approx(0.25)
    assert ls.PROFILES[int(r["bic_winner"])] == ls.bic_profiles(s).winner
    assert ls.participation_ratio(s) == r["participation_ratio"]
    assert ls.stable_rank(s, frob) == r["stable_rank"]
    assert ls.top2_energy(s, frob) == r["top2_energy"]
    assert ls.gap_23(s) == r["gap_23"] and ls.rank_two_residual(s) == r["rank_two_residual"]


def test_degenerate_spectra() -> None:
    # rank two exactly: zeros are left out of the logs; the gap is infinite
    s = np.array([3.0, 1.0, 0.0, 0.0, 0.0])
    r = ls.readouts(s, 10.0)
    assert math.isnan(r["gamma"]) and math.isnan(r["bic_winner"]) and math.isnan(r["bic_power"])
    assert r["gap_23"] == math.inf and r["rank_two_residual"] == 0.0 and r["top2_energy"] == 1.0
    fit = ls.fit_spectral(s, np.array([1.0, 0.5, 0.1, -0.1, 0.0]))
    assert math.isnan(fit.gamma) and math.isnan(fit.alpha) and fit.bic.winner is None  # type: ignore[arg-type]
    assert fit.s == pytest.approx(-ref_slope(np.log([1.0, 2, 3]), np.log([1.0, 0.5, 0.1]))[0])
    assert any(n.startswith("gamma:") for n in fit.notes) and any(n.startswith("alpha:") for n in fit.notes)
    # all zero: every ratio undefined
    z = ls.readouts(np.zeros(5), 0.0)
    assert all(math.isnan(z[k]) for k in ls.READOUT_KEYS)
    # too few values for gap and residual; three positive values: gamma yes, BIC no
    two = ls.readouts(np.array([2.0, 1.0]), 5.0)
    assert math.isnan(two["gap_23"]) and math.isnan(two["rank_two_residual"]) and two["top2_energy"] == 1.0
    three = ls.fit_spectral([3.0, 2.0, 1.0])
    assert not math.isnan(three.gamma) and three.bic.winner is None and three.alpha is None
    # passive fit: curvature fields are None
    assert ls.fit_spectral(np.arange(10.0, 0, -1)).pr_bound is None


def test_trend() -> None:
    steps = np.array([0, 100, 200, 300, 400])
    assert ls.trend(steps, 0.5 + 2e-3 * steps) == pytest.approx(2.0)
    assert ls.trend(steps, [1.0, np.nan, 1.2, 1.3, np.nan]) == pytest.approx(
        1000 * np.polyfit([0, 200, 300], [1.0, 1.2, 1.3], 1)[0]
    )
    assert ls.trend(steps, 5 - 0.01 * steps, per=1) == pytest.approx(-0.01)
    assert math.isnan(ls.trend(steps, [np.nan, 1.0, np.nan, np.nan, np.nan]))
    assert math.isnan(ls.trend([7, 7, 7], [1.0, 2.0, 3.0]))


def test_pr_of_power_law() -> None:
    assert ls.pr_of_power_law(0.0, 50) == pytest.approx(50.0)
    assert ls.pr_of_power_law(2.0, 1) == 1.0
    assert ls.pr_of_power_law(1.0, 4) == pytest.approx(ref_pr(1 / np.arange(1.0, 5)))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ls.gamma_fit([1.0, 2.0, 3.0]), "descending"),
        (lambda: ls.gamma_fit([3.0, -1.0, -2.0]), "negative"),
        (lambda: ls.gamma_fit([3.0, np.nan, 1.0]), "NaN or Inf at index 1"),
        (lambda: ls.gamma_fit(np.ones((3, 3))), "1-D"),
        (lambda: ls.gamma_fit([3.0, 2.0, 1.0], top=2), "top=2"),
        (lambda: ls.fit_spectral([3.0, 2.0, 1.0], [1.0, 2.0]), "h has 2 values and sigma 3"),
        (lambda: ls.fit_spectral([3.0, 2.0, 1.0], shape=(2, 8)), "at most 2"),
        (lambda: ls.fit_spectral([3.0, 2.0, 1.0], shape=(8,)), "ndim >= 2"),
        (lambda: ls.stable_rank([3.0, 2.0, 1.0], -1.0), "negative"),
        (lambda: ls.top2_energy([3.0, 2.0, 1.0], math.inf), "frob_sq"),
        (lambda: ls.trend([1, 2], [1.0, 2.0, 3.0]), "differ in shape"),
    ],
)
def test_usage_errors(call: Any, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        call()
