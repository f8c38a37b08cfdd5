"""The Recorder's hot path (gradmanifold.hotpath): the background thread records the same bits as the
training thread and as one project_with_norm call per tensor; it blocks instead of dropping or growing, and
its errors reach the training thread."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradmanifold import Recorder
from gradmanifold.errors import InputError, StoreWriteError
from gradmanifold.hotpath import BATCH_MAX_ELEMENTS, Background, Job, StepProjector
from gradmanifold.kernels.projection import sparse_superblock
from gradmanifold.projection import ProjectionSpec, project_with_norm
from gradmanifold.store import open_store


def _rows(path: Path) -> dict[str, np.ndarray]:
    r = open_store(path)
    cs = list(r.iter_chunks())
    out = {k: np.concatenate([getattr(c, k) for c in cs]) for k in ("step", "proj", "sqnorm", "flags")}
    if cs and cs[0].update is not None:
        out["update"] = np.concatenate([c.update for c in cs])
        out["update_sqnorm"] = np.concatenate([c.update_sqnorm for c in cs])
    return out


def _reference(tensors: dict[str, np.ndarray], spec: ProjectionSpec, groups: dict[str, list[str]]) -> tuple:
    """Per group: the sum, in tensor order, of one project_with_norm call per tensor at its offset."""
    proj, sq = [], []
    for g, names in groups.items():
        z, q, off = np.zeros(spec.k), 0.0, 0
        for n in names:
            zi, qi = project_with_norm(tensors[n], spec, g, off)
            z, q, off = z + zi, q + qi, off + tensors[n].size
        proj.append(z)
        sq.append(q)
    return np.array(proj).astype(np.float32), np.array(sq)


DTYPES = st.sampled_from([np.float32, np.float16, np.float64])


@st.composite
def _steps(draw: st.DrawFn) -> tuple[list[tuple[str, tuple[int, ...], type]], int, int]:
    n = draw(st.integers(1, 6))
    shapes = [
        (f"t{i}", draw(st.sampled_from([(1,), (7,), (3, 5), (64, 33), (200, 300)])), draw(DTYPES))
        for i in range(n)
    ]
    return shapes, draw(st.sampled_from([8, 32, 256])), draw(st.integers(0, 2**32))


@given(_steps())
def test_background_bits_equal_training_thread_bits_and_per_tensor_calls(tmp_path_factory, case) -> None:  # type: ignore[no-untyped-def]
    shapes, k, seed = case
    spec = ProjectionSpec(k=k, seed=seed)
    rng = np.random.default_rng(seed)
    steps = [{n: rng.standard_normal(s).astype(dt) for n, s, dt in shapes} for _ in range(3)]
    groups = {"a": [shapes[0][0]], "b": [n for n, _, _ in shapes[1:]]} if len(shapes) > 1 else None
    got = {}
    for threads in (0, 1):
        path = tmp_path_factory.mktemp("hp") / f"t{threads}.zarr"
        mapping = {"a": groups["a"], "b": groups["b"]} if groups else None
        with Recorder(path, k=k, seed=seed, threads=threads, groups=mapping) as rec:
            for step, tensors in enumerate(steps):
                rec.record(step, tensors)
        got[threads] = _rows(path)
    for key in ("proj", "sqnorm", "flags"):
        np.testing.assert_array_equal(got[0][key], got[1][key])
    names = groups or {n: [n] for n, _, _ in shapes}
    for step, tensors in enumerate(steps):
        want_proj, want_sq = _reference(tensors, spec, names)
        np.testing.assert_array_equal(got[1]["proj"][step], want_proj)
        np.testing.assert_array_equal(got[1]["sqnorm"][step], want_sq)


def test_tensors_beyond_a_super_block_and_beyond_the_batch_limit(tmp_path: Path) -> None:
    """A tensor spanning super-blocks is summed like the per-tensor kernel; one above the batch limit is
    projected where it is; both give the per-tensor bits, with and without the background thread."""
    spec = ProjectionSpec(k=64, seed=3)
    rng = np.random.default_rng(0)
    big = 3 * sparse_superblock(spec.k // spec.s) + 17
    tensors = {
        "small": rng.standard_normal(100).astype(np.float32),
        "span": rng.standard_normal(big).astype(np.float32),
        "huge": rng.standard_normal(BATCH_MAX_ELEMENTS + 5).astype(np.float32),
    }
    for threads in (0, 1):
        path = tmp_path / f"{threads}.zarr"
        with Recorder(path, k=64, seed=3, threads=threads) as rec:
            rec.record(0, tensors)
        got = _rows(path)
        want_proj, want_sq = _reference(tensors, spec, {n: [n] for n in tensors})
        np.testing.assert_array_equal(got["proj"][0], want_proj)
        np.testing.assert_array_equal(got["sqnorm"][0], want_sq)


@pytest.mark.torch
def test_torch_training_loop_same_store_with_and_without_the_thread(tmp_path: Path) -> None:
    """A real loop: the optimizer changes the parameters in place after record(); the snapshot must hold
    the gradients and parameters of record() time. Gradients, updates and spectra: the same bits."""
    torch = pytest.importorskip("torch")
    stores = {}
    for threads in (0, 1):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
        path = tmp_path / f"{threads}.zarr"
        with Recorder(path, k=16, threads=threads, updates=True, spectra_every=2, spectra_top=3) as rec:
            for step in range(6):
                opt.zero_grad(set_to_none=False)  # gradients zeroed in place: a snapshot must be a copy
                torch.nn.functional.cross_entropy(model(x), y).backward()
                rec.record(step, model)
                opt.step()
        stores[threads] = _rows(path)
        spectra = open_store(path).read_table("spectra")
        stores[threads]["sigma"] = spectra["spectra_sigma"]
    for key, a in stores[0].items():
        np.testing.assert_array_equal(a, stores[1][key], err_msg=key)
    assert np.isfinite(stores[1]["update_sqnorm"][1:]).all() and (stores[1]["update_sqnorm"][1:] > 0).all()
    assert np.isfinite(stores[1]["sigma"]).all()


def test_backpressure_blocks_and_never_drops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the background thread held up, record() returns until queue_steps steps wait, then blocks;
    once released every step is in the store."""
    rec = Recorder(tmp_path / "r.zarr", k=8, threads=1, queue_steps=2)
    x = {"w": np.ones(10, np.float32)}
    rec.record(0, x)
    rec.flush()
    gate = threading.Event()
    entered = threading.Event()
    real = rec._work

    def slow(job: Job) -> None:
        entered.set()
        gate.wait()
        return real(job)

    monkeypatch.setattr(rec._bg, "_run", slow)
    done: list[int] = []

    def train() -> None:
        for step in range(1, 6):
            rec.record(step, x)
            done.append(step)

    t = threading.Thread(target=train)
    t.start()
    assert entered.wait(120), "the background thread never took a step"
    # one step is held on the background thread and two wait: the training thread blocks in step 4
    deadline = threading.Event()
    for _ in range(1200):
        if len(done) >= 3 and rec._bg.pending == 3:
            break
        deadline.wait(0.1)
    assert (done, rec._bg.pending) == ([1, 2, 3], 3)
    deadline.wait(0.2)
    assert done == [1, 2, 3], "record() went on while the queue was full"
    gate.set()
    t.join(120)
    assert not t.is_alive()
    rec.close()
    assert list(_rows(tmp_path / "r.zarr")["step"]) == [0, 1, 2, 3, 4, 5]


