"""Ingest: every dump format, file-name steps, stacked files, follow beside a writer, bad files by name."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from gradmanifold import Recorder
from gradmanifold.errors import InputError, UsageError
from gradmanifold.ingest import discover, follow_folder, ingest, read_dump, step_of
from gradmanifold.store import open_store
from gradmanifold.wrap.options import RecordOptions

K = 16


def grads(step: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(step)
    return {"enc.weight": rng.standard_normal((4, 3)).astype(np.float32), "head.bias": rng.standard_normal(5)}


def rows(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    r = open_store(path)
    cs = list(r.iter_chunks())
    if not cs:
        return np.zeros(0, np.int64), np.zeros((0, 0, K)), r.group_names
    return np.concatenate([c.step for c in cs]), np.concatenate([c.proj for c in cs]), r.group_names


def reference(tmp_path: Path, steps: list[int]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    path = tmp_path / "reference.zarr"
    with Recorder(path, k=K, seed=0) as rec:
        for s in steps:
            rec.record(s, grads(s))
    return rows(path)


def opts(path: Path, **kw: object) -> RecordOptions:
    return RecordOptions(out=str(path), k=K, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "step"),
    [
        ("step_000120.npy", 120),
        ("grads-7.pt", 7),
        ("00042.safetensors", 42),
        ("rank0_step12.npz", 12),
        ("epoch3.step15.final.pth", 15),
        ("nodigits.npy", None),
    ],
)
def test_step_is_the_last_number_in_the_file_name(name: str, step: int | None) -> None:
    assert step_of(name) == step


def write(folder: Path, fmt: str, step: int) -> Path:
    g = grads(step)
    path = folder / f"step_{step:05d}{fmt}"
    if fmt == ".npz":
        np.savez(path, **g)
    elif fmt in (".pt", ".pth"):
        import torch

        # nested dict: names join with dots; non-tensor entries are left out
        torch.save(
            {
                "enc": {"weight": torch.from_numpy(g["enc.weight"])},
                "head.bias": torch.from_numpy(g["head.bias"]),
                "step": step,
            },
            path,
        )
    elif fmt == ".safetensors":
        from safetensors.numpy import save_file

        save_file(g, str(path))
    return path


@pytest.mark.parametrize("fmt", [".npz", ".pt", ".pth", ".safetensors"])
def test_every_format_records_what_the_recorder_records(tmp_path: Path, fmt: str) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    steps = [0, 3, 5, 9]
    for s in steps:
        write(dumps, fmt, s)
    report = ingest(dumps, opts(tmp_path / "run.zarr"))
    assert (report.files_ingested, report.steps_recorded) == (4, 4)
    got, want = rows(tmp_path / "run.zarr"), reference(tmp_path, steps)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert got[2] == want[2] == ("enc.weight", "head.bias")


def test_npy_per_step_and_bfloat16_safetensors(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    (tmp_path / "a").mkdir()
    for s in range(3):
        np.save(tmp_path / "a" / f"g{s}.npy", grads(s)["head.bias"])
    ingest(tmp_path / "a", opts(tmp_path / "a.zarr"))
    assert rows(tmp_path / "a.zarr")[2] == ("all",)
    (tmp_path / "b").mkdir()
    for s in range(3):
        save_file({"w": torch.arange(6, dtype=torch.bfloat16) * s}, str(tmp_path / "b" / f"{s}.safetensors"))
    assert read_dump(tmp_path / "b" / "1.safetensors")["w"].dtype == torch.bfloat16
    report = ingest(tmp_path / "b", opts(tmp_path / "b.zarr"))
    assert report.steps_recorded == 3


def test_glob_and_in_progress_names(tmp_path: Path) -> None:
    for s in range(4):
        write(tmp_path, ".npz", s)
    (tmp_path / "step_00009.npz.tmp").write_bytes(b"partial")
    (tmp_path / ".step_00010.npz").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("not a dump")
    assert [d.step for d in discover(tmp_path)] == [0, 1, 2, 3]
    assert [d.step for d in discover(str(tmp_path / "step_0000[13].npz"))] == [1, 3]


def test_names_without_a_step_or_with_a_repeated_step_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "grad.npy", np.zeros(3))
    with pytest.raises(UsageError, match=r"grad\.npy: no step in the file name"):
        discover(tmp_path)
    (tmp_path / "grad.npy").unlink()
    np.save(tmp_path / "a_1.npy", np.zeros(3))
    np.save(tmp_path / "b_01.npy", np.zeros(3))
    with pytest.raises(UsageError, match="both hold step 1"):
        discover(tmp_path)


def test_stacked_files(tmp_path: Path) -> None:
    data = np.random.default_rng(0).standard_normal((12, 30)).astype(np.float32)
    np.save(tmp_path / "run.npy", data)
    assert ingest(tmp_path / "run.npy", opts(tmp_path / "a.zarr")).steps_recorded == 12
    steps, _, names = rows(tmp_path / "a.zarr")
    np.testing.assert_array_equal(steps, np.arange(12))
    np.savez(tmp_path / "run.npz", enc=data, head=data[:, :5], step=np.arange(0, 120, 10))
    ingest(tmp_path / "run.npz", opts(tmp_path / "b.zarr"))
    steps, _, names = rows(tmp_path / "b.zarr")
    np.testing.assert_array_equal(steps, np.arange(0, 120, 10))
    assert names == ("enc", "head")
    np.savez(tmp_path / "bad.npz", enc=data, head=data[:5])
    with pytest.raises(
        InputError, match=r"bad\.npz: a stacked file needs arrays of shape \[T, d\] with the same T"
    ):
        ingest(tmp_path / "bad.npz", opts(tmp_path / "c.zarr"))


@pytest.mark.parametrize("fmt", [".npy", ".npz", ".pt", ".safetensors"])
def test_a_truncated_dump_is_reported_by_name_and_earlier_steps_stay_committed(
    tmp_path: Path, fmt: str
) -> None:
    for s in range(5):
        if fmt == ".npy":
            np.save(tmp_path / f"step_{s:05d}.npy", grads(s)["enc.weight"])
        else:
            write(tmp_path, fmt, s)
    bad = tmp_path / f"step_00003{fmt}"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(InputError, match=rf"step_00003\{fmt}: cannot read this dump") as info:
        ingest(tmp_path, opts(tmp_path / "run.zarr"))
    assert "\n" not in str(info.value)
    steps, _, _ = rows(tmp_path / "run.zarr")
    np.testing.assert_array_equal(steps, [0, 1, 2])


def test_a_shape_change_names_the_file(tmp_path: Path) -> None:
    np.save(tmp_path / "s_0.npy", np.zeros(4))
    np.save(tmp_path / "s_1.npy", np.zeros(5))
    with pytest.raises(InputError, match=r"s_1\.npy: .*has 5 elements, but 4"):
        ingest(tmp_path, opts(tmp_path / "run.zarr"))
    assert rows(tmp_path / "run.zarr")[0].tolist() == [0]


def test_ingesting_again_appends_only_new_steps_and_can_delete(tmp_path: Path) -> None:
    dumps = tmp_path / "d"
    dumps.mkdir()
    for s in range(3):
        write(dumps, ".npz", s)
    ingest(dumps, opts(tmp_path / "run.zarr"))
    for s in range(3, 6):
        write(dumps, ".npz", s)
    report = ingest(dumps, opts(tmp_path / "run.zarr"), delete_ingested=True)
    assert (report.files_skipped, report.files_ingested, report.files_deleted) == (3, 3, 6)
    assert list(dumps.iterdir()) == []
    got, want = rows(tmp_path / "run.zarr"), reference(tmp_path, list(range(6)))
    np.testing.assert_array_equal(got[1], want[1])


#: seconds a test waits for a child or for the follower: only something that hung takes that long
DEADLINE = 120.0

WRITER = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    folder, n, deadline = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    for s in range(n):
        rng = np.random.default_rng(s)
        g = {"enc.weight": rng.standard_normal((4, 3)).astype(np.float32)}
        g["head.bias"] = rng.standard_normal(5)
        if s % 2:  # half written in place, in two parts (the follower must wait for the whole file)
            path = os.path.join(folder, f"step_{s:05d}.npz")
            tmp = path + ".tmp.npz"
            np.savez(tmp, **g)
            data = open(tmp, "rb").read()
            os.remove(tmp)
            half, go = os.path.join(folder, f".half_{s}"), os.path.join(folder, f".go_{s}")
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                open(half, "w").close()  # (dot files are not dumps) the first half is there
                end = time.monotonic() + deadline
                while not os.path.exists(go):  # the follower has seen the half-written file
                    if time.monotonic() > end:
                        sys.exit(f"step {s}: the follower never saw the half-written file")
                    time.sleep(0.01)
                f.write(data[len(data) // 2 :])
            os.remove(half)
            os.remove(go)
        else:  # half written to a temporary name and renamed
            tmp = os.path.join(folder, f".step_{s:05d}.npz")
            np.savez(tmp, **g)
            os.replace(tmp, os.path.join(folder, f"step_{s:05d}.npz"))
    open(os.path.join(folder, "DONE"), "w").close()
    """
)


