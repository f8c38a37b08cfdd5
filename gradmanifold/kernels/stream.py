"""Lanes (the scopes one worker thread owns during an analysis pass) and the pass's read-ahead of chunks.

For its scopes a lane holds the predictor state (ring of the last three rows, EMA vectors), the per-coordinate
error sums of closed windows and of the open one, a buffer of increment rows, and the spectrum accumulators
(exact Gram or Nyström sketch; plus the nested sub-sketches when sketching). `feed` runs the predictor kernel
over a chunk's segments and hands full increment buffers to the accumulators; lanes share nothing, so the
analysis runs one lane per core (BLAS limited to one thread each: no oversubscription, and no cross-thread
synchronisation inside a Gram product, which is what makes multi-threaded BLAS collapse on a busy machine).

Buffers flush after every `cap` rows fed since the last flush or window close, whatever the chunking, so the
Gram is built from the same blocks for any chunk size.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from gradmanifold.kernels.gram import ExactGram, NystromSketch
from gradmanifold.kernels.predict import default_kernel

Accumulator = ExactGram | NystromSketch
Segment = tuple[int, int, bool]  # rows [a, b) of a chunk; close the window after them
Work = tuple[np.ndarray, np.ndarray, np.ndarray, Sequence[Segment]]  # proj, valid, counted, segments
T = TypeVar("T")


@dataclass(frozen=True)
class WindowStats:
    """One scope's numbers for one closed window: counted rows, error sum per predictor, spectrum.

    A window that began before the rows this lane saw (an analysis split into time segments) is kept `raw`:
    its accumulator instead of its eigenvalues, to be added to the other part's and decomposed after.
    """

    n_steps: int
    sums: np.ndarray  # float64 [P]
    eigs: np.ndarray | None  # None when the window holds no increments (or is raw)
    total: float
    raw: Accumulator | None = None


class Lane:
    """Predictor state and accumulators for a set of scopes (each scope a list of group indices)."""

    def __init__(
        self,
        scope_ids: Sequence[int],
        scope_groups: Sequence[Sequence[int]],
        kinds: np.ndarray,
        betas: np.ndarray,
        k: int,
        method: str,
        sketch_rank: int,
        seed: int,
        levels: Sequence[int],
        cap: int,
        windowed: bool = True,
        kernel: object = None,
    ) -> None:
        n = len(scope_ids)
        n_pred = len(kinds)
        self.ids = np.asarray(scope_ids, dtype=np.intp)
        self.members = np.array([g for grp in scope_groups for g in grp], dtype=np.int64)
        self.offsets = np.cumsum([0] + [len(grp) for grp in scope_groups]).astype(np.int64)
        self.kinds, self.betas, self.k, self.cap = kinds, betas, k, cap
        self.kernel = kernel or default_kernel()
        self.hist = np.zeros((n, 3, k))
        self.nseen = np.zeros(n, np.int64)
        self.ema = np.zeros((n, n_pred, k))
        self.acc = np.zeros((n, n_pred, k))  # per-coordinate error sums of closed windows
        self.wacc = np.zeros((n, n_pred, k))  # the same for the open window
        self.count = np.zeros(n, np.int64)
        self.wcount = np.zeros(n, np.int64)
        self.hbuf = np.zeros((n, cap, k))
        self.hcount = np.zeros(n, np.int64)
        self.buffered = 0

        def make(kk: int) -> Accumulator:
            return ExactGram(kk) if method == "exact" else NystromSketch(kk, sketch_rank, seed)

        self.main = [make(k) for _ in range(n)]
        # Without windows the open window is the whole run: accumulate into the totals directly.
        self.win = [make(k) for _ in range(n)] if windowed else self.main
        # A sketch gives only its own spectrum: sketched runs keep one per nested level (exact ones take the
        # leading blocks of the full Gram instead).
        subs = levels[:-1] if method != "exact" else ()
        self.sub: list[dict[int, Accumulator]] = [{kk: make(kk) for kk in subs} for _ in range(n)]
        self.windows: list[list[WindowStats]] = []
        self.raw_closes = 0  # the next reported closes keep the window's accumulator (see WindowStats)

    def feed(
        self,
        proj: np.ndarray,
        valid: np.ndarray,
        counted: np.ndarray,
        segments: Sequence[Segment],
        report_windows: bool,
    ) -> None:
        """Run the chunk's rows [a, b) of each segment; close the window after a segment marked so."""
        v = np.ascontiguousarray(valid[:, self.ids])
        for a0, b, close in segments:
            a = a0
            while a < b:
                e = min(b, a + self.cap - self.buffered)
                self.kernel(  # type: ignore[operator]
                    proj[a:e],
                    self.members,
                    self.offsets,
                    v[a:e],
                    counted[a:e],
                    self.kinds,
                    self.betas,
                    self.hist,
                    self.nseen,
                    self.ema,
                    self.wacc,
                    self.wcount,
                    self.hbuf,
                    self.hcount,
                )
                self.buffered += e - a
                if self.buffered >= self.cap:
                    self.flush()
                a = e
            if close:
                self.close_window(report_windows)

    def flush(self) -> None:
        for i in range(len(self.ids)):
            c = int(self.hcount[i])
            if c:
                h = self.hbuf[i, :c]
                self.win[i].add(h)
                for kk, acc in self.sub[i].items():
                    acc.add(h[:, :kk])
        self.hcount[:] = 0
        self.buffered = 0

    def close_window(self, report: bool) -> None:
        """Fold the open window into the totals (after recording its stats when `report`)."""
        self.flush()
        if report:
            raw = self.raw_closes > 0
            self.raw_closes -= raw
            self.windows.append(self.open_window(raw))
        if self.win is not self.main:
            for i in range(len(self.ids)):
                self.main[i] += self.win[i]  # type: ignore[operator]
                self.win[i].reset()
        self.acc += self.wacc
        self.count += self.wcount
        self.wacc[:] = 0.0
        self.wcount[:] = 0
        self.buffered = 0

    def open_window(self, raw: bool) -> list[WindowStats]:
        """The open window's stats per scope (flushed first): eigenvalues, or with `raw` a copy of the
        accumulator (a window cut by a time segment: its parts are added before the eigenvalues)."""
        self.flush()
        stats = []
        wsum = self.wacc.sum(axis=2)
        for i in range(len(self.ids)):
            w = self.win[i]
            if raw:
                stats.append(
                    WindowStats(int(self.wcount[i]), wsum[i].copy(), None, w.frobenius_sq, deepcopy(w))
                )
            else:
                eigs = w.eigenvalues() if w.n_rows else None
                stats.append(WindowStats(int(self.wcount[i]), wsum[i].copy(), eigs, w.frobenius_sq))
        return stats


