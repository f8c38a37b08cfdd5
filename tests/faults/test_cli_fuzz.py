"""Fault: arbitrary command lines (hypothesis over argument lists, in-process).

Required: never a traceback, never an internal error (exit 70); exit codes as documented: 0 ok, 1 check
failed, 2 usage or input error, 3 corrupt store. Commands and options are read from the app itself, so new
commands are fuzzed as they land.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
from faultkit import cli, examples, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradmanifold.store.layout import chunk_file

DOCUMENTED = {0, 1, 2, 3}
# Options that would make a fuzzed run wait (follow a folder) or run another program are left out.
UNSAFE = {"--follow", "--poll", "--idle-timeout", "--sentinel", "--delete-ingested"}


def _commands() -> dict[str, dict[str, tuple[str, bool]]]:
    """command -> option -> (value kind: int, float, path, str or flag; repeatable)."""
    from typer.main import get_command

    from gradmanifold.cli import app

    group: Any = get_command(app)
    out: dict[str, dict[str, tuple[str, bool]]] = {}
    for name, cmd in group.commands.items():
        opts: dict[str, tuple[str, bool]] = {}
        for p in cmd.params:
            if not getattr(p, "opts", None) or not p.opts[0].startswith("-") or p.opts[0] in UNSAFE:
                continue
            kind = "flag" if getattr(p, "is_flag", False) else _kind(p.bare_type())
            for o in p.opts:
                opts[o] = (kind, bool(getattr(p, "multiple", False)))
        out[name] = opts
    return out


def _kind(t: Any) -> str:
    if t is int:
        return "int"
    if t is float:
        return "float"
    if isinstance(t, type) and issubclass(t, os.PathLike):
        return "path"
    return "str"


COMMANDS = _commands()
OPTIONS = sorted({o for opts in COMMANDS.values() for o in opts})
INTS = ["0", "1", "2", "3", "5", "8", "-1", "x"]
FLOATS = ["0.5", "0.1", "2", "0", "-1", "nan", "inf", "1e309"]
# Values that mean something to some option (predictors, eps, thresholds, synthetic tasks, ...)
WORDS = {
    "--predictors": ["last", "zero,trend", "ema:0.9", "ema:0.5,last", "ema:2", "bogus", ""],
    "-p": ["last", "trend", "ema:0.99"],
    "--ema-grid": ["0.9", "0.5,0.99", "1.5", "x"],
    "--eps": ["0.1", "0.05,0.5", "0", "2", "x"],
    "--svd": ["exact", "randomized", "auto", "svd"],
    "--groups": ["a", "b", "a,b", "zz", "auto", "single", "tensor", "module", "x=w*", "model"],
    "-g": ["a", "b", "a,b", "zz"],
    "--max": ["model.kappa.last=2", "model.rank.r_star.0.1=4", "a.kappa.zero=1", "model.kappa.last=nan", "="],
    "--min": ["model.kappa.last=0.1", "b.kappa.trend=100", "model.kappa=1"],
    "--kind": ["sparse", "gaussian", "dense"],
    "--resume": ["allow", "must", "never", "maybe"],
    "--synthetic": ["white-noise", "random-walk", "lowrank-drift", "noisy-quadratic", "lqr", "nope"],
    "--param": ["q=0.8", "q=2", "x=1", "q=abc", "="],
}  # fmt: skip
VALUES = [
    "0", "1", "-1", "0.5", "nan", "", " ", "=", "x=y", "\u00e9\u00e8", "\U0001f600", "-", "-x",
    "--nope", "%s", "{}", "[]", "a" * 300,
]  # fmt: skip


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    good = root / "good.zarr"
    write(good, list(range(12)), fsync=False)
    bad = root / "bad.zarr"
    shutil.copytree(good, bad)
    chunk_file(bad, "proj", 1).write_bytes(b"\0")
    (root / "file.txt").write_text("x")
    (root / "empty").mkdir()
    return {
        "good": str(good),
        "bad": str(bad),
        "missing": str(root / "missing.zarr"),
        "file": str(root / "file.txt"),
        "empty": str(root / "empty"),
        "new": str(root / "new" / "out.zarr"),
    }


@st.composite
def argv(draw: st.DrawFn, places: dict[str, str]) -> list[str]:
    paths = sorted(places.values())
    noise = st.one_of(
        st.sampled_from(OPTIONS), st.sampled_from(VALUES), st.sampled_from(paths), st.text(max_size=12)
    )
    if draw(st.integers(0, 3)) == 0:  # anything at all
        return draw(st.lists(noise, min_size=1, max_size=6))
    head = draw(st.sampled_from(sorted(COMMANDS)))
    if head == "record":
        rest = ["--out", draw(st.sampled_from([places["new"], *paths])), "--synthetic", "white-noise"]
        rest += ["--steps", draw(st.sampled_from(["3", "6", "0", "-2"])), "--dim", "16", "--k", "8"]
    else:
        rest = [draw(st.sampled_from(paths))]
    options = COMMANDS[head]
    for _ in range(draw(st.integers(0, 4))):
        if not options:
            break
        opt = draw(st.sampled_from(sorted(options)))
        kind, _multiple = options[opt]
        rest.append(opt)
        if kind == "flag":
            continue
        values = {"int": INTS, "float": FLOATS, "path": paths}.get(kind) or WORDS.get(opt, VALUES)
        rest.append(
            draw(
                st.one_of(st.sampled_from(values), noise)
                if draw(st.integers(0, 5)) == 0
                else st.sampled_from(values)
            )
        )
    if draw(st.integers(0, 5)) == 0:
        rest.insert(draw(st.integers(0, len(rest))), draw(noise))
    return [head, *rest]


@settings(
    max_examples=examples(2.5), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_command_lines(
    places: dict[str, str], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    _run(data.draw(argv(places)), places, tmp_path_factory.getbasetemp())


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_command_lines_many(
    places: dict[str, str], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    _run(data.draw(argv(places)), places, tmp_path_factory.getbasetemp())


def _run(args: list[str], places: dict[str, str], where: Path) -> None:
    if "--" in args:
        args = args[: args.index("--")]  # a wrapped command would run a program
    cwd = os.getcwd()
    os.chdir(where)
    try:
        with warnings.catch_warnings():
            # as a user runs it: a notice such as "rewinding" (recording into an existing store) is a
            # warning, not the error the test suite's warnings-as-errors would make of it
            warnings.simplefilter("ignore")
            res = cli(*args)
    finally:
        os.chdir(cwd)
        shutil.rmtree(Path(places["new"]).parent, ignore_errors=True)
    text = res.stdout + res.stderr
    assert res.exit_code in DOCUMENTED, (args, res.exit_code, text[-2000:], res.exception)
    assert "Traceback" not in text, (args, text[-2000:])
    assert "internal error" not in text, (args, text[-2000:])
    assert res.exception is None or isinstance(res.exception, SystemExit), (args, repr(res.exception))


def test_overlong_path_name(tmp_path: Path) -> None:
    """Found by this fuzz: a path component over the file system's limit was an internal error."""
    long = str(tmp_path / ("a" * 300))
    for args in (
        ["verify", long],
        ["repair", long],
        ["info", long],
        ["record", "--out", long, "--synthetic", "white-noise", "--steps", "3", "--dim", "8", "--k", "8"],
    ):
        res = cli(*args)
        assert res.exit_code == 2 and "File name too long" in res.stderr, (args, res.stderr)


def test_every_command_is_fuzzed() -> None:
    assert {"verify", "repair", "info", "analyze", "check", "record"} <= set(COMMANDS)


def test_wrapped_program_that_does_not_exist(tmp_path: Path) -> None:
    res = cli("record", "--out", str(tmp_path / "r.zarr"), "--", str(tmp_path / "no-such-program"))
    assert res.exit_code in (2, 127), (res.exit_code, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr and "internal error" not in res.stderr


@pytest.mark.parametrize(
    "command",
    ["verify", "repair", "info", "analyze"],
)
def test_store_path_with_bytes_that_are_not_utf8(tmp_path: Path, command: str) -> None:
    """A file name with a byte that is not UTF-8 (Python decodes it to a lone surrogate, as in argv)."""
    path = tmp_path / "run\udcff.zarr"
    write(path, list(range(6)), fsync=False)
    res = cli(command, str(path))
    assert res.exit_code == 0, res.stderr
    assert "internal error" not in res.stderr