def test_background_error_reaches_the_next_call_and_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = Recorder(tmp_path / "r.zarr", k=8, threads=1)
    x = {"w": np.ones(10, np.float32)}
    rec.record(0, x)
    rec.flush()

    def broken(*a: object, **kw: object) -> None:
        raise StoreWriteError("disk went away")

    monkeypatch.setattr(rec._writer, "append_owned", broken)
    rec.record(1, x)  # fails on the background thread
    with pytest.raises(StoreWriteError, match="disk went away"):
        rec.close()
    assert list(_rows(tmp_path / "r.zarr")["step"]) == [0]
    assert not rec._bg.thread.is_alive()


def test_input_errors_stay_on_the_training_thread(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "r.zarr", k=8, threads=1, updates=True)
    rec.record(0, {"w": np.ones(10, np.float32)}, params={"w": np.zeros(10, np.float32)})
    with pytest.raises(InputError, match="has 11 elements, but 10"):
        rec.record(1, {"w": np.ones(11, np.float32)}, params={"w": np.zeros(11, np.float32)})
    with pytest.raises(InputError, match="params must name the same tensors"):
        rec.record(1, {"w": np.ones(10, np.float32)}, params={"v": np.zeros(10, np.float32)})
    assert rec.record(1, {"w": np.ones(10, np.float32)}, params={"w": np.ones(10, np.float32)})
    rec.close()
    got = _rows(tmp_path / "r.zarr")
    assert list(got["step"]) == [0, 1]
    assert got["update_sqnorm"][1, 0] == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"threads": 2}, "threads must be 0, 1 or 'auto'"),
        ({"threads": -1}, "threads must be"),
        ({"threads": True}, "threads must be"),
        ({"threads": "yes"}, "threads must be"),
        ({"queue_steps": 0}, "queue_steps must be an integer >= 1"),
        ({"queue_steps": 1.5}, "queue_steps must be"),
    ],
)
def test_bad_thread_options_are_refused(tmp_path: Path, kw: dict, msg: str) -> None:
    with pytest.raises(InputError, match=msg):
        Recorder(tmp_path / "r.zarr", **kw)


