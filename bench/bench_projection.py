"""Projection throughput (Gparam/s) per kind, s and numba thread count, beside the memory-read roofline.

sparse at d = 1e8 float32 (400 MB, streamed once per call; GRADMANIFOLD_BENCH_D sets it); gaussian, O(k d), at
d = 1e6. The roofline is a numpy sum (np.sum of the float32 array) over the same array in the same run, one
core; ratio = Gparam/s / roofline Gparam/s. The sparse kernel's accumulator layout is printed and recorded.
For one-core numbers: NUMBA_NUM_THREADS=1 taskset -c <cpu> python -m bench projection.
"""

from __future__ import annotations

import os
from typing import Any

import numba
import numpy as np

from bench._common import best_of, environment, print_table, read_roofline, write_json
from gradmanifold.kernels.projection import SPARSE_LAYOUT
from gradmanifold.projection import ProjectionSpec, project_with_norm

K = 256
D_SPARSE = int(os.environ.get("GRADMANIFOLD_BENCH_D", 10**8))
D_GAUSSIAN = 10**6


def _run(x: np.ndarray, spec: ProjectionSpec, threads: int, roof: float) -> dict[str, Any]:
    numba.set_num_threads(threads)
    project_with_norm(x[:1000], spec, "bench")  # compile / load the cached kernel outside the timing
    sec = best_of(lambda: project_with_norm(x, spec, "bench"), repeat=3)
    gps = x.size / sec / 1e9
    return {
        "kind": spec.kind,
        "s": spec.s if spec.kind == "sparse" else "-",
        "k": spec.k,
        "d": x.size,
        "threads": threads,
        "seconds": sec,
        "Gparam/s": gps,
        "GMAC/s": gps * (spec.k if spec.kind == "gaussian" else spec.s),
        "roofline Gparam/s": roof,
        "ratio": gps / roof,
    }


def main() -> None:
    env = environment()
    print(
        f"BLAS: {env.get('blas')}  OPENBLAS_CORETYPE={env.get('OPENBLAS_CORETYPE')}  cpus={env.get('cpus')}"
    )
    print(f"sparse kernel layout: {SPARSE_LAYOUT}")
    max_threads = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]
    thread_counts = sorted({1, min(2, max_threads)})
    rows = []
    x = np.random.default_rng(0).standard_normal(D_SPARSE, dtype=np.float32)
    roof = x.size / read_roofline(x) / 1e9
    for s in (1, 2, 4, 8):
        for threads in thread_counts:
            rows.append(_run(x, ProjectionSpec(k=K, s=s), threads, roof))
    del x
    xg = np.random.default_rng(1).standard_normal(D_GAUSSIAN, dtype=np.float32)
    roof_g = xg.size / read_roofline(xg) / 1e9
    for threads in thread_counts:
        rows.append(_run(xg, ProjectionSpec(k=K, kind="gaussian"), threads, roof_g))
    numba.set_num_threads(max_threads)
    print_table(f"projection throughput (k = {K}, float32 input; roofline = numpy sum, one core)", rows)
    write_json("projection", {"k": K, "sparse_layout": SPARSE_LAYOUT, "rows": rows})


if __name__ == "__main__":
    main()
