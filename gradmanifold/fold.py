"""The analysis as a fold: a pass over rows [a, b) gives a Partial state, adjacent Partials merge exactly, and
`finalize` (gradmanifold/finalize.py) turns the state of the whole range into the AnalysisResult.

    part = run_segment(src, plan, a, b, carry)          # rows [a, b); `carry`: the predictor state at row a
    carry_b = compose(plan, carry, summarize(src, plan, a, b))
    whole = merge(part_ab, part_bc)                      # adjacent rows, or the same rows and other scopes

`analyze()` is the fold with one segment; `run_local` folds S segments in this process and sweep.py runs the
same tasks on Dask. What crosses a segment boundary, and how each piece stays exact:

- Sums (per-coordinate error sums, counted and excluded rows, exact norms) and the increment accumulators
  (the exact Gram H^T H, the Nyström sketch (H^T H) Omega with the same seeded Omega, the nested sub-sketches)
  are linear in the rows: a merge adds them. They equal one pass up to the order of float additions.
- The predictor state at the boundary: the ring of the last three valid rows of each scope (`last`, `trend`
  and the increment of the segment's first row need it) and one vector per EMA predictor. The EMA's memory
  is infinite, so no short overlap of rows reproduces it; but the state is affine in the state at the
  segment's start: after n valid rows, ema = beta^n ema_in + ema_0, ema_0 being the state reached from zero.
  `summarize` reads a segment and computes its ring and ema_0 (one BLAS product a chunk, no errors, no
  Gram), `compose` chains the summaries from the stream's fresh start in O(S) vector operations, and each
  segment then runs the full kernel from the exact state at its start: the errors of its first rows are
  those of one pass (the ring rows bit for bit, the EMA state to ~1e-16 relative).
  The alternative, correcting the EMA errors afterwards (sum (d - beta^i m)^2 expanded in the unknown start
  state m), needs a k-vector per scope and EMA for every window of the segment, a change of the compiled
  kernel, and cancels badly where the mean gradient dominates; `summarize` costs one more read of every
  segment but the last and leaves nothing to correct.
- Windows cut the counted rows present in order (rows of damaged chunks left out by skip_corrupt belong to
  no window); the carry counts those before the boundary, so a segment knows where it starts in the window
  grid. A window cut by a boundary keeps its raw accumulator in both parts until the merge adds them and
  takes the eigenvalues.
- Parameter-update statistics (update_pass.py) keep every per-step value for exact quantiles and have no
  merge: with more than one segment they come from one extra whole-stream task per store (`run_updates`:
  no predictor kernel, no Gram); with one segment they ride along in its pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from gradmanifold import spectrum as sp
from gradmanifold.analysis import _by_scope
from gradmanifold.predictors import EMA
from gradmanifold.store.chunk import Chunk, ChunkSource

if TYPE_CHECKING:
    from gradmanifold.analysis import _Plan
    from gradmanifold.kernels.stream import Accumulator, Lane, WindowStats, Work
    from gradmanifold.report.model import AnalysisResult, StoreSummary

BUFFER_BYTES = 2 << 20  # increment rows buffered per scope before one Gram product (~1000 rows at k = 256)

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------------------------- state


@dataclass(frozen=True)
class Carry:
    """The predictor state of every scope of a plan at a row boundary, and the counted rows before it."""

    nseen: np.ndarray  # int64 [S]: valid rows seen per scope
    hist: (
        np.ndarray
    )  # float64 [S, 3, k]: the kernel's ring of the last three valid rows (row i at slot i % 3)
    ema: np.ndarray  # float64 [S, P, k]: EMA states (rows of other predictors unused, zero)
    counted_rows: int  # rows present at or after the first counted row, before the boundary

    @classmethod
    def fresh(cls, plan: _Plan, k: int) -> Carry:
        """The state at the first row of the range: nothing seen (every predictor starts at m = 0)."""
        n, p = len(plan.scope_names), len(plan.predictors)
        return cls(np.zeros(n, np.int64), np.zeros((n, 3, k)), np.zeros((n, p, k)), 0)


@dataclass(frozen=True)
class Summary:
    """What a segment does to a Carry: valid rows per scope, the ring and the EMA states it reaches from a
    fresh start, and its counted rows present (see `compose`)."""

    nseen: np.ndarray
    hist: np.ndarray
    ema: np.ndarray
    counted_rows: int


@dataclass
class ScopePart:
    """One scope's sums over a span of rows: error sums per predictor and coordinate, increment Grams."""

    acc: np.ndarray  # float64 [P, k]
    count: int  # counted valid rows
    main: Accumulator  # increment Gram or sketch at full k
    sub: dict[int, Accumulator]  # nested sub-sketches (randomized only)
    exact_sq: float  # sum of the recorded exact squared norms of counted valid rows
    excluded: int  # counted rows missing for this scope (flagged, or in a damaged chunk left out)


