"""Which scopes the tables show, in which order: `--sort KEY` and `--top N` (the JSON keeps every scope).

Keys (numbers largest first, so the least predictable scopes come first; names in alphabetical order):

    store           the store's order (the default without --top)
    name            scope names, alphabetically
    kappa           the best kappa of any predictor but zero, the best EMA included (the default with --top)
    kappa:<id>      kappa of one reported predictor: kappa:last, kappa:ema:0.9, kappa:trend
    r_star:<eps>    r*(eps) of one reported eps: r_star:0.1 (a sketch that does not reach it: largest)
    pr              the participation ratio of the increment spectrum

The `model` row stays first in every order; `--top N` keeps the first N of the other scopes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from gradmanifold.errors import UsageError
from gradmanifold.predictors import canonical_id
from gradmanifold.report.model import AnalysisResult, ScopeResult

KEYS = ("store", "name", "kappa", "kappa:<predictor>", "r_star:<eps>", "pr")


@dataclass(frozen=True)
class SortKey:
    """A parsed --sort key: kind is store, name, kappa, predictor, r_star or pr; arg the predictor id or eps
    key (canonical: `ema:0.9`, `0.1`) for the last two."""

    kind: str
    arg: str | None = None

    @property
    def text(self) -> str:
        return {"predictor": "kappa", "r_star": "r_star"}.get(self.kind, self.kind) + (
            f":{self.arg}" if self.arg is not None else ""
        )


def parse_sort(text: str) -> SortKey:
    """Parse a --sort key (see the module docstring); UsageError naming the valid keys otherwise."""
    s = str(text).strip().lower()
    if s in ("store", "name", "kappa", "pr"):
        return SortKey(s)
    head, sep, arg = s.partition(":")
    if sep and head == "kappa" and arg:
        try:
            pid = canonical_id(arg)
        except UsageError as exc:
            raise UsageError(f"--sort {text!r}: {exc}") from None
        if pid == "zero":
            raise UsageError(f"--sort {text!r}: kappa of zero is 1 in every scope; sort by another predictor")
        return SortKey("predictor", pid)
    if sep and head in ("r_star", "r*") and arg:
        try:
            eps = float(arg)
        except ValueError:
            eps = math.nan
        if not 0.0 < eps < 1.0:
            raise UsageError(f"--sort {text!r}: eps {arg!r} is not a number in (0, 1), e.g. r_star:0.1")
        return SortKey("r_star", repr(eps))
    raise UsageError(f"--sort {text!r}: unknown key; use one of {', '.join(KEYS)}")


def check_sort(key: SortKey, predictors: Sequence[str], eps: Sequence[float]) -> None:
    """UsageError when the key names a predictor or an eps that the analysis does not report."""
    if key.kind == "predictor" and key.arg not in predictors:
        shown = ", ".join(p for p in predictors if p != "zero")
        raise UsageError(
            f"--sort {key.text}: {key.arg} is not a reported predictor (reported: {shown}); "
            "add it with --predictors"
        )
    if key.kind == "r_star" and key.arg not in [repr(float(e)) for e in eps]:
        shown = ", ".join(repr(float(e)) for e in eps)
        raise UsageError(
            f"--sort {key.text}: eps {key.arg} is not reported (reported: {shown}); add it with --eps"
        )


def check_top(top: int | None) -> None:
    """UsageError unless top is None or at least 1."""
    if top is not None and (isinstance(top, bool) or int(top) < 1):
        raise UsageError(f"--top {top}: give the number of scopes to show, at least 1")


def best_kappa(sc: ScopeResult) -> float:
    """The least kappa of any predictor but zero, the best EMA of the grid included (nan when undefined)."""
    values = [v for p, v in sc.kappa.items() if p != "zero" and v is not None and math.isfinite(v)]
    if sc.best_ema is not None and math.isfinite(sc.best_ema.kappa):
        values.append(sc.best_ema.kappa)
    return min(values) if values else math.nan


def order_scopes(
    result: AnalysisResult, sort: SortKey | None = None, top: int | None = None
) -> list[ScopeResult]:
    """The scopes to show: `model` first, then the others in the key's order (`top`: only the first N).

    Without a key the store's order, or with `top` the least predictable first (kappa). Scopes whose value
    is undefined (a dead group's kappa, 0/0) come last.
    """
    check_top(top)
    scopes = list(result.scopes.values())
    model = [sc for sc in scopes if sc.name == "model"]
    rest = [sc for sc in scopes if sc.name != "model"]
    key = sort or (SortKey("kappa") if top is not None else SortKey("store"))
    check_sort(key, result.config.predictors, result.config.eps)
    if key.kind == "name":
        rest.sort(key=lambda sc: sc.name)
    elif key.kind != "store":
        values = [_value(sc, key) for sc in rest]
        nan = [math.isnan(v) for v in values]
        order = sorted(range(len(rest)), key=lambda i: (nan[i], 0.0 if nan[i] else -values[i], i))
        rest = [rest[i] for i in order]
    return model + (rest[:top] if top is not None else rest)


def _value(sc: ScopeResult, key: SortKey) -> float:
    if key.kind == "kappa":
        return best_kappa(sc)
    if key.kind == "predictor":
        v = sc.kappa.get(key.arg or "")
        return math.nan if v is None else float(v)
    if key.kind == "r_star":
        r = sc.rank.r_star.get(key.arg or "", None)
        return math.inf if r is None else float(r)
    return float(sc.rank.participation_ratio)
