"""`finalize`: the merged state of a whole analysis range (fold.Partial) -> the AnalysisResult (plain data).

Everything that is not a sum happens here, once: kappa and its interval from the per-coordinate error sums,
the eigenvalues of each scope's increment Gram (or sketch) and of its nested sub-blocks, r*(eps), the
windows' spectra that a segment boundary left raw, the warnings.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gradmanifold import spectrum as sp
from gradmanifold.analysis import eps_key
from gradmanifold.predictors import EMA, Predictor
from gradmanifold.report.model import (
    AnalysisResult,
    BestEma,
    Bounds,
    NestedRank,
    RankResult,
    RunConfig,
    ScopeResult,
    StoreSummary,
    WindowResult,
    WindowScope,
)

if TYPE_CHECKING:
    from gradmanifold.analysis import _Plan
    from gradmanifold.fold import Partial, ScopePart


def finalize(
    plan: _Plan, store: StoreSummary, whole: Partial, updates: dict[str, Any] | None = None
) -> AnalysisResult:
    """The AnalysisResult of a plan from the state of its whole row range and every scope.

    Parameters: plan: the analysis plan; store: the source's summary; whole: the merged Partial of rows
    [plan.lo, plan.hi) holding every scope; updates: the update statistics computed apart (a segmented run),
    else those the pass carried (whole.updates).
    """
    cfg = plan.cfg
    upd = updates if updates is not None else whole.updates
    levels = sp.nested_levels(store.k)
    scopes = {
        name: _scope(plan, whole.scopes[s], name, levels, store.k, upd["run"][s] if upd else None)
        for s, name in enumerate(plan.scope_names)
    }
    if plan.alias is not None:
        scopes[plan.alias] = replace(scopes["model"], name=plan.alias)
    damaged = [ex.describe() for ex in whole.skipped]
    warnings: list[str] = []
    for name, sc in ((n, scopes[n]) for n in plan.scope_names):  # an alias repeats the model
        nested = sc.rank.nested
        if not nested.k_enough:
            ks = ",".join(str(kk) for kk in nested.ks)
            moves = ", ".join(
                f"r*({e}) " + "->".join("?" if r is None else str(r) for r in nested.r_star[e])
                for e in nested.moving
            )
            warnings.append(
                f"{name}: r* still grows with k ({moves} at k = {ks}); a sketch biases r* low when the "
                f"increment spectrum is flat: record with k >= {nested.suggested_k}"
            )
        unresolved = [e for e, r in sc.rank.r_star.items() if r is None]
        if unresolved:
            warnings.append(
                f"{name}: r*({', '.join(unresolved)}) exceeds the sketch rank {plan.sketch_rank}; "
                "rerun with a larger --sketch-rank or --svd exact"
            )
        if sc.excluded_steps:
            what = "flagged or damaged" if damaged else "flagged"
            warnings.append(f"{name}: {sc.excluded_steps} {what} step(s) excluded")
    for desc in damaged:
        warnings.append(f"damaged {desc}: left out (--skip-corrupt)")
    config = RunConfig(
        predictors=tuple(p.id for p in plan.predictors[: plan.n_report]),
        ema_grid=tuple(b for b, _ in plan.grid),
        eps=plan.eps,
        window=cfg.window,
        svd=cfg.svd,
        svd_method=plan.method,
        sketch_rank=plan.sketch_rank,
        start_step=cfg.start_step,
        stop_step=cfg.stop_step,
        burn_in=int(cfg.burn_in),
        modules=cfg.modules,
        groups=tuple(store.groups[g].name for g in plan.sel),
        first_step=whole.first_step if whole.first_step is not None else 0,
        last_step=whole.last_step if whole.last_step is not None else 0,
        n_rows=plan.hi - plan.lo,
    )
    windows = _windows(plan, whole, upd) if cfg.window is not None else ()
    return AnalysisResult(
        store=store, config=config, scopes=scopes, windows=windows, warnings=tuple(warnings)
    )


def _windows(plan: _Plan, whole: Partial, upd: dict[str, Any] | None) -> tuple[WindowResult, ...]:
    """Every window: the last one ends with the stream; a range with no counted rows present has one empty
    window (as one pass reports it)."""
    from gradmanifold.fold import WindowPart, settle
    from gradmanifold.kernels.stream import WindowStats

    parts = list(whole.windows)
    if parts and not parts[-1].ends:
        parts[-1] = settle(parts[-1])
    if not parts:
        empty = WindowStats(0, whole.scopes[0].acc.sum(axis=1) * 0.0, None, 0.0)
        parts = [WindowPart(0, None, 0, 0, True, True, dict.fromkeys(whole.scopes, empty))]
    out = []
    for w, part in enumerate(parts):
        scopes = {}
        for s, name in enumerate(plan.scope_names):
            st = part.stats[s]
            den = float(st.sums[0])
            kappa = {
                p.id: (float(st.sums[i]) / den if den > 0.0 else None)
                for i, p in enumerate(plan.predictors[: plan.n_report])
            }
            r_star = {
                eps_key(e): (sp.r_star(st.eigs, st.total, e) if st.eigs is not None else None)
                for e in plan.eps
            }
            u = upd["windows"][w][s] if upd is not None else None
            scopes[name] = WindowScope(n_steps=st.n_steps, kappa=kappa, r_star=r_star, updates=u)
        if plan.alias is not None:
            scopes[plan.alias] = scopes["model"]
        first = part.first_step if part.first_step is not None else 0
        out.append(
            WindowResult(
                index=w, start_step=first, end_step=part.last_step, n_rows=part.n_rows, scopes=scopes
            )
        )
    return tuple(out)


def _scope(
    plan: _Plan, st: ScopePart, name: str, levels: tuple[int, ...], k: int, updates: Any
) -> ScopeResult:
    acc = st.acc
    n = st.count
    exact = st.exact_sq
    den = float(acc[0].sum())
    path_length: dict[str, float] = {}
    kappa: dict[str, float] = {}
    interval: dict[str, tuple[float, float]] = {}
    for i, p in enumerate(plan.predictors[: plan.n_report]):
        num = float(acc[i].sum()) if i else den  # the same float: kappa(zero) == 1 exactly
        path_length[p.id] = num
        kappa[p.id] = num / den if den > 0.0 else math.nan
        if i == 0:
            interval[p.id] = (kappa[p.id], kappa[p.id])
        else:
            interval[p.id] = sp.kappa_interval(acc[i], acc[0], exact if exact > 0.0 else None)
    best = None
    if plan.grid:
        ks = [(float(acc[i].sum()) / den if den > 0.0 else math.nan, b) for b, i in plan.grid]
        kb, bb = min(ks, key=lambda t: math.inf if math.isnan(t[0]) else t[0])
        best = BestEma(beta=bb, kappa=kb)
    candidates = [(v, pid) for pid, v in kappa.items() if not math.isnan(v)]
    if best is not None and not math.isnan(best.kappa):
        candidates.append((best.kappa, Predictor(EMA, best.beta).id))
    kmin, kpid = min(candidates) if candidates else (math.nan, "zero")
    bounds = Bounds(
        sqrt_min_kappa=math.sqrt(kmin) if not math.isnan(kmin) else math.nan,
        min_kappa_predictor=kpid,
        min_avg_proxy_error=kmin * den / n if n else math.nan,
        avg_proxy_error={pid: v / n if n else math.nan for pid, v in path_length.items()},
    )
    return ScopeResult(
        name=name,
        n_steps=n,
        excluded_steps=st.excluded,
        path_length=path_length,
        kappa=kappa,
        kappa_interval=interval,
        projection_distortion=den / exact if exact > 0.0 else None,
        distortion_rel_error=sp.relative_error(acc[0]),
        rank=_rank(plan, st, levels, k),
        bounds=bounds,
        best_ema=best,
        updates=updates,
    )


def _rank(plan: _Plan, st: ScopePart, levels: tuple[int, ...], k: int) -> RankResult:
    main = st.main
    eigs, total = main.eigenvalues(), main.frobenius_sq
    by_level: dict[str, list[int | None]] = {eps_key(e): [] for e in plan.eps}
    for kk in levels:
        if kk == k:
            le, lt = eigs, total
        elif plan.method == "exact":
            le = main.eigenvalues(kk)
            lt = main.leading_trace(kk)  # type: ignore[union-attr]
        else:
            sub = st.sub[kk]
            le, lt = sub.eigenvalues(), sub.frobenius_sq
        for e in plan.eps:
            by_level[eps_key(e)].append(sp.r_star(le, lt, e))
    k_enough, suggested, moving = sp.nested_verdict(levels, by_level)
    return RankResult(
        method=plan.method,
        n_increments=main.n_rows,
        frobenius_sq=total,
        r_star={eps_key(e): sp.r_star(eigs, total, e) for e in plan.eps},
        tail=tuple(float(v) for v in sp.tail_fractions(eigs, total)),
        participation_ratio=sp.participation_ratio(eigs),
        top_energy=sp.top_energy(eigs, total),
        nested=NestedRank(
            ks=levels,
            r_star={e: tuple(v) for e, v in by_level.items()},
            k_enough=k_enough,
            suggested_k=suggested,
            moving=tuple(moving),
        ),
    )
