"""Cost of recording parameter updates: training loops with the plain recorder and with updates (exact: a copy
of the parameters, projected: their projection only), beside the plain loop measured in the same run, on the
digits MLP and the char transformer of sample_logs."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import print_table, write_json

SAMPLES = Path(__file__).resolve().parent.parent / "sample_logs"
MODES = ("plain", "recorder", "exact", "projected")


def _run(model: str, mode: str, path: Path | None, steps: int) -> float:
    sys.path.insert(0, str(SAMPLES))
    from gradmanifold import Recorder

    rec: Any = None
    if mode != "plain":
        assert path is not None
        rec = Recorder(path, k=256, seed=0, updates=False if mode == "recorder" else mode)  # type: ignore[arg-type]

    def on_step(step: int, m: Any, loss: float, lr: float) -> None:
        rec.record(step, m, loss=loss, lr=lr)

    hook = None if rec is None else on_step
    if model == "digits MLP":
        from train_digits import train

        out = train(model_name="mlp", opt_name="adamw", steps=steps, seed=0, on_step=hook)
    else:
        from train_chars import train as train_chars

        out = train_chars(steps=steps, seed=0, on_step=hook)
    if rec is not None:
        rec.close()
    return float(out["train_seconds"])


def main() -> None:
    import torch

    torch.set_num_threads(1)
    rows = []
    for model, steps in (("digits MLP", 400), ("char transformer", 150)):
        with tempfile.TemporaryDirectory() as d:
            _run(model, "exact", Path(d) / "warm.zarr", 20)  # warm-up: numba compile, torch kernels
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for trial in range(3):
            for mode in MODES:
                with tempfile.TemporaryDirectory() as d:
                    times[mode].append(_run(model, mode, Path(d) / f"{mode}{trial}.zarr", steps))
        best = {m: float(np.min(v)) for m, v in times.items()}
        rows.append(
            {
                "model": model,
                "steps": steps,
                "train_ms_per_step": 1e3 * best["plain"] / steps,
                "recorder_ratio": best["recorder"] / best["plain"],
                "updates_exact_ratio": best["exact"] / best["plain"],
                "updates_projected_ratio": best["projected"] / best["plain"],
                "exact_extra_ms_per_step": 1e3 * (best["exact"] - best["recorder"]) / steps,
            }
        )
    print_table("Recording parameter updates (torch CPU, 1 thread, k=256, every step)", rows)
    write_json("updates", {"rows": rows})


if __name__ == "__main__":
    main()
