"""Several stores, and stores cut into time segments, analyzed as the fold of fold.py: here or on Dask.

    analyze_many(["a.zarr", "b.zarr"])                              # no Dask: one store after another
    analyze_many(paths, processes=2, segments=4)                    # a LocalCluster of 2 worker processes
    analyze_many(paths, scheduler="tcp://10.0.0.5:8786")            # a running dask.distributed scheduler

Tasks per store on Dask (each opens the store by its path or URL: workers must see the same paths):

    summarize(j)   j < S - 1   the predictor state segment j reaches from a fresh start (a light pass)
    compose(j)                 the chain of carries (tiny); segment j starts as soon as carry j is known
    segment(j, q)              the full pass over segment j for scope part q (kernel and Gram: the work)
    merge                      pairwise: scope parts of a segment, then adjacent segments (sums add)
    updates        S > 1       the parameter-update statistics, one whole-stream task (no merge exists)
    finalize                   eigenvalues, r*, the AnalysisResult: the only thing sent back

Each worker process runs one task at a time with one BLAS thread, so a worker's memory is one pass's
(chunks read ahead, the scopes' Grams) plus the partial states it holds for merges; at most 2 stores per
worker are in flight. A store that fails (corrupt, missing, bad options) fails alone: its tasks hand a
Failure (message and exit code) down the graph instead of raising, and the other stores go on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from gradmanifold.analysis import AnalysisConfig, _open_source, _plan, config_with
from gradmanifold.errors import GradManifoldError, UsageError
from gradmanifold.report.sweep import RunOutcome, SweepResult

if TYPE_CHECKING:
    from gradmanifold.analysis import _Plan
    from gradmanifold.report.model import StoreSummary

DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds to reach a --scheduler
DASK_EXTRA = "pip install 'gradmanifold[dask]'"
#: a scheduler address: [protocol://]host:port (host a name, an IPv4 address or a bracketed IPv6 one)
_ADDRESS = re.compile(r"^(?:(tcp|tls|ws|wss|ucx)://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")


@dataclass(frozen=True)
class Failure:
    """A task's GradManifoldError as a value (message, exit code, class name): handed down the graph."""

    message: str
    exit_code: int
    kind: str


def analyze_many(
    sources: Sequence[Any],
    config: AnalysisConfig | None = None,
    *,
    processes: int | None = None,
    scheduler: str | None = None,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    parts: int | None = None,
    **options: Any,
) -> SweepResult:
    """Analyze every source with the same options; a failed run is reported in the result, not raised.

    Parameters: sources: store paths or URLs (in this process also anything `analyze` takes); config and
    options: as for `analyze` (`segments=S` cuts each store into S time segments); processes: run on a
    LocalCluster of that many worker processes; scheduler: run on the dask.distributed scheduler at this
    address ([tcp://]host:port); connect_timeout: seconds to reach it; parts: scope parts per segment on
    Dask (None: enough to give every worker a task when stores x segments are fewer than workers).
    Raises UsageError for bad scheduling options, an unreachable scheduler or a missing dask.distributed;
    results equal `analyze`'s to rounding (~1e-15 relative), r* identical.
    """
    cfg = config_with(config, options)
    if processes is not None and scheduler is not None:
        raise UsageError("give --workers N (a local cluster) or --scheduler ADDRESS, not both")
    if processes is not None and (isinstance(processes, bool) or not 1 <= int(processes) <= 1024):
        raise UsageError(f"--workers {processes!r}: give a number of worker processes from 1 to 1024")
    if scheduler is not None:
        _check_address(scheduler)
    if not (
        isinstance(connect_timeout, int | float) and math.isfinite(connect_timeout) and connect_timeout > 0
    ):
        raise UsageError(f"--connect-timeout {connect_timeout!r}: give a number of seconds > 0, e.g. 10")
    if parts is not None and int(parts) < 1:
        raise UsageError(f"parts {parts!r} must be at least 1")
    if not sources:
        raise UsageError("no stores given; name one or more stores to analyze")
    names = [_source_name(s) for s in sources]
    runs: dict[int, RunOutcome] = {}
    planned: dict[int, tuple[Any, _Plan, StoreSummary]] = {}
    for i, source in enumerate(sources):  # open and plan here: a bad store or option fails at once
        try:
            src, store = _open_source(source)
            planned[i] = (src, _plan(src, cfg), store)
        except GradManifoldError as exc:
            runs[i] = _failed(names[i], exc)
    if processes is None and scheduler is None:
        for i, (src, plan, store) in planned.items():
            runs[i] = _local(names[i], src, plan, store)
    elif planned:
        for i, source in enumerate(sources):
            if i in planned and not isinstance(source, str | os.PathLike):
                raise UsageError("a Dask run reads stores by path or URL; pass paths, not arrays or readers")
        with dask_client(processes, scheduler, connect_timeout) as client:
            runs.update(_on_dask(client, {i: (str(sources[i]), *planned[i]) for i in planned}, names, parts))
    return SweepResult(tuple(runs[i] for i in range(len(sources))))


