"""`gradmanifold export --tensorboard`: event files TensorBoard itself reads back to the analysis's numbers.

TensorBoard stores `simple_value` as float32: every value read back equals the analysis's float64 value
rounded to float32 (r* are small integers, exact).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradmanifold.analysis import analyze
from gradmanifold.export import (
    DEFAULT_WINDOWS,
    EXPORT_SCHEMA,
    event_file_name,
    export_tensorboard,
    window_scalars,
    write_tensorboard,
)
from gradmanifold.report.model import AnalysisResult, WindowScope
from gradmanifold.tfevents import FILE_VERSION, crc32c, event, masked_crc32c, record, varint

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
from faultkit import assert_one_line_error, cli, write

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_logs" / "mlp_digits_adamw.zarr"
DOCS = (ROOT / "docs" / "JSON.md").read_text()
WALL = 1_700_000_000.25


def _read(folder: Path) -> Any:
    """TensorBoard's own reader over the folder, every scalar kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def _expected(result: AnalysisResult) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value as float32)] straight from the analysis result's windows."""
    out: dict[str, list[tuple[int, float]]] = {}
    for w in result.windows:
        for scope, ws in w.scopes.items():
            for pid, k in ws.kappa.items():
                if pid != "zero" and k is not None:
                    out.setdefault(f"kappa/{scope}/{pid}", []).append((w.end_step, float(np.float32(k))))
            for eps, r in ws.r_star.items():
                if r is not None:
                    out.setdefault(f"r_star/{scope}/{eps}", []).append((w.end_step, float(r)))
    return out


@pytest.fixture(scope="module")
def sample_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, AnalysisResult]:
    folder = tmp_path_factory.mktemp("tb") / "adamw"
    res = export_tensorboard(SAMPLE, folder, window=100, wall_time=WALL, host="testhost")
    return folder, res, analyze(SAMPLE, window=100)


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A small store: groups a (100) and b (7), k = 8, steps 0..11."""
    path = tmp_path / "run.zarr"
    write(path, list(range(12)), fsync=False)
    return path


# ------------------------------------------------------------------------------- what TensorBoard reads


def test_tensorboard_reads_the_analysis_numbers(sample_export: tuple[Path, Any, AnalysisResult]) -> None:
    folder, res, result = sample_export
    acc = _read(folder)
    want = _expected(result)
    assert set(acc.Tags()["scalars"]) == set(want) == set(res.tags)
    assert len(want) == 4 * (4 + 4)  # model, fc1, fc2, out x (last, ema:0.9, ema:0.99, trend + 4 eps)
    assert "kappa/model/ema:0.9" in want and "r_star/fc1/0.05" in want
    assert not any(t.endswith("/zero") for t in want)
    steps = [w.end_step for w in result.windows]
    assert steps == [99, 199, 299, 399, 499, 599, 699, 799]
    for tag, points in want.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert got == points, tag
        assert all(e.wall_time == WALL for e in acc.Scalars(tag))
    assert res.n_scalars == sum(len(p) for p in want.values()) == 8 * 32
    assert (res.first_step, res.last_step, res.n_windows, res.n_undefined) == (99, 799, 8, 0)
    assert acc.file_version == 2.0


def test_the_file_is_named_and_sized_as_reported(sample_export: tuple[Path, Any, AnalysisResult]) -> None:
    folder, res, _ = sample_export
    files = sorted(folder.iterdir())
    assert [p.name for p in files] == [f"events.out.tfevents.{int(WALL):010d}.testhost.gradmanifold"]
    assert res.file == str(files[0]) and res.size_bytes == files[0].stat().st_size
    assert res.store == str(SAMPLE) and res.scopes == ("model", "fc1", "fc2", "out")


