"""The analysis result as plain frozen dataclasses: what renderers and `check` receive. No numerics here.

Dict-valued fields are keyed exactly as in the JSON (docs/JSON.md): predictor ids (`zero`, `last`, `ema:0.9`,
`trend`), eps written as strings (`"0.1"`), top-energy counts as strings (`"1"`). None stands for "not
defined" (JSON null): a window without increments has no r*, a sketched spectrum may not reach r*(eps).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GroupSummary:
    name: str
    size: int


@dataclass(frozen=True)
class StoreSummary:
    """The analyzed source: a store path (None for arrays in memory), its rows, k, projection and groups."""

    path: str | None
    n_steps: int
    k: int
    projection: Mapping[str, Any] | None
    groups: tuple[GroupSummary, ...]


@dataclass(frozen=True)
class RunConfig:
    """The options the analysis ran with, after parsing (predictor ids canonical) and what it covered."""

    predictors: tuple[str, ...]
    ema_grid: tuple[float, ...]
    eps: tuple[float, ...]
    window: int | None
    svd: str  # as requested: exact | randomized | auto
    svd_method: str  # as used: exact | randomized
    sketch_rank: int | None  # randomized only
    start_step: int | None
    stop_step: int | None
    burn_in: int
    groups: tuple[str, ...]
    first_step: int  # first counted step (after burn-in)
    last_step: int
    n_rows: int  # rows in the step range, burn-in included
    modules: int | None = None  # --by-module depth: the scopes after the model are modules (None: groups)


@dataclass(frozen=True)
class NestedRank:
    """r*(eps) from the nested sub-sketches (first k/4, k/2, k coordinates) and the verdict on k."""

    ks: tuple[int, ...]
    r_star: Mapping[str, tuple[int | None, ...]]
    k_enough: bool
    suggested_k: int | None
    moving: tuple[str, ...]  # eps keys whose r* still grows from k/2 to k


@dataclass(frozen=True)
class RankResult:
    method: str  # exact | randomized
    n_increments: int
    frobenius_sq: float  # ||H||_F^2
    r_star: Mapping[str, int | None]
    tail: tuple[float, ...]  # tail(r) / ||H||_F^2, r = 0, 1, ...
    participation_ratio: float
    top_energy: Mapping[str, float]
    nested: NestedRank


@dataclass(frozen=True)
class Bounds:
    """Readouts of the paper's bounds: sqrt(min kappa) (optimistic mirror descent) and P_T / (T + 1)."""

    sqrt_min_kappa: float
    min_kappa_predictor: str
    min_avg_proxy_error: float  # P_T / (T + 1) of the best predictor
    avg_proxy_error: Mapping[str, float]


@dataclass(frozen=True)
class BestEma:
    beta: float
    kappa: float


@dataclass(frozen=True)
class ScopeResult:
    """Everything measured for one scope: the model total or one group."""

    name: str
    n_steps: int  # counted rows (T + 1 of the formulas)
    excluded_steps: int  # rows in the counted range dropped because they were flagged
    path_length: Mapping[str, float]
    kappa: Mapping[str, float]
    kappa_interval: Mapping[str, tuple[float, float]]
    projection_distortion: float | None  # sum ||z||^2 / sum ||g||^2 (None without exact norms)
    distortion_rel_error: float  # the relative error of sum ||z||^2 to expect from k (3 standard errors)
    rank: RankResult
    bounds: Bounds
    best_ema: BestEma | None
    # with parameter updates in the store: docs/UPDATES.md's statistics (a proxy), else None (no JSON key)
    updates: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class WindowScope:
    n_steps: int
    kappa: Mapping[str, float | None]
    r_star: Mapping[str, int | None]
    updates: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class WindowResult:
    index: int
    start_step: int
    end_step: int  # last step in the window (inclusive)
    n_rows: int
    scopes: Mapping[str, WindowScope]


@dataclass(frozen=True)
class AnalysisResult:
    store: StoreSummary
    config: RunConfig
    scopes: Mapping[str, ScopeResult]  # "model" first, then the groups in store order
    windows: tuple[WindowResult, ...]
    warnings: tuple[str, ...]

    @property
    def model(self) -> ScopeResult:
        return self.scopes["model"]
