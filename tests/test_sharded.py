"""Sharded recording: real `torchrun --nproc-per-node 2` jobs on CPU/gloo (FSDP2, tensor parallel, FSDP1, DDP)
against the same training in one unsharded process; the shard arithmetic against whole-tensor projections.

Tolerances: the sharded and the one-process runs compute the same float32 gradients up to the order of their
reductions, so projections agree to float32 rounding (1e-6 of each row's largest entry: about 8 float32 ulps,
measured 1e-7) and squared norms to 1e-6 relative (measured 2e-7). The shard arithmetic itself (block runs,
flat-parameter pieces, the packed exchange) is exact up to float64 summation order: 1e-12 relative.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from gradmanifold import sharded
from gradmanifold.errors import InputError, UsageError
from gradmanifold.projection import ProjectionSpec, project_runs_with_norm, project_with_norm
from gradmanifold.store import open_store

#: seconds a torchrun job may take: only a hung job takes that long (it then dumps its stacks and exits)
DEADLINE = 240
MODES = ("fsdp2", "tp", "fsdp1", "fsdp1-orig", "ddp")

SCRIPT = textwrap.dedent(
    """
    '''One small training run, the same in every mode: one process, FSDP2, tensor parallel, FSDP1, DDP.'''
    import faulthandler
    import os
    import sys
    import warnings

    import torch
    from torch import nn

    STEPS, BATCH, LR = 5, 8, 0.1


    def make_model():
        torch.manual_seed(0)  # uneven FSDP shards (10 = 5 + 5, 5 = 3 + 2, 3 = 2 + 1 rows); even for TP
        return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 5), nn.Tanh(), nn.Linear(5, 3))


    def data(step):
        g = torch.Generator().manual_seed(1000 + step)
        return torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 3, generator=g)


    def train(model, rec, rows=slice(None), steps=STEPS, record=True, before_record=None):
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        for step in range(steps):
            x, y = data(step)
            loss = (model(x[rows]) - y[rows]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            if before_record is not None:
                before_record(step)
            if record:
                done = rec.record(step, model, loss=loss.item(), lr=LR)
                say(f"{MODE} step {step} recorded {done}")
            opt.step()


    def recorder(out, **kw):
        from gradmanifold import Recorder

        kw.setdefault("updates", "exact")
        return Recorder(out, k=16, seed=3, **kw)


    def fsdp2(model):
        from torch.distributed.fsdp import fully_shard

        for layer in (model[0], model[2], model[4]):
            fully_shard(layer)
        return fully_shard(model)


    RANK, MODE, LOG = 0, "", None


    def say(text):  # a line in this rank's own log (the ranks' stdout lines interleave); none in one process
        if LOG is None:
            return
        LOG.write(f"rank {RANK} {text}\\n")
        LOG.flush()


    def main():
        global RANK, MODE, LOG
        import torch.distributed as dist

        faulthandler.dump_traceback_later(float(os.environ.get("SHARDED_TEST_DEADLINE", "240")), exit=True)
        outdir, modes = sys.argv[1], sys.argv[2]
        dist.init_process_group("gloo")
        RANK, world = dist.get_rank(), dist.get_world_size()
        LOG = open(os.path.join(outdir, f"{modes}.rank{RANK}.log"), "w")
        half = slice(RANK * BATCH // world, (RANK + 1) * BATCH // world)  # data parallel: this rank's rows
        out = lambda name: os.path.join(outdir, name + ".zarr")
        for mode in modes.split(","):
            MODE, model = mode, make_model()
            try:
                run(mode, model, out(mode), half, world)
            except Exception as exc:
                say(f"{mode} error {type(exc).__name__}: {exc}")
            say(f"done {mode}")
        dist.destroy_process_group()


    def run(mode, model, out, half, world):
        if mode in ("fsdp2", "wrap-fsdp2"):
            fsdp2(model)
            if mode == "fsdp2":
                with recorder(out) as rec:  # every rank records (rank 0 writes)
                    train(model, rec, half)
            else:  # no gradmanifold in the script: wrap mode records every rank's shards
                train(model, None, half, record=False)
        elif mode == "tp":
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

            mesh = init_device_mesh("cpu", (world,))
            parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
            with recorder(out) as rec:  # Shard(0), Shard(1) and Replicate; layer 4 stays a plain tensor
                train(model, rec)  # tensor parallel: every rank sees the whole batch
        elif mode in ("fsdp1", "fsdp1-orig"):
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
            from torch.distributed.fsdp.wrap import ModuleWrapPolicy

            model = FSDP(
                model, device_id=torch.device("cpu"), use_orig_params=mode == "fsdp1-orig",
                auto_wrap_policy=ModuleWrapPolicy({nn.Linear}),
            )
            with recorder(out) as rec:
                train(model, rec, half)
        elif mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            with recorder(out) as rec:  # replicated gradients: rank 0 records, as in one process
                train(DDP(model), rec, half, record=RANK == 0)
        elif mode == "wrap-ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            train(DDP(model), None, half, record=False)
        elif mode == "nan":  # a NaN in rank 1's shard of 0.weight at the last step flags the group
            fsdp2(model)

            def poison(step):
                if step == STEPS - 1 and RANK == 1:
                    with torch.no_grad():
                        model[0].weight.grad.to_local()[0, 0] = float("nan")

            with recorder(out) as rec:
                train(model, rec, half, before_record=poison)
        elif mode == "spectra":  # a singular spectrum needs the whole matrix: refused on every rank
            fsdp2(model)
            train(model, recorder(out, spectra_every=1), half, steps=1)
        elif mode == "partial":  # a Partial DTensor is not reduced yet: refused on every rank, together
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor import DTensor, Partial

            g = DTensor.from_local(torch.ones(4), init_device_mesh("cpu", (world,)), [Partial()])
            recorder(out, updates=False).record(0, {"w": g})
        elif mode == "writefail":  # rank 0's store fails at step 2: every rank stops; training goes on
            from gradmanifold.errors import StoreWriteError

            fsdp2(model)
            rec = recorder(out, on_error="warn")

            def boom(*args, **kw):
                raise StoreWriteError("disk full (test)")

            def fail_at_2(step):
                if step == 2 and RANK == 0:
                    rec._writer.append_owned = boom

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with rec:
                    train(model, rec, half, before_record=fail_at_2)
            say(f"warnings {[str(w.message) for w in caught]}")
        elif mode == "rank0only":  # a misuse: only rank 0 calls record(): one clear error, no hang; last
            import gradmanifold.sharded as sh

            sh.HANDSHAKE_TIMEOUT_S = 2.0
            fsdp2(model)
            train(model, recorder(out), half, steps=1, record=RANK == 0)


    if __name__ == "__main__":
        main()
    """
)


def write_script(folder: Path) -> Path:
    path = folder / "train_sharded.py"
    path.write_text(SCRIPT)
    return path


def logs(outdir: Path, modes: str) -> list[str]:
    """The lines the ranks of a job running `modes` wrote in outdir, rank 0's first."""
    return [ln for r in (0, 1) for ln in (outdir / f"{modes}.rank{r}.log").read_text().splitlines()]


def torchrun(script: Path, outdir: Path, modes: str) -> list[str]:
    """Run the script's modes in one 2-rank job; the ranks' lines (fails with the job's output)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "SHARDED_TEST_DEADLINE": str(DEADLINE - 20), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [*cmd, str(script), str(outdir), modes], env=env, capture_output=True, text=True, timeout=DEADLINE
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return logs(outdir, modes)


def load_script(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_sharded_ref", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def read(path: Path) -> dict[str, Any]:
    r = open_store(path)
    chunks = list(r.iter_chunks())
    out: dict[str, Any] = {"groups": r.group_names}
    for name in ("step", "proj", "sqnorm", "flags", "update", "update_sqnorm", "lr"):
        parts = [getattr(c, name) for c in chunks]
        out[name] = None if parts[0] is None else np.concatenate(parts)
    return out


def assert_same_run(got: dict[str, Any], ref: dict[str, Any], rows: slice = slice(None)) -> None:
    """Same steps and group names; projections to float32 rounding, squared norms to 1e-6 relative."""
    assert got["groups"] == ref["groups"]
    assert (got["step"] == ref["step"]).all()
    for proj, sq in (("proj", "sqnorm"), ("update", "update_sqnorm")):
        a, b = got[proj][rows].astype(np.float64), ref[proj][rows].astype(np.float64)
        assert (np.isnan(a) == np.isnan(b)).all()  # NaN: no update at the first row
        a, b = np.nan_to_num(a), np.nan_to_num(b)
        scale = np.abs(b).max(axis=-1, keepdims=True)
        assert (np.abs(a - b) <= 1e-6 * scale).all(), (np.abs(a - b) / np.maximum(scale, 1e-300)).max()
        q, qr = got[sq][rows], ref[sq][rows]
        known = ~np.isnan(qr)  # the first row has no update
        assert (np.isnan(q) == ~known).all()
        np.testing.assert_allclose(q[known], qr[known], rtol=1e-6)
    assert (got["flags"][rows] == 0).all()
    np.testing.assert_array_equal(got["lr"], ref["lr"])


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One torchrun job running every Python-API mode, and the one-process reference run."""
    pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("sharded")
    script = write_script(folder)
    modes = ",".join([*MODES, "nan", "spectra", "partial", "writefail", "rank0only"])
    lines = torchrun(script, folder, modes)
    mod = load_script(script)
    with mod.recorder(folder / "ref.zarr") as rec:
        mod.train(mod.make_model(), rec)
    return {"folder": folder, "lines": lines, "ref": read(folder / "ref.zarr"), "script": script}


@pytest.mark.parametrize("mode", MODES)
def test_a_sharded_job_records_what_one_process_records(job: dict[str, Any], mode: str) -> None:
    got = read(job["folder"] / f"{mode}.zarr")
    assert got["groups"] == ("0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias")
    assert_same_run(got, job["ref"])
    for rank in (0, 1):  # (rank 0's shards alone would not add up to the reference)
        assert f"rank {rank} done {mode}" in job["lines"]
        assert not any(line.startswith(f"rank {rank} {mode} error") for line in job["lines"])
    recorded = [ln.split()[-1] for ln in job["lines"] if ln.startswith(f"rank 1 {mode} step")]
    assert recorded == ([] if mode == "ddp" else ["True"] * 5)  # DDP: rank 0 alone records


def test_a_nan_in_one_ranks_shard_flags_the_group(job: dict[str, Any]) -> None:
    got, ref = read(job["folder"] / "nan.zarr"), job["ref"]
    assert_same_run(got, ref, slice(0, 4))  # the steps before
    last = got["flags"][4]
    assert last[0] & 1 and got["sqnorm"][4, 0] != got["sqnorm"][4, 0]  # 0.weight: non-finite, NaN norm
    assert (last[1:] == 0).all()
    np.testing.assert_allclose(got["sqnorm"][4, 1:], ref["sqnorm"][4, 1:], rtol=1e-6)


def test_errors_stop_every_rank_together_and_never_hang(job: dict[str, Any]) -> None:
    lines, folder = job["lines"], job["folder"]
    for rank in (0, 1):  # refused on every rank at the same step (before any collective or inside one)
        spectra = [ln for ln in lines if ln.startswith(f"rank {rank} spectra error InputError")]
        assert len(spectra) == 1 and "whole gradient matrix" in spectra[0]
        partial = [ln for ln in lines if ln.startswith(f"rank {rank} partial error InputError")]
        assert len(partial) == 1 and "Partial" in partial[0]
    # rank 0's writer fails at step 2: rank 0 stops there, rank 1 at the next step's all-reduce; both go on
    rec0 = [ln.split()[-1] for ln in lines if ln.startswith("rank 0 writefail step")]
    rec1 = [ln.split()[-1] for ln in lines if ln.startswith("rank 1 writefail step")]
    assert rec0 == ["True", "True", "False", "False", "False"]
    assert rec1 == ["True", "True", "True", "False", "False"]
    warned = {r: next(ln for ln in lines if ln.startswith(f"rank {r} warnings")) for r in (0, 1)}
    assert "disk full (test)" in warned[0] and warned[1] == "rank 1 warnings []"
    assert not (folder / "writefail.zarr" / ".gradmanifold.lock").exists()
    # only rank 0 calls record(): a clear error after the handshake timeout, no store, no hang
    err = [ln for ln in lines if ln.startswith("rank 0 rank0only error InputError")]
    assert len(err) == 1 and "every rank must call record()" in err[0]
    assert "rank 1 done rank0only" in lines and not (folder / "rank0only.zarr").exists()


def wrap(script: Path, outdir: Path, store: Path, mode: str) -> subprocess.CompletedProcess[str]:
    """`gradmanifold record --out STORE -- torchrun --nproc-per-node 2 SCRIPT OUTDIR MODE`, as typed."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [sys.executable, "-m", "gradmanifold", "record", "--out", str(store), "--k", "16", "--seed", "3"]
    env = {**os.environ, "SHARDED_TEST_DEADLINE": str(DEADLINE - 20), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*cmd, "--updates", "--", *run, str(script), str(outdir), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


@pytest.mark.parametrize("mode", ["wrap-fsdp2", pytest.param("wrap-ddp", marks=pytest.mark.slow)])
def test_wrap_mode_records_a_torchrun_job_like_one_process(job: dict[str, Any], mode: str) -> None:
    folder = job["folder"]
    store = folder / f"{mode}.zarr"
    done = wrap(job["script"], folder, store, mode)
    assert done.returncode == 0, done.stderr[-5000:]
    assert f"{store}: 5 steps committed" in done.stderr
    assert "recording stopped" not in done.stderr
    assert_same_run(read(store), job["ref"])


@pytest.mark.slow
def test_wrap_mode_a_store_error_on_rank_zero_stops_every_rank_and_training_goes_on(
    job: dict[str, Any], tmp_path: Path
) -> None:
    blocked = tmp_path / "not_a_store"
    blocked.mkdir()
    (blocked / "data.txt").write_text("someone else's folder")
    done = wrap(job["script"], tmp_path, blocked, "wrap-fsdp2")
    assert done.returncode == 0, done.stderr[-5000:]
    assert {"rank 0 done wrap-fsdp2", "rank 1 done wrap-fsdp2"} <= set(logs(tmp_path, "wrap-fsdp2"))
    stopped = [ln for ln in done.stderr.splitlines() if "recording stopped" in ln]
    assert len(stopped) == 1 and "not a gradmanifold store" in stopped[0]  # rank 0's line; rank 1 silent
    assert sorted(p.name for p in blocked.iterdir()) == ["data.txt"]


# ------------------------------------------------------------------------------- shard arithmetic, no job


def blocks(shape: tuple[int, ...], splits: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(local shape, offset) of every block when dim d is cut into splits[d] uneven chunks (torch's rule)."""
    per_dim = []
    for n, parts in zip(shape, splits, strict=True):
        size = -(-n // parts)
        per_dim.append(
            [(lo, min(size, n - lo)) for lo in range(0, n, size)] + [(n, 0)] * (parts - -(-n // size))
        )
    out = [((), ())]
    for dim in per_dim:
        out = [((*ls, m), (*off, lo)) for ls, off in out for lo, m in dim]
    return out


@pytest.mark.parametrize("kind", ["sparse", "gaussian"])
@pytest.mark.parametrize(
    ("shape", "splits"),
    [((7, 5), (2, 1)), ((6, 10), (1, 2)), ((5, 4, 6), (2, 1, 3)), ((3, 1), (4, 1)), ((9,), (3,))],
)
def test_blocks_as_runs_project_to_the_whole_tensor(
    kind: str, shape: tuple[int, ...], splits: tuple[int, ...]
) -> None:
    spec = ProjectionSpec(k=32, seed=5, kind=kind)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    whole = rng.standard_normal(shape)
    z_ref, q_ref = project_with_norm(whole, spec, "g", 100)
    z, q, covered = np.zeros(32), 0.0, np.zeros(whole.size, int)
    for local, off in blocks(shape, splits):
        block = whole[tuple(slice(o, o + n) for o, n in zip(off, local, strict=True))]
        starts, run = sharded.block_runs(local, shape, off)
        assert len(starts) * run == block.size
        for r, s in enumerate(starts):  # the runs are the block's values, in its own C order
            np.testing.assert_array_equal(
                whole.reshape(-1)[s : s + run], block.reshape(-1)[r * run : (r + 1) * run]
            )
            covered[s : s + run] += 1
        zr, qr = project_runs_with_norm(block, spec, "g", starts + 100, run)
        z, q = z + zr, q + qr
    assert (covered == 1).all()
    np.testing.assert_allclose(z, z_ref, rtol=1e-12, atol=1e-12 * np.abs(z_ref).max())
    np.testing.assert_allclose(q, q_ref, rtol=1e-12)


def test_bad_blocks_and_runs_are_refused() -> None:
    with pytest.raises(InputError, match="outside"):
        sharded.block_runs((3, 2), (4, 4), (2, 0))
    with pytest.raises(InputError, match="does not fit"):
        sharded.block_runs((3,), (4, 4), (0, 0))
    spec = ProjectionSpec(k=8)
    with pytest.raises(UsageError, match="runs of"):
        project_runs_with_norm(np.ones(6), spec, "g", np.array([0, 3]), 4)
    with pytest.raises(UsageError, match="starts >= 0"):
        project_runs_with_norm(np.ones(6), spec, "g", np.array([-1, 3]), 3)
    with pytest.raises(UsageError, match="not a string"):
        project_runs_with_norm(np.ones(6), spec, 7, np.array([0]), 6)  # type: ignore[arg-type]
    assert project_runs_with_norm(np.ones(0), spec, "g", np.array([], np.int64), 0)[1] == 0.0


def test_fsdp1_flat_parameter_pieces_add_up_to_the_original_parameters() -> None:
    torch = pytest.importorskip("torch")
    shapes = [(3, 4), (3,), (2, 3)]  # 12 + 3 + 6 = 21 values, sharded 11 + 10 (+ 1 padding) as FSDP1 does
    rng = np.random.default_rng(1)
    originals = [rng.standard_normal(s) for s in shapes]
    flat = np.concatenate([o.reshape(-1) for o in originals])
    spec = ProjectionSpec(k=16, seed=2)
    got: dict[str, Any] = {}
    for rank, (lo, hi) in enumerate([(0, 11), (11, 21)]):
        infos, start = [], 0
        for s in shapes:
            n = int(np.prod(s))
            a, b = max(lo, start), min(hi, start + n)
            info = SimpleNamespace(in_shard=a < b, offset_in_shard=a - lo, numel_in_shard=b - a)
            infos.append(SimpleNamespace(**vars(info), intra_param_start_idx=a - start))
            start += n
        flat_param = SimpleNamespace(
            _shard_param_infos=infos, _fqns=["0.weight", "0.bias", "2.weight"], _shapes=shapes
        )
        handle = SimpleNamespace(flat_param=flat_param, uses_sharded_strategy=True)
        shard = torch.tensor(np.concatenate([flat[lo:hi], [0.0] * (11 - (hi - lo))]))  # padded like FSDP1
        for name, pieces in sharded.expand(
            "_fsdp_wrapped_module.enc._flat_param", shard, (handle, None), rank
        ):
            z, q = sharded.project_local(pieces, spec, name)
            prev = got.get(name, (0.0, 0.0))
            got[name] = (prev[0] + z, prev[1] + q)
        # without sharding (NO_SHARD) every rank holds everything: rank 0 alone contributes
        handle.uses_sharded_strategy = False
        assert all(not p.parts for _, p in sharded.expand("x._flat_param", shard, (handle, None), 1))
    assert list(got) == ["enc.0.weight", "enc.0.bias", "enc.2.weight"]
    for (name, (z, q)), orig in zip(got.items(), originals, strict=True):
        z_ref, q_ref = project_with_norm(orig, spec, name)
        np.testing.assert_allclose(z, z_ref, rtol=1e-12, atol=1e-12 * np.abs(z_ref).max())
        np.testing.assert_allclose(q, q_ref, rtol=1e-12)


def test_the_exchange_buffer_combines_ranks_flags_nan_and_stops() -> None:
    g, k = 3, 4
    rng = np.random.default_rng(2)
    rows = [rng.standard_normal((g, k)) for _ in range(2)]
    sq = [np.array([1.0, 2.0, 3.0]), np.array([0.5, np.nan, 0.0])]  # a NaN on rank 1 only, group 1
    upd = [(rng.standard_normal((g, k)), np.ones(g)), (None, None)]  # rank 1 has no update (a restart)
    bufs = [sharded.pack(rows[r], sq[r], np.array([1, 1, 0]), upd[r], False, r) for r in (0, 1)]
    got = sharded.unpack(bufs[0] + bufs[1], g, k, True, 2)
    np.testing.assert_allclose(got.proj, rows[0] + rows[1], rtol=1e-15)
    assert np.isnan(got.sqnorm[1]) and got.sqnorm[0] == 1.5 and list(got.present) == [2, 2, 0]
    assert got.update is None and got.failed == 0  # an update only when every rank has one
    stop = sharded.pack(rows[1], sq[1], np.ones(3), (None, None), True, 0)  # rank 0 failed
    assert (stop[:-2] == 0).all()
    both = sharded.unpack(bufs[1] + stop, g, k, True, 2)
    assert both.failed == 1 and both.rank0_failed and "rank 0 could not write" in both.why(7)


def test_a_wrapped_module_records_under_the_bare_modules_names(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    from gradmanifold import Recorder

    class DistributedDataParallel(nn.Module):  # named like the wrapper: its `module.` prefix is dropped
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

        def forward(self, x: Any) -> Any:
            return self.module(x)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    net(torch.randn(5, 3)).pow(2).sum().backward()
    stores = []
    for i, model in enumerate((net, DistributedDataParallel(net))):
        with Recorder(tmp_path / f"r{i}.zarr", k=8) as rec:
            rec.record(0, model)
        stores.append(read(tmp_path / f"r{i}.zarr"))
    assert stores[0]["groups"] == stores[1]["groups"] == ("0.weight", "0.bias", "2.weight", "2.bias")
    np.testing.assert_array_equal(stores[0]["proj"], stores[1]["proj"])


def test_suspend_commits_and_the_next_record_reopens_the_store(tmp_path: Path) -> None:
    from gradmanifold import Recorder

    path = tmp_path / "s.zarr"
    rng = np.random.default_rng(3)
    grads = [rng.standard_normal(10).astype(np.float32) for _ in range(4)]
    with Recorder(path, k=8, resume="never") as rec:  # "never" is for the first open only
        for step, g in enumerate(grads):
            rec.record(step, {"w": g})
            if step == 1:
                rec.suspend()
                assert open_store(path).n_steps == 2 and not (path / ".gradmanifold.lock").exists()
        with pytest.raises(InputError, match="suspend status"):
            rec.suspend("paused")  # a status the store's manifest does not know
    got = read(path)
    assert list(got["step"]) == [0, 1, 2, 3]
    assert [s["status"] for s in open_store(path).info()["segments"]] == ["interrupted", "closed"]
    for step, g in enumerate(grads):
        np.testing.assert_allclose(got["sqnorm"][step, 0], float(np.dot(g, g)), rtol=1e-6)
