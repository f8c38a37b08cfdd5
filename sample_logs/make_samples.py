"""Rebuild the sample stores in sample_logs/ (deterministic seeds, torch on CPU with one thread).

    python sample_logs/make_samples.py                 # all of them (about a minute on two cores)
    python sample_logs/make_samples.py --only mlp_digits_adamw synthetic_lqr

Each store is recorded with the Recorder API inside the training loop (after backward, before the optimizer
step), k = 256, seed = 0, sparse projection; see sample_logs/README.md for what each one holds. An existing
store of the same name is replaced.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The per-step projections are small: numba's thread pool only adds barrier waits next to a training job.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

K = 256
SEED = 0
CHUNK_ROWS = 100  # divides every run length: no padding in the last chunk
SYNTHETIC_STEPS = 1000
SYNTHETIC_DIM = 128

TRANSFORMER_GROUPS = {
    "embed": ["tok_emb.*", "pos_emb"],
    "attn": ["blocks.layers.*.self_attn.*"],
    "mlp": ["blocks.layers.*.linear*"],
    "norm": ["*norm*"],
    "head": ["head.*"],
}


def _torch_run(
    path: Path,
    train: Callable[..., dict[str, Any]],
    groups: Any,
    rec_kw: dict[str, Any] | None = None,
    probe: Callable[[int, Any, Any], None] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    import torch

    from gradmanifold import Recorder
    from gradmanifold.wrap.options import groups_for

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    rec: Any = None

    def on_step(step: int, model: Any, loss: float, lr: float) -> None:
        nonlocal rec
        if rec is None:
            names = [n for n, p in model.named_parameters() if p.requires_grad]
            g = groups_for(groups, names) if isinstance(groups, str) else groups
            rec = Recorder(
                path, k=K, seed=SEED, groups=g, resume="never", chunk_rows=CHUNK_ROWS, **(rec_kw or {})
            )
        rec.record(step, model, loss=loss, lr=lr)
        if probe is not None:
            probe(step, model, rec)

    result = train(on_step=on_step, **kw)
    rec.close()
    return result


def mlp_digits_adamw(path: Path) -> dict[str, Any]:
    from train_digits import train

    return _torch_run(path, train, "module", model_name="mlp", opt_name="adamw", steps=800, seed=SEED)


def mlp_digits_sgdm(path: Path) -> dict[str, Any]:
    from train_digits import train

    return _torch_run(path, train, "module", model_name="mlp", opt_name="sgdm", steps=800, seed=SEED)


def cnn_digits_adamw(path: Path) -> dict[str, Any]:
    from train_digits import train

    return _torch_run(path, train, "module", model_name="cnn", opt_name="adamw", steps=600, seed=SEED)


def cnn_digits_spectra(path: Path) -> dict[str, Any]:
    """The CNN run, also with layer spectra every 20 steps and a curvature probe every 200 steps."""
    import torch
    from train_digits import digits, train

    x, y = digits(SEED)
    batch = (x[:256], y[:256])  # a fixed batch: the probe's Hessian is that of this batch's loss

    def loss_fn(model: Any, b: Any) -> Any:
        return torch.nn.functional.cross_entropy(model(b[0]), b[1])

    def probe(step: int, model: Any, rec: Any) -> None:
        if step % 200 == 0 or step == 599:
            rec.probe(step, model, loss_fn, batch, top=8)

    rec_kw = {"spectra_every": 20, "spectra_top": 20}
    return _torch_run(
        path, train, "module", rec_kw, probe, model_name="cnn", opt_name="adamw", steps=600, seed=SEED
    )


def mlp_digits_updates(path: Path) -> dict[str, Any]:
    """The MLP with SGD + momentum, also recording each step's parameter update (exact norms) and a glass
    probe of a fixed batch every 200 steps."""
    import torch
    from train_digits import digits, train

    x, y = digits(SEED)
    batch = (x[:256], y[:256])

    def loss_fn(model: Any, b: Any) -> Any:
        return torch.nn.functional.cross_entropy(model(b[0]), b[1])

    def probe(step: int, model: Any, rec: Any) -> None:
        if step % 200 == 0 or step == 799:
            rec.probe(step, model, loss_fn, batch, kind="glass", sigma=1e-3, seed=SEED)

    return _torch_run(
        path,
        train,
        "module",
        {"updates": "exact"},
        probe,
        model_name="mlp",
        opt_name="sgdm",
        steps=800,
        seed=SEED,
    )


def char_transformer_adamw(path: Path) -> dict[str, Any]:
    from train_chars import train

    return _torch_run(path, train, TRANSFORMER_GROUPS, steps=500, seed=SEED)


def _synthetic(name: str) -> Callable[[Path], dict[str, Any]]:
    def run(path: Path) -> dict[str, Any]:
        from gradmanifold import Recorder
        from gradmanifold.synthetic import make_task, record_task

        task = make_task(name, SYNTHETIC_STEPS, SYNTHETIC_DIM, SEED)
        with Recorder(path, k=K, seed=SEED, resume="never", chunk_rows=CHUNK_ROWS) as rec:
            record_task(task, rec)
        return {"steps": task.steps, "dim": task.dim, "truth": task.ground_truth().to_dict()}

    return run


SAMPLES: dict[str, Callable[[Path], dict[str, Any]]] = {
    "mlp_digits_adamw": mlp_digits_adamw,
    "mlp_digits_sgdm": mlp_digits_sgdm,
    "cnn_digits_adamw": cnn_digits_adamw,
    "cnn_digits_spectra": cnn_digits_spectra,
    "mlp_digits_updates": mlp_digits_updates,
    "char_transformer_adamw": char_transformer_adamw,
    **{
        f"synthetic_{t.replace('-', '_')}": _synthetic(t)
        for t in ("white-noise", "random-walk", "lowrank-drift", "noisy-quadratic", "lqr")
    },
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", choices=sorted(SAMPLES), help="rebuild only these")
    p.add_argument("--out", type=Path, default=HERE, help="folder for the stores")
    args = p.parse_args(argv)
    for name in args.only or SAMPLES:
        path = args.out / f"{name}.zarr"
        if path.exists():
            shutil.rmtree(path)
        t0 = time.perf_counter()
        info = SAMPLES[name](path)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        summary = {k: v for k, v in info.items() if k != "truth"}
        print(f"{name}: {size / 2**20:.2f} MiB in {time.perf_counter() - t0:.1f} s {summary}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
