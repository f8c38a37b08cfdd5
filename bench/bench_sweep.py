"""`analyze` of a sweep (8 stores) and of one long store (T = 2x10^5): one process against two Dask workers.

All in one run (only ratios measured together mean anything on a shared machine):
- 1 process: `analyze_many(paths)` here (one store after another, the analysis' own threads), and with one
  lane thread; peak RSS of a fresh process doing the same;
- 2 workers: a LocalCluster of 2 worker processes (one thread each; its start timed apart), the same
  analysis through `analyze_many(paths, scheduler=...)`; the scheduler's task stream gives each task's
  compute time, so the overhead is what the two workers did not spend computing:
  overhead = 2 x wall - sum of task compute, per task; peak RSS (VmHWM) of each worker process;
- what more workers would give, from the measured tasks: wall(W) ~ max(work / W, span) + overhead per task x
  tasks / W, span being the longest chain of one store's tasks (summarize, segment, merges, finalize).

The long store runs in SEGMENTS time segments (summarize + compose chain, then the segments in parallel).
Stores are written once into the temp folder and reused (GRADMANIFOLD_BENCH_DIR; sizes from
GRADMANIFOLD_BENCH_SWEEP_T, _BIG_T, _G, _K).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import environment, print_table, write_json
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import StoreWriter, open_store
from gradmanifold.sweep import analyze_many, dask_config

N_STORES = 8
T_SMALL = int(os.environ.get("GRADMANIFOLD_BENCH_SWEEP_T", 20_000))
T_BIG = int(os.environ.get("GRADMANIFOLD_BENCH_BIG_T", 200_000))
G = int(os.environ.get("GRADMANIFOLD_BENCH_SWEEP_G", 4))
K = int(os.environ.get("GRADMANIFOLD_BENCH_SWEEP_K", 64))
SEGMENTS = 4
BASE = Path(os.environ.get("GRADMANIFOLD_BENCH_DIR", Path(tempfile.gettempdir()) / "gradmanifold-bench"))


def make_store(name: str, t: int, seed: int) -> Path:
    """A store of t steps, G groups at k: a mean, a slow random walk and noise per group (written once)."""
    path = BASE / f"sweep-{name}-T{t}-G{G}-k{K}.zarr"
    if path.exists():
        try:
            if open_store(path).n_steps == t:
                return path
        except Exception:
            pass
        import shutil

        shutil.rmtree(path)
    BASE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((G, K)).astype(np.float32)
    walk = np.zeros((G, K), np.float32)
    with StoreWriter(
        path, ProjectionSpec(k=K, seed=0), groups=[(f"g{i}", 10**6) for i in range(G)], fsync=False
    ) as w:
        for a in range(0, t, 4096):
            n = min(4096, t - a)
            steps = np.cumsum(0.05 * rng.standard_normal((n, G, K), dtype=np.float32), axis=0) + walk
            walk = steps[-1]
            rows = mu + steps + rng.standard_normal((n, G, K), dtype=np.float32)
            sq = (rows.astype(np.float64) ** 2).sum(axis=2)
            for i in range(n):
                w.append(a + i, rows[i], sq[i])
    return path


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one_process(paths: list[str], segments: int, workers: int | None = None) -> dict[str, float]:
    """Best wall of 2 and mean CPU seconds of the analysis in this process (`workers`: lane threads, None:
    one a core)."""
    walls, c0 = [], _cpu()
    for _ in range(2):
        t0 = time.perf_counter()
        sweep = analyze_many(paths, segments=segments, workers=workers)
        walls.append(time.perf_counter() - t0)
        assert not sweep.failed, sweep.failure_line()
    return {"wall_s": min(walls), "cpu_s": (_cpu() - c0) / 2}


def peak_rss_mb(paths: list[str], segments: int) -> float:
    """Peak RSS (MiB, VmHWM) of a fresh process running the analysis of `paths` in-process."""
    code = (
        "import sys; from gradmanifold.sweep import analyze_many; "
        "analyze_many(sys.argv[2:], segments=int(sys.argv[1])); "
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(segments), *paths], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip()) / 1024


def _warm() -> None:
    from gradmanifold.analysis import analyze

    analyze(np.ones((8, 2, K), np.float32), segments=2)


def _vmhwm_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def on_cluster(paths: list[str], segments: int, n_workers: int = 2) -> dict[str, Any]:
    """Wall time on a fresh LocalCluster, its start, per-task compute by kind, overhead, workers' peak RSS."""
    import logging

    from distributed import Client, LocalCluster, get_task_stream

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        with dask_config():  # as `--workers` starts it
            cluster = LocalCluster(
                n_workers=n_workers, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
            )
        client = Client(cluster)
        client.run(_warm)  # imports and the compiled kernels loaded in every worker before the timing
        start_s = time.perf_counter() - t0
        try:
            with get_task_stream(client=client) as stream:
                t1 = time.perf_counter()
                sweep = analyze_many(paths, scheduler=cluster.scheduler_address, segments=segments)
                wall = time.perf_counter() - t1
            assert not sweep.failed, sweep.failure_line()
            peaks = client.run(_vmhwm_mb)
        finally:
            client.close()
            cluster.close()
    kinds: dict[str, list[float]] = {}
    for task in stream.data:
        kind = str(task["key"]).split("-")[0].strip("('\"")
        compute = sum(s["stop"] - s["start"] for s in task["startstops"] if s["action"] == "compute")
        kinds.setdefault(kind, []).append(compute)
    work = sum(sum(v) for v in kinds.values())
    n_tasks = sum(len(v) for v in kinds.values())
    per_store_span = (
        max(kinds.get("summarize", [0.0]))
        + max(kinds.get("run_segment", [0.0]))
        + max(kinds.get("merge", [0.0])) * max(1, int(np.ceil(np.log2(max(1, segments)))))
        + max(kinds.get("finalize", [0.0]))
    )
    return {
        "cluster_start_s": start_s,
        "wall_s": wall,
        "tasks": n_tasks,
        "work_s": work,
        "overhead_s_per_task": max(0.0, n_workers * wall - work) / max(1, n_tasks),
        "span_s": per_store_span,
        "by_kind": {k: {"n": len(v), "sum_s": sum(v), "max_s": max(v)} for k, v in sorted(kinds.items())},
        "peak_rss_mb_per_worker": sorted(peaks.values()),
    }


