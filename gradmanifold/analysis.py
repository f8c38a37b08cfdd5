"""The streaming analysis engine: a ChunkSource (a store, or arrays) in, an AnalysisResult (plain data) out.

    analyze("run.zarr")                      # defaults: zero, last, ema:0.9, ema:0.99, trend; exact spectrum
    analyze(source, AnalysisConfig(window=500, eps=(0.1,)))
    analyze(proj_array, burn_in=10)          # float32 [T, G, k] or [T, k] in memory (no exact norms)

Scopes: `model` (the sum of the selected groups' projections, in float64, per step) and each selected group.

One pass over the committed rows, chunk by chunk (memory independent of T). For every scope the predictor
state (last three rows, EMA vectors) and the increment rows carry across chunk boundaries, so any chunking
gives the same numbers (per-coordinate sums are added in row order; only the Gram's block products round
differently, at ~1e-15 relative). Chunks are read ahead in a thread while the kernels work; the predictor
kernel runs the scopes in parallel and the Gram products run on BLAS threads, so both cores are busy.

Rows that are not counted or missing:
- `start_step`/`stop_step` select the stream: the first row in the range starts fresh (m = 0 for it).
- `burn_in` N: the first N rows of the range feed the predictors' state but are left out of both sums of
  kappa; increments start at the first counted row (h for it uses the last burn-in row), so P(last) equals
  ||H||_F^2 exactly when N >= 1.
- A row flagged in the store (non-finite or skipped) is missing for each group it is flagged in, and for the
  model when any selected group is flagged. A missing row is dropped from that scope's stream: the predictors
  and the increments treat the rows before and after it as consecutive (the EMA does not decay over it, `last`
  predicts the next row from the last valid one, the increment spans the gap). Missing rows in the counted
  range are reported per scope as `excluded_steps`.
- Windows of W rows cut the counted rows in order (the last window may be shorter). A window's kappa uses the
  errors of the steps in it (predictions carry across windows) and its r* the increments ending in it, so
  window path lengths and Grams add up to the global ones.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from gradmanifold import spectrum as sp
from gradmanifold.errors import EmptyStoreError, UsageError
from gradmanifold.predictors import (
    DEFAULT_EMA_GRID,
    DEFAULT_PREDICTORS,
    EMA,
    ZERO,
    Predictor,
    parse_beta,
    parse_predictors,
)
from gradmanifold.report.model import (
    AnalysisResult,
    BestEma,
    Bounds,
    GroupSummary,
    NestedRank,
    RankResult,
    RunConfig,
    ScopeResult,
    StoreSummary,
    WindowResult,
    WindowScope,
)
from gradmanifold.store.chunk import ArraySource, Chunk, ChunkSource
from gradmanifold.update_pass import UpdatePass

if TYPE_CHECKING:
    from gradmanifold.kernels.stream import Work

DEFAULT_EPS = (0.5, 0.1, 0.05, 0.01)
SVD_METHODS = ("auto", "exact", "randomized")
EXACT_MAX_K = 2048  # `auto` uses the exact Gram up to this k (k^2 / 2 multiply-adds a row), a sketch beyond
DEFAULT_SKETCH_RANK = 512
BUFFER_BYTES = 2 << 20  # increment rows buffered per scope before one Gram product (~1000 rows at k = 256)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AnalysisConfig:
    """Options of `analyze`; validated once by `analyze` (UsageError on a bad value)."""

    predictors: tuple[str, ...] = DEFAULT_PREDICTORS
    ema_grid: tuple[float, ...] = DEFAULT_EMA_GRID
    eps: tuple[float, ...] = DEFAULT_EPS
    window: int | None = None
    svd: str = "auto"
    sketch_rank: int = DEFAULT_SKETCH_RANK
    seed: int = 0  # test matrix of the randomized sketch
    start_step: int | None = None  # first step analyzed (inclusive)
    stop_step: int | None = None  # end of the range (exclusive)
    groups: tuple[str, ...] | None = None  # None: all groups
    burn_in: int = 0
    chunk_rows: int | None = None  # rows per block read (None: the source's natural chunks)
    workers: int | None = None  # threads (None: one per core); scopes are split between them
    skip_corrupt: bool = False  # leave damaged chunks out (as missing rows) instead of failing


def eps_key(eps: float) -> str:
    """The JSON key of an eps value: Python's shortest repr ("0.1", "0.05")."""
    return repr(float(eps))


