"""Thresholds on the analysis JSON for `gradmanifold check`: parse `PATH=BOUND`, resolve PATH, compare.

A path addresses the JSON of docs/JSON.md with dots: `model.kappa.ema:0.9`, `model.rank.r_star.0.1`,
`layer1.rank.participation_ratio`, `model.rank.tail.10`, `windows.3.scopes.model.kappa.last`. Keys may
themselves hold dots (`ema:0.9`, `0.1`): at each level the longest key that matches is taken. Predictor ids
and eps are compared in canonical form, so `ema:0.90` and `0.10` work too. The top-level `scopes.` may be
left out.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gradmanifold.errors import UsageError


@dataclass(frozen=True)
class Bound:
    path: str
    op: str  # "max" (value <= bound) or "min" (value >= bound)
    bound: float


@dataclass(frozen=True)
class Outcome:
    bound: Bound
    value: float | None  # None: the quantity is not defined for this run (JSON null)
    ok: bool

    def line(self) -> str:
        """`PATH = VALUE <= BOUND (max)`, one line, for the report."""
        rel = "<=" if self.bound.op == "max" else ">="
        v = "null (not measured)" if self.value is None else f"{self.value:.6g}"
        word = "ok" if self.ok else "FAIL"
        return f"{word}: {self.bound.path} = {v}, want {rel} {self.bound.bound:g} ({self.bound.op})"


def parse_bound(text: str, op: str) -> Bound:
    """`PATH=NUMBER` into a Bound; UsageError naming the expected form."""
    path, sep, num = text.rpartition("=")
    if not sep or not path.strip():
        raise UsageError(f"--{op} {text!r}: expected PATH=NUMBER, e.g. --{op} model.kappa.ema:0.9=1.2")
    try:
        bound = float(num)
    except ValueError:
        raise UsageError(f"--{op} {text!r}: {num!r} is not a number; expected PATH=NUMBER") from None
    if math.isnan(bound):
        raise UsageError(f"--{op} {text!r}: the bound is NaN; give a number")
    return Bound(path=path.strip(), op=op, bound=bound)


def parse_bounds(maxes: Iterable[str], mins: Iterable[str]) -> list[Bound]:
    out = [parse_bound(t, "max") for t in maxes] + [parse_bound(t, "min") for t in mins]
    if not out:
        raise UsageError("no thresholds given; use --max PATH=NUMBER and/or --min PATH=NUMBER")
    return out


def resolve(doc: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (see module docstring); UsageError naming the keys available."""
    node: Any = doc
    rest = path
    if "scopes" in doc and isinstance(doc["scopes"], Mapping):
        head = rest.split(".", 1)[0]
        if head not in doc and head in doc["scopes"]:
            node = doc["scopes"]
    done: list[str] = []
    while rest:
        if isinstance(node, Mapping):
            key = _match_key(node, rest)
            if key is None:
                keys = ", ".join(sorted(map(str, node)))
                where = ".".join(done) or "the top level"
                raise UsageError(f"check path {path!r}: no key matches {rest!r} under {where}; keys: {keys}")
            node = node[key[0]]
            done.append(key[0])
            rest = rest[key[1] :].removeprefix(".")
        elif isinstance(node, list):
            head, _, tail = rest.partition(".")
            try:
                node = node[int(head)]
            except (ValueError, IndexError):
                raise UsageError(
                    f"check path {path!r}: {head!r} is not an index of a list of {len(node)} under "
                    f"{'.'.join(done)}"
                ) from None
            done.append(head)
            rest = tail
        else:
            raise UsageError(f"check path {path!r}: {'.'.join(done)} is a value; nothing below it")
    return node


def _match_key(node: Mapping[str, Any], rest: str) -> tuple[str, int] | None:
    """The longest key of node that `rest` starts with (whole dotted segments) and the length it used."""
    parts = rest.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        used = len(cand)
        for alias in _aliases(cand):
            if alias in node:
                return alias, used
    return None


def _aliases(key: str) -> list[str]:
    out = [key]
    try:
        from gradmanifold.predictors import canonical_id

        out.append(canonical_id(key))
    except UsageError:
        pass
    with contextlib.suppress(ValueError):
        out.append(repr(float(key)))
    return out


def evaluate(doc: Mapping[str, Any], bounds: Iterable[Bound]) -> list[Outcome]:
    """Resolve and compare every bound; a non-numeric value is a UsageError, a null value fails."""
    out = []
    for b in bounds:
        v = resolve(doc, b.path)
        if isinstance(v, bool) or (v is not None and not isinstance(v, (int, float))):
            raise UsageError(
                f"check path {b.path!r} holds {'a boolean' if isinstance(v, bool) else type(v).__name__}, "
                "not a number; point at a number (e.g. model.kappa.last)"
            )
        if v is None:
            out.append(Outcome(b, None, False))
            continue
        val = float(v)
        ok = val <= b.bound if b.op == "max" else val >= b.bound
        out.append(Outcome(b, val, ok))
    return out
