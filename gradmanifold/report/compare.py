"""Run against run: two analyses side by side, per scope and quantity, with differences and relative changes.

Works on the JSON documents of docs/JSON.md (`gradmanifold.analysis/1`), so a saved `analyze --json` compares
like a freshly analyzed store; AnalysisResult objects are converted with report.json.to_dict. Quantity names
are the JSON paths under a scope (`kappa.last`, `rank.r_star.0.1`), so `SCOPE.QUANTITY` is also a `check`
path. Rendered by report/console_compare.py and `to_dict` here (schema gradmanifold.compare/1).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradmanifold.errors import SchemaVersionError, UsageError
from gradmanifold.report.json import SCHEMA as ANALYSIS_SCHEMA
from gradmanifold.report.json import to_dict as analysis_dict
from gradmanifold.report.model import AnalysisResult

SCHEMA = "gradmanifold.compare/1"
#: config keys that make two analyses measure different things when they differ
CONFIG_KEYS = ("predictors", "eps", "window", "svd_method", "burn_in", "groups", "first_step", "last_step")
#: summaries of the update statistics compared when both runs recorded updates
UPDATE_KEYS = ("secant_smoothness_median", "alignment_median", "glass_exponent")


@dataclass(frozen=True)
class Change:
    """One quantity of one scope in both runs: a (first run), b (second run); None where not measured."""

    scope: str
    quantity: str  # the JSON path under the scope: kappa.last, rank.r_star.0.1, rank.participation_ratio
    a: float | None
    b: float | None

    @property
    def path(self) -> str:
        """`SCOPE.QUANTITY`: a `gradmanifold check` path."""
        return f"{self.scope}.{self.quantity}"

    @property
    def diff(self) -> float | None:
        """b - a (None when either is not measured)."""
        return None if self.a is None or self.b is None else self.b - self.a

    @property
    def rel(self) -> float | None:
        """(b - a) / |a|; see relative_change."""
        return relative_change(self.a, self.b)


@dataclass(frozen=True)
class Comparison:
    """Two analyses side by side: labels, store descriptions, the compared and unmatched scopes, changes."""

    labels: tuple[str, str]
    stores: tuple[Mapping[str, Any], Mapping[str, Any]]  # path, n_steps, k of each
    scopes: tuple[str, ...]  # compared: in both, in the first run's order
    only: tuple[tuple[str, ...], tuple[str, ...]]  # scopes only in the first / only in the second run
    changes: tuple[Change, ...]
    notes: tuple[str, ...]  # config differences that make the numbers measure different things


def relative_change(a: float | None, b: float | None) -> float | None:
    """(b - a) / |a|: 0 when both are 0, +-inf when only a is 0, None when either is None or not finite.

    a: the reference value; b: the compared value.
    """
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    if a == 0:
        return 0.0 if b == 0 else math.copysign(math.inf, b)
    return (b - a) / abs(a)


def as_document(run: AnalysisResult | Mapping[str, Any], what: str = "input") -> Mapping[str, Any]:
    """The analysis JSON of `run` (a result or an already loaded document), its schema checked.

    run: an AnalysisResult or a JSON object; what: names the input in error messages.
    """
    if isinstance(run, AnalysisResult):
        return analysis_dict(run)
    if not isinstance(run, Mapping):
        raise UsageError(f"{what}: not a JSON object; give a saved `gradmanifold analyze --json`")
    schema = run.get("schema")
    if isinstance(schema, str) and schema.startswith("gradmanifold.analysis/") and schema != ANALYSIS_SCHEMA:
        raise SchemaVersionError(
            f"{what}: schema {schema!r} is newer than this gradmanifold reads ({ANALYSIS_SCHEMA}); "
            "upgrade gradmanifold or save the JSON again with this version"
        )
    if schema != ANALYSIS_SCHEMA:
        raise UsageError(
            f"{what}: schema {schema!r} is not {ANALYSIS_SCHEMA!r}; give the output of "
            "`gradmanifold analyze RUN --json`"
        )
    scopes = run.get("scopes")
    if not isinstance(scopes, Mapping) or not isinstance(scopes.get("model"), Mapping):
        raise UsageError(
            f"{what}: no scopes.model in the JSON; give the output of `gradmanifold analyze --json`"
        )
    return run


def load_document(path: str | os.PathLike[str], what: str | None = None) -> Mapping[str, Any]:
    """Read a saved `analyze --json` and check it (as_document); UsageError naming what is wrong.

    path: the JSON file; what: names it in error messages (default: the path).
    """
    where = os.fspath(path)
    what = what or where
    try:
        with open(where, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UsageError(
            f"{what}: no such file; save one with `gradmanifold analyze RUN --json > FILE`"
        ) from None
    except IsADirectoryError:
        raise UsageError(f"{what} is a folder; give the JSON of `gradmanifold analyze --json`") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UsageError(
            f"{what}: not readable JSON ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); "
            "give the output of `gradmanifold analyze RUN --json`"
        ) from None
    return as_document(doc, what)


def scope_quantities(scope: Any, config: Any = None) -> list[tuple[str, float | None]]:
    """The compared quantities of one scope of the JSON, in report order: counted steps, kappa per predictor
    (not `zero`, 1 by definition), r*(eps), participation ratio, and with updates their medians and p.

    scope: `scopes.<name>` of an analysis JSON; config: its `config`, whose predictor and eps order the
    kappa and r* follow (the JSON's keys are sorted).
    """
    if not isinstance(scope, Mapping):
        return []
    cfg = config if isinstance(config, Mapping) else {}
    out: list[tuple[str, float | None]] = [("n_steps", _num(scope.get("n_steps")))]
    kappa = scope.get("kappa")
    if isinstance(kappa, Mapping):
        items = _ordered(kappa, [p for p in cfg.get("predictors") or () if isinstance(p, str)])
        out += [(f"kappa.{p}", _num(v)) for p, v in items if p != "zero"]
    rank = scope.get("rank")
    if isinstance(rank, Mapping):
        r_star = rank.get("r_star")
        if isinstance(r_star, Mapping):
            eps = [repr(e) for e in cfg.get("eps") or () if isinstance(e, float)]
            out += [(f"rank.r_star.{e}", _num(v)) for e, v in _ordered(r_star, eps)]
        out.append(("rank.participation_ratio", _num(rank.get("participation_ratio"))))
    updates = scope.get("updates")
    if isinstance(updates, Mapping):
        out += [(f"updates.{key}", _num(updates.get(key))) for key in UPDATE_KEYS]
    return out


def compare(
    a: AnalysisResult | Mapping[str, Any],
    b: AnalysisResult | Mapping[str, Any],
    *,
    labels: tuple[str, str] = ("A", "B"),
    scopes: Sequence[str] | None = None,
) -> Comparison:
    """Every quantity of every scope present in both runs (or of `scopes`), a against b.

    a, b: AnalysisResults or analysis JSON documents; labels: names of the two runs in the report; scopes:
    the scopes to compare (None: all in both). UsageError when a named scope is in neither run.
    """
    da, db = as_document(a, labels[0]), as_document(b, labels[1])
    sa, sb = da["scopes"], db["scopes"]
    if scopes is not None:
        unknown = [s for s in scopes if s not in sa and s not in sb]
        if unknown:
            have = ", ".join(_union(sa, sb))
            raise UsageError(f"unknown scope(s) {', '.join(map(repr, unknown))}; the runs have: {have}")
    wanted = list(scopes) if scopes is not None else _union(sa, sb)
    both = tuple(s for s in wanted if s in sa and s in sb)
    changes: list[Change] = []
    for name in both:
        qa = dict(scope_quantities(sa[name], da.get("config")))
        qb = dict(scope_quantities(sb[name], db.get("config")))
        keys = list(qa) + [q for q in qb if q not in qa]
        changes += [Change(name, q, qa.get(q), qb.get(q)) for q in keys]
    return Comparison(
        labels=labels,
        stores=(_store(da), _store(db)),
        scopes=both,
        only=(
            tuple(s for s in wanted if s in sa and s not in sb),
            tuple(s for s in wanted if s in sb and s not in sa),
        ),
        changes=tuple(changes),
        notes=tuple(_config_notes(da, db, labels)),
    )


def to_dict(cmp: Comparison) -> dict[str, Any]:
    """The JSON object of a comparison (schema gradmanifold.compare/1); non-finite numbers become null."""
    return {
        "schema": SCHEMA,
        "labels": list(cmp.labels),
        "stores": [dict(s) for s in cmp.stores],
        "scopes": list(cmp.scopes),
        "only": {cmp.labels[0]: list(cmp.only[0]), cmp.labels[1]: list(cmp.only[1])},
        "changes": [
            {
                "scope": c.scope,
                "quantity": c.quantity,
                "a": _finite(c.a),
                "b": _finite(c.b),
                "diff": _finite(c.diff),
                "rel": _finite(c.rel),
            }
            for c in cmp.changes
        ],
        "notes": list(cmp.notes),
    }


def _ordered(d: Mapping[str, Any], order: Sequence[str]) -> list[tuple[str, Any]]:
    """The items of d, those named in `order` first and in that order."""
    return sorted(d.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))


def _union(sa: Mapping[str, Any], sb: Mapping[str, Any]) -> list[str]:
    return list(sa) + [s for s in sb if s not in sa]


def _store(doc: Mapping[str, Any]) -> dict[str, Any]:
    st = doc.get("store")
    st = st if isinstance(st, Mapping) else {}
    return {"path": st.get("path"), "n_steps": st.get("n_steps"), "k": st.get("k")}


def _config_notes(da: Mapping[str, Any], db: Mapping[str, Any], labels: tuple[str, str]) -> list[str]:
    ca, cb = da.get("config") or {}, db.get("config") or {}
    notes = []
    ka, kb = _store(da)["k"], _store(db)["k"]
    if ka != kb:
        notes.append(f"k differs ({labels[0]}: {ka}, {labels[1]}: {kb}): r* and the intervals depend on k")
    for key in CONFIG_KEYS:
        va, vb = ca.get(key), cb.get(key)
        if va != vb:
            notes.append(f"{key} differs ({labels[0]}: {_show(va)}, {labels[1]}: {_show(vb)})")
    return notes


def _show(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(map(str, v)) or "-"
    return str(v)


def _num(v: Any) -> float | None:
    """A JSON number as it is (ints stay ints: r*, step counts), anything else None."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return v


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None
