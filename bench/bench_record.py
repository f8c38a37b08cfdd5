"""Wrap-mode overhead: training wall time with and without `gradmanifold record`, and where the time goes.

Two jobs from sample_logs/ (torch on CPU, one torch thread): the digits MLP (AdamW, 17k parameters, ~1 ms a
step) and the tiny char transformer (110k parameters). Each runs plain and wrapped
(`gradmanifold record --out X --k 256 -- python ...`), alternately, `REPEAT` times; the best of each is
compared. Two ratios: the training loop alone (the script's own timer: what recording costs per step) and the
whole process (start-up included: torch import, the start-up hook, the store's commit at exit).

Then, in this process, the per-step cost split: the training step itself, Recorder.record, and of it the
projection kernel (one call for all tensors of a step) and the rest (reading and copying the gradients, the
row, commits); `steady_ratio` is
the loop ratio that per-step cost alone gives, and `unexplained_s` what the wrapped loop lost beyond it (the
first step: store creation, module scan, and whatever of the start-up warm-up had not finished).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import print_table, write_json

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_logs"
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
MLP = [str(SAMPLES / "train_digits.py"), "--model", "mlp", "--opt", "adamw", "--steps", "800"]
CHARS = [str(SAMPLES / "train_chars.py"), "--steps", "60"]
# name -> (job, extra `record` options)
JOBS: dict[str, tuple[list[str], list[str]]] = {
    "mlp_digits_adamw": (MLP, []),
    "mlp_digits_adamw every 10": (MLP, ["--every", "10"]),
    "char_transformer": (CHARS, []),
}


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    line = [ln for ln in done.stderr.splitlines() if ln.startswith("{")][-1]
    return float(json.loads(line)["train_seconds"]), wall


def overhead(name: str, job: list[str], extra: list[str], tmp: Path) -> dict[str, Any]:
    env = dict(os.environ)
    exe = [sys.executable, "-m", "gradmanifold", "record", "--k", "256", *extra]
    plain_loop, plain_wall, wrap_loop, wrap_wall = [], [], [], []
    for i in range(REPEAT):
        out = tmp / f"{name.replace(' ', '_')}-{i}.zarr"
        loop, wall = _run([sys.executable, *job], env)
        plain_loop.append(loop)
        plain_wall.append(wall)
        loop, wall = _run([*exe, "--out", str(out), "--", sys.executable, *job], env)
        wrap_loop.append(loop)
        wrap_wall.append(wall)
        shutil.rmtree(out, ignore_errors=True)
    return {
        "job": name,
        "plain_loop_s": min(plain_loop),
        "wrapped_loop_s": min(wrap_loop),
        "loop_ratio": min(wrap_loop) / min(plain_loop),
        "plain_process_s": min(plain_wall),
        "wrapped_process_s": min(wrap_wall),
        "process_ratio": min(wrap_wall) / min(plain_wall),
    }


def breakdown(name: str, tmp: Path) -> dict[str, Any]:
    """Per-step microseconds: training step, projection of every tensor, the rest of Recorder.record."""
    import torch

    from gradmanifold import Recorder
    from gradmanifold.kernels import segments

    sys.path.insert(0, str(SAMPLES))
    torch.set_num_threads(1)
    from gradmanifold.hotpath import warm_up

    warm_up()  # as wrap mode's warm-up thread does before the first step
    timings = {"record": 0.0, "project": 0.0}
    rec = Recorder(tmp / f"{name}-breakdown.zarr", k=256)
    steps = 0
    kernel = segments.sparse_step

    def timed_kernel(*a: Any) -> Any:  # the one projection call of a step (threads="auto": inline here)
        t = time.perf_counter()
        out = kernel(*a)
        timings["project"] += time.perf_counter() - t
        return out

    def on_step(step: int, model: Any, loss: float, lr: float) -> None:
        nonlocal steps
        t1 = time.perf_counter()
        rec.record(step, model, loss=loss, lr=lr)
        timings["record"] += time.perf_counter() - t1
        steps += 1

    segments.sparse_step = timed_kernel  # type: ignore[assignment]

    if name == "mlp_digits_adamw":
        from train_digits import train

        plain = train("mlp", "adamw", 800, 0)["train_seconds"]
        total = train("mlp", "adamw", 800, 0, on_step=on_step)["train_seconds"]
        n_tensors = 6
    else:
        from train_chars import train as train_chars

        plain = train_chars(60, 0)["train_seconds"]
        total = train_chars(60, 0, on_step=on_step)["train_seconds"]
        n_tensors = sum(1 for _ in torch.nn.Module.parameters(_chars_model()))
    rec.close()
    segments.sparse_step = kernel  # type: ignore[assignment]
    us = 1e6 / steps
    record_us = timings["record"] * us
    project_us = timings["project"] * us
    return {
        "job": name,
        "tensors": n_tensors,
        "train_step_us": plain * 1e6 / steps,
        "record_us": record_us,
        "projection_us": project_us,
        "store_and_other_us": max(record_us - project_us, 0.0),
        "steady_ratio": 1 + record_us / (plain * 1e6 / steps),
        "steps": steps,
        "in_process_total_s": total,
    }


def _chars_model() -> Any:
    from train_chars import CharTransformer

    return CharTransformer(88)


def main() -> None:
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")  # as wrap mode sets it for the child
    tmp = Path(tempfile.mkdtemp(prefix="bench_record_"))
    try:
        rows = [overhead(name, job, extra, tmp) for name, (job, extra) in JOBS.items()]
        parts = [breakdown(name, tmp) for name in ("mlp_digits_adamw", "char_transformer")]
        for row in rows:  # what the per-step cost does not explain: the first step, contention
            part = parts[0] if row["job"].startswith("mlp") else parts[1]
            every = 10 if "every 10" in row["job"] else 1
            per_step = part["record_us"] * part["steps"] / every / 1e6
            row["unexplained_s"] = row["wrapped_loop_s"] - row["plain_loop_s"] - per_step
        print_table(f"wrap-mode overhead, k = 256, best of {REPEAT} (ratio target < 1.10)", rows)
        print_table("per-step cost, in process (us); record_us includes the projection", parts)
        write_json("record", {"overhead": rows, "breakdown": parts, "repeat": REPEAT})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
