"""Framework callbacks (gradmanifold.integrations): real short CPU runs of the transformers Trainer and of
Lightning, each store checked against a witness callback that captures the same gradients independently.

Tolerances: projections are compared exactly (the witness's gradient projected by gradmanifold.projection is
the same float32 computation the Recorder does); squared norms to 1e-12 relative (float64 sums in another
order); the recomputed step-0 gradient of the Trainer to 1e-5 relative (float32 forward and backward passes).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradmanifold.errors import InputError
from gradmanifold.projection import ProjectionSpec, project_with_norm
from gradmanifold.store import open_store

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.torch,
    # third-party notices of the frameworks' own internals, not of the code under test
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated:DeprecationWarning"),
]

K = 16


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def stored(path: Path) -> dict[str, Any]:
    r = open_store(path)
    cs = list(r.iter_chunks())
    return {
        "groups": r.group_names,
        "step": np.concatenate([c.step for c in cs]),
        "proj": np.concatenate([c.proj for c in cs]),
        "sqnorm": np.concatenate([c.sqnorm for c in cs]),
        "loss": np.concatenate([c.loss for c in cs]) if r.has_loss else None,
        "lr": np.concatenate([c.lr for c in cs]) if r.has_lr else None,
        "status": r.manifest.segments[-1].status,
        "tables": r.tables,
        "reader": r,
    }


def check_rows(got: dict[str, Any], grads: list[dict[str, Any]], spec: ProjectionSpec) -> None:
    """Each stored row equals gradmanifold's projection and the float64 squared norm of the capture."""
    assert len(got["step"]) == len(grads)
    assert got["groups"] == tuple(grads[0])  # one group per tensor, in the module's parameter order
    for row, g in enumerate(grads):
        for gi, (name, grad) in enumerate(g.items()):
            z, _ = project_with_norm(grad, spec, name)
            np.testing.assert_array_equal(got["proj"][row, gi], z.astype(np.float32))
            want = float(grad.double().pow(2).sum())
            assert got["sqnorm"][row, gi] == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------------- transformers


def gpt2(seed: int = 0, dropout: float = 0.1) -> Any:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=64,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return transformers.GPT2LMHeadModel(cfg)


def tokens(n: int = 24, length: int = 16) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 64, (length,), generator=g)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def hf_witness() -> Any:
    """A TrainerCallback that captures gradients, global_step and micro-batches at on_pre_optimizer_step."""
    transformers = pytest.importorskip("transformers")

    class Witness(transformers.TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.grads: list[dict[str, Any]] = []
            self.batches: list[list[dict[str, Any]]] = [[]]

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            kw["model"].register_forward_hook(self.seen, with_kwargs=True)

        def seen(self, module: Any, args: Any, kwargs: dict[str, Any], out: Any) -> None:
            if module.training and torch.is_grad_enabled():
                self.batches[-1].append(dict(kwargs))

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.steps.append(state.global_step)
            self.grads.append({n: p.grad.detach().clone() for n, p in kw["model"].named_parameters()})
            self.batches.append([])

    return Witness()


def hf_train(tmp_path: Path, callbacks: list[Any], model: Any, steps: int, **args: Any) -> Any:
    transformers = pytest.importorskip("transformers")
    targs = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        **args,
    )
    trainer = transformers.Trainer(model=model, args=targs, train_dataset=tokens(), callbacks=callbacks)
    trainer.train()
    return trainer


@pytest.mark.parametrize("accumulation", [1, 2])
def test_hf_one_row_per_optimizer_step_equal_to_the_gradient_the_optimizer_applies(
    tmp_path: Path, accumulation: int
) -> None:
    from gradmanifold.analysis import analyze
    from gradmanifold.integrations.huggingface import GradManifoldCallback

    path = tmp_path / "run.zarr"
    witness = hf_witness()
    cb = GradManifoldCallback(path, k=K, seed=3)
    trainer = hf_train(
        tmp_path,
        [cb, witness],
        gpt2(dropout=0.0),
        steps=4,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=0.5,
    )
    got = stored(path)
    assert trainer.state.global_step == 4
    np.testing.assert_array_equal(got["step"], [0, 1, 2, 3])  # global_step before each optimizer step
    assert witness.steps == [0, 1, 2, 3]
    assert [len(b) for b in witness.batches[:4]] == [accumulation] * 4  # micro-batches per recorded row
    check_rows(got, witness.grads, ProjectionSpec(k=K, seed=3))
    # recorded after the Trainer's clipping: no row's norm is above max_grad_norm
    assert np.all(np.sqrt(got["sqnorm"].sum(axis=1)) <= 0.5 * (1 + 1e-5))
    # loss and learning rate: the Trainer's own log of step s + 1 is the row of step s
    logged = {h["step"]: h for h in trainer.state.log_history if "loss" in h}
    np.testing.assert_allclose(got["loss"], [logged[s + 1]["loss"] for s in range(4)], rtol=1e-6)
    np.testing.assert_allclose(got["lr"], [logged[s + 1]["learning_rate"] for s in range(4)], rtol=1e-12)
    assert got["status"] == "closed"

    # step 0 recomputed from scratch: the accumulated, clipped gradient of the step's micro-batches
    model = gpt2(dropout=0.0)
    model.train()
    for mb in witness.batches[0]:
        model(**mb).loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    assert float(norm) > 0.5  # the clipping did act
    want = sum(float(p.grad.double().pow(2).sum()) for p in model.parameters())
    assert float(got["sqnorm"][0].sum()) == pytest.approx(want, rel=1e-5)

    res = analyze(path)
    assert res.model.n_steps == 4
    assert set(got["groups"]) <= set(res.scopes)


