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

The pass is a fold (gradmanifold/fold.py): `segments=S` cuts the range into S time segments whose partial
states merge exactly (gradmanifold/sweep.py runs the segments, and many stores, on Dask); the result is
`finalize(state)` (gradmanifold/finalize.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

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
from gradmanifold.report.model import AnalysisResult, GroupSummary, StoreSummary
from gradmanifold.store.chunk import ArraySource, ChunkSource

DEFAULT_EPS = (0.5, 0.1, 0.05, 0.01)
SVD_METHODS = ("auto", "exact", "randomized")
EXACT_MAX_K = 2048  # `auto` uses the exact Gram up to this k (k^2 / 2 multiply-adds a row), a sketch beyond
DEFAULT_SKETCH_RANK = 512

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
    segments: int = 1  # time segments of the fold (fold.py); the results equal one pass's to rounding
    # --by-module N: scopes are the model and one per module (groups summed by the first N dot-separated
    # parts of their names), in place of one per group (None: one scope per group)
    modules: int | None = None


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
    `segments=S` folds the range as S time segments here (fold.py; the same numbers to ~1e-15 relative);
    gradmanifold.sweep.analyze_many runs them, and many stores, on Dask.
    """
    cfg = config_with(config, options)
    src, store = _open_source(source)
    plan = _plan(src, cfg)
    from gradmanifold.fold import run_local
    from gradmanifold.kernels.stream import blas_threads

    # One BLAS thread per lane, even for a single lane: BLAS threads that share cores with anything else
    # (the other lane, the reader, a training job) spin and collapse; see blas_threads.
    with blas_threads(1):  # process-wide while the analysis runs
        return run_local(src, plan, store, plan.segments, progress)


def config_with(config: AnalysisConfig | None, options: dict[str, Any]) -> AnalysisConfig:
    """`config` (None: AnalysisConfig()) with the fields named in `options` replaced; UsageError naming
    unknown ones. Parameters: config: the base configuration; options: field name -> value."""
    names = {f.name for f in fields(AnalysisConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise UsageError(
            f"unknown analysis option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    return replace(config or AnalysisConfig(), **options)


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
    segments: int  # time segments of the fold (at most one a row)
    # positions in `sel` of each scope's groups after the model (None: one group per scope, in order)
    scope_cols: tuple[tuple[int, ...], ...] | None = None


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
    if isinstance(cfg.segments, bool) or not isinstance(cfg.segments, int | np.integer) or cfg.segments < 1:
        raise UsageError(f"segments {cfg.segments!r} must be a whole number of at least 1")
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
    # ---- scopes: the model, then each group, or with `modules` each module (the sum of its groups) ----
    parts = _module_parts(names, sel, cfg.modules)
    scope_members = [list(sel)] + ([m for _, m in parts] if len(parts) > 1 else [])
    scope_cols = None
    if cfg.modules is not None and len(parts) > 1:
        scope_cols = tuple(tuple(sel.index(g) for g in m) for _, m in parts)
    # ---- end of scopes ----
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
        scope_names=("model", *(n for n, _ in parts)) if len(parts) > 1 else ("model",),
        alias=parts[0][0] if len(parts) == 1 else None,
        members=members,
        offsets=offsets,
        workers=int(cfg.workers) if cfg.workers else (os.cpu_count() or 1),
        segments=min(int(cfg.segments), hi - lo),
        scope_cols=scope_cols,
    )


def _module_parts(
    names: tuple[str, ...], sel: tuple[int, ...], depth: int | None
) -> list[tuple[str, list[int]]]:
    """(scope name, group indices) after the model: each selected group, or with `depth` each module, named
    by the first `depth` dot-separated parts of its groups' names, in the order modules first appear."""
    if depth is None:
        return [(names[g], [g]) for g in sel]
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 1:
        raise UsageError(
            f"--by-module {depth!r}: give a depth of at least 1 (dot-separated parts of the group names)"
        )
    modules: dict[str, list[int]] = {}
    for g in sel:
        modules.setdefault(".".join(names[g].split(".")[:depth]), []).append(g)
    if "model" in modules and len(modules) > 1:
        raise UsageError(
            f"--by-module {depth}: a module is named 'model', the name of the whole-model scope; "
            "give a larger depth"
        )
    return list(modules.items())


def _by_scope(a: np.ndarray, cols: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """[n, G] per selected group -> [n, S]: per scope after the model (a module), the sum of its groups."""
    return np.stack([a[:, list(c)].sum(axis=1) for c in cols], axis=1)


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