def test_same_input_and_time_give_the_same_bytes(store: Path, tmp_path: Path) -> None:
    a = export_tensorboard(store, tmp_path / "a", window=4, wall_time=WALL, host="h")
    b = export_tensorboard(store, tmp_path / "b", window=4, wall_time=WALL, host="h")
    c = export_tensorboard(store, tmp_path / "c", window=4, wall_time=WALL + 3600, host="h")
    assert Path(a.file).name == Path(b.file).name != Path(c.file).name
    assert Path(a.file).read_bytes() == Path(b.file).read_bytes()
    # another time: other bytes (the time and the checksums over it), the same scalars
    assert Path(c.file).read_bytes() != Path(a.file).read_bytes() and c.size_bytes == a.size_bytes
    acc_a, acc_c = _read(tmp_path / "a"), _read(tmp_path / "c")
    for tag in a.tags:
        assert [(e.step, e.value) for e in acc_a.Scalars(tag)] == [
            (e.step, e.value) for e in acc_c.Scalars(tag)
        ]


def test_scopes_predictors_and_eps_as_the_analysis_names_them(store: Path, tmp_path: Path) -> None:
    res = export_tensorboard(
        store, tmp_path / "tb", window=5, predictors=("last", "ema:0.90"), eps=(0.05,), wall_time=WALL
    )
    assert set(res.tags) == {
        f"{what}/{scope}/{key}"
        for scope in ("model", "a", "b")
        for what, key in (("kappa", "last"), ("kappa", "ema:0.9"), ("r_star", "0.05"))
    }
    # steps 0..11 in windows of 5: the windows end at steps 4, 9 and 11
    acc = _read(tmp_path / "tb")
    assert [e.step for e in acc.Scalars("kappa/b/last")] == [4, 9, 11]
    assert (res.first_step, res.last_step) == (4, 11)


def test_one_group_is_named_twice(store: Path, tmp_path: Path) -> None:
    """One group selected: the analysis names its scope twice (the model and the group); so do the tags."""
    res = export_tensorboard(
        store, tmp_path / "tb", window=6, groups=("b",), predictors=("last",), eps=(0.5,)
    )
    assert res.scopes == ("model", "b")
    assert set(res.tags) == {"kappa/model/last", "kappa/b/last", "r_star/model/0.5", "r_star/b/0.5"}


def test_without_a_window_the_run_is_cut_into_twenty(sample_export: tuple[Path, Any, AnalysisResult]) -> None:
    folder = sample_export[0].parent / "default"
    res = export_tensorboard(SAMPLE, folder, predictors=("last",), eps=(0.1,), wall_time=WALL)
    assert res.window == math.ceil(800 / DEFAULT_WINDOWS) == 40 and res.window_default
    assert res.n_windows == DEFAULT_WINDOWS and res.last_step == 799 and res.first_step == 39
    assert any("no --window given" in n for n in res.notes)


def test_undefined_values_are_left_out(store: Path, tmp_path: Path) -> None:
    result = analyze(store, window=4, predictors=("last",), eps=(0.1,))
    w = result.windows[1]
    hole = WindowScope(n_steps=0, kappa={"zero": None, "last": None}, r_star={"0.1": None})
    windows = (result.windows[0], dataclasses.replace(w, scopes={**w.scopes, "a": hole}), *result.windows[2:])
    res = write_tensorboard(dataclasses.replace(result, windows=windows), tmp_path / "tb", wall_time=WALL)
    assert res.n_undefined == 2 and any("undefined" in n for n in res.notes)
    acc = _read(tmp_path / "tb")
    assert [e.step for e in acc.Scalars("kappa/a/last")] == [3, 11]
    assert [e.step for e in acc.Scalars("kappa/b/last")] == [3, 7, 11]
    scalars, undefined = window_scalars(dataclasses.replace(result, windows=windows))
    assert undefined == 2 and sum(len(v) for _, v in scalars) == res.n_scalars == 3 * 3 * 2 - 2


def test_a_second_export_in_one_folder_is_noted(store: Path, tmp_path: Path) -> None:
    first = export_tensorboard(store, tmp_path / "tb", window=4, wall_time=WALL)
    again = export_tensorboard(store, tmp_path / "tb", window=4, wall_time=WALL)
    assert again.file == first.file and any(n.startswith("replaced") for n in again.notes)
    other = export_tensorboard(store, tmp_path / "tb", window=4, wall_time=WALL + 10)
    assert any("1 other event file" in n for n in other.notes)
    assert len([p for p in (tmp_path / "tb").iterdir()]) == 2  # no temporary file left


