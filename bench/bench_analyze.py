"""`analyze` on a T = 100,000, G = 8, k = 256 store beside reading it and beside the plain numpy approach.

All in one run (this machine is noisy, so only ratios measured together mean anything; the four timings
below run in interleaved rounds, best of each kept, so that a busy moment hits them alike):
- raw read: the store's chunk files (every array of the main rows, committed chunks) read into memory, one
  `read()` each, as `cat` would: what the disk and page cache give, the ceiling of a store read;
- store read: iterate the store's committed chunks (every array, checksums verified), nothing else; its
  GB/s counts the same chunk-file bytes as the raw read, so the two compare directly;
- floor: the same `analyze` on the same rows already in memory (an ArraySource of the store's chunks, with
  its chunking, flags and steps): the compute alone;
- analyze: `gradmanifold.analyze(path)` with default options (5 predictors, 8-beta EMA grid, exact spectrum,
  nested sub-sketches, intervals) for the model and each group; reported as analyze / max(read, floor),
  1.0 when reading and compute overlap perfectly;
- numpy: what a user would write: load everything, vectorised predictors (scipy lfilter for the EMAs), and
  `np.linalg.svd(H, compute_uv=False)` per scope (timed once: it is slow);
- peak memory (max RSS of a fresh process) of analyze at T and at 4T;
- cold (numba compiling into an empty cache) and warm wall time of the `gradmanifold analyze` command on a
  sample_logs store (or on a small store made here when there is none).

Stores are written once into the temp folder and reused (GRADMANIFOLD_BENCH_DIR to move them; T, G, k from
GRADMANIFOLD_BENCH_T / _G / _K).
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import best_of, environment, print_table, write_json
from gradmanifold.analysis import analyze
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import ArraySource, StoreWriter, open_store
from gradmanifold.store.layout import ROWS, chunk_file

T = int(os.environ.get("GRADMANIFOLD_BENCH_T", 100_000))
G = int(os.environ.get("GRADMANIFOLD_BENCH_G", 8))
K = int(os.environ.get("GRADMANIFOLD_BENCH_K", 256))
BASE = Path(os.environ.get("GRADMANIFOLD_BENCH_DIR", Path(tempfile.gettempdir()) / "gradmanifold-bench"))
ROOT = Path(__file__).resolve().parent.parent


def make_store(t: int, g: int = G, k: int = K) -> Path:
    """A store of t steps: per group a mean, a slow random walk and noise (float32), written once."""
    path = BASE / f"analyze-T{t}-G{g}-k{k}.zarr"
    if path.exists():
        try:
            if open_store(path).n_steps == t:
                return path
        except Exception:
            pass
        import shutil

        shutil.rmtree(path)
    BASE.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    mu = rng.standard_normal((g, k)).astype(np.float32)
    walk = np.zeros((g, k), np.float32)
    block = 4096
    with StoreWriter(
        path, ProjectionSpec(k=k, seed=0), groups=[(f"g{i}", 10**6) for i in range(g)], fsync=False
    ) as w:
        for a in range(0, t, block):
            n = min(block, t - a)
            steps = np.cumsum(0.05 * rng.standard_normal((n, g, k), dtype=np.float32), axis=0) + walk
            walk = steps[-1]
            rows = mu + steps + rng.standard_normal((n, g, k), dtype=np.float32)
            sq = (rows.astype(np.float64) ** 2).sum(axis=2)
            for i in range(n):
                w.append(a + i, rows[i], sq[i])
    return path


def read_all(path: Path) -> int:
    n = 0
    for chunk in open_store(path).iter_chunks():
        n += chunk.n
    return n


def chunk_files(path: Path) -> list[Path]:
    """The committed chunk files of every array of the main rows, in the order a store read takes them."""
    m = open_store(path).manifest
    names = m.table(ROWS).arrays
    return [chunk_file(path, name, i) for i in range(m.n_chunks) for name in names]


def raw_read(files: list[Path]) -> int:
    """Read each file whole into memory (bytes), like `cat`; returns the bytes read."""
    n = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            n += len(fh.read())
    return n


def in_memory(path: Path) -> ArraySource:
    """The store's committed rows (verified) in memory, chunked as the store is: the compute floor's input."""
    r = open_store(path)
    chunks = list(r.iter_chunks())
    return ArraySource(
        np.concatenate([c.proj for c in chunks]),
        np.concatenate([c.sqnorm for c in chunks]),
        np.concatenate([c.step for c in chunks]),
        np.concatenate([c.flags for c in chunks]),
        group_names=r.group_names,
        group_sizes=r.group_sizes,
        chunk_rows=r.chunk_rows,
    )


def core_timings(path: Path, files: list[Path]) -> dict[str, tuple[float, float]]:
    """Raw read, store read, in-memory floor and analyze of the store, interleaved (see `interleaved`)."""
    memory = in_memory(path)
    analyze(memory)  # warm, as the store's analysis is
    return interleaved(
        {
            "raw file read": lambda: raw_read(files),
            "store read": lambda: read_all(path),
            "in-memory floor": lambda: analyze(memory),
            "analyze (defaults)": lambda: analyze(path),
        },
        rounds=4,
    )


def interleaved(fns: dict[str, Any], rounds: int) -> dict[str, tuple[float, float]]:
    """Per name: (best wall seconds, mean process CPU seconds per call), the calls run in rounds of one each
    (so a busy moment of the machine falls on all of them alike, not on whichever ran then)."""
    walls: dict[str, list[float]] = {k: [] for k in fns}
    cpus: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c0, t0 = _cpu(), time.perf_counter()
            fn()
            walls[name].append(time.perf_counter() - t0)
            cpus[name].append(_cpu() - c0)
    return {k: (min(walls[k]), sum(cpus[k]) / rounds) for k in fns}


def numpy_baseline(path: Path) -> None:
    """Load everything, vectorised predictors, SVD of H per scope: the straightforward approach."""
    from scipy.signal import lfilter

    proj = np.concatenate([c.proj for c in open_store(path).iter_chunks()])
    scopes = {"model": proj.sum(axis=1, dtype=np.float64)}
    for i in range(proj.shape[1]):
        scopes[f"g{i}"] = proj[:, i].astype(np.float64)
    for x in scopes.values():
        den = (x**2).sum()
        prev = np.vstack([np.zeros((1, x.shape[1])), x[:-1]])
        prev2 = np.vstack([np.zeros((2, x.shape[1])), x[:-2]])
        trend = 2 * prev - prev2
        trend[1] = x[0]
        kappa = {"last": ((x - prev) ** 2).sum() / den, "trend": ((x - trend) ** 2).sum() / den}
        for beta in sorted({0.9, 0.99, 0.5, 0.8, 0.95, 0.98, 0.995, 0.999}):
            e = lfilter([1 - beta], [1, -beta], x, axis=0)
            m = np.vstack([np.zeros((1, x.shape[1])), e[:-1]])
            kappa[f"ema:{beta}"] = ((x - m) ** 2).sum() / den
        s2 = np.linalg.svd(np.diff(x, axis=0), compute_uv=False) ** 2
        tail = np.concatenate([np.cumsum(s2[::-1])[::-1], [0.0]]) / s2.sum()
        [int(np.argmax(tail <= e)) for e in (0.5, 0.1, 0.05, 0.01)]


def peak_rss_mb(path: Path) -> float:
    """Peak RSS (MiB, VmHWM: reset by exec, unlike ru_maxrss) of a fresh process that analyzes the store."""
    code = (
        "import sys; from gradmanifold.analysis import analyze; analyze(sys.argv[1]); "
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def cli_times(store: Path) -> dict[str, Any]:
    """Cold (empty numba cache) and warm wall time of `gradmanifold analyze STORE` as a subprocess."""
    exe = Path(sys.executable).parent / "gradmanifold"
    argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "gradmanifold"]
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([*argv, "analyze", str(store)], capture_output=True, check=True, env=env)
            times.append(time.perf_counter() - t0)
    return {"store": str(store), "cold_s": times[0], "warm_s": min(times[1:])}


def timed(fn: Any, repeat: int) -> tuple[float, float]:
    """(best wall seconds, mean process CPU seconds per call): CPU time shows the work done even when
    other processes share the cores (wall time on a quiet 2-core machine is then about CPU / 2)."""
    c0 = _cpu()
    wall = best_of(fn, repeat=repeat)
    return wall, (_cpu() - c0) / repeat


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    env = environment()
    print(
        f"BLAS: {env.get('blas')}  OPENBLAS_CORETYPE={env.get('OPENBLAS_CORETYPE')}  cpus={env.get('cpus')}"
    )
    print(f"load average before: {os.getloadavg()}")
    path = make_store(T)
    analyze(make_store(2000))  # load the cached kernels outside the timing
    gb = T * G * K * 4 / 1e9
    files = chunk_files(path)
    file_gb = sum(f.stat().st_size for f in files) / 1e9
    core = core_timings(path, files)
    raw_s, read_s = core["raw file read"][0], core["store read"][0]
    floor_s, analyze_s = core["in-memory floor"][0], core["analyze (defaults)"][0]
    io = [
        {
            "what": what,
            "seconds": core[what][0],
            "cpu seconds": core[what][1],
            "GB/s": file_gb / core[what][0],
        }
        for what in ("raw file read", "store read")
    ]
    print_table(f"store read vs raw read of the same {len(files)} chunk files ({file_gb:.2f} GB)", io)
    print(f"store read / raw read: {raw_s / read_s:.2f} of the raw GB/s (goal: store read >= 3 GB/s)")
    bound = max(read_s, floor_s)
    overlap = [
        {
            "what": what,
            "seconds": core[what][0],
            "cpu seconds": core[what][1],
            "x read": core[what][0] / read_s,
        }
        for what in ("store read", "in-memory floor", "analyze (defaults)")
    ]
    print_table("analyze beside the store read and the in-memory compute floor", overlap)
    print(
        f"analyze / max(read, floor): {analyze_s / bound:.2f}x (goal <= 1.2x); analyze / floor: "
        f"{analyze_s / floor_s:.2f}x"
    )

    runs = {
        "read the store": (read_s, core["store read"][1]),
        "analyze (defaults)": (analyze_s, core["analyze (defaults)"][1]),
        "analyze, 1 worker": timed(lambda: analyze(path, workers=1), 2),
        "analyze, no EMA grid": timed(lambda: analyze(path, ema_grid=()), 2),
    }
    runs["numpy baseline"] = timed(lambda: numpy_baseline(path), 1)
    rows = [
        {"what": what, "seconds": w, "cpu seconds": c, "GB/s proj": gb / w, "x read": w / read_s}
        for what, (w, c) in runs.items()
    ]
    numpy_s = runs["numpy baseline"][0]
    print_table(f"analyze T={T} G={G} k={K} ({gb:.2f} GB of projections)", rows)
    print(
        f"analyze vs read: {analyze_s / read_s:.2f}x; "
        f"numpy / analyze: {numpy_s / analyze_s:.1f}x (target >= 5x); load average after: {os.getloadavg()}"
    )

    mem_t = peak_rss_mb(path)
    mem_4t = peak_rss_mb(make_store(4 * T))
    mem = {"peak_rss_mb_T": mem_t, "peak_rss_mb_4T": mem_4t, "ratio": mem_4t / mem_t}
    print_table("peak memory of analyze (fresh process, max RSS)", [mem])

    samples = sorted((ROOT / "sample_logs").glob("*.zarr"))
    cli = cli_times(samples[0] if samples else make_store(2000))
    print_table("gradmanifold analyze (command, wall time)", [cli])
    summary = {
        "raw_read_gb_s": file_gb / raw_s,
        "store_read_gb_s": file_gb / read_s,
        "store_over_raw": raw_s / read_s,
        "read_s": read_s,
        "floor_s": floor_s,
        "analyze_s": analyze_s,
        "analyze_over_max_read_floor": analyze_s / bound,
        "chunk_file_gb": file_gb,
    }
    write_json(
        "analyze",
        {
            "T": T,
            "G": G,
            "k": K,
            "summary": summary,
            "io": io,
            "overlap": overlap,
            "rows": rows,
            "memory": mem,
            "cli": cli,
        },
    )


if __name__ == "__main__":
    main()
