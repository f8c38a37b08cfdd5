"""Callbacks that record a training run from inside a framework's own trainer, without wrap mode.

- `gradmanifold.integrations.huggingface.GradManifoldCallback`: a transformers `TrainerCallback`.
- `gradmanifold.integrations.lightning.GradManifoldCallback`: a `lightning.pytorch.Callback`
  (`gradmanifold.integrations.pytorch_lightning` for the `pytorch_lightning` package name).

Each records one row per optimizer step through `gradmanifold.record.Recorder` (docs/INTEGRATIONS.md). This
package imports nothing itself: torch, transformers and lightning load only with the module that needs them.
"""
