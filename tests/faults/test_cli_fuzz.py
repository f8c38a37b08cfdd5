"""Fault: arbitrary command lines (hypothesis over argument lists, in-process).

Required: never a traceback, never an internal error (exit 70); exit codes as documented: 0 ok, 1 check
failed, 2 usage or input error, 3 corrupt store. Commands and options are read from the app itself, so new
commands are fuzzed as they land.
"""

from __future__ import annotations

import functools
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
# Commands that never write (the read-only store tests prove it); after any other run, the places are checked.
READ_ONLY = {"verify", "info", "analyze", "check", "spectrum"}
# Options that would make a fuzzed run wait (follow a folder) or run another program are left out.
# Cluster options start a Dask cluster or dial an address (seconds each): tests/test_sweep.py covers their bad
# input (an unreachable scheduler, a malformed address, --workers 0) directly.
UNSAFE = {
    "--follow",
    "--poll",
    "--idle-timeout",
    "--sentinel",
    "--delete-ingested",
    "--workers",
    "--scheduler",
    "--connect-timeout",
}


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
            kind = "flag" if getattr(p, "is_flag", False) else _kind(p)
            for o in p.opts:
                opts[o] = (kind, bool(getattr(p, "multiple", False)))
        out[name] = opts
    return out


def _kind(p: Any) -> str:
    """The kind of value an option takes, from its annotation (typer may give the type or its name)."""
    t = getattr(getattr(p, "type_descriptor", None), "annotation", None)
    if t is None and hasattr(p, "bare_type"):
        t = p.bare_type()
    if t is None:  # typer < 0.29: the click parameter type
        t = {"integer": "int", "float": "float", "path": "Path"}.get(getattr(p.type, "name", ""), "str")
    name = t if isinstance(t, str) else getattr(t, "__name__", "")
    if t is int or name == "int":
        return "int"
    if t is float or name == "float":
        return "float"
    if (isinstance(t, type) and issubclass(t, os.PathLike)) or name in ("Path", "PosixPath"):
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
    """Paths the fuzz points commands at, built once: a sound store, a damaged one, a missing path, a file,
    an empty folder, a new path. A run that changed them (repair, record, a backup folder) is undone after it
    from a pristine copy, so that every example meets the same places."""
    root = tmp_path_factory.mktemp("cli")
    good = root / "good.zarr"
    write(good, list(range(12)), fsync=False)
    bad = root / "bad.zarr"
    shutil.copytree(good, bad)
    chunk_file(bad, "proj", 1).write_bytes(b"\0")
    (root / "file.txt").write_text("x")
    (root / "empty").mkdir()
    _SIGNATURE[str(root)] = _signature(root)
    shutil.copytree(root, root.with_name(root.name + "-pristine"))
    return {
        "good": str(good),
        "bad": str(bad),
        "missing": str(root / "missing.zarr"),
        "file": str(root / "file.txt"),
        "empty": str(root / "empty"),
        "new": str(root / "new" / "out.zarr"),
    }


def _signature(root: Path) -> list[tuple[str, int, int]]:
    """Every file under root with its size and modification time, and every folder."""
    out = []
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            out.append((os.path.join(folder, d), -1, 0))
        for f in files:
            st_ = os.lstat(os.path.join(folder, f))
            out.append((os.path.join(folder, f), st_.st_size, st_.st_mtime_ns))
    return sorted(out)


_SIGNATURE: dict[str, list[tuple[str, int, int]]] = {}  # root of the places -> its signature as built


def _restore(places: dict[str, str]) -> None:
    """Put the places back as built when a run changed them (`record`, `repair`, a backup folder, ...)."""
    root = Path(places["good"]).parent
    if _signature(root) != _SIGNATURE[str(root)]:
        shutil.rmtree(root)
        shutil.copytree(root.with_name(root.name + "-pristine"), root)


@functools.cache
def _strategies(paths: tuple[str, ...]) -> dict[str, Any]:
    """The strategies argv draws from, built once: building them for each example costs more than drawing."""
    noise = st.one_of(
        st.sampled_from(OPTIONS), st.sampled_from(VALUES), st.sampled_from(paths), st.text(max_size=12)
    )
    values = {
        opt: st.sampled_from(
            {"int": INTS, "float": FLOATS, "path": paths}.get(kind) or WORDS.get(opt, VALUES)
        )
        for options in COMMANDS.values()
        for opt, (kind, _) in options.items()
        if kind != "flag"
    }
    return {
        "noise": noise,
        "anything": st.lists(noise, min_size=1, max_size=6),
        "head": st.sampled_from(sorted(COMMANDS)),
        "path": st.sampled_from(paths),
        "steps": st.sampled_from(["3", "6", "0", "-2"]),
        "options": {c: st.sampled_from(sorted(o)) for c, o in COMMANDS.items() if o},
        "values": values,
        "odd values": {opt: st.one_of(v, noise) for opt, v in values.items()},
    }


@st.composite
def argv(draw: st.DrawFn, places: dict[str, str]) -> list[str]:
    paths = tuple(sorted(places.values()))
    s = _strategies(paths)
    if draw(st.integers(0, 3)) == 0:  # anything at all
        return draw(s["anything"])
    head = draw(s["head"])
    if head == "record":
        rest = ["--out", draw(st.sampled_from([places["new"], *paths])), "--synthetic", "white-noise"]
        rest += ["--steps", draw(s["steps"]), "--dim", "16", "--k", "8"]
    else:
        rest = [draw(s["path"])]
    options = COMMANDS[head]
    for _ in range(draw(st.integers(0, 4))):
        if not options:
            break
        opt = draw(s["options"][head])
        kind, _multiple = options[opt]
        rest.append(opt)
        if kind == "flag":
            continue
        rest.append(draw(s["odd values"][opt] if draw(st.integers(0, 5)) == 0 else s["values"][opt]))
    if draw(st.integers(0, 5)) == 0:
        rest.insert(draw(st.integers(0, len(rest))), draw(s["noise"]))
    return [head, *rest]


@settings(
    max_examples=examples(2.5), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_command_lines(
    places: dict[str, str], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    _run(data.draw(argv(places)), places, tmp_path_factory.getbasetemp())


#: argument lists of the slow run (one takes a few milliseconds in-process: see faultkit.cli)
MANY = 10_000


@pytest.mark.slow
@settings(max_examples=MANY, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
        if not args or args[0] not in READ_ONLY:
            _restore(places)
    text = res.stdout + res.stderr
    assert res.exit_code in DOCUMENTED, (args, res.exit_code, text[-2000:], res.exception)
    assert "Traceback" not in text, (args, text[-2000:])
    assert "internal error" not in text, (args, text[-2000:])
    assert res.exception is None or isinstance(res.exception, SystemExit), (args, repr(res.exception))
    # The message: one `gradmanifold: error:` line for every error a command reports; an error found by
    # the option parser (unknown option, missing or malformed value) is click's usage block naming it.
    err = [line for line in res.stderr.splitlines() if line.strip()]
    if any(line.startswith("gradmanifold: error: ") for line in err):
        assert len(err) == 1 and res.exit_code != 0, (args, res.exit_code, err)
    elif err and err[0].startswith("Usage: "):
        assert res.exit_code == 2 and any("Error" in line for line in err), (args, res.exit_code, err)


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
    assert {"verify", "repair", "info", "analyze", "check", "record", "export"} <= set(COMMANDS)


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