def split_scopes(costs: Sequence[float], n_lanes: int) -> list[list[int]]:
    """Scope indices per lane, balancing the summed cost (longest first onto the least loaded lane)."""
    lanes: list[list[int]] = [[] for _ in range(max(1, n_lanes))]
    load = [0.0] * len(lanes)
    for s in sorted(range(len(costs)), key=lambda i: -costs[i]):
        j = load.index(min(load))
        lanes[j].append(s)
        load[j] += costs[s]
    return [sorted(lane) for lane in lanes if lane]


def drive(lanes: Sequence[Lane], work: Iterator[Work], report: bool, depth: int = 4) -> None:
    """Feed every item of `work` to every lane; lanes run in their own threads, up to `depth` items apart.

    Lanes only meet at the end (no barrier per chunk), so per-chunk jitter does not add up. An exception in a
    lane or in `work` stops all lanes and is raised here.
    """
    if len(lanes) == 1:
        for item in work:
            lanes[0].feed(*item, report)
        return
    queues: list[queue.Queue[Work | None]] = [queue.Queue(maxsize=depth) for _ in lanes]
    failed = threading.Event()

    def consume(lane: Lane, q: queue.Queue[Work | None]) -> None:
        while (item := q.get()) is not None:
            if not failed.is_set():
                try:
                    lane.feed(*item, report)
                except BaseException:
                    failed.set()
                    raise

    def put(q: queue.Queue[Work | None], item: Work | None, job: Future[None]) -> None:
        while not job.done():
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue
        job.result()  # the lane died: raise its exception

    with ThreadPoolExecutor(len(lanes), "gradmanifold-lane") as pool:
        jobs = [pool.submit(consume, lane, q) for lane, q in zip(lanes, queues, strict=True)]
        try:
            for item in work:
                for q, job in zip(queues, jobs, strict=True):
                    put(q, item, job)
        except BaseException:
            failed.set()
            raise
        finally:
            for q, job in zip(queues, jobs, strict=True):
                with contextlib.suppress(BaseException):
                    put(q, None, job)
        for job in jobs:
            job.result()


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Limit BLAS to n threads while the lanes run, when threadpoolctl is installed.

    The analysis runs one lane per core, each with one BLAS thread. Measured on a busy 2-core machine: the
    Gram products of two lanes lose half their speed to BLAS threads fighting over the cores; a single lane
    with two BLAS threads took 10 s (12 s of CPU, spinning) where two lanes with one took 2.4 s; a 256 x 256
    eigvalsh (LAPACK evd) takes 6 ms on one thread and 350 ms on two.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # BLAS keeps its own threads: correct, slower on a busy machine
        yield
        return
    with threadpool_limits(limits=max(1, n), user_api="blas"):
        yield


def read_ahead(chunks: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Iterate `chunks` in a background thread, `depth` chunks ahead (reading overlaps the kernels)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker() -> None:
        try:
            for c in chunks:
                if not put(c):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))

    t = threading.Thread(target=worker, name="gradmanifold-read", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