def test_host_names_are_kept_to_safe_characters() -> None:
    assert event_file_name(5.9, "a b/c") == "events.out.tfevents.0000000005.a_b_c.gradmanifold"
    assert event_file_name(0, "..") == "events.out.tfevents.0000000000.localhost.gradmanifold"


# ------------------------------------------------------------------------------- the encoding


@given(st.binary(max_size=300), st.binary(max_size=40))
def test_crc32c_equals_google_crc32c(data: bytes, more: bytes) -> None:
    import google_crc32c

    assert crc32c(data) == google_crc32c.value(data)
    assert crc32c(more, crc32c(data)) == google_crc32c.value(data + more)


def test_crc32c_check_value_and_tensorboards_mask() -> None:
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tb_masked

    assert crc32c(b"123456789") == 0xE3069283  # the published check value of CRC-32C
    for data in (b"", b"\x00" * 8, b"brain.Event:2", bytes(range(256))):
        assert masked_crc32c(data) == tb_masked(data)
    framed = record(b"abc")
    assert framed[:8] == struct.pack("<Q", 3) and framed[12:15] == b"abc" and len(framed) == 19


@given(
    st.floats(min_value=0, max_value=4e9),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.lists(st.tuples(st.text(min_size=1, max_size=20), st.floats(allow_nan=False, width=64)), max_size=5),
)
def test_events_parse_as_tensorboards_protobuf(
    wall: float, step: int, values: list[tuple[str, float]]
) -> None:
    from tensorboard.compat.proto import event_pb2

    ev = event_pb2.Event.FromString(event(wall, step, values=values))
    assert ev.wall_time == wall and ev.step == step and ev.file_version == ""
    assert [v.tag for v in ev.summary.value] == [t for t, _ in values]
    with np.errstate(over="ignore"):  # float32 rounds to nearest; beyond its range, an infinity
        want = [float(np.float32(x)) for _, x in values]
    assert [v.simple_value for v in ev.summary.value] == want
    head = event_pb2.Event.FromString(event(wall, file_version=FILE_VERSION))
    assert head.file_version == "brain.Event:2" and not head.HasField("summary")


def test_varint() -> None:
    assert varint(0) == b"\x00" and varint(300) == b"\xac\x02"
    assert varint(-1) == b"\xff" * 9 + b"\x01"


# ------------------------------------------------------------------------------- the command


def test_cli_prints_what_it_wrote(store: Path, tmp_path: Path) -> None:
    res = cli("export", str(store), "--tensorboard", str(tmp_path / "tb"), "-w", "4", "--wall-time", "1e9")
    assert res.exit_code == 0, res.stderr
    name = tmp_path / "tb" / event_file_name(1e9)
    assert name.is_file()
    lines = res.stdout.splitlines()
    assert lines[0] == f"wrote {name} ({name.stat().st_size:,} bytes)"
    assert "72 scalars under 24 tags (12 kappa, 12 r*) for 3 scope(s): model, a, b" in lines[1]
    assert "3 window(s) of 4 steps, at steps 3..11" in lines[2]
    assert lines[-1] == f"view: tensorboard --logdir {tmp_path / 'tb'}"


