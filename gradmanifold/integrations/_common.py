"""What the framework callbacks share: one Recorder per training run, the loss of an optimizer step, which
ranks record, and probes on a schedule (docs/INTEGRATIONS.md).

torch is not imported here: the framework modules that use this one import it.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gradmanifold.errors import InputError, UsageError
from gradmanifold.record import Recorder

PROBE_KINDS = ("curvature", "glass")
PROBE_OPTIONS = ("top", "layers", "sigma", "seed")
LossFn = Callable[[Any, Any], Any]


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int | np.integer)


def _check_probe_options(owner: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of Recorder.probe given as probe_options, checked now, not mid-training."""
    if not isinstance(options, Mapping):
        raise InputError(f"{owner}: probe_options must be a mapping, not {type(options).__name__}")
    unknown = sorted(str(k) for k in options if k not in PROBE_OPTIONS)
    if unknown:
        raise InputError(
            f"{owner}: unknown probe option(s) {', '.join(unknown)}; known: {', '.join(PROBE_OPTIONS)}"
        )
    out = dict(options)
    if "top" in out and not (_is_int(out["top"]) and out["top"] >= 1):
        raise InputError(f"{owner}: probe option top must be an integer >= 1, not {out['top']!r}")
    if "seed" in out and not _is_int(out["seed"]):
        raise InputError(f"{owner}: probe option seed must be an integer, not {out['seed']!r}")
    if "sigma" in out:
        sigma = out["sigma"]
        if (
            isinstance(sigma, bool)
            or not isinstance(sigma, int | float)
            or not (math.isfinite(sigma) and sigma > 0)
        ):
            raise InputError(f"{owner}: probe option sigma must be a positive number, not {sigma!r}")
    layers = out.get("layers")
    if layers is not None and not (
        isinstance(layers, str) or (isinstance(layers, Sequence) and all(isinstance(p, str) for p in layers))
    ):
        raise InputError(f"{owner}: probe option layers must be a glob or a list of globs, not {layers!r}")
    return out


def failure_status(exc: BaseException | None) -> str:
    """The store segment's status after training ended with `exc` (None: it ended normally)."""
    if exc is None:
        return "closed"
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def to_device(batch: Any, device: Any) -> Any:
    """The batch with its tensors (in mappings, lists, tuples) moved to `device`; other values as they are."""
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple) and not hasattr(batch, "_fields"):
        return type(batch)(to_device(v, device) for v in batch)
    if hasattr(batch, "to") and hasattr(batch, "device"):
        return batch.to(device)
    return batch