@dataclass
class WindowPart:
    """One window's share of a span: its rows present, and per scope its stats (raw until it is whole)."""

    index: int
    first_step: int | None
    last_step: int
    n_rows: int
    begins: bool  # the window starts in this span
    ends: bool  # the window closes in this span
    stats: dict[int, WindowStats]


@dataclass
class Partial:
    """The state of the analysis over rows [lo, hi) for some scopes: merge adjacent ones, then finalize."""

    lo: int
    hi: int
    scopes: dict[int, ScopePart]
    windows: list[WindowPart]
    first_step: int | None  # first and last counted step present
    last_step: int | None
    skipped: list[Any]  # ExcludedChunk of the damaged chunks left out (skip_corrupt), in row order
    updates: dict[str, Any] | None = None  # {"run": [per scope], "windows": [[per scope] per window]}


# ---------------------------------------------------------------------------------------------- carry


def summarize(source: ChunkSource | str, plan: _Plan, a: int, b: int) -> Summary:
    """Phase one of a segmented run: the predictor state rows [a, b) reach from a fresh start.

    Parameters: source: a ChunkSource or a store path; plan: the analysis plan; a, b: the rows.
    Per chunk and scope: the valid rows summed over the scope's groups in the kernel's order (so the ring's
    rows are the kernel's bit for bit), and each EMA state advanced over them in one BLAS product,
    ema <- beta^n ema + sum_i (1 - beta) beta^(n-1-i) x_i, instead of the kernel's row-by-row recursion (the
    same sum, rounded otherwise: ~1e-16 relative). No error, no increment, no Gram.
    """
    from gradmanifold.kernels.stream import read_ahead

    src = _open(source)
    fresh = Carry.fresh(plan, src.k)
    nseen, hist, ema = fresh.nseen, fresh.hist, fresh.ema
    kinds, betas = _kinds(plan)
    is_ema = np.flatnonzero(kinds == EMA)
    b_ema = betas[is_ema]
    weights: dict[int, np.ndarray] = {}
    counted_rows = 0
    for chunk in read_ahead(_chunks(src, plan, a, b)):
        valid = valid_rows(plan, chunk)
        proj = np.ascontiguousarray(chunk.proj.transpose(1, 0, 2), dtype=np.float64)  # [G, n, k], exact
        for s in range(len(plan.scope_names)):
            ok = valid[:, s]
            n = int(np.count_nonzero(ok))
            if not n:
                continue
            members = plan.members[plan.offsets[s] : plan.offsets[s + 1]]
            x = proj[members[0]]
            if len(members) > 1:  # the kernel's sum: ((g0 + g1) + g2) + ...
                x = x + proj[members[1]]
                for g in members[2:]:
                    x += proj[g]
            if n < chunk.n:
                x = x[ok]
            if len(is_ema):
                if n not in weights:  # (1 - beta) beta^(n-1-i) for i < n, one row per EMA predictor
                    weights[n] = (1.0 - b_ema)[:, None] * b_ema[:, None] ** np.arange(n - 1, -1, -1.0)
                ema[s, is_ema] = (b_ema**n)[:, None] * ema[s, is_ema] + weights[n] @ x
            for i in range(max(0, n - 3), n):
                hist[s, (int(nseen[s]) + i) % 3] = x[i]
            nseen[s] += n
        counted_rows += int(np.count_nonzero(np.arange(chunk.row0, chunk.row0 + chunk.n) >= plan.count_lo))
    return Summary(nseen, hist, ema, counted_rows)