def test_cli_json(store: Path, tmp_path: Path) -> None:
    res = cli("export", str(store), "--tensorboard", str(tmp_path / "tb"), "--window", "6", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema"] == EXPORT_SCHEMA == "gradmanifold.export/1"
    assert doc["n_windows"] == 2 and doc["window"] == 6 and doc["window_default"] is False
    assert doc["n_scalars"] == 2 * 3 * 8 and len(doc["tags"]) == 24 and Path(doc["file"]).is_file()
    section = DOCS[DOCS.index(f"schema `{EXPORT_SCHEMA}`") :]
    section = section[: section.find("\n## ")]
    assert not [k for k in doc if f"`{k}`" not in section], "docs/JSON.md does not describe every key"


def test_fuzz_and_help_know_the_command() -> None:
    res = cli("--help")
    assert res.exit_code == 0 and "export" in res.stdout
    from test_cli_fuzz import COMMANDS

    assert {"--tensorboard", "--window", "--wall-time", "--json"} <= set(COMMANDS["export"])


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing store", "does not exist"),
        ("not a store", "not a gradmanifold store"),
        ("dir is a file", "is a file; give a folder"),
        ("dir below a file", "is a file, not a folder"),
        ("dir is the store", "is a gradmanifold store; give a folder outside it"),
        ("window too short", "window 1 is too short"),
        ("wall time nan", "must be a finite number"),
        ("wall time negative", "is negative"),
        ("unknown group", "unknown group"),
        ("empty dir name", "needs a folder"),
    ],
)
def test_bad_input_is_one_line(store: Path, tmp_path: Path, case: str, message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    out, src, extra = str(tmp_path / "tb"), str(store), []
    if case == "missing store":
        src = str(tmp_path / "missing.zarr")
    elif case == "not a store":
        src = str(tmp_path / "empty")
    elif case == "dir is a file":
        out = str(tmp_path / "file.txt")
    elif case == "dir below a file":
        out = str(tmp_path / "file.txt" / "tb")
    elif case == "dir is the store":
        out = str(store)
    elif case == "window too short":
        extra = ["--window", "1"]
    elif case == "wall time nan":
        extra = ["--wall-time", "nan"]
    elif case == "wall time negative":
        extra = ["--wall-time", "-1"]
    elif case == "unknown group":
        extra = ["--groups", "zz"]
    elif case == "empty dir name":
        out = " "
    before = sorted(os.listdir(tmp_path))
    line = assert_one_line_error(cli("export", src, "--tensorboard", out, *extra), 2)
    assert message in line, line
    assert sorted(os.listdir(tmp_path)) == before  # nothing written, no folder created
    assert not [p for p in store.iterdir() if "tfevents" in p.name or p.name.startswith(".gradmanifold")]


def test_options_the_parser_rejects(store: Path, tmp_path: Path) -> None:
    for args in (["--window", "x"], ["--wall-time", "soon"], []):
        tb = [] if not args else ["--tensorboard", str(tmp_path / "tb")]
        res = cli("export", str(store), *tb, *args)
        assert res.exit_code == 2 and "Traceback" not in res.stdout + res.stderr, (args, res.stderr)
        assert "Usage:" in res.stderr
    assert not (tmp_path / "tb").exists()


def test_a_folder_that_cannot_be_written(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gradmanifold.export.os.access", lambda path, mode: False)
    line = assert_one_line_error(cli("export", str(store), "--tensorboard", str(tmp_path / "tb")), 2)
    assert "is not writable" in line and str(tmp_path) in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes read-only folders")
def test_a_read_only_folder(store: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        line = assert_one_line_error(cli("export", str(store), "--tensorboard", str(ro / "tb")), 2)
    finally:
        ro.chmod(0o700)
    assert "is not writable" in line


def test_a_failed_write_leaves_no_file(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(src: Any, dst: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gradmanifold.export.os.replace", full)
    line = assert_one_line_error(cli("export", str(store), "--tensorboard", str(tmp_path / "tb")), 2)
    assert "cannot write" in line and "No space left on device" in line
    assert list((tmp_path / "tb").iterdir()) == []


def test_an_analysis_without_windows_is_refused(store: Path, tmp_path: Path) -> None:
    from gradmanifold.errors import UsageError

    with pytest.raises(UsageError, match="no windows"):
        write_tensorboard(analyze(store), tmp_path / "tb")
    with pytest.raises(UsageError, match="whole number"):
        export_tensorboard(store, tmp_path / "tb", window=2.5)  # type: ignore[arg-type]
    assert not (tmp_path / "tb").exists()
