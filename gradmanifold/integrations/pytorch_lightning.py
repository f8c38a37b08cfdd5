"""The Lightning callback for code that imports `pytorch_lightning` rather than `lightning.pytorch`.

The two packages hold separate class trees, and a Trainer of one refuses a callback of the other; this
class is gradmanifold.integrations.lightning.GradManifoldCallback on `pytorch_lightning.Callback`.
"""

from __future__ import annotations

import pytorch_lightning as pl

from gradmanifold.integrations._lightning_hooks import LightningHooks, training_step_loss

__all__ = ["GradManifoldCallback", "training_step_loss"]


class GradManifoldCallback(LightningHooks, pl.Callback):
    """Records one row per optimizer step of a `pytorch_lightning` Trainer (see LightningHooks.__init__)."""
