"""Several stores (a sweep) and Dask: the table, gradmanifold.sweep/1, `check` on a sweep, failed runs, the
scheduling options' bad input, and two runs on real Dask clusters equal to the analysis in this process.

Tolerance of the Dask runs: 1e-12 relative on every float (test_fold.assert_same), integers (r*, steps)
identical; in this process a sweep is the same code as `analyze`, so its documents are equal exactly.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from faults.faultkit import assert_one_line_error, cli
from test_fold import assert_same

from gradmanifold.analysis import analyze
from gradmanifold.errors import UsageError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.report.json import to_dict
from gradmanifold.store import StoreWriter
from gradmanifold.store.layout import chunk_file
from gradmanifold.sweep import analyze_many


def _write(path: Path, t: int, seed: int, chunk_rows: int = 16) -> str:
    """A run of 3 groups: a mean, a random walk and noise; 4% of the rows flagged in one group."""
    rng = np.random.default_rng(seed)
    mu = 3.0 * rng.standard_normal((3, 16))
    walk = np.cumsum(0.3 * rng.standard_normal((t, 3, 16)), axis=0)
    proj = (mu + walk + rng.standard_normal((t, 3, 16))).astype(np.float32)
    groups = [("enc.w", 100), ("enc.b", 10), ("head", 50)]
    with StoreWriter(path, ProjectionSpec(k=16, seed=3), groups, chunk_rows=chunk_rows, fsync=False) as w:
        for i in range(t):
            flags = np.zeros(3, np.uint8)
            if rng.random() < 0.04:
                flags[rng.integers(3)] = 1
            w.append(10 * i, proj[i], (proj[i].astype(np.float64) ** 2).sum(axis=1), flags=flags)
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("sweep")
    out = {f"lr{i}": _write(root / f"lr{i}.zarr", 150 + 40 * i, i) for i in range(3)}
    bad = root / "bad.zarr"
    shutil.copytree(out["lr1"], bad)
    chunk_file(bad, "proj", 2).write_bytes(b"\0")  # rows 32..47 of a committed chunk: corrupt
    out["bad"] = str(bad)
    out["missing"] = str(root / "missing.zarr")
    return out


# ---------------------------------------------------------------------------------------------- here


def test_sweep_in_this_process_is_each_runs_analysis(runs: dict[str, str]) -> None:
    paths = [runs["lr0"], runs["lr1"], runs["lr2"]]
    sweep = analyze_many(paths, window=50, burn_in=3)
    assert sweep.names == ("lr0.zarr", "lr1.zarr", "lr2.zarr") and sweep.exit_code == 0
    for path, run in zip(paths, sweep.runs, strict=True):
        assert run.result is not None
        assert to_dict(run.result) == to_dict(analyze(path, window=50, burn_in=3))


def test_sweep_json(runs: dict[str, str]) -> None:
    r = cli("analyze", runs["lr0"], runs["lr2"], "--json", "--segments", "3")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "gradmanifold.sweep/1"
    assert doc["names"] == ["lr0.zarr", "lr2.zarr"]
    for path, run in zip([runs["lr0"], runs["lr2"]], doc["runs"], strict=True):
        assert run["schema"] == "gradmanifold.analysis/1"
        assert_same(json.loads(json.dumps(to_dict(analyze(path)))), run)


def test_sweep_table(runs: dict[str, str]) -> None:
    r = cli("analyze", runs["lr0"], runs["lr1"], runs["lr2"], "--predictors", "last,ema:0.9", "--eps", "0.1")
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "sweep of 3 runs"
    head = next(ln for ln in lines if ln.split()[:2] == ["run", "steps"])
    assert head.split() == ["run", "steps", "last", "ema:0.9", "best", "ema", "r*(0.1)", "k"]
    for name in ("lr0", "lr1", "lr2"):
        res = analyze(runs[name], predictors=("last", "ema:0.9"), eps=(0.1,)).model
        row = next(ln for ln in lines if ln.split()[:1] == [f"{name}.zarr"]).split()
        assert row[1] == str(res.n_steps)
        assert row[2] == f"{res.kappa['last']:.4g}" and row[3] == f"{res.kappa['ema:0.9']:.4g}"
        assert row[5] == str(res.rank.r_star["0.1"])
    assert any(ln.startswith("warning: lr0.zarr: model: ") for ln in lines)
    assert not any(": enc.w: " in ln for ln in lines)  # the groups' warnings stay with `analyze` of a run


def test_one_store_keeps_todays_output(runs: dict[str, str]) -> None:
    plain = cli("analyze", runs["lr1"], "--window", "40")
    cut = cli("analyze", runs["lr1"], "--window", "40", "--segments", "4")
    assert plain.exit_code == cut.exit_code == 0
    assert cut.stdout == plain.stdout and cut.stderr == ""
    a = json.loads(cli("analyze", runs["lr1"], "--json").stdout)
    b = json.loads(cli("analyze", runs["lr1"], "--json", "--segments", "5").stdout)
    assert a["schema"] == "gradmanifold.analysis/1"
    assert_same(a, b)


def test_a_damaged_store_fails_alone(runs: dict[str, str]) -> None:
    r = cli("analyze", runs["lr0"], runs["bad"], runs["lr2"])
    line = assert_one_line_error(r, 3)
    assert "1 of 3 runs failed: bad.zarr: " in line and "chunk 2 of 'proj'" in line
    assert "sweep of 3 runs (1 failed)" in r.stdout
    assert any(
        ln.split()[:2] == ["lr2.zarr", str(analyze(runs["lr2"]).model.n_steps)]
        for ln in r.stdout.splitlines()
    )
    j = cli("analyze", runs["lr0"], runs["bad"], runs["missing"], "--json")
    assert_one_line_error(j, 3)  # the largest exit code of the failed runs: 3 (corrupt) over 2 (missing)
    doc = json.loads(j.stdout)
    assert doc["runs"][1]["exit_code"] == 3 and doc["runs"][1]["store"]["path"] == runs["bad"]
    assert doc["runs"][2]["exit_code"] == 2 and "does not exist" in doc["runs"][2]["error"]
    assert doc["runs"][0]["schema"] == "gradmanifold.analysis/1"


def test_every_run_failing_prints_nothing(runs: dict[str, str]) -> None:
    r = cli("analyze", runs["missing"], runs["bad"])
    line = assert_one_line_error(r, 3)
    assert "2 of 2 runs failed" in line and r.stdout == ""


def test_check_on_a_sweep(runs: dict[str, str]) -> None:
    k0 = analyze(runs["lr0"]).model.kappa["last"]
    r2 = analyze(runs["lr2"]).model.rank.r_star["0.1"]
    assert r2 is not None
    ok = cli(
        "check",
        runs["lr0"],
        runs["lr2"],
        "--max",
        f"lr0.zarr.model.kappa.last={k0 * 1.01}",
        "--min",
        f"1.model.rank.r_star.0.1={r2}",
    )
    assert ok.exit_code == 0, (ok.stdout, ok.stderr)
    assert ok.stdout.splitlines()[-1] == "all 2 checks hold"
    fail = cli("check", runs["lr0"], runs["lr2"], "--max", f"0.model.kappa.last={k0 * 0.99}")
    assert fail.exit_code == 1 and fail.stdout.startswith("FAIL: 0.model.kappa.last = ")
    bad = cli(
        "check",
        runs["lr0"],
        runs["bad"],
        "--max",
        "lr0.zarr.model.kappa.last=100",
        "--max",
        "bad.zarr.model.kappa.last=1",
    )
    line = assert_one_line_error(bad, 3)
    assert "bad.zarr" in line
    assert (
        "ok: lr0.zarr.model.kappa.last" in bad.stdout
        and "FAIL: bad.zarr.model.kappa.last = null" in bad.stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["check", "{lr0}", "{lr2}", "--max", "lr9.zarr.model.kappa.last=1"],
            "start with a run's name or index",
        ),
        (["check", "{lr0}", "{lr2}", "--max", "5.model.kappa.last=1"], "start with a run's name or index"),
        (["check", "{lr0}", "{lr2}", "--spectrum", "--max", "0.x=1"], "check one store"),
        (["analyze", "{lr0}", "{lr2}", "--sort", "kappa"], "a sweep has one row per run"),
        (["analyze", "{lr0}", "--workers", "0"], "from 1 to 1024"),
        (["analyze", "{lr0}", "--workers", "-3"], "from 1 to 1024"),
        (["analyze", "{lr0}", "--workers", "2", "--scheduler", "h:1"], "not both"),
        (["analyze", "{lr0}", "--segments", "0"], "segments 0"),
        (["analyze", "{lr0}", "--connect-timeout", "1"], "give --scheduler too"),
        (["analyze", "{lr0}", "--scheduler", "h:1", "--connect-timeout", "nan"], "--connect-timeout nan"),
        (["analyze", "{lr0}", "--scheduler", "h:1", "--connect-timeout", "-2"], "--connect-timeout -2"),
        (["analyze", "{lr0}", "--scheduler", ""], "not a scheduler address"),
        (["analyze", "{lr0}", "--scheduler", "x=y"], "not a scheduler address"),
        (["analyze", "{lr0}", "--scheduler", "host:99999"], "not a scheduler address"),
        (["analyze", "{lr0}", "--scheduler", "tcp://host"], "not a scheduler address"),
        (["analyze", "{missing}", "--workers", "2"], "does not exist"),  # fails before a cluster starts
    ],
)
def test_bad_input_is_one_line_exit_2(runs: dict[str, str], args: list[str], message: str) -> None:
    t0 = time.monotonic()
    r = cli(*[a.format(**runs) for a in args])
    assert message in assert_one_line_error(r, 2)
    assert time.monotonic() - t0 < 5.0


def test_unreachable_scheduler(runs: dict[str, str]) -> None:
    """A closed port, and a port that accepts and never answers (a Client alone would wait forever)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    try:
        for port in (closed_port, silent.getsockname()[1]):
            t0 = time.monotonic()
            r = cli("analyze", runs["lr0"], "--scheduler", f"127.0.0.1:{port}", "--connect-timeout", "0.5")
            line = assert_one_line_error(r, 2)
            assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port} within 0.5 s" in line
            assert time.monotonic() - t0 < 5.0
    finally:
        silent.close()


