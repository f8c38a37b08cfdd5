"""Recorder overhead: a torch CPU training loop with and without recording every step, as a ratio.

In one run, interleaved (this machine is noisy: only ratios measured together mean anything):
- loop: the digits MLP (85k parameters, 6 tensors, 1000 steps) and a wide MLP (2.2M, 200 steps), plain,
  recorded on the training thread (threads=0, what "auto" picks for the MLP) and with the background thread
  (threads=1, what it picks for the wide one); the ratio to plain of the whole loop (the store's creation at
  the first record() and its close included: "open_close_ms") and of the steps after the first (steady);
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

STEPS = {"mlp": 1000, "wide": 200}  # ~3 s a run each
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


def _loop(kind: str, record_to: Path | None, threads: int = 1, k: int = 256) -> dict[str, float]:
    """Seconds of STEPS[kind] steps: "wall" (everything, the store's creation at the first record() and its
    close included), "steady" (steps after the first, close excluded), "fixed" (the first record() call and
    close()), "inside" (time spent inside record()), and "params"."""
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
    in_record = fixed = 0.0
    t0 = time.perf_counter()
    t1 = t0
    for step in range(STEPS[kind]):
        i = (step * batch) % (len(xt) - batch)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(xt[i : i + batch]), yt[i : i + batch])
        loss.backward()
        if rec is not None:
            a = time.perf_counter()
            rec.record(step, model, loss=loss)
            b = time.perf_counter()
            in_record += b - a
            if step == 0:
                fixed += b - a
        opt.step()
        if step == 0:
            t1 = time.perf_counter()
    t2 = time.perf_counter()
    if rec is not None:
        rec.close()
    t3 = time.perf_counter()
    fixed += t3 - t2
    return {"wall": t3 - t0, "steady": t2 - t1, "fixed": fixed, "inside": in_record, "params": n_params}


def _outside_kernel_us(n_steps: int = 400) -> tuple[float, float]:
    """(record() per step with threads=0, of which the kernel call) in microseconds, MLP gradients."""
    import torch

    from gradmanifold import Recorder
    from gradmanifold.kernels import segments as kern

    torch.manual_seed(0)
    model = _model("mlp")
    model(torch.randn(256, 64)).square().mean().backward()
    kernel_s = [0.0]
    real = kern.sparse_step

    def timed(*a: Any) -> Any:
        t = time.perf_counter()
        out = real(*a)
        kernel_s[0] += time.perf_counter() - t
        return out

    with tempfile.TemporaryDirectory() as d:
        rec = Recorder(Path(d) / "o.zarr", k=256, threads=0)
        for s in range(20):
            rec.record(s, model)
        kern.sparse_step = timed  # type: ignore[assignment]
        try:
            t0 = time.perf_counter()
            for s in range(20, 20 + n_steps):
                rec.record(s, model)
            total = time.perf_counter() - t0
        finally:
            kern.sparse_step = real  # type: ignore[assignment]
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
        runs: dict[str, list[dict[str, float]]] = {"plain": [], "threads=0": [], "threads=1": []}
        for trial in range(TRIALS):  # interleaved, so that a slow moment hits every variant alike
            runs["plain"].append(_loop(kind, None))
            with tempfile.TemporaryDirectory() as d:
                for threads in (0, 1):
                    got = _loop(kind, Path(d) / f"r{trial}-{threads}.zarr", threads=threads)
                    runs[f"threads={threads}"].append(got)
        steps = STEPS[kind]
        base = min(r["wall"] for r in runs["plain"])
        base_steady = min(r["steady"] for r in runs["plain"])
        for variant in ("threads=0", "threads=1"):
            best = min(runs[variant], key=lambda r: r["wall"])
            rows.append(
                {
                    "model": kind,
                    "params": int(best["params"]),
                    "recording": variant,
                    "steps": steps,
                    "train_ms_per_step": 1e3 * base / steps,
                    "recorded_ms_per_step": 1e3 * best["wall"] / steps,
                    "record_call_us": 1e6 * min(r["inside"] for r in runs[variant]) / steps,
                    "open_close_ms": 1e3 * min(r["fixed"] for r in runs[variant]),
                    "ratio": best["wall"] / base,
                    "steady_ratio": min(r["steady"] for r in runs[variant]) / base_steady,
                }
            )
    print_table(
        "Recorder in the loop (torch CPU, 1 torch thread, k=256, every step; ratio to plain: whole loop with "
        "the store's creation and close, and steady: the steps after the first)",
        rows,
    )
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
