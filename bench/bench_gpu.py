"""GPU: on-device projection throughput against the device's copy bandwidth, and the Recorder's overhead on
a GPT-2-small-sized model (goal: at most 2% of the step time).

Runs only where torch sees a CUDA device; elsewhere it prints one skip line and writes the reason to
bench/results/gpu.json. Sizes from GRADMANIFOLD_BENCH_GPU_D (projected values) and _STEPS.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import print_table, write_json

D = int(os.environ.get("GRADMANIFOLD_BENCH_GPU_D", 200_000_000))
STEPS = int(os.environ.get("GRADMANIFOLD_BENCH_GPU_STEPS", 30))


def _skip_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    return None


def _timed(fn: Any, sync: Any, repeat: int = 5) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _projection_rows() -> list[dict[str, Any]]:
    import torch

    from gradmanifold.projection import ProjectionSpec, project_with_norm

    x = torch.randn(D, device="cuda", dtype=torch.float32)
    sync = torch.cuda.synchronize
    copy_s = _timed(lambda: x.clone(), sync)
    rows = [{"what": "copy (read + write)", "s": None, "Gparam/s": D / copy_s / 1e9, "x copy": 1.0}]
    for s in (1, 2, 4):
        spec = ProjectionSpec(k=256, s=s)
        t = _timed(lambda spec=spec: project_with_norm(x, spec, "bench"), sync)
        rows.append({"what": "sparse projection", "s": s, "Gparam/s": D / t / 1e9, "x copy": copy_s / t})
    return rows


def _gpt2_overhead() -> dict[str, Any]:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from gradmanifold import Recorder

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)
    model = GPT2LMHeadModel(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, cfg.vocab_size, (8, 512), device="cuda")

    def loop(rec: Any) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for step in range(STEPS):
            opt.zero_grad(set_to_none=True)
            loss = model(batch, labels=batch).loss
            loss.backward()
            if rec is not None:
                rec.record(step, model)
            opt.step()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / STEPS

    loop(None)
    plain, recorded = [], []
    with tempfile.TemporaryDirectory() as d:
        for trial in range(3):
            plain.append(loop(None))
            with Recorder(Path(d) / f"g{trial}.zarr", k=256) as rec:
                recorded.append(loop(rec))
    n = sum(p.numel() for p in model.parameters())
    b, r = min(plain), min(recorded)
    return {"params": n, "step_ms": 1e3 * b, "recorded_step_ms": 1e3 * r, "overhead": r / b - 1.0}


def main() -> None:
    reason = _skip_reason()
    if reason is not None:
        print(f"\n## GPU\nbench_gpu: skipped: {reason}")
        write_json("gpu", {"skipped": reason})
        return
    import torch

    rows = _projection_rows()
    print_table(f"on-device projection, d = {D:,} float32, k = 256 ({torch.cuda.get_device_name()})", rows)
    wrap = _gpt2_overhead()
    print_table("Recorder on a GPT-2-small-sized model (goal: overhead <= 2% of the step)", [wrap])
    write_json("gpu", {"device": torch.cuda.get_device_name(), "projection": rows, "gpt2": wrap})


if __name__ == "__main__":
    main()