def test_dask_is_needed_for_workers(monkeypatch: pytest.MonkeyPatch, runs: dict[str, str]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(UsageError, match=r"gradmanifold\[dask\]"):
        analyze_many([runs["lr0"]], processes=2)
    with pytest.raises(UsageError, match="by path or URL"):
        analyze_many([np.zeros((10, 4), np.float32)], scheduler="h:1")  # checked before any connection


# ---------------------------------------------------------------------------------------------- Dask


def test_local_cluster_of_two_worker_processes(runs: dict[str, str]) -> None:
    """`--workers 2`: tasks over store x time segment x scope part on two processes; with a damaged store
    the others are analyzed and the exit code is 3."""
    opts = ["--segments", "3", "--window", "40", "--burn-in", "5", "--ema-grid", "0.5,0.9,0.999"]
    r = cli("analyze", runs["lr0"], runs["bad"], runs["lr2"], "--workers", "2", "--json", *opts)
    assert "bad.zarr: " in assert_one_line_error(r, 3)
    doc = json.loads(r.stdout)
    assert "chunk 2 of 'proj'" in doc["runs"][1]["error"]
    for name, run in (("lr0", doc["runs"][0]), ("lr2", doc["runs"][2])):
        want = to_dict(analyze(runs[name], window=40, burn_in=5, ema_grid=(0.5, 0.9, 0.999)))
        assert_same(json.loads(json.dumps(want)), run)


def test_existing_scheduler(runs: dict[str, str]) -> None:
    """`--scheduler ADDRESS` of a running cluster (workers in threads here: cheap to start); one store prints
    what `analyze` prints."""
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, protocol="tcp", dashboard_address=None
        )
    try:
        got = cli(
            "analyze", runs["lr1"], "--scheduler", cluster.scheduler_address, "--segments", "2", "--json"
        )
        assert got.exit_code == 0 and got.stderr == "", got.stderr
        assert_same(json.loads(cli("analyze", runs["lr1"], "--json").stdout), json.loads(got.stdout))
        sweep = analyze_many([runs["lr0"], runs["lr2"]], scheduler=cluster.scheduler_address, parts=2)
        for path, run in zip([runs["lr0"], runs["lr2"]], sweep.runs, strict=True):
            assert run.result is not None
            assert_same(to_dict(analyze(path)), to_dict(run.result))
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster.close()


def test_a_scheduler_without_workers(runs: dict[str, str]) -> None:
    """Tasks sent to a scheduler that has no workers would wait for ever: a one-line error instead."""
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=0, processes=False, protocol="tcp", dashboard_address=None
        )
    try:
        t0 = time.monotonic()
        r = cli("analyze", runs["lr0"], "--scheduler", cluster.scheduler_address, "--connect-timeout", "0.5")
        assert "has no workers (none joined within 0.5 s)" in assert_one_line_error(r, 2)
        assert time.monotonic() - t0 < 5.0
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cluster.close()
