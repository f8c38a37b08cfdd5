"""Wrap mode: real torch scripts run as child processes with the start-up hook; no change to the scripts."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradmanifold.store import open_store
from gradmanifold.wrap import boot_dir, child_env, run_wrapped, store_path
from gradmanifold.wrap.options import RecordOptions

torch = pytest.importorskip("torch")

TRAIN = textwrap.dedent(
    """
    import argparse, sys, time
    from collections import OrderedDict
    import torch
    from torch import nn

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--fail-at", type=int, default=-1)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--two", action="store_true")
    a = p.parse_args()
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(enc=nn.Linear(6, 8), act=nn.Tanh(), head=nn.Linear(8, 3)))
    frozen = nn.Linear(2, 2).requires_grad_(False)  # no gradient: left out
    extra = nn.Parameter(torch.zeros(4))  # belongs to no module: named by position
    groups = [{"params": list(model.parameters()) + list(frozen.parameters())}, {"params": [extra]}]
    opt = torch.optim.SGD(groups, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    if a.two:
        critic = nn.Sequential(OrderedDict(score=nn.Linear(3, 1)))
        opt2 = torch.optim.Adam(critic.parameters(), lr=1e-3)
    step = 0
    while a.steps < 0 or step < a.steps:
        if step == a.fail_at:
            raise RuntimeError("boom at step %d" % step)
        x = torch.randn(5, 6)
        out = model(x) + extra[:3].sum()
        loss = out.pow(2).mean()
        opt.zero_grad()
        if a.two:
            opt2.zero_grad()
            loss = loss + critic(out).mean()
        loss.backward()
        opt.step()
        sched.step()
        if a.two:
            opt2.step()
        print("step", step, flush=True)
        step += 1
        time.sleep(a.sleep)
    """
)


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    path = tmp_path / "trainmod.py"
    path.write_text(TRAIN)
    return path


def steps_of(path: Path | str) -> list[int]:
    r = open_store(path)
    return [int(s) for c in r.iter_chunks() for s in c.step]


#: seconds a test waits for a child to reach a step or to exit: only a hung child takes that long
DEADLINE = 120.0


def wait_for_step(proc: subprocess.Popen[str], n: int, err: Path) -> None:
    """Wait until the training script has printed "step n" (work done, not time). Its stdout goes on being
    read by a thread, so it never blocks on a full pipe. Fails if it exits first or hangs for DEADLINE s."""
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump(out: Any) -> None:
        with out:
            for line in out:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, args=(proc.stdout,), daemon=True).start()
    deadline = time.monotonic() + DEADLINE
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"the script did not reach step {n} within {DEADLINE:g} s") from None
        if line is None:
            code = proc.wait(timeout=DEADLINE)
            raise AssertionError(f"it exited ({code}) before step {n}: {err.read_text()[-3000:]}")
        if line.startswith("step") and int(line.split()[1]) >= n:
            return


def test_every_optimizer_step_recorded_with_module_names_via_python_m(tmp_path: Path, script: Path) -> None:
    out = tmp_path / "run.zarr"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # python -m finds trainmod in the working folder
    try:
        result = run_wrapped(
            [sys.executable, "-m", "trainmod", "--steps", "12", "--two"], RecordOptions(out=str(out), k=16)
        )
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0
    assert [p for p, _ in result.stores] == [str(out), store_path(str(out), 1)]
    assert steps_of(out) == list(range(12))
    r = open_store(out)
    assert r.group_names == ("enc.weight", "enc.bias", "head.weight", "head.bias", "param_groups.1.0")
    lr = np.concatenate([c.lr for c in r.iter_chunks()])
    np.testing.assert_allclose(lr[[0, 4, 5, 10]], [0.1, 0.1, 0.05, 0.025])
    critic = open_store(store_path(str(out), 1))
    assert critic.group_names == ("score.weight", "score.bias")
    assert critic.n_steps == 12


def test_exit_code_passes_through_and_the_steps_before_a_failure_are_committed(
    tmp_path: Path, script: Path
) -> None:
    out = tmp_path / "run.zarr"
    opts = RecordOptions(out=str(out), k=8, every=2, groups="module")
    result = run_wrapped([sys.executable, str(script), "--fail-at", "7"], opts)
    assert result.exit_code == 1
    assert steps_of(out) == [0, 2, 4, 6]
    assert open_store(out).group_names == ("enc", "head", "param_groups.1")


def test_sigterm_to_record_is_forwarded_and_leaves_a_committed_store(tmp_path: Path, script: Path) -> None:
    out = tmp_path / "run.zarr"
    cmd = [sys.executable, "-m", "gradmanifold", "record", "--out", str(out), "--k", "8", "--"]
    cmd += [sys.executable, str(script), "--steps", "-1", "--sleep", "0.01"]
    err_file = tmp_path / "stderr.txt"
    with err_file.open("w") as err_out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err_out, text=True)
    wait_for_step(proc, 25, err_file)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=DEADLINE)
    err = err_file.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, err
    steps = steps_of(out)
    assert steps[:26] == list(range(26)) and steps == list(range(len(steps)))
    assert "steps committed" in err
    segment = open_store(out).manifest.segments[-1]
    assert segment.status == "interrupted"


def test_sigint_and_a_resumed_run_append_to_the_same_store(tmp_path: Path, script: Path) -> None:
    out = tmp_path / "run.zarr"
    env = child_env(RecordOptions(out=str(out), k=8))
    err_file = tmp_path / "stderr.txt"
    with err_file.open("w") as err_out:
        proc = subprocess.Popen(
            [sys.executable, str(script), "--steps", "-1", "--sleep", "0.01"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err_out,
            text=True,
        )
    wait_for_step(proc, 10, err_file)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=DEADLINE)
    # KeyboardInterrupt, as without the recorder
    assert proc.returncode == -signal.SIGINT, err_file.read_text()
    n = len(steps_of(out))
    assert n >= 11
    # a restarted job (steps counted from 0 again) rewinds the store: same store as one uninterrupted run
    cmd = [sys.executable, str(script), "--steps", "5"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=DEADLINE)
    assert steps_of(out) == list(range(5))


@pytest.mark.slow
def test_only_rank_zero_records_and_torchrun_works(tmp_path: Path, script: Path) -> None:
    out = tmp_path / "run.zarr"
    opts = RecordOptions(out=str(out), k=8)
    env = child_env(opts)
    env["RANK"] = "1"
    cmd = [sys.executable, str(script), "--steps", "3"]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=DEADLINE)
    assert not out.exists()
    torchrun = Path(sys.executable).parent / "torchrun"
    result = run_wrapped(
        [str(torchrun), "--nproc-per-node", "1", "--master-port", "0", str(script), "--steps", "6"], opts
    )
    assert result.exit_code == 0
    assert steps_of(out) == list(range(6))


def test_the_start_up_hook_imports_nothing_without_torch_and_chains_an_existing_sitecustomize(
    tmp_path: Path,
) -> None:
    other = tmp_path / "site"
    other.mkdir()
    (other / "sitecustomize.py").write_text("import builtins\nbuiltins.CHAINED = True\n")
    env = child_env(RecordOptions(out=str(tmp_path / "run.zarr")))
    env["PYTHONPATH"] += os.pathsep + str(other)
    code = "import sys, builtins; print(getattr(builtins, 'CHAINED', False), 'numpy' in sys.modules, "
    code += "'gradmanifold.record' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False", "False", "False"]
    assert env["PYTHONPATH"].split(os.pathsep)[0] == boot_dir()


def test_a_recording_error_never_stops_training(tmp_path: Path, script: Path) -> None:
    blocker = tmp_path / "not_a_store"
    blocker.mkdir()
    (blocker / "data.txt").write_text("someone else's folder")
    env = child_env(RecordOptions(out=str(blocker)))
    done = subprocess.run(
        [sys.executable, str(script), "--steps", "4"], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout.count("step") == 4
    assert "gradmanifold: recording stopped, training goes on" in done.stderr
    assert "not a gradmanifold store" in done.stderr


def test_parameter_names_follow_module_paths_and_drop_wrapper_prefixes() -> None:
    from torch import nn

    from gradmanifold.wrap.hook import name_parameters

    class DistributedDataParallel(nn.Module):  # named like the wrapper: its `module.` prefix is dropped
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    wrapped = DistributedDataParallel(net)
    other = nn.Linear(1, 1)
    loose = nn.Parameter(torch.zeros(2))
    params = [(0, i, p) for i, p in enumerate(net.parameters())] + [(1, 0, other.weight), (1, 1, loose)]
    names = [n for n, _ in name_parameters(params, [wrapped, other])]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "Linear.weight", "param_groups.1.1"]


FORKING = textwrap.dedent(
    """
    import os, sys
    import torch
    out = sys.argv[1]
    m = torch.nn.Linear(3, 2)
    o = torch.optim.SGD(m.parameters(), lr=0.1)
    def step():
        o.zero_grad(); m(torch.ones(4, 3)).sum().backward(); o.step()
    for _ in range(3):
        step()
    pid = os.fork()
    if pid == 0:  # a forked worker that exits through sys.exit (atexit runs here)
        sys.exit(0)
    os.waitpid(pid, 0)
    print("lock held after the child exited:", os.path.exists(os.path.join(out, ".gradmanifold.lock")))
    for _ in range(2):
        step()
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_commits_or_unlocks_the_parents_store(tmp_path: Path) -> None:
    out = tmp_path / "run.zarr"
    (tmp_path / "forking.py").write_text(FORKING)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "forking.py"), str(out)],
        env=child_env(RecordOptions(out=str(out), k=4)),
        capture_output=True,
        text=True,
        check=True,
    )
    assert "lock held after the child exited: True" in done.stdout, done.stderr
    assert steps_of(out) == [0, 1, 2, 3, 4]
    assert [s.status for s in open_store(out).manifest.segments] == ["closed"]
