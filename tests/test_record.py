"""Recorder: the training-loop API, against an independent recomputation of every stored number."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from gradmanifold import Recorder
from gradmanifold.errors import InputError, NonFiniteGradientError, StoreWriteError
from gradmanifold.projection import ProjectionSpec, project_with_norm
from gradmanifold.store import FLAG_NONFINITE, FLAG_SKIPPED, open_store


def grads_at(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {
        "enc.weight": rng.standard_normal((6, 5)).astype(np.float32),
        "enc.bias": rng.standard_normal(6).astype(np.float32),
        "head.weight": rng.standard_normal((3, 6)).astype(np.float32),
    }


def stored(path: Path) -> dict[str, np.ndarray]:
    r = open_store(path)
    cs = list(r.iter_chunks())
    return {
        "step": np.concatenate([c.step for c in cs]),
        "proj": np.concatenate([c.proj for c in cs]),
        "sqnorm": np.concatenate([c.sqnorm for c in cs]),
        "flags": np.concatenate([c.flags for c in cs]),
        "loss": np.concatenate([c.loss for c in cs if c.loss is not None]),
    }


def test_one_group_per_tensor_matches_independent_recomputation(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    with Recorder(path, k=16, seed=5) as rec:
        for step in range(7):
            assert rec.record(step, grads_at(step), loss=float(step), lr=0.1)
    r = open_store(path)
    assert r.group_names == ("enc.weight", "enc.bias", "head.weight")
    assert r.group_sizes == (30, 6, 18)
    got = stored(path)
    spec = ProjectionSpec(k=16, seed=5)
    for step in range(7):
        for gi, (name, g) in enumerate(grads_at(step).items()):
            z, _ = project_with_norm(g, spec, name)
            np.testing.assert_array_equal(got["proj"][step, gi], z.astype(np.float32))
            # exact squared norm, float64 from the raw values
            assert got["sqnorm"][step, gi] == pytest.approx(
                float(np.sum(g.astype(np.float64) ** 2)), rel=1e-14
            )
    np.testing.assert_array_equal(got["loss"], np.arange(7.0))


def test_multi_tensor_group_equals_projection_of_concatenation(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    with Recorder(path, k=32, seed=1, groups={"enc": "enc.*"}) as rec:
        rec.record(0, grads_at(0))
    r = open_store(path)
    assert r.group_names == ("enc", "other")
    g = grads_at(0)
    flat = np.concatenate([g["enc.weight"].ravel(), g["enc.bias"].ravel()])
    z, q = project_with_norm(flat, ProjectionSpec(k=32, seed=1), "enc")
    got = stored(path)
    np.testing.assert_allclose(got["proj"][0, 0], z, rtol=1e-6, atol=1e-6)
    assert got["sqnorm"][0, 0] == pytest.approx(q, rel=1e-13)


def test_group_cap_falls_back_to_module_prefix(tmp_path: Path) -> None:
    grads = {f"layer{i}.{p}": np.ones(3, np.float32) for i in range(5) for p in ("w", "b")}
    with Recorder(tmp_path / "r.zarr", k=8, max_groups=6) as rec:
        rec.record(0, grads)
    assert open_store(tmp_path / "r.zarr").group_names == tuple(f"layer{i}" for i in range(5))
    with Recorder(tmp_path / "s.zarr", k=8, groups="single") as rec:
        rec.record(0, grads)
    r = open_store(tmp_path / "s.zarr")
    assert r.group_names == ("all",) and r.group_sizes == (30,)


def test_every_n(tmp_path: Path) -> None:
    with Recorder(tmp_path / "r.zarr", k=8, every=3) as rec:
        recorded = [rec.record(s, grads_at(s)) for s in range(10)]
    assert recorded == [s % 3 == 0 for s in range(10)]
    np.testing.assert_array_equal(open_store(tmp_path / "r.zarr").steps(), [0, 3, 6, 9])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_policies(tmp_path: Path, bad: float) -> None:
    def poisoned(step: int) -> dict[str, np.ndarray]:
        g = grads_at(step)
        if step == 2:
            g["enc.bias"][1] = bad
        return g

    with Recorder(tmp_path / "flag.zarr", k=8) as rec:
        for s in range(4):
            rec.record(s, poisoned(s))
    got = stored(tmp_path / "flag.zarr")
    assert got["flags"][2, 1] == FLAG_NONFINITE and got["flags"].sum() == FLAG_NONFINITE
    assert np.all(got["proj"][2, 1] == 0)
    assert np.all(np.isfinite(got["proj"]))
    assert open_store(tmp_path / "flag.zarr").manifest.segments[-1].nonfinite == 1

    with Recorder(tmp_path / "skip.zarr", k=8, nonfinite="skip") as rec:
        for s in range(4):
            rec.record(s, poisoned(s))
    assert list(open_store(tmp_path / "skip.zarr").steps()) == [0, 1, 3]
    assert open_store(tmp_path / "skip.zarr").manifest.segments[-1].skipped == 1

    with Recorder(tmp_path / "raise.zarr", k=8, nonfinite="raise") as rec:
        rec.record(0, poisoned(0))
        with pytest.raises(NonFiniteGradientError, match=r"enc\.bias"):
            rec.record(2, poisoned(2))
    assert list(open_store(tmp_path / "raise.zarr").steps()) == [0]


def test_missing_gradient_marks_group_skipped(tmp_path: Path) -> None:
    with Recorder(tmp_path / "r.zarr", k=8) as rec:
        rec.record(0, grads_at(0))
        g = grads_at(1)
        g["head.weight"] = None  # type: ignore[assignment]
        rec.record(1, g)
    got = stored(tmp_path / "r.zarr")
    assert got["flags"][1, 2] == FLAG_SKIPPED and got["flags"][1, :2].sum() == 0


def test_bad_input_is_refused_and_committed_data_survives(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    with Recorder(path, k=8) as rec:
        for s in range(3):
            rec.record(s, grads_at(s))
        rec.flush()
        g = grads_at(3)
        g["enc.bias"] = np.ones(7, np.float32)
        with pytest.raises(InputError, match=r"'enc\.bias' has 7 elements, but 6"):
            rec.record(3, g)
        with pytest.raises(InputError, match="not in the recorded layout"):
            rec.record(3, {**grads_at(3), "new.weight": np.ones(2, np.float32)})
        with pytest.raises(InputError, match="cannot record a str"):
            rec.record(3, "gradients")
        with pytest.raises(InputError, match="integer"):
            rec.record(3.0, grads_at(3))  # type: ignore[arg-type]
    assert list(open_store(path).steps()) == [0, 1, 2]


def test_exception_in_with_block_commits_then_reraises(tmp_path: Path) -> None:
    path = tmp_path / "r.zarr"
    with pytest.raises(RuntimeError, match="diverged"), Recorder(path, k=8) as rec:
        for s in range(5):
            rec.record(s, grads_at(s))
        raise RuntimeError("diverged")
    r = open_store(path)
    assert r.n_steps == 5
    assert r.manifest.segments[-1].status == "failed"


def test_restart_from_checkpoint_equals_uninterrupted(tmp_path: Path) -> None:
    with Recorder(tmp_path / "ref.zarr", k=8, chunk_rows=4) as rec:
        for s in range(15):
            rec.record(s, grads_at(s))
    with Recorder(tmp_path / "r.zarr", k=8, chunk_rows=4) as rec:
        for s in range(11):
            rec.record(s, grads_at(s))
    with warnings.catch_warnings(record=True) as caught, Recorder(tmp_path / "r.zarr", k=8) as rec:
        warnings.simplefilter("always")
        for s in range(6, 15):
            rec.record(s, grads_at(s))
    assert any("rewinding" in str(w.message) for w in caught)
    a, b = stored(tmp_path / "r.zarr"), stored(tmp_path / "ref.zarr")
    for key in ("step", "proj", "sqnorm", "flags"):
        np.testing.assert_array_equal(a[key], b[key])


def _settle_then_record(rec: Recorder, step: int) -> bool:
    """record() once the commit in flight (store.commit) has ended, so that its outcome is known."""
    c = rec._writer._inflight if rec._writer is not None else None
    if c is not None:
        c.thread.join()
    return rec.record(step, grads_at(step))


def test_on_error_warn_keeps_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that fails on the commit thread (a full disk) reaches the training thread at the next
    record(): with on_error="warn" a warning, and recording stops; with "raise" StoreWriteError. The rows
    committed before stay."""
    import errno

    from gradmanifold.store import commit

    def disk_full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    path = tmp_path / "r.zarr"
    rec = Recorder(path, k=8, on_error="warn", chunk_rows=2, threads=0)
    rec.record(0, grads_at(0))
    assert _settle_then_record(rec, 1)  # fills a chunk: committed
    rec._writer._settle()
    monkeypatch.setattr(commit, "publish_manifest", disk_full)
    rec.record(2, grads_at(2))
    rec.record(3, grads_at(3))  # fills the next chunk: its commit fails on the thread
    with pytest.warns(RuntimeWarning, match="recording stopped, training goes on.*No space left"):
        assert _settle_then_record(rec, 4) is False
    assert rec.record(5, grads_at(5)) is False
    rec.close()
    assert list(open_store(path).steps()) == [0, 1]

    rec = Recorder(tmp_path / "s.zarr", k=8, on_error="raise", chunk_rows=1, threads=0)
    with pytest.raises(StoreWriteError, match="No space left"):
        for step in range(4):  # the first commit fails: raised at the next record() after it ended
            _settle_then_record(rec, step)


