"""Recorder: the training-loop API. Projects each step's gradient per group and appends it to a store.

with Recorder("run.zarr", k=256, seed=0) as rec:
    for step in range(steps):
        loss.backward()
        rec.record(step, model, loss=loss.item(), lr=lr)
        opt.step()
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from gradmanifold.errors import InputError, StoreWriteError
from gradmanifold.groups import (  # noqa: F401  (GroupsArg, SINGLE_GROUP, OTHER_GROUP: public names)
    OTHER_GROUP,
    SINGLE_GROUP,
    GroupsArg,
    _build_layout,
    _Layout,
    _named_tensors,
    _params,
    _scalar,
)
from gradmanifold.hotpath import (  # noqa: F401  (AUTO_BACKGROUND_BYTES, FLAG_NONFINITE: public names)
    AUTO_BACKGROUND_BYTES,
    FLAG_NONFINITE,
    Background,
    Job,
    StepPipeline,
    StepProjector,
    copy_tensors,
)
from gradmanifold.passive import UpdateTracker, matrix_layers, numel
from gradmanifold.projection import ProjectionSpec
from gradmanifold.sharded import project_named

DEFAULT_MAX_GROUPS = 64
DEFAULT_SPECTRA_TOP = 20
FLAG_SKIPPED = 2


class Recorder(StepPipeline):
    """Records seeded k-dim projections and exact squared norms of each step's gradient, per group."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        k: int = 256,
        seed: int = 0,
        kind: Literal["sparse", "gaussian"] = "sparse",
        s: int | None = None,
        groups: GroupsArg = None,
        max_groups: int = DEFAULT_MAX_GROUPS,
        every: int = 1,
        nonfinite: Literal["flag", "skip", "raise"] = "flag",
        resume: Literal["allow", "must", "never"] = "allow",
        on_error: Literal["raise", "warn"] = "raise",
        flush_interval: float = 30.0,
        chunk_rows: int | None = None,
        break_lock: bool = False,
        spectra_every: int = 0,
        spectra_top: int = DEFAULT_SPECTRA_TOP,
        updates: bool | Literal["exact", "projected"] = False,
        threads: int | Literal["auto"] = "auto",
        queue_steps: int = 4,
    ) -> None:
        """Open nothing yet: the store is created (or continued) at the first record().

        path: the store. k, seed, kind, s: the projection. groups, max_groups: how tensors are grouped.
        every: record steps that are multiples of it. nonfinite: what a NaN/Inf gradient does. resume: an
        existing store may, must or must not be continued. on_error: a failed write raises, or stops
        recording with a warning. flush_interval: seconds between commits. chunk_rows: rows per chunk.
        break_lock: break a stale lock. spectra_every: at recorded steps that are multiples of it, the top
        `spectra_top` singular values and ||G||_F^2 of every gradient with ndim >= 2 (0: off; see
        docs/SPECTRA.md). updates: also the parameter update since the previous recorded step, projected, and
        its squared norm ("exact" or True keeps a copy of the parameters; "projected" keeps only their
        projection, norms unknown; docs/UPDATES.md); needs params= in record() unless a Module is recorded.
        threads: 1 projects each step on a background thread (record() only copies the step's CPU
        gradients; gradmanifold.hotpath), 0 on the training thread, "auto" (default) on a background thread
        for steps that copy at least AUTO_BACKGROUND_BYTES or compute spectra, else on the training thread
        (a thread costs a small model more than it saves; docs/PERFORMANCE.md). Sharded gradients and
        nonfinite="raise" always record on the training thread. queue_steps: recorded steps that may wait
        for the background thread before record() blocks.
        """
        if every < 1:
            raise InputError(f"every must be >= 1, not {every}")
        for name, v, lo in (("spectra_every", spectra_every, 0), ("spectra_top", spectra_top, 1)):
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
                raise InputError(f"{name} must be an integer >= {lo}, not {v!r}")
        if nonfinite not in ("flag", "skip", "raise"):
            raise InputError(f"nonfinite must be 'flag', 'skip' or 'raise', not {nonfinite!r}")
        if on_error not in ("raise", "warn"):
            raise InputError(f"on_error must be 'raise' or 'warn', not {on_error!r}")
        if max_groups < 1:
            raise InputError(f"max_groups must be >= 1, not {max_groups}")
        if threads != "auto" and (isinstance(threads, bool) or threads not in (0, 1)):
            raise InputError(f"threads must be 0, 1 or 'auto', not {threads!r}")
        if isinstance(queue_steps, bool) or not isinstance(queue_steps, int | np.integer) or queue_steps < 1:
            raise InputError(f"queue_steps must be an integer >= 1, not {queue_steps!r}")
        self.threads: int | str = threads if threads == "auto" else int(threads)
        self._queue_steps = int(queue_steps)
        self._bg: Any = None  # hotpath.Background when the steps are recorded on a background thread
        self._hot: Any = None  # hotpath.StepProjector
        self.path = os.fspath(path)
        spec_kw: dict[str, Any] = {"k": k, "seed": seed, "kind": kind}
        if s is not None:
            spec_kw["s"] = s
        self.spec = ProjectionSpec(**spec_kw)
        self._groups_arg = groups
        self._max_groups = max_groups
        self.every = every
        self.nonfinite = nonfinite
        self.on_error = on_error
        self.flush_interval = flush_interval
        self._resume = resume
        self._chunk_rows = chunk_rows
        self._break_lock = break_lock
        self.spectra_every = int(spectra_every)
        self.spectra_top = int(spectra_top)
        self._spectra_layers: list[tuple[str, tuple[int, int]]] = []
        if updates not in (False, True, "exact", "projected"):
            raise InputError(f"updates must be False, True, 'exact' or 'projected', not {updates!r}")
        self.updates: str | None = "exact" if updates is True else (updates or None)
        self._tracker: UpdateTracker | None = None
        self._last_step: int | None = None
        self._work_last: int | None = None  # the last step the computing part accepted (the tracker's)
        self._owner: int | None = None  # the thread that records (rows are stored only on it)
        self._collecting = False
        self._writer: Any = None
        self._layout: _Layout | None = None
        self._failed = False
        self._closed = False
        self._last_commit = time.monotonic()
        self._counts = [0, 0, 0]  # steps recorded, flagged non-finite, skipped
        self._exit_hook: Any = None
        self._dist: Any = None  # a sharded.Exchange when the gradients are sharded across ranks
        self._pid = os.getpid()  # a forked child must never commit or unlock the parent's store

    # ---------------------------------------------------------------- public API
    @property
    def steps_recorded(self) -> int:
        """Rows appended so far (after the steps waiting for the background thread)."""
        return self._count(0)

    @property
    def steps_flagged(self) -> int:
        """Recorded rows flagged non-finite."""
        return self._count(1)

    @property
    def steps_skipped(self) -> int:
        """Steps left out for a non-finite gradient (nonfinite="skip")."""
        return self._count(2)

    def _count(self, i: int) -> int:
        mine = self._owner in (None, threading.get_ident())  # another thread reads without storing rows
        if self._bg is not None and not self._closed and os.getpid() == self._pid and mine:
            self._drain()  # the steps still on the background thread count too
        return self._counts[i]

    @property
    def group_names(self) -> tuple[str, ...]:
        """The recorded groups (known after the first record)."""
        return tuple(g for g, _ in self._layout.groups) if self._layout else ()

    def record(
        self,
        step: int,
        grads: Any,
        *,
        loss: Any = None,
        lr: Any = None,
        params: Mapping[str, Any] | None = None,
    ) -> bool:
        """Project and append this step's gradient; returns False when the step is not recorded (with the
        background thread, True means accepted: a step found non-finite there is skipped or flagged later).

        grads: a torch Module (its parameters' .grad), a mapping name -> array, or one array. loss, lr:
        numbers stored beside. params: with updates, the parameters (same names and sizes as grads) for a
        mapping; a Module gives its own. Sharded gradients (FSDP, tensor parallel DTensors): call record() on
        every rank at the same steps; rank 0 writes (docs/SHARDED.md).
        """
        if self._closed:
            raise InputError(f"the Recorder for {self.path} is closed")
        if os.getpid() != self._pid:
            raise InputError(
                f"the Recorder for {self.path} belongs to process {self._pid}, not to this forked child; "
                "record from the training process only (or open another store in the child)"
            )
        if self._failed:
            if self._dist is not None and self._dist.stop_pending:  # tell the other ranks, at this step
                self._dist.step(None, len(self._layout.groups), self.spec.k, self._tracker is not None)  # type: ignore[union-attr]
            return False
        if isinstance(step, bool) or not isinstance(step, int | np.integer):
            raise InputError(f"step must be an integer, not {type(step).__name__}")
        if step % self.every:
            return False
        named = _named_tensors(grads)
        if self._layout is None:
            self._open([(n, numel(g)) if g is not None else (n, -1) for n, g in named], named)
        self._owner = threading.get_ident()
        if self._bg is not None:
            self._collect()  # rows of earlier steps that the background thread has finished, first
            self._take_background_error()
        if self._failed:
            return False
        if self._dist is not None:
            got = self._exchange(int(step), named, grads, params)
            if got is None:
                return False
            job = Job(int(step), None, None, np.zeros((0, 0)), np.zeros(0, np.bool_))  # type: ignore[arg-type]
            from gradmanifold.kernels.segments import finish

            job.p32, job.flags = finish(got[0], got[1], got[2])
            job.sq, job.update, job.update_sq = np.array(got[1], np.float64), got[3], got[4]
            job.loss, job.lr = _scalar(loss), _scalar(lr)
            if not self._check_flags(job) and self._tracker is not None:
                self._tracker.accept()
            return self._tail(job)
        if self._writer is None:  # suspended
            self._open_writer(self._layout, "must")  # type: ignore[arg-type]
        job = self._hot.snapshot(int(step), named)
        job.loss, job.lr = _scalar(loss), _scalar(lr)
        spectra_step = bool(self.spectra_every) and step % self.spectra_every == 0
        later = self._use_background(job.nbytes, spectra_step)  # then parameters must be copied: the
        # optimizer changes them in place before the thread runs
        if self._tracker is not None:
            given = _params(grads, params)
            self._tracker.check(given)
            job.params, nb = copy_tensors(list(given.items())) if later else (list(given.items()), 0)
            job.params_owned, job.nbytes = later, job.nbytes + nb
        if spectra_step:
            wanted = [(n, g) for n, g in named if n in {m for m, _ in self._spectra_layers}]
            job.spectra, nb = copy_tensors(wanted) if later else (wanted, 0)
            job.nbytes += nb
        if later:
            self._bg.submit(job)
            return True
        self._work(job)
        return self._tail(job)

    def _tail(self, job: Job) -> bool:
        """Store a worked step: the row (or a skip), the spectra row, the commit when one is due."""
        if job.skipped:
            if self._writer is not None:  # None on a rank other than 0 of a sharded job
                self._writer.note_skipped()
            self._counts[2] += 1
            return False
        step = job.step
        if self._writer is None and self._dist is None and not self._failed:  # suspended meanwhile
            self._open_writer(self._layout, "must")  # type: ignore[arg-type]
        if self._writer is not None:
            try:
                self._writer.append_owned(
                    step, job.p32, job.sq, job.flags, job.loss, job.lr, job.update, job.update_sq
                )
            except StoreWriteError as exc:
                self._write_failed(exc)
                return False
        self._last_step = step
        if job.spectra_row is not None:
            self._guard(lambda: self._writer.append_row("spectra", step, job.spectra_row))
            if self._failed:
                return False
        self._counts[0] += 1
        self._counts[1] += bool(job.flags is not None and (job.flags & FLAG_NONFINITE).any())
        if self._writer is not None and time.monotonic() - self._last_commit > self.flush_interval:
            self._guard(lambda: self._writer.flush(wait=False))
            self._last_commit = time.monotonic()
        return True

    def probe(
        self,
        step: int,
        model: Any,
        loss_fn: Any,
        batch: Any,
        *,
        kind: Literal["curvature", "glass"] = "curvature",
        top: int = DEFAULT_SPECTRA_TOP,
        layers: str | Sequence[str] | None = None,
        sigma: float = 1e-3,
        seed: int = 0,
    ) -> Any:
        """Run a probe of gradmanifold.probe on (model, loss_fn, batch) and store it at `step`; returns it.

        kind: "curvature" (probe.curvature: top singular pairs per matrix layer and the exact curvature along
        them; `top`) or "glass" (probe.glass: Alice's glass density and curvature per parameter; `sigma`,
        `seed`). loss_fn(model, batch) returns a scalar; layers: glob(s) of parameter names (None: all).
        The store keeps one row per probe; `gradmanifold spectrum` reports them. Record a step first.
        """
        from gradmanifold import probe as probe_mod
        from gradmanifold.passive import probe_row

        if kind not in ("curvature", "glass"):
            raise InputError(f"probe kind must be 'curvature' or 'glass', not {kind!r}")
        if os.getpid() != self._pid:
            raise InputError(
                f"probe: the Recorder for {self.path} belongs to process {self._pid}, not this child"
            )
        self._drain()
        if self._dist is not None:
            raise InputError(
                "probes need the whole model in one process; this Recorder records sharded gradients "
                "(FSDP, tensor parallel): probe an unsharded copy of the model instead"
            )
        if self._writer is None or self._failed or self._closed:
            raise InputError(
                f"probe at step {step}: the store {self.path} is not open; record() a step before the first "
                "probe (or the recorder has stopped)"
            )
        result: Any
        if kind == "curvature":
            result = probe_mod.curvature(model, loss_fn, batch, top=top, layers=layers)
        else:
            result = probe_mod.glass(model, loss_fn, batch, sigma=sigma, seed=seed, layers=layers)
        dims, meta, row = probe_row(kind, model, result, int(top))

        def store() -> None:
            self._writer.add_table(kind, dims, meta)
            self._writer.append_row(kind, int(step), row)
            self._writer.flush()

        self._guard(store)
        return result

    def flush(self) -> None:
        """Commit every buffered row now (after the steps waiting for the background thread)."""
        if os.getpid() != self._pid:  # a forked copy: the parent owns the store and its buffer
            return
        self._drain()
        if self._writer is not None and not self._failed and not self._closed:
            self._guard(self._writer.flush)
            self._last_commit = time.monotonic()

    def close(self, status: str = "closed") -> None:
        """Commit what is buffered and release the store."""
        if self._closed:
            return
        self._closed = True
        if os.getpid() != self._pid:  # a forked copy: the parent owns the store, its lock and its buffer
            return
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
        try:
            self._drain()
        except BaseException:
            if self._writer is not None and not self._failed:
                with contextlib.suppress(Exception):
                    self._writer.close(status="failed")
            raise
        finally:
            if self._bg is not None:
                self._bg.stop()
        if self._writer is not None and not self._failed:
            self._guard(lambda: self._writer.close(status=status))

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close(status="failed")
        except Exception as close_exc:  # keep the user's exception; say what happened to the store
            warnings.warn(
                f"gradmanifold: could not commit {self.path} after an error: {close_exc}", stacklevel=2
            )

    # ---------------------------------------------------------------- internals
    def _register_exit_hook(self) -> None:
        """Commit buffered rows when the interpreter exits without close().

        zarr writes through a thread pool, which refuses work once interpreter shutdown has begun, and
        threading's exit callbacks run before atexit's. So the hook goes on threading's list when it exists
        (it runs newest first, so ours runs before the pool shuts down), else on atexit's.
        """
        ref = weakref.ref(self)

        def hook() -> None:
            rec = ref()
            if rec is not None:
                rec._close_at_exit()

        self._exit_hook = hook
        register = getattr(threading, "_register_atexit", None)
        if register is not None:
            register(hook)
        atexit.register(hook)  # a second call finds the recorder closed and does nothing

    def _close_at_exit(self) -> None:
        try:
            self.close(status="closed")
        except Exception as exc:
            warnings.warn(f"gradmanifold: could not commit {self.path} at exit: {exc}", stacklevel=1)

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except StoreWriteError as exc:
            self._write_failed(exc)

    def _write_failed(self, exc: StoreWriteError) -> None:
        """A write failed: raise it (on_error="raise"), or stop recording with a warning and go on."""
        if self.on_error == "raise":
            raise exc
        self._failed = True
        if self._dist is not None:
            self._dist.stop_pending = True  # the other ranks stop at the next recorded step
        if self._writer is not None:
            self._writer.abandon()
        warnings.warn(
            f"gradmanifold: recording stopped, training goes on: {exc}", RuntimeWarning, stacklevel=3
        )

    def _open(self, tensors: list[tuple[str, int]], named: list[tuple[str, Any]]) -> None:
        from gradmanifold import sharded

        missing = [n for n, size in tensors if size < 0]
        if missing:
            raise InputError(
                f"the first recorded step has no gradient for {', '.join(missing[:5])}; record after "
                "backward(), or leave frozen parameters out (requires_grad=False)"
            )
        if not tensors:
            raise InputError("nothing to record: no gradients (no parameters with requires_grad?)")
        layout = _build_layout(tensors, self._groups_arg, self._max_groups)
        if any(sharded.is_distributed(g) for _, g in named):
            # every rank gets here at its first step; rank 0 opens the store in the first exchange's local
            # phase, so that a failure there stops every rank instead of leaving them in the all-reduce
            if self.spectra_every:
                sharded.refuse_spectra(named)
            extra = f"every={self.every};nonfinite={self.nonfinite};updates={self.updates}"
            self._dist = sharded.Exchange(sharded.layout_fingerprint(self.spec, layout.groups, extra))
            self._plan(layout)
            return
        if self.spectra_every:
            self._spectra_layers = matrix_layers(named, self.spectra_top)
        self._open_writer(layout, self._resume)
        self._plan(layout)

    def _plan(self, layout: _Layout) -> None:
        self._layout = layout
        self._where = {m.tensor: (gi, m) for gi, (_, ms) in enumerate(layout.groups) for m in ms}
        if self.updates is not None:
            self._tracker = UpdateTracker(self.updates, self.spec, self._where, len(layout.groups))
            self._tracker.plain = self._dist is None or self._dist.rank == 0
        if self._dist is None:
            self._hot = StepProjector(self.spec, [g for g, _ in layout.groups], self._where)
            if self.threads == 1 and self.nonfinite != "raise":
                self._bg = Background(self._work, self._queue_steps)

    def _open_writer(self, layout: _Layout, resume: str) -> None:
        """Create or continue the store (resume "must" when reopening after suspend())."""
        from gradmanifold.store import StoreWriter

        writer = StoreWriter(
            self.path,
            self.spec,
            layout.sizes,
            resume=resume,  # type: ignore[arg-type]
            chunk_rows=self._chunk_rows,
            break_lock=self._break_lock,
            updates=self.updates,
            commit_thread=True,
        )
        if self._spectra_layers:
            meta = {
                "layers": [{"name": n, "shape": list(mn)} for n, mn in self._spectra_layers],
                "every": self.spectra_every,
            }
            dims = {"layers": len(self._spectra_layers), "q": self.spectra_top}
            try:
                writer.add_table("spectra", dims, meta)
            except BaseException:
                writer.abandon()
                raise
        self._writer = writer
        if self._exit_hook is None:
            self._register_exit_hook()

    def suspend(self, status: str = "interrupted") -> None:
        """Commit and release the store, mark this writer's segment `status`, and go on: the next record()
        reopens it. Wrap mode does this on SIGTERM for sharded jobs, whose ranks must keep one Recorder.

        status: "interrupted" (default), "closed" or "failed", as the store's segment list shows it.
        """
        if status not in ("interrupted", "closed", "failed"):
            raise InputError(f"suspend status must be 'interrupted', 'closed' or 'failed', not {status!r}")
        if os.getpid() != self._pid:  # a forked copy: the parent owns the store
            return
        self._drain()
        if self._writer is not None and not self._failed and not self._closed:
            self._guard(lambda: self._writer.close(status=status))
            self._writer = None

    def _exchange(self, step: int, named: list[tuple[str, Any]], grads: Any, params: Any) -> Any:
        """A sharded step: every rank projects its pieces, one all-reduce sums them with every rank's stop
        flag (so all ranks stop together); (proj, sqnorm, present, update, update_sq), None when stopped."""
        assert self._layout is not None and self._dist is not None
        dist, layout, tracker = self._dist, self._layout, self._tracker

        def local() -> tuple[np.ndarray, np.ndarray, np.ndarray, Any]:
            if dist.rank == 0 and self._writer is None:  # rank 0 opens the store here, in the local phase
                self._open_writer(layout, "must" if self._exit_hook is not None else self._resume)
            update = None
            if tracker is not None:
                if self._last_step is not None and step <= self._last_step:
                    tracker.reset()  # a rewind
                update = tracker.update(_params(grads, params), list(self.group_names), keep=False)
            groups = list(self.group_names)
            return (*project_named(named, self.spec, self._where, groups, dist.rank == 0), update)

        got, error = dist.step(local, len(layout.groups), self.spec.k, tracker is not None)
        if not got.failed:
            return got.proj, got.sqnorm, got.present, got.update, got.update_sq
        self._failed = True
        with contextlib.suppress(Exception):  # commit what was recorded before (and release the lock)
            if self._writer is not None:
                self._writer.close(status="failed")
        if error is not None and not (isinstance(error, StoreWriteError) and self.on_error == "warn"):
            raise error
        why = error or got.why(step)
        if self.on_error == "raise":
            raise StoreWriteError(str(why))
        if error is not None or dist.rank == 0:
            warnings.warn(f"gradmanifold: recording stopped, training goes on: {why}", RuntimeWarning, 3)
        return None