def analyze(
    source: ChunkSource | str | os.PathLike[str] | np.ndarray,
    config: AnalysisConfig | None = None,
    *,
    progress: Progress | None = None,
    **options: Any,
) -> AnalysisResult:
    """Analyze a store (path or open reader), any ChunkSource, or a float32 [T, G, k] / [T, k] array.

    Keyword options override fields of `config` (see AnalysisConfig). `progress(rows_done, rows_total)` is
    called after each chunk. Raises UsageError for bad options and EmptyStoreError when fewer than two steps
    are counted; opening a path raises the store's errors (StoreNotFoundError, NotAStoreError, ...).
    """
    cfg = config or AnalysisConfig()
    names = {f.name for f in fields(AnalysisConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UsageError(
            f"unknown analysis option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    cfg = replace(cfg, **options)
    src, store = _open_source(source)
    plan = _plan(src, cfg)
    from gradmanifold.kernels.stream import blas_threads

    # One BLAS thread per lane, even for a single lane: BLAS threads that share cores with anything else
    # (the other lane, the reader, a training job) spin and collapse; see blas_threads.
    with blas_threads(1):  # process-wide while the analysis runs
        return _Run(src, plan, progress).run(store)


# ---------------------------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class _Plan:
    cfg: AnalysisConfig
    predictors: tuple[Predictor, ...]  # all computed: reported ones (zero first), then extra grid EMAs
    n_report: int  # the first n_report predictors are reported
    grid: tuple[tuple[float, int], ...]  # (beta, predictor index) of the EMA grid
    eps: tuple[float, ...]
    method: str
    sketch_rank: int | None
    lo: int  # rows [lo, hi) of the range
    hi: int
    count_lo: int  # first counted row (lo + burn_in)
    sel: tuple[int, ...]  # selected group indices (store order)
    scope_names: tuple[str, ...]  # computed scopes: "model", then the groups (only "model" for one group)
    alias: str | None  # a single selected group: its scope is the model's, computed once
    members: np.ndarray
    offsets: np.ndarray
    workers: int


def _open_source(source: Any) -> tuple[ChunkSource, StoreSummary]:
    path: str | None = None
    projection: dict[str, Any] | None = None
    if isinstance(source, np.ndarray):
        arr = source if source.ndim == 3 else source.reshape(source.shape[0], 1, -1)
        if arr.ndim != 3:
            raise UsageError(f"an array to analyze must be [T, G, k] or [T, k], got shape {source.shape}")
        src: ChunkSource = ArraySource(arr, np.zeros(arr.shape[:2]))
    elif isinstance(source, (str, os.PathLike)):
        from gradmanifold.store import open_store

        src = open_store(source)
    else:
        src = source
    if getattr(src, "path", None) is not None:
        path = str(src.path)  # type: ignore[attr-defined]
    spec = getattr(src, "spec", None)
    if spec is not None:
        projection = spec.to_dict()
    groups = tuple(GroupSummary(n, int(s)) for n, s in zip(src.group_names, src.group_sizes, strict=True))
    return src, StoreSummary(path=path, n_steps=src.n_steps, k=src.k, projection=projection, groups=groups)


def _plan(src: ChunkSource, cfg: AnalysisConfig) -> _Plan:
    reported = list(parse_predictors(cfg.predictors))
    zero = Predictor(ZERO)
    if zero in reported:
        reported.remove(zero)
    reported.insert(0, zero)  # always computed: the denominator and the self-test
    betas = sorted({parse_beta(b, what="--ema-grid") for b in cfg.ema_grid})
    preds = list(reported)
    grid = []
    for b in betas:
        p = Predictor(EMA, b)
        if p not in preds:
            preds.append(p)
        grid.append((b, preds.index(p)))

    eps: list[float] = []
    for e in cfg.eps:
        try:
            v = float(e)
        except (TypeError, ValueError):
            raise UsageError(f"eps {e!r} is not a number; give values in (0, 1) such as 0.1") from None
        if not 0.0 < v < 1.0:
            raise UsageError(f"eps {e!r} is outside (0, 1); give values in (0, 1) such as 0.1 or 0.01")
        if v not in eps:
            eps.append(v)
    if not eps:
        raise UsageError("no eps given; use e.g. --eps 0.5,0.1,0.05,0.01")
    if cfg.window is not None and int(cfg.window) < 2:
        raise UsageError(f"window {cfg.window} is too short; give at least 2 steps (e.g. --window 500)")
    if cfg.svd not in SVD_METHODS:
        raise UsageError(f"unknown svd method {cfg.svd!r}; use one of {', '.join(SVD_METHODS)}")
    if int(cfg.sketch_rank) < 1:
        raise UsageError(f"sketch rank {cfg.sketch_rank} must be at least 1")
    if int(cfg.burn_in) < 0:
        raise UsageError(f"burn-in {cfg.burn_in} is negative; give 0 or more steps")
    if cfg.workers is not None and int(cfg.workers) < 1:
        raise UsageError(f"workers {cfg.workers} must be at least 1")
    if cfg.chunk_rows is not None and int(cfg.chunk_rows) < 1:
        raise UsageError(f"chunk rows {cfg.chunk_rows} must be at least 1")
    k = src.k
    method = cfg.svd if cfg.svd != "auto" else ("exact" if k <= EXACT_MAX_K else "randomized")

    names = src.group_names
    if cfg.groups is None:
        sel = tuple(range(len(names)))
    else:
        wanted = [g.strip() for item in cfg.groups for g in str(item).split(",") if g.strip()]
        missing = [g for g in wanted if g not in names]
        if missing:
            shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise UsageError(f"unknown group(s) {', '.join(map(repr, missing))}; the store has: {shown}")
        if not wanted:
            raise UsageError("no groups given; name groups from `gradmanifold info`")
        sel = tuple(i for i, n in enumerate(names) if n in wanted)
    if not sel:
        raise EmptyStoreError("the source has no groups; record at least one group")

    lo, hi = _row_range(src, cfg.start_step, cfg.stop_step)
    burn = int(cfg.burn_in)
    counted = hi - lo - burn
    if counted < 2:
        where = "the store" if cfg.start_step is None and cfg.stop_step is None else "the step range"
        have = f"{where} holds {hi - lo} committed step{'s' if hi - lo != 1 else ''}"
        if burn:
            have += f" and --burn-in drops {burn}"
        raise EmptyStoreError(
            f"{have}; the analysis needs at least 2 counted steps (record more steps"
            + (", lower --burn-in" if burn else "")
            + (", or widen --start/--stop" if where == "the step range" else "")
            + ")"
        )
    scope_members = [list(sel)] + ([[g] for g in sel] if len(sel) > 1 else [])
    offsets = np.cumsum([0] + [len(m) for m in scope_members]).astype(np.int64)
    members = np.array([g for m in scope_members for g in m], dtype=np.int64)
    return _Plan(
        cfg=cfg,
        predictors=tuple(preds),
        n_report=len(reported),
        grid=tuple(grid),
        eps=tuple(eps),
        method=method,
        sketch_rank=min(int(cfg.sketch_rank), k) if method == "randomized" else None,
        lo=lo,
        hi=hi,
        count_lo=lo + burn,
        sel=sel,
        scope_names=("model", *(names[g] for g in sel)) if len(sel) > 1 else ("model",),
        alias=names[sel[0]] if len(sel) == 1 else None,
        members=members,
        offsets=offsets,
        workers=int(cfg.workers) if cfg.workers else (os.cpu_count() or 1),
    )


def _row_range(src: ChunkSource, start: int | None, stop: int | None) -> tuple[int, int]:
    if start is not None and stop is not None and int(stop) <= int(start):
        raise UsageError(f"--stop {stop} is not after --start {start}; the range is [start, stop)")
    if start is None and stop is None:
        return 0, src.n_steps
    row_range = getattr(src, "row_range", None)
    if row_range is not None:
        lo, hi = row_range(start, stop)
        return int(lo), int(hi)
    steps = src.steps()
    lo = 0 if start is None else int(np.searchsorted(steps, int(start), side="left"))
    hi = len(steps) if stop is None else int(np.searchsorted(steps, int(stop), side="left"))
    return lo, max(lo, hi)


# ---------------------------------------------------------------------------------------------- the pass


class _Run:
    """One pass: reads chunks ahead (a thread), cuts them into segments, feeds the lanes (one per core)."""

    def __init__(self, src: ChunkSource, plan: _Plan, progress: Progress | None) -> None:
        from gradmanifold.kernels.stream import Lane, split_scopes

        self.src, self.plan, self.progress = src, plan, progress
        k = src.k
        n_scopes = len(plan.scope_names)
        self.k, self.n_scopes = k, n_scopes
        kinds = np.array([p.kind for p in plan.predictors], dtype=np.int64)
        betas = np.array([p.beta for p in plan.predictors], dtype=np.float64)
        self.levels = sp.nested_levels(k)
        groups = [plan.members[plan.offsets[s] : plan.offsets[s + 1]].tolist() for s in range(n_scopes)]
        # Cost of a scope: the Gram (k / 2 a row) plus the kernel's reads (one k-row per group).
        costs = [k / 2 + 4 * len(g) + 2 * len(plan.predictors) for g in groups]
        n_lanes = min(n_scopes, plan.workers)
        cap = max(64, BUFFER_BYTES // (8 * k))
        self.lanes = [
            Lane(
                ids,
                [groups[s] for s in ids],
                kinds,
                betas,
                k,
                plan.method,
                plan.sketch_rank or k,
                plan.cfg.seed,
                self.levels,
                cap,
                windowed=plan.cfg.window is not None,
            )
            for ids in split_scopes(costs, n_lanes)
        ]
        self.where = {s: (lane, i) for lane in self.lanes for i, s in enumerate(lane.ids.tolist())}
        self.excluded = np.zeros(n_scopes, np.int64)
        self.exact_sq = np.zeros(n_scopes)
        self.win_meta: list[tuple[int, int, int]] = []  # (first step, last step, rows) of closed windows
        self.win_first: int | None = None
        self.win_last = 0
        self.win_rows = 0
        self.first_step: int | None = None
        self.last_step = 0
        norms = getattr(src, "updates", None)  # a store with parameter updates: their statistics too
        self.upd: UpdatePass | None = UpdatePass(plan.sel, n_scopes, k, norms) if norms else None

    # ------------------------------------------------------------------ driver
    def run(self, store: StoreSummary) -> AnalysisResult:
        from gradmanifold.kernels.stream import drive, read_ahead

        plan = self.plan
        total = plan.hi - plan.lo
        done = 0
        if plan.cfg.skip_corrupt:
            chunks = self.src.iter_chunks(plan.lo, plan.hi, None, plan.cfg.chunk_rows, skip_corrupt=True)  # type: ignore[call-arg]
        else:
            chunks = self.src.iter_chunks(plan.lo, plan.hi, None, plan.cfg.chunk_rows)

        def work() -> Iterator[Work]:
            nonlocal done
            for chunk in read_ahead(chunks):
                yield self._prepare(chunk)
                done += chunk.n
                if self.progress is not None:
                    self.progress(done, total)

        drive(self.lanes, work(), plan.cfg.window is not None)
        self._count_skipped_chunks()
        if self.win_rows or not self.win_meta:
            report = plan.cfg.window is not None
            for lane in self.lanes:
                lane.close_window(report)
            if report:
                self.win_meta.append((self.win_first or 0, self.win_last, self.win_rows))
                if self.upd is not None:
                    self.upd.close_window()
        if self.upd is not None:
            self.upd.finish()
        return self._result(store)

    def _count_skipped_chunks(self) -> None:
        """Rows of damaged chunks left out by skip_corrupt are missing rows of every scope."""
        self.skipped_chunks: list[str] = []
        plan = self.plan
        for ex in getattr(self.src, "excluded", ()) if plan.cfg.skip_corrupt else ():
            rows = max(0, min(ex.row_stop, plan.hi) - max(ex.row_start, plan.count_lo))
            self.excluded += rows
            self.skipped_chunks.append(ex.describe())

    def _prepare(self, chunk: Chunk) -> Work:
        """Validity and counting masks of a chunk, its bookkeeping, and its segments (cut at window ends)."""
        plan = self.plan
        window = plan.cfg.window
        n, r0 = chunk.n, chunk.row0
        proj = np.ascontiguousarray(chunk.proj, dtype=np.float32)
        sel = list(plan.sel)
        bad = chunk.flags[:, sel] != 0
        valid = np.empty((n, self.n_scopes), dtype=np.bool_)
        valid[:, 0] = ~bad.any(axis=1)
        if self.n_scopes > 1:
            valid[:, 1:] = ~bad
        counted = np.arange(r0, r0 + n) >= plan.count_lo
        cv = valid & counted[:, None]
        sq = np.asarray(chunk.sqnorm, dtype=np.float64)[:, sel]
        self.exact_sq[0] += float(sq.sum(axis=1)[cv[:, 0]].sum())
        if self.n_scopes > 1:
            self.exact_sq[1:] += np.where(cv[:, 1:], sq, 0.0).sum(axis=0)
        self.excluded += (counted[:, None] & ~valid).sum(axis=0)
        segments = []
        a = 0
        while a < n:
            row = r0 + a
            b = n
            if row < plan.count_lo:
                b = min(b, plan.count_lo - r0)
            elif window is not None:
                b = min(b, plan.count_lo + (len(self.win_meta) + 1) * window - r0)
            close = False
            if row >= plan.count_lo:
                if self.win_first is None:
                    self.win_first = int(chunk.step[a])
                if self.first_step is None:
                    self.first_step = int(chunk.step[a])
                self.win_last = self.last_step = int(chunk.step[b - 1])
                self.win_rows += b - a
                if window is not None and self.win_rows == window:
                    close = True
                    self.win_meta.append((self.win_first, self.win_last, self.win_rows))
                    self.win_first, self.win_rows = None, 0
            segments.append((a, b, close))
            a = b
        if self.upd is not None:
            self.upd.feed(chunk, valid, counted, segments)
        return proj, valid, counted, segments

    # ------------------------------------------------------------------ results
    def _result(self, store: StoreSummary) -> AnalysisResult:
        plan, cfg = self.plan, self.plan.cfg
        scopes = {name: self._scope(s, name) for s, name in enumerate(plan.scope_names)}
        if plan.alias is not None:
            scopes[plan.alias] = replace(scopes["model"], name=plan.alias)
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
                what = "flagged or damaged" if self.skipped_chunks else "flagged"
                warnings.append(f"{name}: {sc.excluded_steps} {what} step(s) excluded")
        for desc in self.skipped_chunks:
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
            groups=tuple(self.src.group_names[g] for g in plan.sel),
            first_step=self.first_step if self.first_step is not None else 0,
            last_step=self.last_step,
            n_rows=plan.hi - plan.lo,
        )
        return AnalysisResult(
            store=store, config=config, scopes=scopes, windows=self._windows(), warnings=tuple(warnings)
        )

    def _windows(self) -> tuple[WindowResult, ...]:
        plan = self.plan
        out = []
        for w, (first, last, rows) in enumerate(self.win_meta):
            scopes = {}
            for s, name in enumerate(plan.scope_names):
                lane, li = self.where[s]
                st = lane.windows[w][li]
                den = float(st.sums[0])
                kappa = {
                    p.id: (float(st.sums[i]) / den if den > 0.0 else None)
                    for i, p in enumerate(plan.predictors[: plan.n_report])
                }
                r_star = {
                    eps_key(e): (sp.r_star(st.eigs, st.total, e) if st.eigs is not None else None)
                    for e in plan.eps
                }
                upd = self.upd.window(w, s) if self.upd is not None else None
                scopes[name] = WindowScope(n_steps=st.n_steps, kappa=kappa, r_star=r_star, updates=upd)
            if plan.alias is not None:
                scopes[plan.alias] = scopes["model"]
            out.append(WindowResult(index=w, start_step=first, end_step=last, n_rows=rows, scopes=scopes))
        return tuple(out)

    def _scope(self, s: int, name: str) -> ScopeResult:
        plan = self.plan
        lane, li = self.where[s]
        acc = lane.acc[li]
        n = int(lane.count[li])
        exact = float(self.exact_sq[s])
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
            excluded_steps=int(self.excluded[s]),
            path_length=path_length,
            kappa=kappa,
            kappa_interval=interval,
            projection_distortion=den / exact if exact > 0.0 else None,
            distortion_rel_error=sp.relative_error(acc[0]),
            rank=self._rank(s),
            bounds=bounds,
            best_ema=best,
            updates=self.upd.result(s) if self.upd is not None else None,
        )

    def _rank(self, s: int) -> RankResult:
        plan = self.plan
        lane, li = self.where[s]
        main = lane.main[li]
        eigs, total = main.eigenvalues(), main.frobenius_sq
        by_level: dict[str, list[int | None]] = {eps_key(e): [] for e in plan.eps}
        for kk in self.levels:
            if kk == self.k:
                le, lt = eigs, total
            elif plan.method == "exact":
                le = main.eigenvalues(kk)
                lt = main.leading_trace(kk)  # type: ignore[union-attr]
            else:
                sub = lane.sub[li][kk]
                le, lt = sub.eigenvalues(), sub.frobenius_sq
            for e in plan.eps:
                by_level[eps_key(e)].append(sp.r_star(le, lt, e))
        k_enough, suggested, moving = sp.nested_verdict(self.levels, by_level)
        return RankResult(
            method=plan.method,
            n_increments=main.n_rows,
            frobenius_sq=total,
            r_star={eps_key(e): sp.r_star(eigs, total, e) for e in plan.eps},
            tail=tuple(float(v) for v in sp.tail_fractions(eigs, total)),
            participation_ratio=sp.participation_ratio(eigs),
            top_energy=sp.top_energy(eigs, total),
            nested=NestedRank(
                ks=self.levels,
                r_star={e: tuple(v) for e, v in by_level.items()},
                k_enough=k_enough,
                suggested_k=suggested,
                moving=tuple(moving),
            ),
        )
