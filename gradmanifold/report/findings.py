"""The warnings under the tables, one line per kind of finding (the JSON's `warnings` keeps every one).

Per-scope warnings of one kind become one line with a count and the worst scope as the example:

    24 of 28 scopes: r* still grows with k (most: h.0.mlp.c_fc.weight, r*(0.01) 50->79->111 at k = ...);
    a sketch biases r* low when the increment spectrum is flat: record with k >= 2048

Kinds read from the scopes: r* still grows with k (worst: the largest k asked for), r* beyond the sketch
rank, excluded steps (worst: the most). Any other warning repeated with only its numbers or scope changed is
counted the same way, so a new kind of warning never floods the terminal either.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from gradmanifold.report.model import AnalysisResult, ScopeResult

DETAILS = "per scope in --json"


def summarize(result: AnalysisResult) -> list[str]:
    """The warning lines to print: each kind once, in the order kinds first appear in result.warnings."""
    names = sorted(result.scopes, key=len, reverse=True)
    n_scopes = 1 if len(result.scopes) == 2 else len(result.scopes)  # one group: its scope is the model's
    kinds: dict[str, list[tuple[str | None, str, str]]] = {}
    for w in result.warnings:
        scope = next((s for s in names if w.startswith(s + ": ")), None)
        rest = w[len(scope) + 2 :] if scope is not None else w
        kinds.setdefault(_kind(rest, scope is not None), []).append((scope, rest, w))
    lines = []
    for kind, items in kinds.items():
        if len(items) == 1:
            lines.append(items[0][2])
            continue
        scopes = [result.scopes[s] for s, _, _ in items if s is not None]
        line = _LINES[kind](result, scopes) if kind in _LINES and len(scopes) == len(items) else None
        if line is None:  # a kind without its own line: the count and the first example
            scope, rest, w = items[0]
            head = f"{len(items)} of {n_scopes} scopes" if scope is not None else f"{len(items)} warnings"
            line = f"{head} like: {w}"
        elif len(scopes):
            line = f"{len(scopes)} of {n_scopes} scopes: {line}"
        lines.append(f"{line} ({DETAILS})")
    return lines


def _kind(rest: str, per_scope: bool) -> str:
    """The kind of a warning: a known one, else its text without numbers and parentheses."""
    if per_scope and rest.startswith("r* still grows with k"):
        return "k"
    if per_scope and rest.startswith("r*(") and "sketch rank" in rest:
        return "sketch"
    if per_scope and re.match(r"\d+ [a-z ]*step\(s\) excluded", rest):
        return "excluded"
    shape = re.sub(r"\d+(\.\d+)?", "#", re.sub(r"\([^)]*\)", "()", rest))
    return ("scope: " if per_scope else "") + shape


def _moves(sc: ScopeResult) -> str:
    """How r* of the smallest eps that still moves grows with k: "r*(0.01) 63->123->229 at k = 64,128,256"."""
    nested = sc.rank.nested
    e = min(nested.moving, key=float)
    moves = "->".join("?" if r is None else str(r) for r in nested.r_star[e])
    return f"r*({e}) {moves} at k = {','.join(str(k) for k in nested.ks)}"


def _k_line(result: AnalysisResult, scopes: list[ScopeResult]) -> str:
    def worst(sc: ScopeResult) -> tuple[int, int]:
        nested = sc.rank.nested
        last = [r[-1] for e, r in nested.r_star.items() if e in nested.moving and r and r[-1] is not None]
        return nested.suggested_k or 0, max(last, default=0)

    sc = max(scopes, key=worst)
    k = max(s.rank.nested.suggested_k or 0 for s in scopes)
    return (
        f"r* still grows with k (most: {sc.name}, {_moves(sc)}); a sketch biases r* low when the increment "
        f"spectrum is flat: record with k >= {k}"
    )


def _sketch_line(result: AnalysisResult, scopes: list[ScopeResult]) -> str:
    eps = [repr(float(e)) for e in result.config.eps]
    missing = [e for e in eps if any(sc.rank.r_star.get(e, 0) is None for sc in scopes)]
    return (
        f"r*({', '.join(missing)}) exceeds the sketch rank {result.config.sketch_rank}; rerun with a larger "
        "--sketch-rank or --svd exact"
    )


def _excluded_line(result: AnalysisResult, scopes: list[ScopeResult]) -> str:
    sc = max(scopes, key=lambda s: s.excluded_steps)
    damaged = any(w.startswith("damaged ") for w in result.warnings)
    what = "flagged or damaged" if damaged else "flagged"
    if all(s.excluded_steps == sc.excluded_steps for s in scopes):
        return f"{sc.excluded_steps} {what} step(s) excluded in each"
    return f"up to {sc.excluded_steps} {what} step(s) excluded (most: {sc.name})"


_LINES: dict[str, Callable[[AnalysisResult, list[ScopeResult]], str]] = {
    "k": _k_line,
    "sketch": _sketch_line,
    "excluded": _excluded_line,
}