# ---------------------------------------------------------------------------------------------- here


def _local(name: str, src: Any, plan: _Plan, store: StoreSummary) -> RunOutcome:
    from gradmanifold.fold import run_local
    from gradmanifold.kernels.stream import blas_threads

    try:
        with blas_threads(1):
            return RunOutcome(name, run_local(src, plan, store, plan.segments))
    except GradManifoldError as exc:
        return _failed(name, exc)


# ---------------------------------------------------------------------------------------------- Dask


@contextlib.contextmanager
def dask_client(processes: int | None, scheduler: str | None, connect_timeout: float) -> Iterator[Any]:
    """A dask.distributed Client: on a new LocalCluster of `processes` workers (one thread each), or
    connected to `scheduler`; closed (and the cluster stopped) on exit. UsageError when dask.distributed is
    missing or the scheduler cannot be reached within connect_timeout seconds."""
    try:
        import distributed
    except ImportError:
        raise UsageError(
            f"--workers and --scheduler run on dask.distributed, not installed: {DASK_EXTRA}"
        ) from None
    cluster: Any = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dask's notices (ports in use, versions) are not the user's concern
        if scheduler is not None:
            client = _connect(distributed, _check_address(scheduler), connect_timeout)
            try:  # tasks sent to a scheduler without workers would wait for ever
                client.wait_for_workers(1, timeout=connect_timeout)
            except Exception:
                client.close()
                raise UsageError(
                    f"the Dask scheduler at {scheduler} has no workers (none joined within "
                    f"{connect_timeout:g} s); start some with `dask worker ADDRESS --nthreads 1`"
                ) from None
        else:
            with dask_config():
                cluster = distributed.LocalCluster(
                    n_workers=int(processes or 1),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
            client = distributed.Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


def dask_config() -> Any:
    """dask settings of the workers of `--workers`: no statistical profiler (no dashboard to show it), and no
    MALLOC_TRIM_THRESHOLD_ in their environment: setting it (Dask's nanny sets 65536) turns off glibc's
    dynamic mmap threshold, so every array over 128 KiB is mapped and unmapped; measured here, that made
    the passes 1.6 to 2 times slower."""
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return dask.config.set(
        {"distributed.worker.profile.enabled": False, "distributed.nanny.pre-spawn-environ": environ}
    )


def _check_address(address: str) -> str:
    """`address` when it reads [protocol://]host:port with a port in 1..65535, else a UsageError."""
    m = _ADDRESS.match(address.strip()) if isinstance(address, str) else None
    if m is None or not 1 <= int(m.group(3)) <= 65535:
        raise UsageError(
            f"--scheduler {address!r} is not a scheduler address; give [tcp://]HOST:PORT, e.g. "
            "tcp://10.0.0.5:8786 (what `dask scheduler` prints)"
        )
    return address.strip() if m.group(1) else f"tcp://{address.strip()}"


def _connect(distributed: Any, address: str, timeout: float) -> Any:
    """A Client of the scheduler at `address`; UsageError naming the address when it does not answer as a
    scheduler within `timeout` seconds (a Client alone waits forever on a port that accepts and is silent)."""
    import sys

    try:
        reply = _probe(address, timeout)
    except Exception as exc:
        raise _unreachable(address, timeout, exc) from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        what = reply.get("type") if isinstance(reply, dict) else type(reply).__name__
        raise _unreachable(address, timeout, RuntimeError(f"it answers as {what}, not as a scheduler"))
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _u: None  # a Client that failed to connect complains when it is collected
    why: BaseException | None = None
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except Exception as exc:
        why = RuntimeError(" ".join(str(exc).split())[:160] or type(exc).__name__)
    finally:
        if why is not None:  # the failed Client is freed here (no traceback holds it), quietly
            import gc

            gc.collect()
        sys.unraisablehook = hook
    assert why is not None
    raise _unreachable(address, timeout, why)


def _probe(address: str, timeout: float) -> Any:
    """The scheduler's `identity` reply, all within `timeout` seconds (TimeoutError, OSError otherwise)."""
    import asyncio

    from distributed.comm import connect

    async def ask() -> Any:
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    return asyncio.run(asyncio.wait_for(ask(), timeout))


def _unreachable(address: str, timeout: float, exc: BaseException) -> UsageError:
    why = " ".join(str(exc).split())[:160] or (
        "no answer" if isinstance(exc, TimeoutError) else type(exc).__name__
    )
    return UsageError(
        f"cannot reach the Dask scheduler at {address} within {timeout:g} s ({why}); start one with "
        "`dask scheduler` (and workers with `dask worker ADDRESS`), or run a local cluster with --workers N"
    )


def _on_dask(
    client: Any, stores: dict[int, tuple[str, Any, _Plan, StoreSummary]], names: list[str], parts: int | None
) -> dict[int, RunOutcome]:
    """Submit every store's graph (at most 2 stores a worker in flight) and gather the results."""
    from distributed import as_completed

    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    pending = list(stores.items())
    n_tasks = sum(plan.segments for _, _, plan, _ in stores.values())
    want = parts or max(1, n_workers // max(1, n_tasks))
    futures: dict[Any, int] = {}
    done: dict[int, RunOutcome] = {}

    def submit_next() -> Any:
        i, (path, src, plan, store) = pending.pop(0)
        plan = replace(plan, workers=1)  # one lane thread: each worker process runs one task at a time
        fut = _graph(client, path, plan, src.k, store, want, bool(getattr(src, "updates", None)))
        futures[fut] = i
        return fut

    first = [submit_next() for _ in range(min(len(pending), 2 * n_workers))]
    queue = as_completed(first, loop=client.loop)
    for fut in queue:
        i = futures.pop(fut)
        value = fut.result()  # an exception that is not a GradManifoldError is a bug: raised
        if isinstance(value, Failure):
            done[i] = RunOutcome(names[i], None, value.message, value.exit_code)
        else:
            done[i] = RunOutcome(names[i], value)
        if pending:
            queue.add(submit_next())
    return done


def _graph(
    client: Any, path: str, plan: _Plan, k: int, store: StoreSummary, parts: int, updates: bool
) -> Any:
    """The task graph of one store; returns the future of its AnalysisResult (or Failure)."""
    from gradmanifold.finalize import finalize
    from gradmanifold.fold import Carry, bounds, compose, merge, run_segment, run_updates, summarize
    from gradmanifold.kernels.stream import split_scopes

    def sub(fn: Any, *args: Any) -> Any:  # keys named by the task's function (dashboards, task streams)
        return client.submit(_call, fn, *args, key=f"{fn.__name__}-{uuid.uuid4().hex}")

    def tree(items: list[Any]) -> Any:
        while len(items) > 1:
            items = [
                sub(merge, *items[j : j + 2]) if j + 1 < len(items) else items[j]
                for j in range(0, len(items), 2)
            ]
        return items[0]

    cuts = bounds(plan, plan.segments)
    n_seg = len(cuts) - 1
    costs = [float(plan.offsets[s + 1] - plan.offsets[s]) + k / 2 for s in range(len(plan.scope_names))]
    groups = split_scopes(costs, min(parts, len(costs)))
    carries: list[Any] = [Carry.fresh(plan, k)]
    for j in range(n_seg - 1):
        carries.append(sub(compose, plan, carries[j], sub(summarize, path, plan, cuts[j], cuts[j + 1])))
    segs = []
    for j in range(n_seg):
        inline = n_seg == 1
        segs.append(
            tree(
                [
                    sub(run_segment, path, plan, cuts[j], cuts[j + 1], carries[j], q, inline and i == 0)
                    for i, q in enumerate(groups)
                ]
            )
        )
    upd = sub(run_updates, path, plan) if updates and n_seg > 1 else None
    return sub(finalize, plan, store, tree(segs), upd)


def _call(fn: Any, *args: Any) -> Any:
    """Run a task: a Failure among its inputs is handed on; a GradManifoldError becomes a Failure."""
    for a in args:
        if isinstance(a, Failure):
            return a
    from gradmanifold.kernels.stream import blas_threads

    try:
        with blas_threads(1):
            return fn(*args)
    except GradManifoldError as exc:
        return Failure(_one_line(exc), exc.exit_code, type(exc).__name__)


# ---------------------------------------------------------------------------------------------- helpers


def _failed(name: str, exc: GradManifoldError) -> RunOutcome:
    return RunOutcome(name, None, _one_line(exc), exc.exit_code)


def _source_name(source: Any) -> str:
    """The store as given (a path or URL), or the path of an opened reader."""
    if isinstance(source, str | os.PathLike):
        return str(os.fspath(source))
    path = getattr(source, "path", None)
    return str(path) if path is not None else "(arrays in memory)"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
