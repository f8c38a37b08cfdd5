"""Recorder overhead: a torch CPU training loop with and without recording every step, as a ratio."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import print_table, write_json

STEPS = 150


def _loop(model_kind: str, record_to: Path | None, k: int = 256) -> tuple[float, int]:
    import torch
    from sklearn.datasets import load_digits

    from gradmanifold import Recorder

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    xt = torch.tensor(x / 16.0, dtype=torch.float32)
    yt = torch.tensor(y)
    if model_kind == "mlp":
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 10),
        )
    else:  # a wider MLP: ~2.2M parameters, where projection cost per step is largest relative to compute
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 1024),
            torch.nn.ReLU(),
            torch.nn.Linear(1024, 2048),
            torch.nn.ReLU(),
            torch.nn.Linear(2048, 10),
        )
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rec: Any = Recorder(record_to, k=k, seed=0) if record_to is not None else None
    batch = 256
    t0 = time.perf_counter()
    for step in range(STEPS):
        i = (step * batch) % (len(xt) - batch)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt[i : i + batch]), yt[i : i + batch])
        loss.backward()
        if rec is not None:
            rec.record(step, model, loss=loss)
        opt.step()
    if rec is not None:
        rec.close()
    return time.perf_counter() - t0, n_params


def main() -> None:
    import torch

    torch.set_num_threads(1)
    _loop("mlp", None)  # warm-up: torch kernels, numba compile
    with tempfile.TemporaryDirectory() as d:
        _loop("mlp", Path(d) / "warm.zarr")
    rows = []
    for kind in ("mlp", "wide"):
        base, with_rec = [], []
        for trial in range(3):
            t, n = _loop(kind, None)
            base.append(t)
            with tempfile.TemporaryDirectory() as d:
                t, _ = _loop(kind, Path(d) / f"r{trial}.zarr")
            with_rec.append(t)
        b, r = float(np.min(base)), float(np.min(with_rec))
        rows.append(
            {
                "model": kind,
                "params": n,
                "steps": STEPS,
                "train_ms_per_step": 1e3 * b / STEPS,
                "recorded_ms_per_step": 1e3 * r / STEPS,
                "overhead_ms_per_step": 1e3 * (r - b) / STEPS,
                "ratio": r / b,
            }
        )
    print_table("Recorder overhead (torch CPU, 1 thread, k=256, every step)", rows)
    write_json("recorder", {"rows": rows})


if __name__ == "__main__":
    main()
