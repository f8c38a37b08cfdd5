"""Layer spectra cost: training loops with the plain recorder and with spectra every 100 steps, beside the
plain loop measured in the same run (ratios), on the char transformer and a model with 1024x1024 and 4096x1024
layers. Also the cost of one spectra event (all layers' top-20 values) per step it happens on."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import print_table, write_json

SAMPLES = Path(__file__).resolve().parent.parent / "sample_logs"
STEPS = 201
EVERY = 100
TOP = 20


class _Timed:
    """A Recorder whose record() calls are timed: the spectra steps' extra cost is measured directly."""

    def __init__(self, rec: Any) -> None:
        self.rec, self.times = rec, {}

    def record(self, step: int, *a: Any, **k: Any) -> None:
        t0 = time.perf_counter()
        self.rec.record(step, *a, **k)
        self.times[step] = time.perf_counter() - t0

    def close(self) -> None:
        self.rec.close()

    def event_ms(self) -> float:
        """Median record() time at spectra steps minus the others (step 0 opens the store: left out)."""
        at = [t for s, t in self.times.items() if s and s % EVERY == 0]
        off = [t for s, t in self.times.items() if s % EVERY]
        return 1e3 * (float(np.median(at)) - float(np.median(off))) if at else float("nan")


def _recorder(path: Path | None, spectra: bool) -> Any:
    from gradmanifold import Recorder

    if path is None:
        return None
    return _Timed(Recorder(path, k=256, seed=0, spectra_every=EVERY if spectra else 0, spectra_top=TOP))


EVENTS: list[float] = []


def _chars(path: Path | None, spectra: bool) -> float:
    sys.path.insert(0, str(SAMPLES))
    from train_chars import train

    rec = _recorder(path, spectra)

    def on_step(step: int, model: Any, loss: float, lr: float) -> None:
        rec.record(step, model, loss=loss, lr=lr)

    seconds = float(train(steps=STEPS, seed=0, on_step=None if rec is None else on_step)["train_seconds"])
    if rec is not None:
        rec.close()
        if spectra:
            EVENTS.append(rec.event_ms())
    return seconds


def _wide(path: Path | None, spectra: bool) -> float:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 4096),
        torch.nn.ReLU(),
        torch.nn.Linear(4096, 10),
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x, y = torch.randn(64, 1024), torch.randint(0, 10, (64,))
    rec = _recorder(path, spectra)
    t0 = time.perf_counter()
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if rec is not None:
            rec.record(step, model, loss=loss)
        opt.step()
    seconds = time.perf_counter() - t0
    if rec is not None:
        rec.close()
        if spectra:
            EVENTS.append(rec.event_ms())
    return seconds


def main() -> None:
    import torch

    torch.set_num_threads(1)
    rows = []
    for name, run in (("char transformer", _chars), ("1024x1024 + 4096x1024", _wide)):
        with tempfile.TemporaryDirectory() as d:
            run(Path(d) / "warm.zarr", True)  # warm-up: numba compile, torch kernels
        times: dict[str, list[float]] = {"plain": [], "recorder": [], "spectra": []}
        EVENTS.clear()
        for trial in range(2):
            times["plain"].append(run(None, False))
            with tempfile.TemporaryDirectory() as d:
                times["recorder"].append(run(Path(d) / f"r{trial}.zarr", False))
                times["spectra"].append(run(Path(d) / f"s{trial}.zarr", True))
        b, r, s = (float(np.min(times[k])) for k in ("plain", "recorder", "spectra"))
        rows.append(
            {
                "model": name,
                "steps": STEPS,
                "train_ms_per_step": 1e3 * b / STEPS,
                "recorder_ratio": r / b,
                "spectra_ratio": s / b,
                "spectra_over_recorder": s / r,
                "ms_per_spectra_event": float(np.median(EVENTS)),
                "event_share_of_100_steps": float(np.median(EVENTS)) / (1e3 * b / STEPS * EVERY),
            }
        )
    print_table(f"Layer spectra every {EVERY} steps (top {TOP}; torch CPU, 1 thread, k=256)", rows)
    write_json("spectra", {"rows": rows})


if __name__ == "__main__":
    main()
