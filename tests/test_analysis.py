"""The engine against the plain float64 reference; planted truths; chunking and window invariance."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import reference as ref
from hypothesis import given
from hypothesis import strategies as st

from gradmanifold.analysis import AnalysisConfig, analyze
from gradmanifold.errors import EmptyStoreError, UsageError
from gradmanifold.store.chunk import ArraySource

PREDICTORS = ("zero", "last", "ema:0.9", "ema:0.99", "trend")


def _data(seed: int, t: int = 300, g: int = 3, k: int = 16, flag_rate: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((g, k))
    walk = np.cumsum(0.3 * rng.standard_normal((t, g, k)), axis=0)
    proj = (mu + walk + rng.standard_normal((t, g, k))).astype(np.float32)
    sqnorm = (proj.astype(np.float64) ** 2).sum(axis=2) * rng.uniform(0.8, 1.2, (t, g))
    flags = (rng.random((t, g)) < flag_rate).astype(np.uint8)
    return {"proj": proj, "sqnorm": sqnorm, "flags": flags}


def _source(d: dict[str, np.ndarray], chunk_rows: int = 64) -> ArraySource:
    return ArraySource(d["proj"], d["sqnorm"], flags=d["flags"], chunk_rows=chunk_rows)


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


@pytest.mark.parametrize(("flag_rate", "burn_in"), [(0.0, 0), (0.05, 0), (0.0, 7), (0.08, 11)])
def test_every_number_against_the_reference(flag_rate: float, burn_in: int) -> None:
    d = _data(1, flag_rate=flag_rate)
    res = analyze(_source(d), burn_in=burn_in)
    want = ref.reference_analysis(d["proj"], d["flags"], burn_in=burn_in, sqnorm=d["sqnorm"])
    assert list(res.scopes) == ["model", "g0", "g1", "g2"]
    for name, w in want.items():
        sc = res.scopes[name]
        assert sc.n_steps == w["n_steps"]
        assert sc.excluded_steps == w["excluded_steps"]
        for p in PREDICTORS:
            assert _close(sc.path_length[p], w["path_length"][p]), (name, p)
            assert _close(sc.kappa[p], w["kappa"][p]), (name, p)
        assert _close(sc.projection_distortion or 0.0, w["projection_distortion"])
        rk = sc.rank
        assert rk.n_increments == (w["n_steps"] - (1 if burn_in == 0 else 0))
        assert _close(rk.frobenius_sq, w["frobenius_sq"])
        assert dict(rk.r_star) == w["r_star"]
        np.testing.assert_allclose(rk.tail, w["tail"], rtol=1e-8, atol=1e-12)
        assert _close(rk.participation_ratio, w["participation_ratio"], 1e-8)
        s2 = w["s2"]
        for n, v in rk.top_energy.items():
            assert _close(v, float(s2[: int(n)].sum() / s2.sum()), 1e-8)


def test_zero_is_exactly_one_and_first_term_is_g0() -> None:
    # Two steps by hand: m_0 = 0 for every predictor, m_1 = g_0 for last and trend, (1 - b) g_0 for EMA.
    g = np.array([[[3.0, 4.0]], [[6.0, 8.0]]], dtype=np.float32)
    res = analyze(ArraySource(g, np.zeros((2, 1))), ema_grid=())
    sc = res.model
    assert sc.kappa["zero"] == 1.0
    assert sc.path_length["zero"] == 25.0 + 100.0
    assert sc.path_length["last"] == 25.0 + 25.0
    assert sc.path_length["trend"] == 25.0 + 25.0
    assert _close(sc.path_length["ema:0.9"], 25.0 + (6 - 0.3) ** 2 + (8 - 0.4) ** 2, 1e-12)
    assert sc.projection_distortion is None


def test_flagged_rows_are_dropped_from_the_stream() -> None:
    d = _data(2, t=120, g=2, k=8)
    d["flags"][[5, 6, 40], 1] = 1
    res = analyze(_source(d, 17))
    assert res.scopes["g1"].excluded_steps == 3
    assert res.scopes["model"].excluded_steps == 3
    assert res.scopes["g0"].excluded_steps == 0
    # g1 equals the same analysis on the stream without the flagged rows.
    keep = np.ones(120, bool)
    keep[[5, 6, 40]] = False
    alone = analyze(ArraySource(d["proj"][keep][:, [1]], d["sqnorm"][keep][:, [1]]))
    for p in PREDICTORS:
        assert res.scopes["g1"].kappa[p] == pytest.approx(alone.scopes["g0"].kappa[p], rel=1e-12)
    assert any("3 flagged" in w for w in res.warnings)


@given(chunk_rows=st.integers(1, 97), seed=st.integers(0, 3))
def test_chunk_size_invariance(chunk_rows: int, seed: int) -> None:
    d = _data(seed, t=150, g=2, k=8, flag_rate=0.03)
    base = analyze(_source(d, 150), burn_in=3, window=40)
    other = analyze(_source(d, chunk_rows), burn_in=3, window=40)
    for name, sc in base.scopes.items():
        o = other.scopes[name]
        for p in PREDICTORS:  # per-coordinate sums in row order: identical with the compiled kernel
            assert _close(sc.path_length[p], o.path_length[p], 1e-12)
        assert _close(sc.rank.frobenius_sq, o.rank.frobenius_sq, 1e-12)
        np.testing.assert_allclose(sc.rank.tail, o.rank.tail, rtol=1e-12, atol=1e-13)
        assert sc.rank.r_star == o.rank.r_star
    for wa, wb in zip(base.windows, other.windows, strict=True):
        for p in PREDICTORS:
            assert _close(wa.scopes["model"].kappa[p] or 0.0, wb.scopes["model"].kappa[p] or 0.0, 1e-12)
        assert wa.scopes["model"].r_star == wb.scopes["model"].r_star


def test_windows_match_reference_and_add_up() -> None:
    d = _data(3, t=230, g=2, k=8, flag_rate=0.04)
    res = analyze(_source(d, 33), window=50, burn_in=5)
    want = ref.reference_analysis(d["proj"], d["flags"], burn_in=5, window=50)
    assert len(res.windows) == len(want["model"]["windows"]) == 5
    assert [w.n_rows for w in res.windows] == [50, 50, 50, 50, 25]
    steps = np.arange(230)
    assert res.windows[0].start_step == 5 and res.windows[-1].end_step == int(steps[-1])
    for name in res.scopes:
        total = dict.fromkeys(PREDICTORS, 0.0)
        for w, ww in zip(res.windows, want[name]["windows"], strict=True):
            got = w.scopes[name]
            for p in PREDICTORS:
                assert _close(got.kappa[p] or 0.0, ww["kappa"][p] or 0.0), (name, p)
                total[p] += (got.kappa[p] or 0.0) * ww["path_length"]["zero"]
            assert dict(got.r_star) == ww["r_star"]
        for p in PREDICTORS:  # window path lengths add up to the global ones
            assert _close(total[p], res.scopes[name].path_length[p], 1e-10)


def test_step_range_starts_a_fresh_stream() -> None:
    d = _data(4, t=200, g=1, k=8)
    steps = np.arange(200) * 10
    src = ArraySource(d["proj"], d["sqnorm"], step=steps, chunk_rows=32)
    res = analyze(src, start_step=500, stop_step=1500)
    assert (res.config.first_step, res.config.last_step, res.config.n_rows) == (500, 1490, 100)
    sub = d["proj"][50:150]
    for p in PREDICTORS:
        assert _close(res.model.kappa[p], ref.kappa(sub[:, 0], p))


def test_group_selection_and_model_is_their_sum() -> None:
    d = _data(5, t=100, g=4, k=8)
    src = ArraySource(d["proj"], d["sqnorm"], group_names=["a", "b", "c", "d"])
    res = analyze(src, groups=("d,b",))
    assert list(res.scopes) == ["model", "b", "d"]
    x = d["proj"][:, 1].astype(np.float64) + d["proj"][:, 3]
    assert _close(res.model.kappa["last"], ref.kappa(x, "last"))


# ------------------------------------------------------------------------------------------- planted truths


def test_white_noise_plus_mean_closed_forms() -> None:
    # g_t = mu + xi_t; q = ||mu||^2 / E||g||^2 = 1/3: kappa(last) = 2(1-q), ema b: 2/(1+b)(1-q), trend 6(1-q).
    rng = np.random.default_rng(11)
    t, k = 40_000, 32
    mu = rng.standard_normal(k)
    mu *= math.sqrt(0.5 * k) / np.linalg.norm(mu)  # ||mu||^2 = k / 2, E||xi||^2 = k
    g = (mu + rng.standard_normal((t, k))).astype(np.float32)
    res = analyze(g, predictors=("last", "ema:0.5", "ema:0.9", "trend"), ema_grid=())
    q = 1.0 / 3.0
    kap = res.model.kappa
    assert kap["last"] == pytest.approx(2 * (1 - q), rel=0.02)
    assert kap["ema:0.5"] == pytest.approx(2 / 1.5 * (1 - q), rel=0.02)
    assert kap["ema:0.9"] == pytest.approx(2 / 1.9 * (1 - q), rel=0.03)
    assert kap["trend"] == pytest.approx(6 * (1 - q), rel=0.02)
    # A mean-free stream has a flat increment spectrum: at k = 32 r*(0.1) is near k and k is "not enough".
    assert res.model.rank.r_star["0.1"] >= 24
    assert not res.model.rank.nested.k_enough


def test_planted_rank_increments() -> None:
    rng = np.random.default_rng(12)
    t, k, r = 2000, 64, 5
    basis = np.linalg.qr(rng.standard_normal((k, r)))[0]
    steps = rng.standard_normal((t, r)) * np.array([5.0, 4.0, 3.0, 2.0, 1.5])
    g = np.cumsum(steps @ basis.T, axis=0) + rng.standard_normal(k) * 10
    res = analyze(g.astype(np.float32), eps=(0.1, 0.01, 0.001))
    rk = res.model.rank
    assert rk.r_star["0.001"] == r  # float32 rounding of g leaves ~1e-12 of the energy outside the rank
    assert rk.r_star["0.01"] <= r
    assert rk.tail[r] < 1e-6
    assert rk.nested.k_enough  # a low-rank spectrum: r* is the same at k/4, k/2, k


def test_random_walk() -> None:
    # g_t = g_{t-1} + xi_t: the increments are white (flat spectrum), `last` is near-perfect relative to
    # the growing norms, and the trend error h_t - h_{t-1} has twice the increment energy.
    rng = np.random.default_rng(13)
    g = np.cumsum(rng.standard_normal((5000, 16)), axis=0).astype(np.float32)
    res = analyze(g, ema_grid=())
    sc = res.model
    assert sc.kappa["last"] < 0.01
    assert sc.kappa["trend"] == pytest.approx(2 * sc.kappa["last"], rel=0.1)
    assert sc.rank.participation_ratio > 12  # flat: close to k = 16


def test_randomized_matches_exact_on_decaying_spectrum() -> None:
    rng = np.random.default_rng(14)
    t, k = 3000, 256
    scales = 2.0 ** -np.arange(k / 4, step=0.25)  # fast decay
    h = rng.standard_normal((t, k)) * scales
    g = np.cumsum(h @ np.linalg.qr(rng.standard_normal((k, k)))[0], axis=0).astype(np.float32)
    exact = analyze(g, svd="exact", ema_grid=())
    rand = analyze(g, svd="randomized", sketch_rank=64, ema_grid=())
    assert rand.config.svd_method == "randomized"
    assert rand.model.rank.r_star == exact.model.rank.r_star
    assert rand.model.rank.frobenius_sq == pytest.approx(exact.model.rank.frobenius_sq, rel=1e-12)
    np.testing.assert_allclose(rand.model.rank.tail[:20], exact.model.rank.tail[:20], atol=1e-3)
    assert rand.model.kappa == exact.model.kappa  # kappa does not depend on the spectrum method


def test_auto_picks_randomized_beyond_the_exact_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import gradmanifold.analysis as analysis

    monkeypatch.setattr(analysis, "EXACT_MAX_K", 8)
    g = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    assert analyze(g).config.svd_method == "randomized"
    assert analyze(g, svd="exact").config.svd_method == "exact"


def test_kappa_interval_covers_the_full_dimensional_value() -> None:
    # Full-dimensional gradients (d = 4000), a random Gaussian projection to k = 128: the interval reported
    # around the projected kappa must hold the exact kappa for most seeds, with and without exact norms.
    d, t, k = 4000, 200, 128
    misses = {"ratio": 0, "with exact norms": 0}
    width = {"ratio": 0.0, "with exact norms": 0.0}
    for seed in range(10):
        rng = np.random.default_rng(100 + seed)
        mu = rng.standard_normal(d)
        full = mu + np.cumsum(0.2 * rng.standard_normal((t, d)), axis=0) + rng.standard_normal((t, d))
        r = rng.standard_normal((k, d)) / math.sqrt(k)
        z = (full @ r.T).astype(np.float32)
        sources = {
            "ratio": ArraySource(z, np.zeros((t, 1))),
            "with exact norms": ArraySource(z, (full**2).sum(axis=1)),
        }
        for how, src in sources.items():
            res = analyze(src, ema_grid=())
            for p in ("last", "ema:0.9", "trend"):
                lo, hi = res.model.kappa_interval[p]
                exact = ref.kappa(full, p)
                misses[how] += not lo <= exact <= hi
                width[how] += (hi - lo) / exact
    assert misses["ratio"] <= 1 and misses["with exact norms"] <= 1, misses
    assert width["with exact norms"] < width["ratio"]


# ---------------------------------------------------------------------------------------------- bad input


def test_too_few_steps() -> None:
    one = np.zeros((1, 1, 4), np.float32)
    with pytest.raises(EmptyStoreError, match="at least 2"):
        analyze(one)
    with pytest.raises(EmptyStoreError, match="burn-in"):
        analyze(np.zeros((5, 4), np.float32), burn_in=4)
    with pytest.raises(EmptyStoreError, match="step range"):
        analyze(np.zeros((5, 4), np.float32), start_step=4)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"predictors": ("lasst",)}, "unknown predictor 'lasst'"),
        ({"predictors": ("ema:1.5",)}, "outside"),
        ({"eps": (0.1, 1.0)}, r"outside \(0, 1\)"),
        ({"eps": (0.0,)}, r"outside \(0, 1\)"),
        ({"groups": ("nope",)}, "unknown group"),
        ({"window": 1}, "window"),
        ({"svd": "qr"}, "unknown svd"),
        ({"burn_in": -1}, "negative"),
        ({"start_step": 5, "stop_step": 5}, "not after"),
        ({"ema_grid": (1.0,)}, "ema-grid"),
        ({"colour": "red"}, "unknown analysis option"),
    ],
)
def test_bad_options(options: dict[str, object], match: str) -> None:
    g = np.zeros((10, 4), np.float32)
    with pytest.raises(UsageError, match=match):
        analyze(g, **options)  # type: ignore[arg-type]


def test_config_object_and_overrides() -> None:
    g = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    cfg = AnalysisConfig(predictors=("last",), eps=(0.1,))
    res = analyze(g, cfg, window=20)
    assert res.config.predictors == ("zero", "last")
    assert res.config.eps == (0.1,)
    assert len(res.windows) == 2


def test_read_errors_propagate() -> None:
    class Broken(ArraySource):
        def iter_chunks(self, *a, **kw):  # type: ignore[no-untyped-def]
            it = super().iter_chunks(*a, **kw)
            yield next(it)
            raise OSError("disk went away")

    g = np.zeros((100, 1, 4), np.float32)
    with pytest.raises(OSError, match="disk went away"):
        analyze(Broken(g, np.zeros((100, 1)), chunk_rows=10))


def test_lanes_give_identical_results() -> None:
    d = _data(6, t=300, g=4, k=8, flag_rate=0.02)
    runs = [analyze(_source(d, 50), workers=w, window=70, burn_in=4) for w in (1, 2, 3, 8)]
    for other in runs[1:]:
        assert other.scopes == runs[0].scopes
        assert other.windows == runs[0].windows


def test_a_failing_lane_stops_the_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradmanifold.kernels import stream

    original = stream.Lane.feed
    calls = {"n": 0}

    def feed(self, *args):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if 0 in self.ids.tolist() and calls["n"] > 3:
            raise FloatingPointError("kernel blew up")
        return original(self, *args)

    monkeypatch.setattr(stream.Lane, "feed", feed)
    d = _data(7, t=400, g=3, k=8)
    with pytest.raises(FloatingPointError, match="blew up"):
        analyze(_source(d, 10), workers=2)


def test_projected_versus_exact_through_the_recorder(tmp_path: Path) -> None:
    # d = 10^5 parameters in two groups, recorded with the default sparse projection at k = 256: kappa from
    # the store lies within the JL interval reported around it, and r* matches the full-dimensional one.
    from gradmanifold.record import Recorder

    rng = np.random.default_rng(21)
    d, t, r = 100_000, 160, 4
    sizes = {"encoder": 60_000, "decoder": 40_000}
    mu = rng.standard_normal(d)
    basis = np.linalg.qr(rng.standard_normal((d, r)))[0] * math.sqrt(d)
    drift = np.cumsum(rng.standard_normal((t, r)) * np.array([1.0, 0.8, 0.6, 0.5]), axis=0)
    full = np.empty((t, d), np.float32)
    with Recorder(tmp_path / "run.zarr", k=256, seed=5) as rec:
        for step in range(t):
            g = mu + basis @ drift[step] + 0.3 * rng.standard_normal(d)
            full[step] = g
            parts = {"encoder": g[: sizes["encoder"]], "decoder": g[sizes["encoder"] :]}
            rec.record(step, {n: p.astype(np.float32) for n, p in parts.items()})
    res = analyze(tmp_path / "run.zarr", ema_grid=())
    scopes = {"model": full, "encoder": full[:, : sizes["encoder"]], "decoder": full[:, sizes["encoder"] :]}
    assert set(res.scopes) == set(scopes)
    for name, g in scopes.items():
        sc = res.scopes[name]
        assert sc.projection_distortion == pytest.approx(1.0, abs=0.3)
        for p in ("last", "ema:0.9", "ema:0.99", "trend"):
            lo, hi = sc.kappa_interval[p]
            exact = ref.kappa(g, p)
            assert lo <= exact <= hi, (name, p, exact, lo, hi)
            assert hi - lo < 0.5 * exact  # informative, not vacuous
        s2 = ref.spectrum(ref.increments(g))
        for eps in ("0.5", "0.1"):  # inside the planted rank-4 structure: exact
            assert sc.rank.r_star[eps] == ref.r_star(s2, float(eps)), (name, eps)
            assert eps not in sc.rank.nested.moving
        # r*(0.01) reaches into the isotropic noise floor, which k = 256 cannot resolve: it is biased low and
        # the analysis says so (r* still grows from k/2 to k).
        assert sc.rank.r_star["0.01"] < ref.r_star(s2, 0.01)
        assert "0.01" in sc.rank.nested.moving and not sc.rank.nested.k_enough


def test_one_group_is_the_model() -> None:
    d = _data(8, t=90, g=3, k=8, flag_rate=0.05)
    alone = analyze(_source(d), groups=("g1",), window=40)
    assert list(alone.scopes) == ["model", "g1"]
    assert alone.scopes["g1"].kappa == alone.model.kappa
    assert alone.scopes["g1"].name == "g1" and alone.model.name == "model"
    assert alone.windows[0].scopes["g1"] == alone.windows[0].scopes["model"]
    full = analyze(_source(d), window=40)
    for p in PREDICTORS:
        assert _close(alone.model.kappa[p], full.scopes["g1"].kappa[p], 1e-12)
    assert alone.model.excluded_steps == full.scopes["g1"].excluded_steps
