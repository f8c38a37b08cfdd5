"""A `lightning.pytorch.Callback` that records every optimizer step's gradient (docs/INTEGRATIONS.md).

    trainer = lightning.pytorch.Trainer(callbacks=[GradManifoldCallback("run.zarr", k=256)], ...)
    trainer.fit(module, data)

Recorded at `on_before_optimizer_step`: the gradient accumulated over `accumulate_grad_batches` micro-batches,
before clipping and the update; the row's step is `trainer.global_step` then (0 for the first optimizer step).
For the `pytorch_lightning` package name use gradmanifold.integrations.pytorch_lightning.
"""

from __future__ import annotations

import lightning.pytorch as pl

from gradmanifold.integrations._lightning_hooks import LightningHooks, training_step_loss

__all__ = ["GradManifoldCallback", "training_step_loss"]


class GradManifoldCallback(LightningHooks, pl.Callback):
    """Records one row per optimizer step of a `lightning.pytorch` Trainer (see LightningHooks.__init__)."""