class Session:
    """One callback's recording: a Recorder (a fresh one for each training run), the losses of the
    micro-batches since the last optimizer step, whether this rank records, and the probe schedule."""

    def __init__(
        self,
        owner: str,
        path: str | os.PathLike[str],
        *,
        probe_every: int,
        probe_kind: str,
        probe_loss_fn: LossFn | None,
        probe_batch: Any,
        probe_options: Mapping[str, Any] | None,
        recorder: Mapping[str, Any],
    ) -> None:
        """Check every argument and build the Recorder (it opens nothing before the first record).

        owner: the callback's name in messages. path: the store. probe_every: probe at recorded steps that
        are multiples of it (0: never). probe_kind: "curvature" or "glass". probe_loss_fn(model, batch): the
        probe's loss (None: the framework's default). probe_batch: a fixed batch to probe (None: the step's
        last micro-batch). probe_options: top, layers, sigma, seed of Recorder.probe. recorder: Recorder
        keywords.
        """
        self.owner = owner
        if not isinstance(path, str | os.PathLike):
            raise InputError(f"{owner}: path must be a str or os.PathLike, not {type(path).__name__}")
        if not (_is_int(probe_every) and probe_every >= 0):
            raise InputError(
                f"{owner}: probe_every must be an integer >= 0 (0: no probes), not {probe_every!r}"
            )
        if probe_kind not in PROBE_KINDS:
            raise InputError(f"{owner}: probe_kind must be 'curvature' or 'glass', not {probe_kind!r}")
        if probe_loss_fn is not None and not callable(probe_loss_fn):
            raise InputError(f"{owner}: probe_loss_fn must be callable as loss_fn(model, batch)")
        self.probe_options = _check_probe_options(owner, probe_options or {})
        self.path = path
        self._recorder_kw = dict(recorder)
        self.recorder = self._new_recorder()
        every = int(self.recorder.every)
        if probe_every and probe_every % every:
            raise InputError(
                f"{owner}: probe_every={probe_every} must be a multiple of every={every}: "
                "probes run at recorded steps"
            )
        self.probe_every = int(probe_every)
        self.probe_kind = probe_kind
        self.probe_loss_fn = probe_loss_fn
        self.probe_batch = probe_batch
        self._probe_batch_moved: Any = None
        self.closed = False
        self.probing = False  # True while a probe runs: its forward passes are not training's
        self.probes = 0
        self.active: bool | None = None  # whether this rank records; decided at the first optimizer step
        self.last_step: int | None = None
        self._losses: list[Any] = []
        self._summed = False

    def _new_recorder(self) -> Recorder:
        try:
            return Recorder(self.path, **self._recorder_kw)
        except (TypeError, UsageError, InputError) as exc:  # an unknown keyword, a bad value
            raise InputError(f"{self.owner}: {exc}") from None

    @property
    def wants_batch(self) -> bool:
        """Whether the callback must keep the step's last micro-batch (probes without a fixed probe_batch)."""
        return bool(self.probe_every) and self.probe_batch is None

    def begin(self) -> None:
        """A training run starts: after an earlier run's close, continue the store with a fresh Recorder."""
        if self.closed:
            self.recorder = self._new_recorder()
            self.closed = False
        self.active = None
        self.last_step = None
        self._losses.clear()

    def add_loss(self, value: Any, summed: bool) -> None:
        """One micro-batch's loss (a detached tensor or a number). summed: the micro-batches' losses add up
        to the step's loss (each is divided by the whole step's count); else the step's loss is their mean."""
        self._losses.append(value)
        self._summed = summed

    def take_loss(self) -> float | None:
        """The loss of the optimizer step whose micro-batches came since the last call; None without any."""
        if not self._losses:
            return None
        values = [float(v.float().mean()) if hasattr(v, "float") else float(v) for v in self._losses]
        self._losses.clear()
        return float(sum(values)) if self._summed else float(sum(values) / len(values))

    def step(
        self,
        step: int,
        model: Any,
        *,
        lr: float | None,
        probe_model: Any,
        default_loss_fn: LossFn,
        batch: Any,
    ) -> bool:
        """At an optimizer step, before the update: record the accumulated gradients of `model`, then probe
        `probe_model` when the schedule says so; True when a row was recorded on this rank."""
        loss = self.take_loss()
        if step == self.last_step:  # the optimizer evaluates its closure again within one step (LBFGS)
            return False
        if self.active is None:
            trainable = [p for p in model.parameters() if p.requires_grad]
            if trainable and all(p.grad is None for p in trainable):
                raise InputError(
                    f"{self.owner}: no parameter holds a gradient at the optimizer step; engines that keep "
                    "gradients in their own buffers (DeepSpeed ZeRO) are not supported"
                )
            self.active = self._records_here(model)
        if not self.active:
            return False
        recorded = bool(self.recorder.record(int(step), model, loss=loss, lr=lr))
        self.last_step = int(step)
        if recorded and self.probe_every and step % self.probe_every == 0:
            self._probe(int(step), probe_model, default_loss_fn, batch)
        return recorded

    def _records_here(self, model: Any) -> bool:
        """Whether this process records: always in one process; with several ranks, every rank when the
        gradients are sharded (the Recorder combines the shards; docs/SHARDED.md), else rank 0 alone (DDP:
        every rank holds the same averaged gradient)."""
        from gradmanifold import sharded

        dist = sys.modules.get("torch.distributed")
        if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
            return True
        pieces = bool(sharded.fsdp1_index(model.modules())) or any(
            sharded.is_distributed(p.grad) for p in model.parameters() if p.grad is not None
        )
        if not pieces:
            return sharded.rank() == 0
        if self.probe_every:
            raise InputError(
                f"{self.owner}: probes need the whole model in one process, and this job shards its "
                "gradients; set probe_every=0 (or probe an unsharded copy of the model with Recorder.probe)"
            )
        return True

    def _probe(self, step: int, model: Any, default_loss_fn: LossFn, batch: Any) -> None:
        if self.probe_batch is not None:
            if self._probe_batch_moved is None:
                device = next((p.device for p in model.parameters()), None)
                self._probe_batch_moved = (
                    to_device(self.probe_batch, device) if device is not None else self.probe_batch
                )
            batch = self._probe_batch_moved
        if batch is None:
            raise InputError(
                f"{self.owner}: no batch to probe at step {step} (the training batches were not seen); "
                "pass probe_batch="
            )
        loss_fn = self.probe_loss_fn or default_loss_fn
        self.probing = True
        try:
            kind: Any = self.probe_kind
            self.recorder.probe(step, model, loss_fn, batch, kind=kind, **self.probe_options)
        finally:
            self.probing = False
        self.probes += 1

    def close(self, status: str = "closed", quiet: bool = False) -> None:
        """Commit the store and mark this run's segment `status` ("closed", "failed", "interrupted").

        quiet: a failure to commit is a warning, not an error (training already failed with its own error).
        """
        if self.closed:
            return
        self.closed = True
        self._losses.clear()
        try:
            self.recorder.close(status=status)
        except Exception as exc:
            if not quiet:
                raise
            warnings.warn(f"gradmanifold: could not commit {self.path}: {exc}", RuntimeWarning, stacklevel=3)
