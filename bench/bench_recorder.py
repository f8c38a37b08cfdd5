"""Recorder overhead: a torch CPU training loop with and without recording every step, as a ratio.

In one run, interleaved (this machine is noisy: only ratios measured together mean anything):
- loop: the digits MLP (85k parameters, 6 tensors) and a wide MLP (2.2M), plain, recorded on the training
  thread (threads=0) and recorded with the background thread (threads=1, the default); ratio to plain;
- per step: the time record() holds the training thread (threads=1), and the time a step costs outside the
  projection kernel (threads=0: record() minus the kernel call itself, measured on the same step);
- per tensor: the marginal cost of one more tensor in a step (64 tiny tensors against 1, threads=0), beside
  one project_with_norm call per tensor (the dispatch the batched kernel replaces).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench._common import print_table, write_json

STEPS = 200
TRIALS = 3


def _model(kind: str) -> Any:
    import torch

    if kind == "mlp":
        return torch.nn.Sequential(
            torch.nn.Linear(64, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 256),
            torch.nn.ReLU(),
            torch.nn.Linear(256, 10),
        )
    # a wider MLP: ~2.2M parameters, where projection cost per step is largest relative to compute
    return torch.nn.Sequential(
        torch.nn.Linear(64, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 10),
    )


def _loop(kind: str, record_to: Path | None, threads: int = 1, k: int = 256) -> tuple[float, int, float]:
    """(wall seconds of STEPS steps, parameters, seconds spent inside record())."""
    import torch
    from sklearn.datasets import load_digits

    from gradmanifold import Recorder

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    xt = torch.tensor(x / 16.0, dtype=torch.float32)
    yt = torch.tensor(y)
    model = _model(kind)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rec: Any = Recorder(record_to, k=k, seed=0, threads=threads) if record_to is not None else None
    batch = 256
    in_record = 0.0
    t0 = time.perf_counter()
    for step in range(STEPS):
        i = (step * batch) % (len(xt) - batch)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt[i : i + batch]), yt[i : i + batch])
        loss.backward()
        if rec is not None:
            a = time.perf_counter()
            rec.record(step, model, loss=loss)
            in_record += time.perf_counter() - a
        opt.step()
    if rec is not None:
        rec.close()
    return time.perf_counter() - t0, n_params, in_record


def _outside_kernel_us(n_steps: int = 400) -> tuple[float, float]:
    """(record() per step with threads=0, of which the kernel call) in microseconds, MLP gradients."""
    import torch

    from gradmanifold import Recorder
    from gradmanifold.kernels import segments as kern

    torch.manual_seed(0)
    model = _model("mlp")
    model(torch.randn(256, 64)).square().mean().backward()
    kernel_s = [0.0]
    real = kern.sparse_segments

    def timed(*a: Any) -> None:
        t = time.perf_counter()
        real(*a)
        kernel_s[0] += time.perf_counter() - t

    with tempfile.TemporaryDirectory() as d:
        rec = Recorder(Path(d) / "o.zarr", k=256, threads=0)
        for s in range(20):
            rec.record(s, model)
        kern.sparse_segments = timed  # type: ignore[assignment]
        try:
            t0 = time.perf_counter()
            for s in range(20, 20 + n_steps):
                rec.record(s, model)
            total = time.perf_counter() - t0
        finally:
            kern.sparse_segments = real  # type: ignore[assignment]
        rec.close()
    return 1e6 * total / n_steps, 1e6 * kernel_s[0] / n_steps


def _per_tensor_us(n_steps: int = 300) -> tuple[float, float]:
    """(marginal record() cost of one more tiny tensor, one project_with_norm call) in microseconds."""
    from gradmanifold import Recorder
    from gradmanifold.projection import ProjectionSpec, project_with_norm

    rng = np.random.default_rng(0)
    many = {f"t{i}": rng.standard_normal(16).astype(np.float32) for i in range(64)}
    one = {"t0": many["t0"]}
    cost = {}
    with tempfile.TemporaryDirectory() as d:
        for name, tensors in (("one", one), ("many", many)):
            rec = Recorder(Path(d) / f"{name}.zarr", k=256, threads=0, groups="single")
            for s in range(20):
                rec.record(s, tensors)
            t0 = time.perf_counter()
            for s in range(20, 20 + n_steps):
                rec.record(s, tensors)
            cost[name] = (time.perf_counter() - t0) / n_steps
            rec.close()
    spec = ProjectionSpec(k=256)
    x = many["t0"]
    project_with_norm(x, spec, "g")
    t0 = time.perf_counter()
    for _ in range(3000):
        project_with_norm(x, spec, "g")
    per_call = (time.perf_counter() - t0) / 3000
    return 1e6 * (cost["many"] - cost["one"]) / 63, 1e6 * per_call


def main() -> None:
    import torch

    torch.set_num_threads(1)
    _loop("mlp", None)  # warm-up: torch kernels, numba compile
    with tempfile.TemporaryDirectory() as d:
        _loop("mlp", Path(d) / "warm0.zarr", threads=0)
        _loop("mlp", Path(d) / "warm1.zarr", threads=1)
    rows = []
    for kind in ("mlp", "wide"):
        times: dict[str, list[float]] = {"plain": [], "threads=0": [], "threads=1": []}
        held: list[float] = []
        n = 0
        for trial in range(TRIALS):  # interleaved, so that a slow moment hits every variant alike
            t, n, _ = _loop(kind, None)
            times["plain"].append(t)
            with tempfile.TemporaryDirectory() as d:
                for threads in (0, 1):
                    t, _, inside = _loop(kind, Path(d) / f"r{trial}-{threads}.zarr", threads=threads)
                    times[f"threads={threads}"].append(t)
                    if threads == 1:
                        held.append(inside)
        base = float(np.min(times["plain"]))
        for variant in ("threads=0", "threads=1"):
            r = float(np.min(times[variant]))
            rows.append(
                {
                    "model": kind,
                    "params": n,
                    "recording": variant,
                    "train_ms_per_step": 1e3 * base / STEPS,
                    "recorded_ms_per_step": 1e3 * r / STEPS,
                    "record_call_us": 1e6 * float(np.min(held)) / STEPS if variant == "threads=1" else None,
                    "ratio": r / base,
                }
            )
    print_table("Recorder in the loop (torch CPU, 1 torch thread, k=256, every step; ratio to plain)", rows)
    outside, kernel = _outside_kernel_us()
    marginal, dispatch = _per_tensor_us()
    per_step = [
        {
            "what": "record() per step, threads=0, MLP (6 tensors)",
            "us": outside,
            "baseline": "of which the kernel",
            "baseline_us": kernel,
            "outside_kernel_us": outside - kernel,
        },
        {
            "what": "one more tensor in a step (64 vs 1 tiny tensors)",
            "us": marginal,
            "baseline": "one project_with_norm call",
            "baseline_us": dispatch,
            "outside_kernel_us": None,
        },
    ]
    print_table("Recorder per step and per tensor (microseconds)", per_step)
    write_json("recorder", {"rows": rows, "per_step": per_step})


if __name__ == "__main__":
    main()