def compose(plan: _Plan, carry: Carry, summary: Summary) -> Carry:
    """The Carry after a segment, from the Carry before it and the segment's Summary.

    Parameters: plan: the analysis plan; carry: the state at the segment's first row; summary: what
    `summarize` gave for the segment. EMA: beta^n ema_in + ema_0 (n: the segment's valid rows of the scope);
    ring: the last three valid rows of the carry's rows followed by the segment's; counts add.
    """
    kinds, betas = _kinds(plan)
    n = summary.nseen
    nseen = carry.nseen + n
    decay = np.where(kinds[None, :] == EMA, betas[None, :] ** n[:, None].astype(np.float64), 0.0)
    ema = decay[:, :, None] * carry.ema + summary.ema
    hist = np.zeros_like(carry.hist)
    for s in range(len(n)):
        rows = [carry.hist[s, i % 3] for i in range(max(0, int(carry.nseen[s]) - 3), int(carry.nseen[s]))]
        rows += [summary.hist[s, i % 3] for i in range(max(0, int(n[s]) - 3), int(n[s]))]
        rows = rows[-3:]
        for q, row in enumerate(rows):
            hist[s, (int(nseen[s]) - len(rows) + q) % 3] = row
    return Carry(nseen, hist, ema, carry.counted_rows + summary.counted_rows)


# ---------------------------------------------------------------------------------------------- the pass


def run_segment(
    source: ChunkSource | str,
    plan: _Plan,
    a: int,
    b: int,
    carry: Carry,
    scopes: Sequence[int] | None = None,
    updates: bool = False,
    progress: Progress | None = None,
) -> Partial:
    """Phase two: the full pass over rows [a, b) from the predictor state `carry`, for some scopes.

    Parameters: source: a ChunkSource or a store path; plan: the analysis plan; a, b: the rows; carry: the
    state at row a (Carry.fresh for the first segment); scopes: the plan's scope indices to compute (None:
    all); updates: also the parameter-update statistics (only for a pass over the whole range, all scopes);
    progress: called with (rows done, rows in the segment) after each chunk.
    """
    return _Pass(_open(source), plan, a, b, carry, scopes, updates, progress).run()


def run_updates(source: ChunkSource | str, plan: _Plan) -> dict[str, Any] | None:
    """The parameter-update statistics of the whole range (a segmented run's extra task; None without)."""
    src = _open(source)
    if not getattr(src, "updates", None):
        return None
    p = _Pass(src, plan, plan.lo, plan.hi, Carry.fresh(plan, src.k), (), True, None)
    return p.run().updates