def projected(run: dict[str, Any], workers: tuple[int, ...] = (1, 2, 4, 8, 16)) -> dict[str, float]:
    """Wall time W workers would take, from the measured tasks (work, span, overhead per task)."""
    return {
        f"W={w}": max(run["work_s"] / w, run["span_s"]) + run["overhead_s_per_task"] * run["tasks"] / w
        for w in workers
    }


def main() -> None:
    env = environment()
    print(f"cpus={env.get('cpus')}  load average before: {os.getloadavg()}")
    small = [str(make_store(f"s{i}", T_SMALL, i)) for i in range(N_STORES)]
    big = [str(make_store("big", T_BIG, 100))]
    analyze_many(small[:1], segments=2)  # load the cached kernels outside the timing
    cases = {"sweep of 8": (small, 1), f"T={T_BIG}, {SEGMENTS} segments": (big, SEGMENTS)}
    rows, detail = [], {}
    for name, (paths, segments) in cases.items():
        here = one_process(paths, segments)
        here1 = one_process(paths, segments, workers=1)
        rss_here = peak_rss_mb(paths, segments)
        dask = on_cluster(paths, segments)
        proj = projected(dask)
        rows.append(
            {
                "case": name,
                "1 proc s": here["wall_s"],
                "1 proc 1 thread s": here1["wall_s"],
                "2 workers s": dask["wall_s"],
                "x 1 proc": dask["wall_s"] / here["wall_s"],
                "cluster start s": dask["cluster_start_s"],
                "tasks": dask["tasks"],
                "work s": dask["work_s"],
                "overhead ms/task": 1e3 * dask["overhead_s_per_task"],
                "peak MB 1 proc": rss_here,
                "peak MB/worker": max(dask["peak_rss_mb_per_worker"]),
                "W=8 s (proj.)": proj["W=8"],
            }
        )
        detail[name] = {"one_process": here, "one_thread": here1, "peak_rss_mb": rss_here, "dask": dask}
        detail[name]["projected_wall_s"] = proj
        print_table(
            f"{name}: tasks by kind (2 workers)", [{"kind": k, **v} for k, v in dask["by_kind"].items()]
        )
        print_table(f"{name}: projected wall time on W workers (s)", [proj])
    print_table(f"sweep on Dask: {N_STORES} stores of T={T_SMALL} and one of T={T_BIG}, G={G}, k={K}", rows)
    print(f"load average after: {os.getloadavg()}")
    write_json(
        "sweep",
        {
            "stores": N_STORES,
            "T_small": T_SMALL,
            "T_big": T_BIG,
            "G": G,
            "k": K,
            "rows": rows,
            "detail": detail,
        },
    )


if __name__ == "__main__":
    main()
