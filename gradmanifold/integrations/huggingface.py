"""A transformers `TrainerCallback` that records every optimizer step's gradient (docs/INTEGRATIONS.md).

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[GradManifoldCallback("run.zarr", k=256)])
    trainer.train()

When: the Trainer's `on_pre_optimizer_step` event, once per optimizer step, after the last micro-batch's
backward pass, the gradient all-reduce (DDP) and the Trainer's clipping (`max_grad_norm`), before
`optimizer.step()`: the recorded gradient is the accumulated one the optimizer applies. The row's step is
`state.global_step` at that moment: the number of optimizer steps done before this one (0 for the first).
The loss is the one the Trainer logs for that step, taken from the model's outputs by a forward hook; the
learning rate is the optimizer's first parameter group's, the one this step uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from gradmanifold.errors import InputError
from gradmanifold.integrations._common import LossFn, Session, failure_status
from gradmanifold.record import Recorder

OWNER = "GradManifoldCallback (transformers)"


def _output_loss(output: Any) -> Any:
    """The `loss` of a model output (a ModelOutput or a dict); None when it has none."""
    if isinstance(output, Mapping):
        return output.get("loss")
    return getattr(output, "loss", None)


def model_loss(model: Any, batch: Any) -> Any:
    """The default probe loss: `model(**batch).loss`, as the Trainer computes it without a custom loss."""
    if not isinstance(batch, Mapping):
        raise InputError(
            f"{OWNER}: the default probe loss calls model(**batch) and needs a mapping, not a "
            f"{type(batch).__name__}; pass probe_loss_fn=(model, batch) -> loss"
        )
    loss = _output_loss(model(**batch))
    if loss is None:
        raise InputError(
            f"{OWNER}: the model returned no loss for the probe batch (no labels in it?); pass a probe_batch "
            "with labels or probe_loss_fn=(model, batch) -> loss"
        )
    return loss


class GradManifoldCallback(TrainerCallback):
    """Records one row per optimizer step of a transformers Trainer: the accumulated gradient's projection and
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
        multiples of it, run a probe (Recorder.probe) right after recording, at the same parameters (0:
        never; a multiple of every). probe_kind: "curvature" or "glass". probe_loss_fn(model, batch): the
        probe's loss (default: `model(**batch).loss`). probe_batch: a fixed batch (a mapping of tensors,
        moved to the model's device) to probe; default: the step's last micro-batch, as the Trainer passed it
        to the model.
        probe_options: top, layers, sigma, seed of Recorder.probe.
        """
        if not hasattr(TrainerCallback, "on_pre_optimizer_step"):
            raise InputError(
                f"{OWNER}: this transformers has no on_pre_optimizer_step event (added in 4.45); upgrade it"
            )
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
        self._hooks: list[Any] = []
        self._batch: dict[str, Any] | None = None

    @property
    def recorder(self) -> Recorder:
        """The Recorder of the current (or last) training run."""
        return self.session.recorder

    # ------------------------------------------------------------------------- Trainer events
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start (or continue) the store's recording; watch the model's training forward passes."""
        self.session.begin()
        self._unhook()
        model = kwargs.get("model")
        if model is not None:
            self._hooks.append(model.register_forward_hook(self._after_forward, with_kwargs=True))

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Record the accumulated (and clipped) gradient before the optimizer applies it; probe if due."""
        model = kwargs.get("model")
        if model is None:
            raise InputError(f"{OWNER}: the Trainer passed no model to on_pre_optimizer_step")
        optimizer = kwargs.get("optimizer")
        groups = getattr(optimizer, "param_groups", None) or [{}]
        lr = groups[0].get("lr")
        self.session.step(
            int(state.global_step),
            model,
            lr=None if lr is None else float(lr),
            probe_model=model,
            default_loss_fn=model_loss,
            batch=self._batch,
        )
        self._batch = None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Commit the store and mark this run's segment closed."""
        self.close()

    # ------------------------------------------------------------------------- lifetime
    def close(self, status: str = "closed") -> None:
        """Commit the store and mark the segment `status` ("closed", "failed" or "interrupted").

        The Trainer calls no callback when training raises: use the callback as a context manager around
        `trainer.train()` to mark the segment failed then (without, the rows are committed at exit).
        """
        self._unhook()
        self._batch = None
        self.session.close(status, quiet=status != "closed")

    def __enter__(self) -> GradManifoldCallback:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.close(failure_status(exc))

    # ------------------------------------------------------------------------- internals
    def _unhook(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    def _after_forward(self, module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        """A training forward pass (train mode, autograd on, not a probe's): keep its loss and, for probes,
        its inputs. With `num_items_in_batch` the Trainer's micro-batch losses add up to the step's loss."""
        if self.session.probing or not module.training or not torch.is_grad_enabled():
            return
        loss = _output_loss(output)
        if loss is not None and hasattr(loss, "detach"):
            self.session.add_loss(loss.detach(), summed=kwargs.get("num_items_in_batch") is not None)
        if self.session.wants_batch and not args:
            self._batch = {k: v for k, v in kwargs.items() if k != "num_items_in_batch"}