class _Pass:
    """One pass over rows [a, b): reads chunks ahead (a thread), cuts them at window ends, feeds the lanes."""

    def __init__(
        self,
        src: ChunkSource,
        plan: _Plan,
        a: int,
        b: int,
        carry: Carry,
        scopes: Sequence[int] | None,
        updates: bool,
        progress: Progress | None,
    ) -> None:
        from gradmanifold.kernels.stream import Lane, split_scopes
        from gradmanifold.update_pass import UpdatePass

        self.src, self.plan, self.a, self.b, self.progress = src, plan, a, b, progress
        k, n_scopes = src.k, len(plan.scope_names)
        self.ids = tuple(range(n_scopes)) if scopes is None else tuple(sorted(scopes))
        self.levels = sp.nested_levels(k)
        kinds, betas = _kinds(plan)
        groups = {s: plan.members[plan.offsets[s] : plan.offsets[s + 1]].tolist() for s in self.ids}
        # Cost of a scope: the Gram (k / 2 a row) plus the kernel's reads (one k-row per group).
        costs = [k / 2 + 4 * len(groups[s]) + 2 * len(plan.predictors) for s in self.ids]
        cap = max(64, BUFFER_BYTES // (8 * k))
        window = plan.cfg.window
        self.lanes: list[Lane] = []
        for pos in split_scopes(costs, min(len(self.ids), plan.workers)) if self.ids else ():
            ids = [self.ids[i] for i in pos]
            lane = Lane(
                ids,
                [groups[s] for s in ids],
                kinds,
                betas,
                k,
                plan.method,
                plan.sketch_rank or k,
                plan.cfg.seed,
                self.levels,
                cap,
                windowed=window is not None,
            )
            for li, s in enumerate(ids):
                lane.hist[li], lane.nseen[li], lane.ema[li] = carry.hist[s], carry.nseen[s], carry.ema[s]
            self.lanes.append(lane)
        self.where = {s: (lane, i) for lane in self.lanes for i, s in enumerate(lane.ids.tolist())}
        # Where the segment starts in the window grid; a window begun before it closes raw in each lane.
        self.win_index, self.win_rows = divmod(carry.counted_rows, window) if window else (0, 0)
        for lane in self.lanes:
            lane.raw_closes = int(self.win_rows > 0)
        self.part_first: int | None = None
        self.part_last = 0
        self.part_rows = 0
        self.begins = self.win_rows == 0
        self.parts: list[
            tuple[int, int | None, int, int, bool]
        ] = []  # closed: index, first, last, rows, begins
        self.excluded = np.zeros(n_scopes, np.int64)
        self.exact_sq = np.zeros(n_scopes)
        self.first_step: int | None = None
        self.last_step: int | None = None
        norms = getattr(src, "updates", None)  # a store with parameter updates: their statistics too
        self.upd = UpdatePass(plan.sel, n_scopes, k, norms, plan.scope_cols) if updates and norms else None

    def run(self) -> Partial:
        from gradmanifold.kernels.stream import drive, read_ahead

        plan, window = self.plan, self.plan.cfg.window
        done, total = 0, self.b - self.a

        def work() -> Iterator[Work]:
            nonlocal done
            for chunk in read_ahead(_chunks(self.src, plan, self.a, self.b)):
                yield self._prepare(chunk)
                done += chunk.n
                if self.progress is not None:
                    self.progress(done, total)

        if self.lanes:
            drive(self.lanes, work(), window is not None)
        else:
            for _ in work():
                pass
        skipped = list(getattr(self.src, "excluded", ())) if plan.cfg.skip_corrupt else []
        for ex in skipped:  # rows of damaged chunks left out are missing rows of every scope
            self.excluded += max(0, min(ex.row_stop, plan.hi) - max(ex.row_start, plan.count_lo))
        windows = self._windows()
        scopes = {}
        for s in self.ids:
            lane, li = self.where[s]
            scopes[s] = ScopePart(
                acc=lane.acc[li].copy(),
                count=int(lane.count[li]),
                main=lane.main[li],
                sub=lane.sub[li],
                exact_sq=float(self.exact_sq[s]),
                excluded=int(self.excluded[s]),
            )
        return Partial(
            self.a, self.b, scopes, windows, self.first_step, self.last_step, skipped, self._updates()
        )

    def _windows(self) -> list[WindowPart]:
        """The window parts of the pass (closed ones as the lanes recorded them, then the open one, raw);
        folds the open window into each lane's totals."""
        window = self.plan.cfg.window
        stats: list[dict[int, WindowStats]] = [{} for _ in self.parts]
        tail: dict[int, WindowStats] = {}
        for lane in self.lanes:
            for w, per in enumerate(lane.windows):
                stats[w].update(zip(lane.ids.tolist(), per, strict=True))
            if window is not None and self.part_rows:
                tail.update(zip(lane.ids.tolist(), lane.open_window(raw=True), strict=True))
            lane.close_window(False)
        out = [
            WindowPart(i, first, last, rows, begins, True, st)
            for (i, first, last, rows, begins), st in zip(self.parts, stats, strict=True)
        ]
        if window is not None and self.part_rows:
            out.append(
                WindowPart(
                    self.win_index, self.part_first, self.part_last, self.part_rows, self.begins, False, tail
                )
            )
        return out

    def _updates(self) -> dict[str, Any] | None:
        if self.upd is None:
            return None
        if self.plan.cfg.window is not None and (self.win_rows or not self.parts):
            self.upd.close_window()  # the last (partial) window ends with the stream
        self.upd.finish()
        n = len(self.plan.scope_names)
        return {
            "run": [self.upd.result(s) for s in range(n)],
            "windows": [[self.upd.window(w, s) for s in range(n)] for w in range(len(self.upd.windows))],
        }

    def _prepare(self, chunk: Chunk) -> Work:
        """Validity and counting masks of a chunk, its bookkeeping, and its segments (cut at window ends)."""
        plan = self.plan
        window = plan.cfg.window
        n, r0 = chunk.n, chunk.row0
        proj = np.ascontiguousarray(chunk.proj, dtype=np.float32)
        valid = valid_rows(plan, chunk)
        counted = np.arange(r0, r0 + n) >= plan.count_lo
        cv = valid & counted[:, None]
        sq = np.asarray(chunk.sqnorm, dtype=np.float64)[:, list(plan.sel)]
        self.exact_sq[0] += float(sq.sum(axis=1)[cv[:, 0]].sum())
        if len(plan.scope_names) > 1:
            per = sq if plan.scope_cols is None else _by_scope(sq, plan.scope_cols)
            self.exact_sq[1:] += np.where(cv[:, 1:], per, 0.0).sum(axis=0)
        self.excluded += (counted[:, None] & ~valid).sum(axis=0)
        segments = []
        a = 0
        while a < n:
            if r0 + a < plan.count_lo:
                b, close = min(n, plan.count_lo - r0), False
            else:
                b = n if window is None else min(n, a + window - self.win_rows)
                if self.part_first is None:
                    self.part_first = int(chunk.step[a])
                if self.first_step is None:
                    self.first_step = int(chunk.step[a])
                self.part_last = self.last_step = int(chunk.step[b - 1])
                self.win_rows += b - a
                self.part_rows += b - a
                close = window is not None and self.win_rows == window
                if close:
                    self.parts.append(
                        (self.win_index, self.part_first, self.part_last, self.part_rows, self.begins)
                    )
                    self.win_index += 1
                    self.win_rows = self.part_rows = 0
                    self.part_first, self.begins = None, True
            segments.append((a, b, close))
            a = b
        if self.upd is not None:
            self.upd.feed(chunk, valid, counted, segments)
        return proj, valid, counted, segments


def valid_rows(plan: _Plan, chunk: Chunk) -> np.ndarray:
    """bool [n, S]: row valid for each scope (the model: no selected group flagged; a group: its own flag;
    a module: none of its groups flagged)."""
    bad = chunk.flags[:, list(plan.sel)] != 0
    valid = np.empty((chunk.n, len(plan.scope_names)), dtype=np.bool_)
    valid[:, 0] = ~bad.any(axis=1)
    if len(plan.scope_names) > 1:
        valid[:, 1:] = ~bad if plan.scope_cols is None else _by_scope(bad, plan.scope_cols) == 0
    return valid


# ---------------------------------------------------------------------------------------------- merge


def merge(a: Partial, b: Partial) -> Partial:
    """The state of two spans: adjacent rows (a before b, the same scopes) or the same rows (other scopes).

    Sums and accumulators add (copies: the inputs are left as they are); a window cut by the boundary is
    joined, and decomposed once whole.
    """
    if (a.lo, a.hi) == (b.lo, b.hi) and not set(a.scopes) & set(b.scopes):
        windows = [
            replace(x, stats={**x.stats, **y.stats}) for x, y in zip(a.windows, b.windows, strict=True)
        ]
        scopes = dict(sorted({**a.scopes, **b.scopes}.items()))
        return Partial(
            a.lo, a.hi, scopes, windows, a.first_step, a.last_step, a.skipped, a.updates or b.updates
        )
    if a.hi != b.lo or set(a.scopes) != set(b.scopes):
        raise ValueError(f"cannot merge rows [{a.lo}, {a.hi}) and [{b.lo}, {b.hi}) of other scopes")
    scopes = {s: _add_scope(a.scopes[s], b.scopes[s]) for s in a.scopes}
    windows = list(a.windows[:-1]) if a.windows else []
    rest = list(b.windows)
    if a.windows:
        last = a.windows[-1]
        if rest and not last.ends and not rest[0].begins and rest[0].index == last.index:
            windows.append(_join(last, rest.pop(0)))
        else:
            windows.append(last)
    skipped = list(a.skipped)
    more = list(b.skipped)
    if skipped and more and skipped[-1].index == more[0].index and skipped[-1].row_stop == more[0].row_start:
        skipped[-1] = replace(skipped[-1], row_stop=more.pop(0).row_stop)  # one chunk cut by the boundary
    return Partial(
        a.lo,
        b.hi,
        scopes,
        windows + rest,
        a.first_step if a.first_step is not None else b.first_step,
        b.last_step if b.last_step is not None else a.last_step,
        skipped + more,
        a.updates or b.updates,
    )


def settle(part: WindowPart) -> WindowPart:
    """A window part that is the whole window (or ends with the stream): its raw stats decomposed."""
    from gradmanifold.kernels.stream import WindowStats

    stats = {}
    for s, st in part.stats.items():
        if st.raw is not None:
            acc = st.raw
            st = WindowStats(st.n_steps, st.sums, acc.eigenvalues() if acc.n_rows else None, acc.frobenius_sq)
        stats[s] = st
    return replace(part, begins=True, ends=True, stats=stats)


def _join(x: WindowPart, y: WindowPart) -> WindowPart:
    from gradmanifold.kernels.stream import WindowStats

    stats = {}
    for s, p in x.stats.items():
        q = y.stats[s]
        assert p.raw is not None and q.raw is not None, "a window cut by a boundary is raw in both parts"
        raw = deepcopy(p.raw)
        raw += q.raw  # type: ignore[operator]
        stats[s] = WindowStats(p.n_steps + q.n_steps, p.sums + q.sums, None, raw.frobenius_sq, raw)
    first = x.first_step if x.first_step is not None else y.first_step
    part = WindowPart(x.index, first, y.last_step, x.n_rows + y.n_rows, x.begins, y.ends, stats)
    return settle(part) if part.begins and part.ends else part


def _add_scope(p: ScopePart, q: ScopePart) -> ScopePart:
    main = deepcopy(p.main)
    main += q.main  # type: ignore[operator]
    sub = {}
    for kk, acc in p.sub.items():
        sub[kk] = deepcopy(acc)
        sub[kk] += q.sub[kk]  # type: ignore[operator]
    return ScopePart(
        p.acc + q.acc, p.count + q.count, main, sub, p.exact_sq + q.exact_sq, p.excluded + q.excluded
    )


# ---------------------------------------------------------------------------------------------- driving


def bounds(plan: _Plan, segments: int) -> list[int]:
    """Row boundaries of `segments` near-equal time segments of the range (at most one a row)."""
    n = max(1, min(int(segments), plan.hi - plan.lo))
    return [plan.lo + (j * (plan.hi - plan.lo)) // n for j in range(n + 1)]


def run_local(
    src: ChunkSource,
    plan: _Plan,
    store: StoreSummary,
    segments: int = 1,
    progress: Progress | None = None,
) -> AnalysisResult:
    """The fold in this process: S segments one after the other, chained as a Dask run chains them.

    Parameters: src: the opened source; plan: its plan; store: its summary (for the result); segments: S
    (one: the plain single pass); progress: (rows done, rows in the range) after each chunk.
    """
    from gradmanifold.finalize import finalize

    cuts = bounds(plan, segments)
    total = plan.hi - plan.lo
    carry = Carry.fresh(plan, src.k)
    whole: Partial | None = None
    for a, b in pairwise(cuts):
        report = None if progress is None else _offset(progress, a - plan.lo, total)
        part = run_segment(src, plan, a, b, carry, None, len(cuts) == 2, report)
        if b < plan.hi:
            carry = compose(plan, carry, summarize(src, plan, a, b))
        whole = part if whole is None else merge(whole, part)
    assert whole is not None
    upd = run_updates(src, plan) if len(cuts) > 2 else None
    return finalize(plan, store, whole, upd)


def _offset(progress: Progress, before: int, total: int) -> Progress:
    return lambda done, _n: progress(before + done, total)


# ---------------------------------------------------------------------------------------------- helpers


def _open(source: ChunkSource | str) -> ChunkSource:
    if isinstance(source, str):
        from gradmanifold.store import open_store

        return open_store(source)
    return source


def _chunks(src: ChunkSource, plan: _Plan, a: int, b: int) -> Iterator[Chunk]:
    if plan.cfg.skip_corrupt:
        return src.iter_chunks(a, b, None, plan.cfg.chunk_rows, skip_corrupt=True)  # type: ignore[call-arg]
    return src.iter_chunks(a, b, None, plan.cfg.chunk_rows)


def _kinds(plan: _Plan) -> tuple[np.ndarray, np.ndarray]:
    kinds = np.array([p.kind for p in plan.predictors], dtype=np.int64)
    betas = np.array([p.beta for p in plan.predictors], dtype=np.float64)
    return kinds, betas
