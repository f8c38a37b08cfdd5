"""Predictor ids and their parsing: `zero`, `last`, `ema:<beta>`, `trend` (docs/METHOD.md).

Every predictor is causal and starts from m_0 = 0, so the first counted term of a fresh stream is ||g_0||^2:

    zero        m_t = 0                                   (kappa = 1 exactly: the self-test)
    last        m_t = g_{t-1}
    ema:<beta>  e_{-1} = 0; m_t = e_{t-1}; e_t = beta e_{t-1} + (1 - beta) g_t
    trend       m_1 = g_0; m_t = 2 g_{t-1} - g_{t-2}

Ids are canonical: `ema:<beta>` writes beta as Python's shortest float repr (`ema:0.90` becomes `ema:0.9`), so
the same predictor always has the same key in tables, JSON and `check` paths.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from gradmanifold.errors import UsageError

# Kind codes shared with the kernels (gradmanifold.kernels.predict).
ZERO, LAST, EMA, TREND = 0, 1, 2, 3
_KIND_NAMES = {ZERO: "zero", LAST: "last", EMA: "ema", TREND: "trend"}

DEFAULT_PREDICTORS = ("zero", "last", "ema:0.9", "ema:0.99", "trend")
DEFAULT_EMA_GRID = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999)


@dataclass(frozen=True)
class Predictor:
    """One causal linear predictor: a kind code and, for EMA, its beta in [0, 1)."""

    kind: int
    beta: float = 0.0

    @property
    def id(self) -> str:
        if self.kind == EMA:
            return f"ema:{self.beta!r}"
        return _KIND_NAMES[self.kind]


def parse_predictor(text: str) -> Predictor:
    """Parse one predictor id; raises UsageError naming the valid forms."""
    s = text.strip().lower()
    for code, name in _KIND_NAMES.items():
        if s == name and code != EMA:
            return Predictor(code)
    if s.startswith("ema:"):
        return Predictor(EMA, parse_beta(s[4:], what=f"predictor {text!r}"))
    if s == "ema":
        raise UsageError("predictor 'ema' needs a beta: write ema:<beta>, for example ema:0.9")
    raise UsageError(
        f"unknown predictor {text!r}; use zero, last, trend or ema:<beta> with 0 <= beta < 1 (e.g. ema:0.9)"
    )


def parse_beta(text: str | float, what: str = "EMA beta") -> float:
    """An EMA beta in [0, 1) as a float; raises UsageError otherwise."""
    try:
        beta = float(text)
    except ValueError:
        raise UsageError(f"{what}: beta {text!r} is not a number; use 0 <= beta < 1, e.g. 0.9") from None
    if not (math.isfinite(beta) and 0.0 <= beta < 1.0):
        raise UsageError(f"{what}: beta {text!r} is outside [0, 1); use 0 <= beta < 1, e.g. 0.9")
    return beta


def parse_predictors(items: Iterable[str]) -> tuple[Predictor, ...]:
    """Parse a list (each item may itself be comma-separated); duplicates are dropped, order is kept."""
    out: list[Predictor] = []
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            p = parse_predictor(part)
            if p not in out:
                out.append(p)
    if not out:
        raise UsageError("no predictors given; use e.g. --predictors zero,last,ema:0.9,trend")
    return tuple(out)


def parse_ema_grid(items: Iterable[str | float]) -> tuple[float, ...]:
    """Parse an EMA beta grid (items may be comma-separated strings); sorted, duplicates dropped."""
    betas: set[float] = set()
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                betas.add(parse_beta(part.strip(), what="--ema-grid"))
    return tuple(sorted(betas))


def canonical_id(text: str) -> str:
    """The canonical id of a predictor written any valid way (`ema:0.90` -> `ema:0.9`)."""
    return parse_predictor(text).id