def test_follow_ingests_a_folder_while_a_writer_runs_beside_it(tmp_path: Path) -> None:
    """The writer holds each in-place file half-written until the follower has polled it three times (it
    has then seen the file and tried to read it); nothing depends on how fast either runs."""
    folder = tmp_path / "dumps"
    folder.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), "8", str(DEADLINE)], stderr=subprocess.PIPE, text=True
    )
    polls_seen: dict[int, int] = {}

    def release_half_written_files() -> bool:  # called by the follower after each poll
        if writer.poll() not in (None, 0):
            raise AssertionError(f"the dump writer failed: {writer.communicate()[1][-2000:]}")
        for half in folder.glob(".half_*"):
            s = int(half.name.split("_")[1])
            polls_seen[s] = polls_seen.get(s, 0) + 1
            if polls_seen[s] == 3:
                (folder / f".go_{s}").touch()
        return False

    try:
        seen: list[tuple[int, int | None]] = []
        report = follow_folder(
            folder,
            opts(tmp_path / "run.zarr"),
            poll=0.05,
            idle_timeout=DEADLINE,  # a limit only a hung writer reaches
            settle=DEADLINE,  # a half-written file is never taken for a damaged one, however slow the writer
            delete_ingested=True,
            progress=lambda done, total: seen.append((done, total)),
            should_stop=release_half_written_files,
        )
    finally:
        if writer.poll() is None:
            writer.kill()
        _, err = writer.communicate(timeout=DEADLINE)
    assert writer.returncode == 0, err
    assert report.stopped == "sentinel DONE", report
    assert sorted(polls_seen) == [1, 3, 5, 7]  # each in-place file was seen half-written
    assert report.files_ingested == 8 and report.files_deleted == 8
    assert seen[-1] == (8, None)
    got, want = rows(tmp_path / "run.zarr"), reference(tmp_path, list(range(8)))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert sorted(p.name for p in folder.iterdir()) == ["DONE"]


