"""The Lightning callback's hooks, whichever package name (`lightning.pytorch`, `pytorch_lightning`).

Lightning refuses a callback of the other package (two class trees), so gradmanifold.integrations.lightning
and gradmanifold.integrations.pytorch_lightning each join this class to their own `Callback`. Nothing heavy
is imported here.

When (Lightning 2.x, automatic optimization): the precision plugin runs the optimizer's closure (zero_grad at
the first micro-batch of an accumulation window, training_step, backward), then `on_before_optimizer_step`,
then gradient clipping (`gradient_clip_val`), then the update. So the recorded gradient is the accumulated one
of all `accumulate_grad_batches` micro-batches, unscaled (16-mixed), before clipping. The row's step is
`trainer.global_step` then: the number of optimizer steps done before this one (0 for the first).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Any

from gradmanifold.errors import InputError
from gradmanifold.integrations._common import LossFn, Session, failure_status
from gradmanifold.record import Recorder

OWNER = "GradManifoldCallback (Lightning)"


def _no_log(*args: Any, **kwargs: Any) -> None:
    return None


def training_step_loss(module: Any, batch: Any, batch_idx: int = 0) -> Any:
    """The default probe loss: the LightningModule's own `training_step(batch, batch_idx)` loss (a tensor,
    or the "loss" of a dict), its `self.log` calls muted: a probe adds nothing to the logged metrics."""
    muted = ("log", "log_dict")
    own = {name: module.__dict__[name] for name in muted if name in module.__dict__}
    for name in muted:
        setattr(module, name, _no_log)
    try:
        out = module.training_step(batch, batch_idx)
    finally:
        for name in muted:
            if name in own:
                setattr(module, name, own[name])
            else:
                delattr(module, name)
    loss = out.get("loss") if isinstance(out, Mapping) else out
    if loss is None:
        raise InputError(f"{OWNER}: training_step returned no loss for the probe batch; pass probe_loss_fn=")
    return loss


class LightningHooks:
    """Records one row per optimizer step of a Lightning Trainer: the accumulated gradient's projection and
    squared norm per group, the step's loss and learning rate; probes on a schedule."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        probe_every: int = 0,
        probe_kind: str = "curvature",
        probe_loss_fn: LossFn | None = None,
        probe_batch: Any = None,
        probe_options: Mapping[str, Any] | None = None,
        **recorder: Any,
    ) -> None:
        """Check the arguments now (InputError); the store opens at the first optimizer step.

        path: the store. recorder: keyword arguments of gradmanifold.record.Recorder (k, seed, every,
        groups, spectra_every, updates, nonfinite, on_error, ...). probe_every: at recorded steps that are
        multiples of it, run a probe (Recorder.probe) on the LightningModule right after recording, at the
        same parameters (0: never; a multiple of every). probe_kind: "curvature" or "glass".
        probe_loss_fn(module, batch): the probe's loss (default: the module's training_step loss on the
        batch, its logging muted). probe_batch: a fixed batch (moved to the module's device) to probe;
        default: the step's last micro-batch.
        probe_options: top, layers, sigma, seed of Recorder.probe.
        """
        super().__init__()
        self.session = Session(
            OWNER,
            path,
            probe_every=probe_every,
            probe_kind=probe_kind,
            probe_loss_fn=probe_loss_fn,
            probe_batch=probe_batch,
            probe_options=probe_options,
            recorder=recorder,
        )
        self._batch: Any = None
        self._batch_idx = 0

    @property
    def recorder(self) -> Recorder:
        """The Recorder of the current (or last) fit."""
        return self.session.recorder

    # ------------------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Start (or continue) the store's recording; refuse what would record the wrong gradient."""
        if len(getattr(trainer, "optimizers", ()) or ()) > 1:
            raise InputError(
                f"{OWNER}: the module has {len(trainer.optimizers)} optimizers; this callback records one "
                "(record the others with a Recorder in training_step)"
            )
        if (
            self.session.probe_every
            and self.session.probe_loss_fn is None
            and not pl_module.automatic_optimization
        ):
            raise InputError(
                f"{OWNER}: with manual optimization training_step steps the optimizer itself and cannot be "
                "the probe's loss; pass probe_loss_fn=(module, batch) -> loss"
            )
        self.session.begin()
        self._batch = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        """Keep the micro-batch (already on the device) for a probe at the next optimizer step."""
        if self.session.wants_batch:
            self._batch, self._batch_idx = batch, int(batch_idx)

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: Any) -> None:
        """A micro-batch's loss as training_step returned it: Lightning hands it divided by
        accumulate_grad_batches (automatic optimization) and scaled by the AMP grad scaler (16-mixed)."""
        if self.session.probing or not hasattr(loss, "detach"):
            return
        value = loss.detach()
        scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
        if scaler is not None and scaler.is_enabled():
            value = value / scaler.get_scale()
        if pl_module.automatic_optimization:
            value = value * trainer.accumulate_grad_batches
        self.session.add_loss(value, summed=False)

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Record the accumulated gradient before clipping and the update; probe if due."""
        model = getattr(trainer.strategy, "model", None)  # DDP/FSDP wrap the module: record the wrapper
        groups = getattr(optimizer, "param_groups", None) or [{}]
        lr = groups[0].get("lr")
        self.session.step(
            int(trainer.global_step),
            pl_module if model is None else model,
            lr=None if lr is None else float(lr),
            probe_model=pl_module,
            default_loss_fn=partial(training_step_loss, batch_idx=self._batch_idx),
            batch=self._batch,
        )

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Commit the store and mark this fit's segment closed."""
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """Commit what was recorded and mark the segment failed (interrupted for Ctrl-C)."""
        self.close(failure_status(exception))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """The end of fit whichever way it ended: commit if nothing did yet."""
        if stage == "fit":
            self.close()

    # ------------------------------------------------------------------------- lifetime
    def close(self, status: str = "closed") -> None:
        """Commit the store and mark the segment `status` ("closed", "failed" or "interrupted")."""
        self._batch = None
        self.session.close(status, quiet=status != "closed")
