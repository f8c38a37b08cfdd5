"""A sweep (several runs analyzed with the same options) as plain data, its JSON `gradmanifold.sweep/1`, and
`check` paths into it.

    {"schema": "gradmanifold.sweep/1", "names": ["lr1e-3.zarr", ...], "runs": [<analysis/1 doc>, ...]}

A run that failed is `{"error": "<one line>", "exit_code": 3, "store": {"path": "<as given>"}}` in place
of its analysis. `check` paths start with a run's name or index: `lr1e-3.zarr.model.kappa.last`,
`0.model.rank.r_star.0.1` (docs/JSON.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradmanifold.errors import UsageError
from gradmanifold.report.checks import Bound, Outcome, evaluate
from gradmanifold.report.json import dumps
from gradmanifold.report.json import to_dict as analysis_dict
from gradmanifold.report.model import AnalysisResult

SWEEP_SCHEMA = "gradmanifold.sweep/1"


@dataclass(frozen=True)
class RunOutcome:
    """One run of a sweep: the store as given, and its result or why it failed (message, exit code)."""

    source: str
    result: AnalysisResult | None
    error: str | None = None
    exit_code: int = 0

    @property
    def ok(self) -> bool:
        return self.result is not None


@dataclass(frozen=True)
class SweepResult:
    """Every run of a sweep, in the order given; `names` are the run names of tables and check paths."""

    runs: tuple[RunOutcome, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return run_names([r.source for r in self.runs])

    @property
    def failed(self) -> tuple[RunOutcome, ...]:
        return tuple(r for r in self.runs if not r.ok)

    @property
    def exit_code(self) -> int:
        """0 when every run succeeded, else the largest exit code of the failed runs (3: a corrupt store)."""
        return max((r.exit_code for r in self.failed), default=0)

    def failure_line(self) -> str:
        """One line naming every failed run and why (for the CLI's single stderr line)."""
        parts = [f"{n}: {r.error}" for n, r in zip(self.names, self.runs, strict=True) if not r.ok]
        line = f"{len(parts)} of {len(self.runs)} runs failed: " + "; ".join(parts)
        return " ".join(line.split())  # a name may hold line breaks (\n, \x1e, \u2028): one line still


def run_names(sources: Sequence[str]) -> tuple[str, ...]:
    """Short names of runs: the last component of each store path or URL (`runs/lr3.zarr/` -> `lr3.zarr`);
    the whole string where two runs share a last component."""
    last = [s.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or s for s in sources]
    return tuple(n if last.count(n) == 1 else s for n, s in zip(last, sources, strict=True))


def to_dict(sweep: SweepResult) -> dict[str, Any]:
    """The JSON object of a sweep (plain data): schema, run names, an analysis document (or failure) a run."""
    runs: list[dict[str, Any]] = []
    for r in sweep.runs:
        if r.result is not None:
            runs.append(analysis_dict(r.result))
        else:
            runs.append({"error": r.error, "exit_code": r.exit_code, "store": {"path": r.source}})
    return {"schema": SWEEP_SCHEMA, "names": list(sweep.names), "runs": runs}


def render(sweep: SweepResult) -> str:
    """The sweep's JSON text (keys sorted, two-space indent, newline-terminated)."""
    return dumps(to_dict(sweep))


def evaluate_sweep(doc: Mapping[str, Any], bounds: Iterable[Bound]) -> list[Outcome]:
    """Resolve and compare every bound in a sweep document; each path starts with a run's name or index.

    doc: the sweep's JSON object; bounds: the parsed --max/--min. A bound on a failed run fails (value
    null); a path naming no run is a UsageError listing the names.
    """
    names = [str(n) for n in doc["names"]]
    keys = {str(i): i for i in range(len(names))} | {n: i for i, n in enumerate(names)}
    out = []
    for b in bounds:
        parts = b.path.split(".")
        hit = None
        for n in range(len(parts) - 1, 0, -1):
            head = ".".join(parts[:n])
            if head in keys:
                hit = (keys[head], ".".join(parts[n:]))
                break
        if hit is None:
            shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
            raise UsageError(
                f"check path {b.path!r}: a sweep's paths start with a run's name or index "
                f"(0..{len(names) - 1}): {shown}; e.g. {names[0]}.model.kappa.last"
            )
        run = doc["runs"][hit[0]]
        if "error" in run:
            out.append(Outcome(b, None, False))
            continue
        (got,) = evaluate(run, [Bound(hit[1], b.op, b.bound)])
        out.append(Outcome(b, got.value, got.ok))
    return out