def test_background_stops_on_the_first_error_and_drops_later_jobs() -> None:
    seen: list[int] = []

    def run(job: Job) -> None:
        seen.append(job.step)
        if job.step == 1:
            raise ValueError("boom")

    projector = StepProjector(ProjectionSpec(k=8), ["g"], {})
    bg = Background(run, depth=8)
    for step in range(4):
        bg.submit(Job(step, projector._plan((), []), None, np.zeros((0, 9)), np.zeros(0, bool)))
    bg.drain()
    err = bg.take_error()
    assert isinstance(err, ValueError) and seen == [0, 1]
    assert bg.take_error() is None
    bg.submit(Job(9, projector._plan((), []), None, np.zeros((0, 9)), np.zeros(0, bool)))
    bg.drain()
    assert seen == [0, 1], "a stopped background thread took more work"
    bg.stop()
    assert not bg.thread.is_alive()


def test_an_error_on_the_background_thread_keeps_the_rows_finished_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.zarr"
    rec = Recorder(path, k=8, threads=1)
    x = {"w": np.ones(10, np.float32)}
    rec.record(0, x)
    real = rec._hot.project

    def fails_at_3(job: Job) -> tuple:
        if job.step == 3:
            raise MemoryError("no room for step 3")
        return real(job)

    monkeypatch.setattr(rec._hot, "project", fails_at_3)
    for step in (1, 2, 3):
        rec.record(step, x)
    with pytest.raises(MemoryError, match="step 3"):
        rec.flush()
    assert rec.record(4, x) is False  # stopped
    rec.close()
    assert list(_rows(path)["step"]) == [0, 1, 2]


def test_suspend_and_skips_with_the_background_thread(tmp_path: Path) -> None:
    """suspend() stores what the thread had and reopens at the next step; skipped steps are counted."""
    path = tmp_path / "r.zarr"
    rec = Recorder(path, k=8, threads=1, nonfinite="skip")
    good, bad = {"w": np.ones(10, np.float32)}, {"w": np.full(10, np.nan, np.float32)}
    for step in range(3):
        assert rec.record(step, good)
    rec.suspend()
    assert list(_rows(path)["step"]) == [0, 1, 2]
    assert rec.record(3, bad)  # accepted; found non-finite on the thread and skipped
    assert rec.record(4, good)
    assert (rec.steps_recorded, rec.steps_skipped) == (4, 1)
    rec.close()
    r = open_store(path)
    assert list(r.steps()) == [0, 1, 2, 4]
    assert [s.status for s in r.manifest.segments] == ["interrupted", "closed"]


def test_a_forked_child_neither_hangs_nor_writes(tmp_path: Path) -> None:
    import os
    import signal

    path = tmp_path / "r.zarr"
    rec = Recorder(path, k=8, threads=1)
    rec.record(0, {"w": np.ones(10, np.float32)})
    pid = os.fork()
    if pid == 0:  # the child: flush, counts and close return at once and touch nothing
        signal.alarm(60)
        code = 0
        try:
            rec.flush()
            _ = rec.steps_recorded
            rec.close()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    rec.record(1, {"w": np.ones(10, np.float32)})
    rec.close()
    assert list(_rows(path)["step"]) == [0, 1]