def test_hf_probes_on_schedule_leave_training_as_it_was(tmp_path: Path) -> None:
    from gradmanifold.integrations.huggingface import GradManifoldCallback

    plain = GradManifoldCallback(tmp_path / "plain.zarr", k=K)
    probed = GradManifoldCallback(
        tmp_path / "probed.zarr", k=K, probe_every=2, probe_options={"top": 3, "layers": "*.mlp.c_fc.weight"}
    )
    a, b = gpt2(), gpt2()  # dropout on: the probe must leave the RNG as it found it
    hf_train(tmp_path / "a", [plain], a, steps=5)
    hf_train(tmp_path / "b", [probed], b, steps=5)
    assert probed.session.probes == 3
    got = stored(tmp_path / "probed.zarr")
    steps = got["reader"].read_table("curvature")["curvature_step"]
    np.testing.assert_array_equal(steps, [0, 2, 4])
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name
    np.testing.assert_array_equal(got["sqnorm"], stored(tmp_path / "plain.zarr")["sqnorm"])


def test_hf_training_that_raises_commits_and_marks_failed(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from gradmanifold.integrations.huggingface import GradManifoldCallback

    class Boom(transformers.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 3:
                raise RuntimeError("boom")

    path = tmp_path / "run.zarr"
    with pytest.raises(RuntimeError, match="boom"), GradManifoldCallback(path, k=K, every=2) as cb:
        hf_train(tmp_path, [cb, Boom()], gpt2(), steps=6)
    got = stored(path)
    np.testing.assert_array_equal(got["step"], [0, 2])
    assert got["status"] == "failed"


# ------------------------------------------------------------------------------------------- Lightning


def lightning_module(pl: Any, *, lr: float = 0.1, raise_at: int | None = None, optimizers: int = 1) -> Any:
    class Tiny(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
            self.calls = 0
            self.automatic_optimization = optimizers == 1

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self.calls += 1
            if raise_at is not None and self.calls == raise_at:
                raise RuntimeError("boom")
            x, y = batch
            loss = ((self.net(x) - y) ** 2).mean()
            self.log("calls", 1.0, on_step=False, on_epoch=True, reduce_fx="sum")
            return loss

        def configure_optimizers(self) -> Any:
            if optimizers > 1:
                return [torch.optim.SGD(self.parameters(), lr=lr) for _ in range(optimizers)]
            opt = torch.optim.SGD(self.parameters(), lr=lr)
            return [opt], [
                {"scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5), "interval": "step"}
            ]

    return Tiny()


def lightning_data() -> Any:
    g = torch.Generator().manual_seed(1)
    ds = torch.utils.data.TensorDataset(torch.randn(40, 6, generator=g), torch.randn(40, 3, generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=4)


def lightning_witness(pl: Any) -> Any:
    class Witness(pl.Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.grads: list[dict[str, Any]] = []
            self.lrs: list[float] = []

        def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
            self.steps.append(trainer.global_step)
            self.lrs.append(optimizer.param_groups[0]["lr"])
            self.grads.append({n: p.grad.detach().clone() for n, p in module.named_parameters()})

    return Witness()


def lightning_fit(pl: Any, module: Any, callbacks: list[Any], steps: int, **kw: Any) -> Any:
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kw,
    )
    trainer.fit(module, lightning_data())
    return trainer


@pytest.mark.parametrize("accumulation", [1, 2])
def test_lightning_one_row_per_optimizer_step_before_clipping(tmp_path: Path, accumulation: int) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from gradmanifold.integrations.lightning import GradManifoldCallback

    path = tmp_path / "run.zarr"
    witness = lightning_witness(pl)
    module = lightning_module(pl)
    trainer = lightning_fit(
        pl,
        module,
        [GradManifoldCallback(path, k=K, seed=2), witness],
        steps=4,
        accumulate_grad_batches=accumulation,
        gradient_clip_val=0.05,
    )
    got = stored(path)
    assert trainer.global_step == 4 and module.calls == 4 * accumulation
    np.testing.assert_array_equal(got["step"], [0, 1, 2, 3])
    assert witness.steps == [0, 1, 2, 3]
    check_rows(got, witness.grads, ProjectionSpec(k=K, seed=2))
    assert np.all(np.sqrt(got["sqnorm"].sum(axis=1)) > 0.05)  # recorded before Lightning clips
    np.testing.assert_allclose(got["lr"], [0.1 * 0.5**s for s in range(4)], rtol=1e-12)
    np.testing.assert_allclose(witness.lrs, [0.1 * 0.5**s for s in range(4)], rtol=1e-12)
    assert got["loss"].shape == (4,) and np.all(np.isfinite(got["loss"]))  # values: the test below
    assert got["status"] == "closed"


def test_lightning_loss_is_the_mean_training_step_loss_of_the_step(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from gradmanifold.integrations.lightning import GradManifoldCallback

    class LossWitness(pl.Callback):
        def __init__(self) -> None:
            self.per_step: list[list[float]] = [[]]

        def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, idx: int) -> None:
            # Lightning hands back training_step's loss divided by accumulate_grad_batches
            self.per_step[-1].append(float(out["loss"]) * trainer.accumulate_grad_batches)
            if trainer.global_step > len(self.per_step) - 1:
                self.per_step.append([])

    path = tmp_path / "run.zarr"
    witness = LossWitness()
    lightning_fit(
        pl, lightning_module(pl), [GradManifoldCallback(path, k=K), witness], 3, accumulate_grad_batches=2
    )
    want = [float(np.mean(v)) for v in witness.per_step[:3]]
    assert [len(v) for v in witness.per_step[:3]] == [2, 2, 2]
    np.testing.assert_allclose(stored(path)["loss"], want, rtol=1e-6)


def test_lightning_probes_use_training_step_with_logging_muted(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from gradmanifold.integrations.lightning import GradManifoldCallback

    plain_module, probed_module = lightning_module(pl), lightning_module(pl)
    cb = GradManifoldCallback(tmp_path / "probed.zarr", k=K, probe_every=2, probe_options={"top": 2})
    lightning_fit(pl, plain_module, [GradManifoldCallback(tmp_path / "plain.zarr", k=K)], 5)
    trainer = lightning_fit(pl, probed_module, [cb], 5)
    got = stored(tmp_path / "probed.zarr")
    np.testing.assert_array_equal(got["reader"].read_table("curvature")["curvature_step"], [0, 2, 4])
    assert probed_module.calls == 5 + 3  # training_step was the probes' loss ...
    assert float(trainer.callback_metrics["calls"]) == 5.0  # ... and logged nothing for them
    for p, q in zip(plain_module.parameters(), probed_module.parameters(), strict=True):
        assert torch.equal(p, q)
    np.testing.assert_array_equal(got["sqnorm"], stored(tmp_path / "plain.zarr")["sqnorm"])


def test_lightning_glass_probe_on_a_fixed_batch(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from gradmanifold.integrations.lightning import GradManifoldCallback

    batch = (torch.randn(8, 6), torch.randn(8, 3))
    seen: list[Any] = []

    def loss_fn(module: Any, b: Any) -> Any:
        seen.append(b)
        return ((module.net(b[0]) - b[1]) ** 2).mean()

    cb = GradManifoldCallback(
        tmp_path / "run.zarr",
        k=K,
        every=2,
        probe_every=2,
        probe_kind="glass",
        probe_batch=batch,
        probe_loss_fn=loss_fn,
        probe_options={"sigma": 1e-2},
    )
    lightning_fit(pl, lightning_module(pl), [cb], 4)
    got = stored(tmp_path / "run.zarr")
    np.testing.assert_array_equal(got["step"], [0, 2])
    np.testing.assert_array_equal(got["reader"].read_table("glass")["glass_step"], [0, 2])
    assert seen and all(torch.equal(b[0], batch[0]) for b in seen)


def test_lightning_exception_commits_and_marks_failed(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from gradmanifold.integrations.lightning import GradManifoldCallback

    path = tmp_path / "run.zarr"
    with pytest.raises(RuntimeError, match="boom"):
        lightning_fit(pl, lightning_module(pl, raise_at=4), [GradManifoldCallback(path, k=K)], 6)
    got = stored(path)
    np.testing.assert_array_equal(got["step"], [0, 1, 2])
    assert got["status"] == "failed"


def test_lightning_refuses_two_optimizers(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from gradmanifold.integrations.lightning import GradManifoldCallback

    with pytest.raises(InputError, match="2 optimizers"):
        lightning_fit(pl, lightning_module(pl, optimizers=2), [GradManifoldCallback(tmp_path / "r.zarr")], 2)
    assert not (tmp_path / "r.zarr").exists()


def test_pytorch_lightning_package_name(tmp_path: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning")
    from gradmanifold.integrations.pytorch_lightning import GradManifoldCallback

    witness = lightning_witness(pl)
    lightning_fit(pl, lightning_module(pl), [GradManifoldCallback(tmp_path / "run.zarr", k=K), witness], 2)
    got = stored(tmp_path / "run.zarr")
    np.testing.assert_array_equal(got["step"], [0, 1])
    check_rows(got, witness.grads, ProjectionSpec(k=K))


# ------------------------------------------------------------------------------------------- both


def callback_classes() -> list[Any]:
    out = []
    for module in ("huggingface", "lightning"):
        try:
            mod = __import__(f"gradmanifold.integrations.{module}", fromlist=["GradManifoldCallback"])
        except ImportError:
            continue
        out.append(pytest.param(mod.GradManifoldCallback, id=module))
    return out


@pytest.mark.parametrize("cls", callback_classes())
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"probe_every": -1}, "probe_every must be an integer >= 0"),
        ({"probe_every": 1.5}, "probe_every must be an integer >= 0"),
        ({"probe_kind": "hessian"}, "probe_kind must be 'curvature' or 'glass'"),
        ({"probe_every": 3, "every": 2}, "must be a multiple of every=2"),
        ({"probe_loss_fn": "loss"}, "probe_loss_fn must be callable"),
        ({"probe_options": {"depth": 2}}, "unknown probe option"),
        ({"probe_options": {"top": 0}}, "top must be an integer >= 1"),
        ({"probe_options": {"sigma": -1.0}}, "sigma must be a positive number"),
        ({"every": 0}, "every must be >= 1"),
        ({"nonfinite": "ignore"}, "nonfinite must be"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_arguments_fail_at_construction(
    tmp_path: Path, cls: Any, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InputError, match=message) as info:
        cls(tmp_path / "run.zarr", **kwargs)
    text = str(info.value)
    assert "\n" not in text and text.startswith("GradManifoldCallback (")
    assert not (tmp_path / "run.zarr").exists()


@pytest.mark.parametrize("cls", callback_classes())
def test_path_must_be_a_path(cls: Any) -> None:
    with pytest.raises(InputError, match=r"path must be a str or os\.PathLike"):
        cls(123)


def test_replicated_gradients_record_on_rank_zero_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Plain DDP: every rank holds the same all-reduced gradient; rank 0 writes, the others record nothing."""
    import torch.distributed as dist

    from gradmanifold.integrations._common import Session

    model = torch.nn.Linear(3, 2)
    model(torch.ones(4, 3)).sum().backward()
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    for rank, path in ((1, tmp_path / "r1.zarr"), (0, tmp_path / "r0.zarr")):
        monkeypatch.setattr(dist, "get_rank", lambda group=None, r=rank: r)
        s = Session(
            "test",
            path,
            probe_every=0,
            probe_kind="curvature",
            probe_loss_fn=None,
            probe_batch=None,
            probe_options=None,
            recorder={"k": K},
        )
        recorded = s.step(0, model, lr=0.1, probe_model=model, default_loss_fn=lambda m, b: None, batch=None)
        s.close()
        assert recorded == (rank == 0) and s.active == (rank == 0)
        assert path.exists() == (rank == 0)


def test_no_gradient_at_the_optimizer_step_is_refused(tmp_path: Path) -> None:
    from gradmanifold.integrations._common import Session

    s = Session(
        "test",
        tmp_path / "r.zarr",
        probe_every=0,
        probe_kind="curvature",
        probe_loss_fn=None,
        probe_batch=None,
        probe_options=None,
        recorder={"k": K},
    )
    model = torch.nn.Linear(3, 2)  # no backward: gradients kept elsewhere (DeepSpeed ZeRO)
    with pytest.raises(InputError, match="no parameter holds a gradient"):
        s.step(0, model, lr=None, probe_model=model, default_loss_fn=lambda m, b: None, batch=None)
    assert not (tmp_path / "r.zarr").exists()


def test_the_package_imports_no_framework() -> None:
    code = (
        "import sys, gradmanifold.integrations\n"
        "names = ('torch', 'transformers', 'lightning', 'pytorch_lightning')\n"
        "heavy = [m for m in names if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
