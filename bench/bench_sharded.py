"""Cost of sharded recording: the per-step all-reduce of the packed rows, and Recorder.record on an FSDP2
model (every rank projects its shards, one all-reduce, rank 0 writes) beside the same model in one process.

Runs a 2-rank `torchrun` job on CPU/gloo (python -m torch.distributed.run); numbers in
bench/results/sharded.json and the table in docs/SHARDED.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import print_table, write_json

ROOT = Path(__file__).resolve().parent.parent
WIDTH, LAYERS, STEPS, K = 512, 8, 30, 256
BUFFERS = ((8, 256, False), (64, 256, False), (64, 256, True), (64, 1024, False))


def _model() -> Any:
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)])


def _record_times(model: Any, store: str, rows: slice, sync: Any = None) -> list[float]:
    """Seconds per Recorder.record call over STEPS training steps (not the first: it opens the store).

    sync: called before each timed call (a barrier, so that the time is not the other rank's lag)."""
    import torch

    from gradmanifold import Recorder

    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    times = []
    with Recorder(store, k=K, seed=0) as rec:
        for step in range(STEPS + 1):
            x = torch.randn(16, WIDTH, generator=gen)[rows]
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            if sync is not None:
                sync()
            t0 = time.perf_counter()
            rec.record(step, model)
            times.append(time.perf_counter() - t0)
            opt.step()
    return times[1:]


def _worker(out: str, tmp: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from gradmanifold import sharded

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rows: list[dict[str, Any]] = []
    for g, k, updates in BUFFERS:
        ex = sharded.Exchange(f"bench {g} {k} {updates}")
        upd = (np.ones((g, k)), np.ones(g)) if updates else None
        buf = sharded.pack(np.ones((g, k)), np.ones(g), np.ones(g), upd, False, rank)
        for _ in range(20):
            ex.allreduce(buf)
        dist.barrier()
        t = []
        for _ in range(200):
            t0 = time.perf_counter()
            ex.allreduce(buf)
            t.append(time.perf_counter() - t0)
        rows.append({"what": "all-reduce", "G": g, "k": k, "updates": updates, "bytes": buf.nbytes, "s": t})
    model = _model()
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    half = slice(rank * 8, rank * 8 + 8)
    times = _record_times(model, f"{tmp}/fsdp2.zarr", half, dist.barrier)
    rows.append({"what": "record fsdp2", "rank": rank, "s": times})
    Path(f"{out}.rank{rank}").write_text(json.dumps(rows))
    dist.destroy_process_group()


def main() -> None:
    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/rows"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        cmd += ["-m", "bench.bench_sharded", "--worker", out, tmp]
        env = {**os.environ, "NUMBA_NUM_THREADS": "1"}
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
        one = _record_times(_model(), f"{tmp}/one.zarr", slice(None))
    table: list[dict[str, Any]] = []
    for r0, r1 in zip(*ranks, strict=True):
        if r0["what"] == "all-reduce":
            table.append(
                {
                    "measure": f"all-reduce G={r0['G']} k={r0['k']}{' +updates' if r0['updates'] else ''}",
                    "KiB": round(r0["bytes"] / 1024, 1),
                    "median ms": round(1e3 * float(np.median(r0["s"] + r1["s"])), 3),
                }
            )
        else:
            for r, row in enumerate((r0, r1)):
                table.append(
                    {"measure": f"record(), FSDP2 rank {r}", "KiB": None, "median ms": _ms(row["s"])}
                )
    table.append({"measure": "record(), one process", "KiB": None, "median ms": _ms(one)})
    params = LAYERS * (WIDTH * WIDTH + WIDTH)
    title = f"sharded recording, 2 ranks CPU/gloo; model {LAYERS} x Linear({WIDTH}) = {params} params, k={K}"
    print_table(title, table)
    write_json("sharded", {"rows": table, "params": params, "tensors": 2 * LAYERS, "k": K, "steps": STEPS})


def _ms(seconds: list[float]) -> float:
    return round(1e3 * float(np.median(seconds)), 3)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2], sys.argv[3])
    else:
        main()