def test_on_error_with_the_background_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the background thread, a step's row is stored at a later call (record, flush or close): a write
    that fails there follows the on_error policy; what was committed before stays."""
    path = tmp_path / "r.zarr"
    rec = Recorder(path, k=8, on_error="warn", chunk_rows=2, threads=1)
    rec.record(0, grads_at(0))
    rec.record(1, grads_at(1))
    rec.flush()

    import errno

    from gradmanifold.store import commit

    def disk_full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(commit, "publish_manifest", disk_full)
    rec.record(2, grads_at(2))
    rec.record(3, grads_at(3))  # fills a chunk: its commit fails when the row is stored
    with pytest.warns(RuntimeWarning, match="recording stopped, training goes on"):
        rec.flush()
    assert rec.record(4, grads_at(4)) is False
    rec.close()
    assert list(open_store(path).steps()) == [0, 1]

    monkeypatch.undo()
    rec = Recorder(tmp_path / "s.zarr", k=8, on_error="raise", chunk_rows=1, threads=1)
    rec.record(0, grads_at(0))
    rec.flush()
    monkeypatch.setattr(commit, "publish_manifest", disk_full)
    rec.record(1, grads_at(1))  # projected on the background thread; stored at a later call
    with pytest.raises(StoreWriteError, match="No space left"):
        rec.flush()


@pytest.mark.torch
def test_torch_mlp_on_digits(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    xt = torch.tensor(x[:256] / 16.0, dtype=torch.float32)
    yt = torch.tensor(y[:256])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reference = []
    path = tmp_path / "mlp.zarr"
    losses = []
    with Recorder(path, k=32, seed=7) as rec:
        for step in range(12):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt), yt)
            loss.backward()
            reference.append(
                {n: p.grad.detach().numpy().astype(np.float64).copy() for n, p in model.named_parameters()}
            )
            rec.record(step, model, loss=loss, lr=0.1)
            losses.append(loss.item())
            opt.step()
    r = open_store(path)
    names = [n for n, _ in model.named_parameters()]
    assert r.group_names == tuple(names)
    assert r.group_sizes == tuple(p.numel() for p in model.parameters())
    got = stored(path)
    assert got["step"].tolist() == list(range(12))
    np.testing.assert_allclose(got["loss"], losses, rtol=1e-7)
    assert losses[-1] < losses[0]  # it trained
    spec = ProjectionSpec(k=32, seed=7)
    for step, grads in enumerate(reference):
        for gi, name in enumerate(names):
            assert got["sqnorm"][step, gi] == pytest.approx(float(np.sum(grads[name] ** 2)), rel=1e-12)
            z, _ = project_with_norm(grads[name].astype(np.float32), spec, name)
            np.testing.assert_allclose(got["proj"][step, gi], z, rtol=1e-6, atol=1e-7)


def test_exit_without_close_commits(tmp_path: Path) -> None:
    """A script that records and exits without close() still leaves every row committed."""
    import subprocess
    import sys

    script = (
        "import numpy as np\n"
        "from gradmanifold import Recorder\n"
        f"rec = Recorder({str(tmp_path / 'r.zarr')!r}, k=8)\n"
        "for s in range(5):\n"
        "    rec.record(s, {'w': np.full(4, s, np.float32)})\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "could not commit" not in proc.stderr
    r = open_store(tmp_path / "r.zarr")
    assert list(r.steps()) == [0, 1, 2, 3, 4]
    assert r.manifest.segments[-1].status == "closed"


def test_forked_child_never_commits_or_unlocks(tmp_path: Path) -> None:
    """A forked child (a DataLoader worker) that exits must leave the parent's store and lock alone."""
    import os

    from gradmanifold.store.lock import LOCK_NAME

    path = tmp_path / "r.zarr"
    rec = Recorder(path, k=8, chunk_rows=100)
    rec.record(0, grads_at(0))
    rec.flush()
    rec.record(1, grads_at(1))  # buffered in the parent only
    pid = os.fork()
    if pid == 0:  # child: close (as an exit hook would), try to record, then leave without cleanup
        code = 0
        try:
            rec.close()
            try:
                rec.record(2, grads_at(2))
                code = 3
            except InputError:
                pass
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (path / LOCK_NAME).exists()  # still the parent's
    assert list(open_store(path).steps()) == [0]  # the child committed nothing
    rec.record(2, grads_at(2))
    rec.close()
    assert list(open_store(path).steps()) == [0, 1, 2]
