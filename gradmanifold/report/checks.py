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


def parse_bounds(maxes: Iterable[str], mins: Iterable[str], required: bool = True) -> list[Bound]:
    """Every --max and --min; UsageError when none is given and `required` (no --baseline either)."""
    out = [parse_bound(t, "max") for t in maxes] + [parse_bound(t, "min") for t in mins]
    if not out and required:
        raise UsageError(
            "no thresholds given; use --max PATH=NUMBER, --min PATH=NUMBER and/or --baseline BASE.json"
        )
    return out


def resolve(doc: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (see module docstring); UsageError naming the keys available."""
    node: Any = doc
    rest = path
    scopes = doc.get("scopes")
    if isinstance(scopes, Mapping) and _match_key(doc, rest) is None and _match_key(scopes, rest):
        node = scopes  # `scopes.` left out, also before a dotted scope name (`fc1.weight.kappa.last`)
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


# ------------------------------------------------------------------------------------- against a baseline

DEFAULT_RTOL = 0.1
#: the quantities `check --baseline` compares, as JSON paths under a scope
BASELINE_QUANTITIES = ("kappa.", "rank.r_star.")


@dataclass(frozen=True)
class Drift:
    """One kappa or r*(eps) of the run against the baseline's: ok when it moved by at most rtol relative
    (both null also holds: not defined in either run)."""

    path: str
    base: float | None
    value: float | None
    rtol: float
    ok: bool

    def line(self) -> str:
        """`ok: PATH = VALUE, baseline BASE (+1.2%, rtol 10%)`, one line, for the report."""
        from gradmanifold.report.compare import relative_change

        v = "null (not measured)" if self.value is None else f"{self.value:.6g}"
        b = "null" if self.base is None else f"{self.base:.6g}"
        rel = relative_change(self.base, self.value)
        moved = "" if rel is None else f"{100 * rel:+.1f}%, "
        word = "ok" if self.ok else "FAIL"
        return f"{word}: {self.path} = {v}, baseline {b} ({moved}rtol {100 * self.rtol:g}%)"


@dataclass(frozen=True)
class Baseline:
    """A saved `analyze --json` of a reference run, with the tolerance and the scopes to check."""

    path: str
    doc: Mapping[str, Any]
    rtol: float
    scopes: tuple[str, ...] | None  # None: every scope of the baseline

    def analysis_options(self) -> dict[str, Any]:
        """Predictors, eps and (when the baseline analyzed a subset) groups of the baseline's analysis, so
        that the run is measured like the baseline unless the command line says otherwise."""
        cfg = self.doc.get("config")
        cfg = cfg if isinstance(cfg, Mapping) else {}
        out: dict[str, Any] = {}
        for key in ("predictors", "eps"):
            if isinstance(cfg.get(key), list) and cfg[key]:
                out[key] = [",".join(map(str, cfg[key]))]
        store = self.doc.get("store")
        groups = store.get("groups") if isinstance(store, Mapping) else None
        recorded = [
            g.get("name") for g in (groups if isinstance(groups, list) else ()) if isinstance(g, Mapping)
        ]
        if isinstance(cfg.get("groups"), list) and cfg["groups"] and cfg["groups"] != recorded:
            out["groups"] = [",".join(map(str, cfg["groups"]))]
        return out


def load_baseline(path: str | Any, rtol: float | None = None, scope: str | None = None) -> Baseline:
    """Read and check a baseline JSON; validate rtol (>= 0, finite; None: 0.1) and scope (`model`, `all` or
    comma-separated scope names; None: `model`). UsageError (SchemaVersionError for a newer schema) naming
    what is wrong.

    path: the JSON file; rtol: the relative tolerance; scope: which scopes to check.
    """
    import os

    from gradmanifold.report.compare import load_document

    rt = DEFAULT_RTOL if rtol is None else rtol
    if isinstance(rt, bool) or not isinstance(rt, int | float) or not math.isfinite(rt) or rt < 0:
        raise UsageError(f"--rtol {rtol!r} is invalid; give a relative tolerance >= 0 such as 0.1 (10%)")
    where = os.fspath(path)
    doc = load_document(where, f"--baseline {where}")
    names: tuple[str, ...] | None = ("model",)
    if scope is not None:
        wanted = [s.strip() for s in scope.split(",") if s.strip()]
        if not wanted:
            raise UsageError(f"--scope {scope!r} names no scope; give model, all, or scope names")
        names = None if wanted == ["all"] else tuple(wanted)
        unknown = [s for s in names or () if s not in doc["scopes"]]
        if unknown:
            have = ", ".join(_scope_order(doc)[:20])
            raise UsageError(
                f"--scope: {', '.join(map(repr, unknown))} not in the baseline; it has: {have}, all"
            )
    return Baseline(path=where, doc=doc, rtol=float(rt), scopes=names)


def against_baseline(doc: Mapping[str, Any], base: Baseline) -> list[Drift]:
    """Every kappa (not `zero`) and r*(eps) of the baseline's scopes, the run's value against the baseline's.

    doc: the run's analysis JSON; base: the loaded baseline. A quantity or scope the run lacks fails.
    """
    from gradmanifold.report.compare import relative_change, scope_quantities

    run_scopes = doc.get("scopes") or {}
    names = _scope_order(base.doc) if base.scopes is None else list(base.scopes)
    out = []
    for name in names:
        run = run_scopes.get(name)
        have = dict(scope_quantities(run)) if isinstance(run, Mapping) else {}
        for q, b in scope_quantities(base.doc["scopes"][name], base.doc.get("config")):
            if not q.startswith(BASELINE_QUANTITIES):
                continue
            v = have.get(q)
            if b is None or v is None:
                ok = b is None and v is None and q in have
            else:
                rel = relative_change(b, v)
                ok = rel is not None and abs(rel) <= base.rtol
            out.append(Drift(f"{name}.{q}", b, v, base.rtol, ok))
    return out


def _scope_order(doc: Mapping[str, Any]) -> list[str]:
    """The scopes of an analysis JSON as reported: the model, then the groups in the analysis' order (the
    JSON's keys are sorted)."""
    cfg = doc.get("config")
    groups = cfg.get("groups") if isinstance(cfg, Mapping) else None
    order = ["model", *(groups if isinstance(groups, list) else ())]
    return sorted(doc["scopes"], key=lambda n: order.index(n) if n in order else len(order))