class FakeClock:
    """Stands for the time module in gradmanifold.ingest: sleep() advances monotonic() at once. The follower's
    idle and settle rules then run on the time the follower counted, not on how fast this machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def test_follow_stops_when_idle_and_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gradmanifold.ingest as ingest_mod

    clock = FakeClock()
    monkeypatch.setattr(ingest_mod, "time", clock)
    for s in range(3):
        write(tmp_path, ".npz", s)
    took: list[float] = []
    report = follow_folder(
        tmp_path,
        opts(tmp_path / "run.zarr"),
        poll=0.05,
        idle_timeout=0.3,
        sentinel=None,
        progress=lambda done, total: took.append(clock.now),
    )
    assert report.stopped.startswith("idle") and report.files_ingested == 3
    # it stopped 0.3 s (of its clock) after the last file came in, at the first poll after that
    assert 0.3 <= clock.now - took[-1] < 0.3 + 2 * 0.05
    write(tmp_path, ".npz", 3)
    report = follow_folder(tmp_path, opts(tmp_path / "run.zarr"), poll=0.05, idle_timeout=0.3, sentinel=None)
    assert (report.files_skipped, report.files_ingested) == (3, 1)
    assert rows(tmp_path / "run.zarr")[0].tolist() == [0, 1, 2, 3]


def test_follow_reports_a_file_that_stays_damaged(tmp_path: Path) -> None:
    write(tmp_path, ".npz", 0)
    (tmp_path / "step_00001.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(InputError, match=r"step_00001\.npz: cannot read this dump"):
        follow_folder(tmp_path, opts(tmp_path / "run.zarr"), poll=0.05, settle=0.3, idle_timeout=DEADLINE)
    assert rows(tmp_path / "run.zarr")[0].tolist() == [0]
