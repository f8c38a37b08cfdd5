"""The Recorder's hot path: one step's gradients projected by one kernel call, off the training thread.

At record() the training thread only copies: the CPU gradients of a step go into one flat float32 (and, for
float64 tensors, one float64) buffer, in the order the step gives them. Tensors that should not be copied (on
a device, where the projection stays on the device and only k + 1 numbers come back; larger than
BATCH_MAX_ELEMENTS; not a plain float array) are projected there and then, one call each. A background thread
then projects the buffers with one kernel call (gradmanifold.kernels.projection.sparse_segments, which
releases the GIL), adds the tensors into their groups in tensor order, and appends the row.

Same bits as one project_with_norm call per tensor: each tensor is summed in the same order by the same
arithmetic, and tensors are added into their group in the order of the step, whichever thread does it.

Bounded: at most `depth` steps wait (record() blocks when they do: it never drops a step and never grows
without bound), and the copies waiting stay under max(BYTES_IN_FLIGHT, one step's copies), besides the step
being copied.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradmanifold.errors import NonFiniteGradientError
from gradmanifold.passive import copy_value, numel, spectra_row
from gradmanifold.projection import ProjectionSpec, _keys
from gradmanifold.sharded import member_of, project_local

#: CPU tensors up to this many elements are copied into the step's buffer; larger ones are projected at once
BATCH_MAX_ELEMENTS = 1 << 22
#: bytes of copies (gradients, parameters, spectra layers) that may wait for the background thread
BYTES_IN_FLIGHT = 256 << 20
#: threads="auto": a step whose copies reach this many bytes (1M float32 values, ~0.5 ms of projection on one
#: core) is projected on the background thread; smaller ones cost less on the training thread
AUTO_BACKGROUND_BYTES = 4 << 20
FLAG_NONFINITE = 1  # a row flag: the group's gradient was not finite (store.FLAG_NONFINITE)
_F32 = ("float32", "float16", "bfloat16")


@dataclass
class _Plan:
    """Where each tensor of a step goes, for one sequence of (name, route, shape): built once, reused every
    step."""

    names: tuple[str, ...]
    group: np.ndarray  # int64 [tensors]: group index
    present: np.ndarray  # bool [tensors]: the tensor has a gradient (read only: shared by the plan's jobs)
    segs: dict[str, np.ndarray]  # "f32"/"f64" -> int64 [5, segments]: rows lo, n, base, key, row
    size: dict[str, int]  # buffer elements per dtype
    copy: dict[str, list[tuple[int, int, int]]]  # dtype -> (tensor index, lo, hi) in the buffer
    shapes: tuple[Any, ...]  # each tensor's shape (the copies' destination views have it)
    exact: dict[str, bool]  # dtype -> every tensor copied there has the buffer's dtype (one foreach copy)
    direct: list[int]  # tensors projected on the calling thread


class _Buffers:
    """One step's copy buffers (a float32 and a float64 one), and the torch views of them that each plan
    copies into (made once per plan: a view costs ~1 us a tensor)."""

    __slots__ = ("arrays", "nbytes", "size", "views")

    def __init__(self, size: dict[str, int]) -> None:
        self.arrays = {dt: np.empty(n, np.float32 if dt == "f32" else np.float64) for dt, n in size.items()}
        self.size = dict(size)
        self.nbytes = sum(b.nbytes for b in self.arrays.values())
        self.views: dict[int, tuple[_Plan, dict[str, list[Any]]]] = {}

    def views_for(self, plan: _Plan) -> dict[str, list[Any]]:
        """dtype -> the destination view of each copied tensor, shaped like it (torch tensors only)."""
        got = self.views.get(id(plan))
        if got is not None and got[0] is plan:
            return got[1]
        import torch

        out = {}
        for dt, copies in plan.copy.items():
            flat = torch.from_numpy(self.arrays[dt])
            out[dt] = [flat[lo:hi].view(plan.shapes[i]) for i, lo, hi in copies]
        if len(self.views) > 8:
            self.views.clear()
        self.views[id(plan)] = (plan, out)  # the plan is kept with its views: its id is never reused here
        return out


@dataclass(slots=True)
class Job:
    """One recorded step between the training thread and the background thread."""

    step: int
    plan: _Plan
    bufs: _Buffers | None
    z: np.ndarray  # float64 [tensors, k + 1]: scaled projection and squared norm of each tensor
    present: np.ndarray  # bool [tensors]
    loss: float | None = None
    lr: float | None = None
    params: list[tuple[str, Any]] | None = None  # the parameters (updates), copied when owned
    params_owned: bool = False
    spectra: list[tuple[str, Any]] | None = None  # copies of the matrix layers' gradients (spectra steps)
    nbytes: int = 0
    # filled by the computing part (Recorder._work)
    p32: np.ndarray | None = None  # float32 [G, k], the stored projection
    sq: np.ndarray | None = None  # float64 [G], squared norms
    flags: np.ndarray | None = None  # uint8 [G]
    update: np.ndarray | None = None
    update_sq: np.ndarray | None = None
    spectra_row: dict[str, np.ndarray] | None = None
    skipped: bool = False


_NO_SEGS = np.zeros((5, 0), np.int64)
_NO32 = np.zeros(0, np.float32)
_NO64 = np.zeros(0, np.float64)


class StepProjector:
    """Projects the tensors of a step into per-tensor rows and adds them into groups.

    spec: the projection. group_names: the groups, by index. where: tensor name -> (group index, member with
    .offset and .size), the recorded layout.
    """

    def __init__(self, spec: ProjectionSpec, group_names: list[str], where: Mapping[str, tuple[int, Any]]):
        self.spec = spec
        self.group_names = group_names
        self.where = where
        self._plans: dict[tuple[tuple[str, str, int, Any], ...], _Plan] = {}
        # buffers not in use, shared with the background thread: deque append/pop are atomic, so no lock (a
        # signal handler that drains the queue while record() is here must not wait on one)
        self._free: deque[_Buffers] = deque(maxlen=2)
        self._segments: Any = None  # gradmanifold.kernels.segments, loaded at the first projection
        if spec.kind == "sparse":
            keys = [_keys(int(spec.seed), g, spec.s) for g in group_names]
            self._kshift = np.stack([kk.kshift for kk in keys]) if keys else np.zeros((0, spec.s), np.uint64)
            self._ksign = np.stack([kk.ksign for kk in keys]) if keys else np.zeros((0, spec.s), np.uint64)

    # ------------------------------------------------------------------ training thread
    def snapshot(self, step: int, named: list[tuple[str, Any]]) -> Job:
        """Copy (or project at once) this step's tensors; the returned Job owns what it needs."""
        routes = _routes(named)
        plan = self._plans.get(routes)
        if plan is None:
            plan = self._plan(routes, named)
        k = self.spec.k
        try:
            bufs = self._free.pop()
        except IndexError:
            bufs = None
        if bufs is None or bufs.size != plan.size:
            # a step of another shape (routes changed): its buffers are dropped, never kept per plan
            bufs = _Buffers(plan.size)
        z = np.empty((len(named), k + 1))  # every present row is written before it is read
        if plan.copy:
            _fill(bufs, plan, named)
        for i in plan.direct:
            name, x = named[i]
            gi, member = self.where[name]
            zi, qi = project_local(x, self.spec, self.group_names[gi], member.offset, True)
            z[i, :k] = zi
            z[i, k] = qi
        return Job(int(step), plan, bufs, z, plan.present, nbytes=bufs.nbytes)

    def _plan(self, routes: tuple[tuple[str, str, int, Any], ...], named: list[tuple[str, Any]]) -> _Plan:
        group = np.zeros(len(routes), np.int64)
        segs: dict[str, list[tuple[int, int, int, int, int]]] = {"f32": [], "f64": []}
        copy: dict[str, list[tuple[int, int, int]]] = {"f32": [], "f64": []}
        exact = {"f32": True, "f64": True}
        size = {"f32": 0, "f64": 0}
        direct = []
        for i, (name, route, n, _) in enumerate(routes):
            gi, member = member_of(self.where, name, None if route == "none" else n)
            group[i] = gi
            if route == "none":
                continue
            if route == "direct":
                direct.append(i)
                continue
            lo = size[route]
            size[route] = lo + n
            segs[route].append((lo, n, member.offset, gi, i))
            copy[route].append((i, lo, lo + n))
            exact[route] &= _dtype_name(named[i][1]) == ("float32" if route == "f32" else "float64")
        present = np.array([r[1] != "none" for r in routes], dtype=np.bool_)
        present.flags.writeable = False
        plan = _Plan(
            names=tuple(r[0] for r in routes),
            group=group,
            present=present,
            segs={dt: np.array(v, np.int64).T.copy() for dt, v in segs.items() if v},
            size={dt: n for dt, n in size.items() if n},
            copy={dt: v for dt, v in copy.items() if v},
            shapes=tuple(r[3] for r in routes),
            exact=exact,
            direct=direct,
        )
        if len(self._plans) > 64:  # routes that keep changing: keep the cache bounded
            self._plans.clear()
        self._plans[routes] = plan
        return plan

    # ------------------------------------------------------------------ any thread (the background one)
    def project(self, job: Job) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The stored row of a snapshot: (float32 proj [G, k], squared norms [G], flags [G]); frees its
        buffers. The kernels release the GIL."""
        segments = self._segments
        if segments is None:
            from gradmanifold.kernels import segments

            self._segments = segments
        spec, plan, bufs = self.spec, job.plan, job.bufs
        arrays = bufs.arrays if bufs is not None else {}
        if spec.kind == "sparse":
            p32, sq, flags = segments.sparse_step(
                arrays.get("f32", _NO32),
                plan.segs.get("f32", _NO_SEGS),
                arrays.get("f64", _NO64),
                plan.segs.get("f64", _NO_SEGS),
                spec.k // spec.s,
                self._kshift,
                self._ksign,
                1.0 / math.sqrt(spec.s),
                job.z,
                job.present,
                plan.group,
                len(self.group_names),
            )
        else:
            self._dense(job, arrays)
            sq = np.zeros(len(self.group_names))
            p32, flags = segments.combine(job.z, job.present, plan.group, sq)
        if bufs is not None:
            self._free.append(bufs)  # maxlen 2: an older one is dropped
            job.bufs = None
        return p32, sq, flags

    def _dense(self, job: Job, arrays: dict[str, np.ndarray]) -> None:
        """Gaussian projection of each copied tensor into its row of job.z (the cost is the k multiply-adds
        per value, not the calls)."""
        from gradmanifold.kernels import projection as kern

        spec = self.spec
        for dt, seg in job.plan.segs.items():
            buf = arrays[dt]
            for lo, n, base, key, row in seg.T.tolist():
                total = np.zeros(spec.k + 1)
                kg = _keys(int(spec.seed), self.group_names[key], spec.s).kgauss
                kern.gaussian_accumulate(buf[lo : lo + n], base, kg, spec.k, total)
                job.z[row, : spec.k] = total[: spec.k] * (1.0 / math.sqrt(spec.k))
                job.z[row, spec.k] = total[spec.k]


def warm_up() -> None:
    """Load the batched kernels (numba's cache, ~0.3 s) for float32 and float64 steps, so that the first
    recorded step does not pay for it; wrap mode calls this on a thread while the job sets itself up."""

    @dataclass(frozen=True)
    class _Member:
        offset: int
        size: int

    where = {"a": (0, _Member(0, 4)), "b": (0, _Member(4, 4))}
    projector = StepProjector(ProjectionSpec(k=8), ["warm-up"], where)
    projector.project(projector.snapshot(0, [("a", np.ones(4, np.float32)), ("b", np.ones(4, np.float64))]))


def _routes(named: list[tuple[str, Any]]) -> tuple[tuple[str, str, int, Any], ...]:
    """(name, route, size, shape) of each tensor: route "f32"/"f64" (copied into the step's buffer), "direct"
    (projected where it is) or "none" (no gradient this step). Written for the common case, CPU tensors."""
    torch = sys.modules.get("torch")
    tensor = torch.Tensor if torch is not None else None
    f32 = (torch.float32, torch.float16, torch.bfloat16) if torch is not None else ()
    f64 = torch.float64 if torch is not None else None
    out = []
    for name, x in named:
        if tensor is not None and type(x) is tensor:
            n = x.numel()
            if not x.is_cpu or n > BATCH_MAX_ELEMENTS:
                out.append((name, "direct", n, None))
            else:
                dt = x.dtype
                out.append((name, "f32" if dt in f32 else "f64" if dt == f64 else "direct", n, x.shape))
        else:
            out.append((name, *_route(x)))
    return tuple(out)


def _route(x: Any) -> tuple[str, int, Any]:
    """_routes for one value that is not a plain torch tensor."""
    if x is None:
        return "none", 0, None
    if isinstance(x, np.ndarray):
        name, n = x.dtype.name, x.size
        if n > BATCH_MAX_ELEMENTS:
            return "direct", n, None
        return ("f32" if name in _F32 else "f64" if name == "float64" else "direct"), n, x.shape
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.nn.Parameter):
        _, route, n, shape = _routes([("", x.detach())])[0]
        return route, n, shape
    return "direct", numel(x), None


def _dtype_name(x: Any) -> str:
    """numpy's name of a tensor's or array's dtype ("float32", ...)."""
    dt = x.dtype
    return dt.name if isinstance(dt, np.dtype) else str(dt).removeprefix("torch.")


def _fill(bufs: _Buffers, plan: _Plan, named: list[tuple[str, Any]]) -> None:
    """Copy each tensor the plan copies into its place in the step's buffers: torch tensors into views shaped
    like them (one foreach copy per buffer when the dtypes match), arrays flattened."""
    torch = sys.modules.get("torch")
    xs = {dt: [named[i][1] for i, _, _ in copies] for dt, copies in plan.copy.items()}
    if torch is not None and all(isinstance(x, torch.Tensor) for v in xs.values() for x in v):
        views = bufs.views_for(plan)
        foreach_copy = getattr(torch, "_foreach_copy_", None)
        with torch.no_grad():
            for dt, srcs in xs.items():
                if plan.exact[dt] and foreach_copy is not None:
                    foreach_copy(views[dt], srcs)
                else:
                    for dst, src in zip(views[dt], srcs, strict=True):
                        dst.copy_(src)
        return
    for dt, copies in plan.copy.items():
        buf = bufs.arrays[dt]
        for i, lo, hi in copies:
            x = named[i][1]
            if torch is not None and isinstance(x, torch.Tensor):
                buf[lo:hi] = x.detach().reshape(-1).to(torch.float64).numpy()
            else:
                buf[lo:hi] = np.asarray(x).reshape(-1)


def copy_tensors(named: list[tuple[str, Any]]) -> tuple[list[tuple[str, Any]], int]:
    """Copies of tensors that the training loop will change in place (parameters), and their bytes."""
    out: list[tuple[str, Any]] = []
    nbytes = 0
    for name, x in named:
        if x is None:
            out.append((name, None))
            continue
        c = copy_value(x)
        nbytes += int(c.numel()) * int(c.element_size()) if hasattr(c, "element_size") else int(c.nbytes)
        out.append((name, c))
    return out, nbytes


class Background:
    """One thread that runs jobs in submission order, behind a bounded queue.

    run: what to do with a job (on the background thread); done jobs wait in `done`, in order, for the
    training thread. depth: jobs that may wait; submit() blocks when as many wait, or when the bytes waiting
    would pass max_bytes (one job always fits). The first exception stops the thread's work: later jobs are
    dropped, and take_error() hands it to the training thread.
    """

    def __init__(
        self, run: Callable[[Job], object], depth: int = 4, max_bytes: int = BYTES_IN_FLIGHT
    ) -> None:
        self._run = run
        self._depth = max(1, int(depth))
        self._max_bytes = int(max_bytes)
        self._jobs: deque[Job | None] = deque()
        self.done: deque[Job] = deque()
        self._bytes = 0
        self._busy = False
        self._stopped = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._loop, name="gradmanifold-record", daemon=True)
        self.thread.start()

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet done."""
        with self._cond:
            return len(self._jobs) + self._busy

    def submit(self, job: Job) -> None:
        """Queue a job; wait while the queue is full (backpressure). A stopped Background drops it."""
        with self._cond:
            while (
                self._error is None
                and not self._stopped
                and (
                    len(self._jobs) >= self._depth
                    or ((self._jobs or self._busy) and self._bytes + job.nbytes > self._max_bytes)
                )
            ):
                self._cond.wait()
            if self._error is not None or self._stopped:
                return
            self._jobs.append(job)
            self._bytes += job.nbytes
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every submitted job is done (or dropped after an error)."""
        with self._cond:
            while (self._jobs or self._busy) and self.thread.is_alive():
                self._cond.wait(1.0)  # a timeout, so that a thread gone (a forked child) cannot hang this

    def take_error(self) -> BaseException | None:
        """The exception that stopped the background work, once (None when there was none)."""
        with self._cond:
            err, self._error = self._error, None
            if err is not None:
                self._error = _Stopped()  # keep refusing work
            return err if not isinstance(err, _Stopped) else None

    def stop(self) -> None:
        """Finish the queued jobs and end the thread."""
        with self._cond:
            if self._stopped:
                return
            self._stopped = True
            self._jobs.append(None)
            self._cond.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                job = self._jobs.popleft()
                if job is None:
                    self._cond.notify_all()
                    return
                self._busy = True
                failed = self._error is not None
                self._cond.notify_all()  # a place in the queue is free
            try:
                if not failed:
                    self._run(job)
                    self.done.append(job)
            except BaseException as exc:  # handed to the training thread at its next call
                with self._cond:
                    if self._error is None:
                        self._error = exc
            finally:
                with self._cond:
                    self._busy = False
                    self._bytes -= job.nbytes
                    self._cond.notify_all()


class _Stopped(Exception):
    """Marks a Background whose error was handed over: it takes no more work."""


class StepPipeline:
    """The Recorder's side of the hot path: where a step is computed (here or on the background thread),
    the computing part itself, and handing finished rows and errors back to the training thread."""

    # the Recorder's state these methods use (set in Recorder.__init__ and at the first step)
    _bg: Any
    _hot: Any
    _tracker: Any
    _layout: Any
    _writer: Any
    _pid: int
    _queue_steps: int
    _work_last: int | None
    _collecting: bool
    _failed: bool
    threads: int | str
    nonfinite: str
    on_error: str
    spectra_top: int
    spec: ProjectionSpec
    _spectra_layers: list[tuple[str, tuple[int, int]]]
    _tail: Callable[[Job], bool]

    @property
    def group_names(self) -> tuple[str, ...]:
        raise NotImplementedError  # the Recorder's

    def _use_background(self, nbytes: int, spectra_step: bool) -> bool:
        """Whether this step goes to the background thread (started here, the first time "auto" wants it).

        Steps keep their order: while earlier steps wait for the thread, the next ones queue behind them.
        """
        if self._bg is not None:
            if self.threads == 1 or self._bg.pending:
                return True
            if self._bg.done:  # finished since record() collected: their rows go first, then this step's
                self._collect()
        if self.threads != "auto" or self.nonfinite == "raise":
            return False
        if nbytes < AUTO_BACKGROUND_BYTES and not spectra_step:
            return False
        if self._bg is None:
            self._bg = Background(self._work, self._queue_steps)
        return True

    def _work(self, job: Job) -> None:
        """The computing part of a step (on the background thread, or inline with threads=0): projection,
        flags, the update since the previous row, the spectra row. Nothing here touches the store."""
        try:
            job.p32, job.sq, job.flags = self._hot.project(job)
            if self._check_flags(job):
                return
            if self._tracker is not None:
                if self._work_last is not None and job.step <= self._work_last:
                    self._tracker.reset()  # a rewind: the parameters before this step are not the ones kept
                job.update, job.update_sq = self._tracker.update(
                    dict(job.params or {}), list(self.group_names), owned=job.params_owned
                )
            if job.spectra is not None:
                rows = spectra_row(job.spectra, self._spectra_layers, self.spectra_top, self.spec.seed)
                job.spectra_row = rows
            self._work_last = job.step
        finally:  # a finished step holds no copies (they are counted only while it waits)
            job.params = job.spectra = None

    def _check_flags(self, job: Job) -> bool:
        """Apply the nonfinite policy to a projected step; True when the step is skipped."""
        flags = job.flags
        if flags is None or not (flags & FLAG_NONFINITE).any():  # the common case: ~1 us
            job.skipped = False
            return False
        groups = self._layout.groups
        bad = [g for (g, _), f in zip(groups, flags, strict=True) if f & FLAG_NONFINITE]
        if bad and self.nonfinite == "raise":
            raise NonFiniteGradientError(
                f"step {job.step}: non-finite gradient in group(s) {', '.join(bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''}; nothing recorded for this step"
            )
        job.skipped = bool(bad) and self.nonfinite == "skip"
        return job.skipped

    def _collect(self) -> None:
        """Append the rows the background thread has finished, in step order (on the calling thread).

        Not re-entered: a signal handler that flushes or suspends in the middle of it leaves the rows to the
        outer call, so they are appended in order (a row out of order would rewind the store).
        """
        if self._collecting:
            return
        self._collecting = True
        try:
            done = self._bg.done
            while done and not self._failed:
                self._tail(done.popleft())
        finally:
            self._collecting = False

    def _drain(self) -> None:
        """Wait for the steps queued on the background thread, store their rows, then raise what stopped the
        thread, if anything. A forked child has no such thread and owns nothing of the store: it returns."""
        if self._bg is not None and os.getpid() == self._pid:
            self._bg.drain()
            self._collect()
            self._take_background_error()

    def _take_background_error(self) -> None:
        """Raise an exception of the background thread on the caller's thread, after committing what was
        recorded before it."""
        err = self._bg.take_error() if self._bg is not None else None
        if err is None:
            return
        self._failed = True  # the thread never writes: its errors are not the store's, on_error aside
        if self._writer is not None:  # commit what was recorded before, and release the lock
            with contextlib.suppress(Exception):
                self._writer.close(status="failed")
        raise err