def test_auto_records_small_steps_inline_and_large_ones_on_the_thread(tmp_path: Path) -> None:
    """threads="auto" (the default) starts no thread for a small model; a step that copies more than
    AUTO_BACKGROUND_BYTES starts it, and the store is the same as with threads=0."""
    from gradmanifold.record import AUTO_BACKGROUND_BYTES

    rng = np.random.default_rng(1)
    small = {"w": rng.standard_normal(100).astype(np.float32)}
    rec = Recorder(tmp_path / "s.zarr", k=8)
    assert rec.threads == "auto"
    rec.record(0, small)
    assert rec._bg is None
    rec.close()
    n = AUTO_BACKGROUND_BYTES // 4 + 1
    big = [{"w": rng.standard_normal(n).astype(np.float32)} for _ in range(3)]
    stores = {}
    for threads in ("auto", 0):
        path = tmp_path / f"{threads}.zarr"
        rec = Recorder(path, k=16, threads=threads)
        for step, x in enumerate(big):
            rec.record(step, x)
        assert (rec._bg is not None) == (threads == "auto")
        rec.close()
        stores[threads] = _rows(path)
    for key in ("step", "proj", "sqnorm", "flags"):
        np.testing.assert_array_equal(stores["auto"][key], stores[0][key])


def test_warm_up_loads_the_batched_kernels_for_both_dtypes() -> None:
    from gradmanifold.hotpath import warm_up
    from gradmanifold.kernels import segments

    warm_up()
    sigs = segments._step.signatures
    assert sigs  # one signature: a float32 and a float64 buffer in every call
    assert {(str(sig[0].dtype), str(sig[2].dtype)) for sig in sigs} == {("float32", "float64")}


@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3), st.booleans()), min_size=1, max_size=12),
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=4),
)
def test_plain_parameters_lists_what_named_parameters_lists(
    tree: list[tuple[int, int, bool]], shared: list[tuple[int, int]]
) -> None:
    """The direct walk gives torch's names, order and deduplication on random module trees with shared
    modules, shared parameters and None entries; a module class that lists its own parameters is asked."""
    torch = pytest.importorskip("torch")
    from gradmanifold.sharded import plain_parameters

    mods = [torch.nn.Module()]
    for parent, n_params, none_param in tree:  # each new module hangs under an earlier one
        m = torch.nn.Module()
        for j in range(n_params):
            m.register_parameter(f"w{j}", torch.nn.Parameter(torch.zeros(j + 1)))
        if none_param:
            m.register_parameter("gone", None)
        mods[min(parent, len(mods) - 1)].add_module(f"c{len(mods)}", m)
        mods.append(m)
    for a, b in shared:  # a module reachable twice, and a parameter registered twice
        src, dst = mods[min(a, len(mods) - 1)], mods[min(b, len(mods) - 1)]
        if src is not dst and src not in list(dst.modules()) and dst not in list(src.modules()):
            dst.add_module(f"again{a}", src)
        for name, p in list(src._parameters.items())[:1]:
            dst.register_parameter(f"same_{name}", p)
    root = mods[0]
    want = list(root.named_parameters())
    got = plain_parameters(root)
    assert got is not None
    assert [n for n, _ in got] == [n for n, _ in want]
    assert all(a is b for (_, a), (_, b) in zip(got, want, strict=True))

    class Custom(torch.nn.Module):
        def named_parameters(self, *a: object, **k: object):  # type: ignore[no-untyped-def,override]
            yield from ()

    root.add_module("custom", Custom())
    assert plain_parameters(root) is None


def test_an_inline_step_is_stored_after_the_rows_the_thread_finished_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """threads="auto": a spectra step goes to the thread, the next one is worked inline; when the thread
    finishes the first while record() copies the second, the first row is still stored first (stored the
    other way round, the store would take the first as a rewind and drop the second)."""
    rng = np.random.default_rng(0)
    grads = [{"w": rng.standard_normal((6, 5)).astype(np.float32)} for _ in range(2)]
    rec = Recorder(tmp_path / "r.zarr", k=8, spectra_every=2, spectra_top=3, threads="auto")
    rec.record(0, grads[0])  # a spectra step: on the background thread
    real = StepProjector.snapshot

    def snapshot_while_the_thread_finishes(self: StepProjector, step: int, named: list) -> Job:
        job = real(self, step, named)
        rec._bg.drain()  # the thread ends step 0's work now, after record(1) collected finished rows
        return job

    monkeypatch.setattr(StepProjector, "snapshot", snapshot_while_the_thread_finishes)
    rec.record(1, grads[1])  # not a spectra step, nothing pending: worked inline
    monkeypatch.undo()
    rec.close()
    assert list(_rows(tmp_path / "r.zarr")["step"]) == [0, 1]
