"""Train a small MLP or CNN on scikit-learn's bundled digits (8x8 images, 10 classes), torch on CPU.

Plain torch: no gradmanifold import. Used by make_samples.py (which records it through the Recorder API)
and by the wrap-mode tests and benchmark:

    gradmanifold record --out run.zarr -- python sample_logs/train_digits.py

    python sample_logs/train_digits.py --model mlp --opt adamw --steps 800 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn


def digits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(y))
    xt = torch.tensor(x[order] / 16.0, dtype=torch.float32)
    return xt, torch.tensor(y[order], dtype=torch.long)


def build(model: str, width: int = 128) -> nn.Module:
    if model == "mlp":
        return nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(64, width),
                act1=nn.ReLU(),
                fc2=nn.Linear(width, width // 2),
                act2=nn.ReLU(),
                out=nn.Linear(width // 2, 10),
            )
        )
    if model == "cnn":
        return nn.Sequential(
            OrderedDict(
                unflat=nn.Unflatten(1, (1, 8, 8)),
                conv1=nn.Conv2d(1, 16, 3, padding=1),
                act1=nn.ReLU(),
                conv2=nn.Conv2d(16, 32, 3, padding=1),
                act2=nn.ReLU(),
                pool=nn.MaxPool2d(2),
                flat=nn.Flatten(),
                fc=nn.Linear(32 * 4 * 4, 10),
            )
        )
    raise SystemExit(f"unknown model {model!r} (mlp or cnn)")


def optimizer(name: str, params: Any) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    if name == "sgdm":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    raise SystemExit(f"unknown optimizer {name!r} (adamw or sgdm)")


def train(
    model_name: str,
    opt_name: str,
    steps: int,
    seed: int,
    batch: int = 64,
    on_step: Callable[[int, nn.Module, float, float], None] | None = None,
) -> dict[str, float]:
    """Train; `on_step(step, model, loss, lr)` runs after backward, before the optimizer step."""
    torch.manual_seed(seed)
    x, y = digits(seed)
    model = build(model_name)
    opt = optimizer(opt_name, model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    loss = torch.zeros(())
    for step in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        if on_step is not None:
            on_step(step, model, loss.item(), opt.param_groups[0]["lr"])
        opt.step()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    return {"train_seconds": seconds, "final_loss": loss.item(), "accuracy": acc, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    p.add_argument("--opt", default="adamw", choices=["adamw", "sgdm"])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fail-at", type=int, default=None, help="raise an error at this step (tests)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    def fail_at(step: int, *_: Any) -> None:
        if step == args.fail_at:
            raise RuntimeError(f"failing at step {step} as asked")

    result = train(args.model, args.opt, args.steps, args.seed, on_step=fail_at if args.fail_at else None)
    print(json.dumps(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
