"""The versioned JSON of an analysis, "gradmanifold.analysis/1" (docs/JSON.md): the contract CI scripts use.

Keys are stable and sorted; NaN and infinities become null; tuples become lists. A change that removes or
renames a key, or changes a value's meaning, needs a new schema version; adding keys does not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from gradmanifold.report.model import AnalysisResult, ScopeResult, WindowResult

SCHEMA = "gradmanifold.analysis/1"
INFO_SCHEMA = "gradmanifold.info/1"


def to_dict(result: AnalysisResult) -> dict[str, Any]:
    """The JSON object of an analysis (plain dicts, lists, numbers, strings, None)."""
    return {
        "schema": SCHEMA,
        "store": _plain(result.store),
        "config": _plain(result.config),
        "scopes": {name: _scope(sc) for name, sc in result.scopes.items()},
        "windows": [_window(w) for w in result.windows],
        "warnings": list(result.warnings),
    }


def render(result: AnalysisResult) -> str:
    """The JSON text: one object, keys sorted, two-space indent, newline-terminated."""
    return dumps(to_dict(result))


def render_info(info: Mapping[str, Any]) -> str:
    """JSON of `gradmanifold info`: the store's own description with a schema tag."""
    return dumps({"schema": INFO_SCHEMA, **info})


def dumps(obj: Any) -> str:
    return json.dumps(_plain(obj), indent=2, sort_keys=True, allow_nan=False) + "\n"


def _scope(sc: ScopeResult) -> dict[str, Any]:
    d = _plain(sc)
    del d["name"]
    nested = d["rank"]["nested"]
    nested["k"] = nested.pop("ks")
    d["self_test"] = {"kappa_zero": d["kappa"].get("zero"), "ok": sc.kappa.get("zero") == 1.0}
    if d["updates"] is None:  # a store without parameter updates: no key (docs/JSON.md)
        del d["updates"]
    return d


def _window(w: WindowResult) -> dict[str, Any]:
    d = _plain(w)
    for sc in d["scopes"].values():
        if sc["updates"] is None:
            del sc["updates"]
    return d


def _plain(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in fields(x)}
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x) if math.isfinite(x) else None
    if hasattr(x, "item"):  # numpy scalar
        return _plain(x.item())
    raise TypeError(f"cannot write {type(x).__name__} to JSON")
