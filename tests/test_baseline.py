"""`gradmanifold check RUN --baseline BASE.json --rtol R [--scope all]`: a run against yesterday's JSON.

Ground truth: kappa and r* do not change when every gradient is doubled (exact in floating point), so a run
checked against the baseline of its doubled copy passes at rtol 0; a baseline edited by a known factor
fails by exactly that relative change, and only where it was edited.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults.faultkit import assert_one_line_error, cli

from gradmanifold.analysis import analyze
from gradmanifold.errors import UsageError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.report.checks import against_baseline, load_baseline, parse_bounds
from gradmanifold.report.json import to_dict
from gradmanifold.store import StoreWriter

ROOT = Path(__file__).resolve().parent.parent


def _store(path: Path, scale: float = 1.0, steps: int = 120, k: int = 16) -> Path:
    rng = np.random.default_rng(0)
    mu = rng.standard_normal((3, k))
    groups = [("l0", 100), ("l1", 60), ("l2", 30)]
    with StoreWriter(path, ProjectionSpec(k=k, seed=3), groups, fsync=False) as w:
        for t in range(steps):
            p = (scale * (mu + rng.standard_normal((3, k)))).astype(np.float32)
            w.append(t, p, (p.astype(np.float64) ** 2).sum(axis=1))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("baseline")
    store, doubled = _store(root / "run.zarr"), _store(root / "doubled.zarr", scale=2.0)
    base = root / "base.json"
    r = cli("analyze", str(doubled), "--json")
    assert r.exit_code == 0, r.stderr
    base.write_text(r.stdout)
    return {"store": store, "base": base, "doc": json.loads(r.stdout), "root": root}


def _edited(run: dict[str, Any], name: str, edit: Any) -> Path:
    doc = json.loads(json.dumps(run["doc"]))
    edit(doc)
    path = run["root"] / name
    path.write_text(json.dumps(doc))
    return path


def test_same_run_holds_at_zero_tolerance(run: dict[str, Any]) -> None:
    r = cli("check", str(run["store"]), "--baseline", str(run["base"]), "--rtol", "0")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    lines = r.stdout.splitlines()
    # model scope by default: kappa of last, ema:0.9, ema:0.99, trend and r* at four eps, in that order
    want = [f"kappa.{p}" for p in ("last", "ema:0.9", "ema:0.99", "trend")]
    want += [f"rank.r_star.{e}" for e in ("0.5", "0.1", "0.05", "0.01")]
    assert [ln.split(" = ")[0] for ln in lines[:-1]] == [f"ok: model.{q}" for q in want]
    assert lines[-1] == "all 8 checks hold"
    assert "(+0.0%, rtol 0%)" in lines[0]


def test_scope_all_covers_every_layer(run: dict[str, Any]) -> None:
    r = cli("check", str(run["store"]), "--baseline", str(run["base"]), "--scope", "all")
    assert r.exit_code == 0, r.stderr
    scopes = [ln.split(": ", 1)[1].split(".", 1)[0] for ln in r.stdout.splitlines()[:-1]]
    assert scopes == ["model"] * 8 + ["l0"] * 8 + ["l1"] * 8 + ["l2"] * 8
    r = cli("check", str(run["store"]), "--baseline", str(run["base"]), "--scope", "l1, l2", "-q")
    assert (r.exit_code, r.stdout) == (0, "")


def test_a_planted_drift_fails_by_exactly_its_size(run: dict[str, Any]) -> None:
    kappa = run["doc"]["scopes"]["l1"]["kappa"]["trend"]

    def edit(doc: dict[str, Any]) -> None:
        doc["scopes"]["l1"]["kappa"]["trend"] = kappa * 1.25  # the run now looks 20% lower
        doc["scopes"]["model"]["rank"]["r_star"]["0.1"] += 1

    base = _edited(run, "drift.json", edit)
    r = cli("check", str(run["store"]), "--baseline", str(base), "--scope", "all", "--rtol", "0.15", "-q")
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[-1] == "1 of 32 checks failed"
    assert lines[0] == f"FAIL: l1.kappa.trend = {kappa:.6g}, baseline {kappa * 1.25:.6g} (-20.0%, rtol 15%)"
    # the r* moved by 1 of its value: fails only when the tolerance is below that share
    rs = run["doc"]["scopes"]["model"]["rank"]["r_star"]["0.1"]
    r = cli("check", str(run["store"]), "--baseline", str(base), "--rtol", str(0.99 / (rs + 1)), "-q")
    assert r.stdout.startswith(f"FAIL: model.rank.r_star.0.1 = {rs}, baseline {rs + 1} (")
    r = cli("check", str(run["store"]), "--baseline", str(base), "--rtol", str(1.01 / (rs + 1)), "-q")
    assert r.exit_code == 0, r.stdout
    r = cli("check", str(run["store"]), "--baseline", str(base), "--rtol", "0.25", "--scope", "l1")
    assert r.exit_code == 0 and "(-20.0%, rtol 25%)" in r.stdout  # within a wider tolerance


def test_baseline_options_are_the_analysis_defaults(run: dict[str, Any]) -> None:
    """A baseline saved with other predictors, eps and groups is met by a run analyzed the same way."""
    r = cli("analyze", str(run["store"]), "--json", "-p", "last,ema:0.5", "--eps", "0.2", "-g", "l0,l2")
    narrow = run["root"] / "narrow.json"
    narrow.write_text(r.stdout)
    r = cli("check", str(run["store"]), "--baseline", str(narrow), "--rtol", "0", "--scope", "all")
    assert r.exit_code == 0, (r.stdout, r.stderr)
    paths = [ln.split(" = ")[0].removeprefix("ok: ") for ln in r.stdout.splitlines()[:-1]]
    assert paths == [f"{s}.{q}" for s in ("model", "l0", "l2") for q in
                     ("kappa.last", "kappa.ema:0.5", "rank.r_star.0.2")]  # fmt: skip
    # asked otherwise on the command line: what the baseline has and the run lacks fails
    r = cli("check", str(run["store"]), "--baseline", str(narrow), "-p", "last", "-q")
    assert r.exit_code == 1
    assert r.stdout.splitlines()[0].startswith("FAIL: model.kappa.ema:0.5 = null (not measured), baseline")


def test_null_on_both_sides_holds_null_on_one_fails(run: dict[str, Any]) -> None:
    doc = to_dict(analyze(run["store"]))

    def nulls(d: dict[str, Any]) -> None:
        d["scopes"]["model"]["rank"]["r_star"]["0.5"] = None

    base = load_baseline(_edited(run, "null.json", nulls), rtol=0.1)
    drifts = {d.path: d for d in against_baseline(doc, base)}
    assert not drifts["model.rank.r_star.0.5"].ok  # defined now, not in the baseline
    doc["scopes"]["model"]["rank"]["r_star"]["0.5"] = None
    drifts = {d.path: d for d in against_baseline(doc, base)}
    assert drifts["model.rank.r_star.0.5"].ok  # not defined in either
    assert "= null (not measured), baseline null" in drifts["model.rank.r_star.0.5"].line()


def test_with_thresholds_together(run: dict[str, Any]) -> None:
    kappa = run["doc"]["scopes"]["model"]["kappa"]["last"]
    r = cli(
        "check", str(run["store"]), "--baseline", str(run["base"]), "--max", f"model.kappa.last={kappa / 2}"
    )
    assert r.exit_code == 1
    assert r.stdout.splitlines()[0].startswith("FAIL: model.kappa.last = ")
    assert r.stdout.splitlines()[-1] == "1 of 9 checks failed"
    with pytest.raises(UsageError, match=r"--baseline BASE\.json"):
        parse_bounds([], [])
    assert parse_bounds([], [], required=False) == []


@pytest.mark.parametrize(
    ("content", "args", "words"),
    [
        (None, ["--baseline", "{tmp}/missing.json"], "no such file"),
        (None, ["--baseline", "{tmp}"], "is a folder"),
        ("{", ["--baseline", "{f}"], "not readable JSON"),
        (b"\xff\x00", ["--baseline", "{f}"], "not readable JSON"),
        ("[]", ["--baseline", "{f}"], "not a JSON object"),
        ('{"schema": "gradmanifold.spectrum/1"}', ["--baseline", "{f}"], "is not 'gradmanifold.analysis/1'"),
        ('{"schema": "gradmanifold.analysis/2"}', ["--baseline", "{f}"], "newer than this gradmanifold"),
        ('{"schema": "gradmanifold.analysis/1", "scopes": []}', ["--baseline", "{f}"], "no scopes.model"),
        ("{base}", ["--baseline", "{f}", "--rtol", "-0.1"], "--rtol -0.1 is invalid"),
        ("{base}", ["--baseline", "{f}", "--rtol", "nan"], "is invalid"),
        ("{base}", ["--baseline", "{f}", "--rtol", "inf"], "is invalid"),
        ("{base}", ["--baseline", "{f}", "--scope", " , "], "names no scope"),
        ("{base}", ["--baseline", "{f}", "--scope", "l9"], "'l9' not in the baseline; it has: model, l0"),
        ("{base}", ["--baseline", "{f}", "--spectrum"], "does not work with --spectrum"),
        (None, ["--rtol", "0.1"], "--rtol need --baseline"),
        (None, ["--scope", "all", "--rtol", "1"], "--rtol and --scope need --baseline"),
        (None, [], "--baseline BASE.json"),
        ("{bad_config}", ["--baseline", "{f}"], "unknown predictor"),
    ],
)
def test_bad_input_is_one_line(
    run: dict[str, Any], tmp_path: Path, content: str | bytes | None, args: list[str], words: str
) -> None:
    f = tmp_path / "base.json"
    if content == "{base}":
        f.write_text(run["base"].read_text())
    elif content == "{bad_config}":
        doc = json.loads(run["base"].read_text())
        doc["config"]["predictors"] = ["zero", "bogus"]
        f.write_text(json.dumps(doc))
    elif isinstance(content, bytes):
        f.write_bytes(content)
    elif content is not None:
        f.write_text(content)
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{f}", str(f)) for a in args]
    line = assert_one_line_error(cli("check", str(run["store"]), *argv), 2)
    assert words in line, line


def test_ci_check_of_a_sample_store_against_its_golden_json() -> None:
    """The CI job's shape, as a real process: a run against the saved JSON of the same run holds."""
    cmd = [sys.executable, "-m", "gradmanifold", "check", "sample_logs/mlp_digits_adamw.zarr"]
    cmd += ["--baseline", "tests/golden/mlp_digits_adamw.json", "--rtol", "1e-6", "--scope", "all", "-q"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")


def test_the_readme_example() -> None:
    """README: the SGD+momentum run against the AdamW baseline, the failures as printed there."""
    base = str(ROOT / "tests/golden/mlp_digits_adamw.json")
    r = cli(
        "check", str(ROOT / "sample_logs/mlp_digits_sgdm.zarr"), "--baseline", base, "--rtol", "0.1", "-q"
    )
    assert r.exit_code == 1
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("--baseline baseline.json --rtol 0.1 -q\n") :].split("\n$ ", 1)[0]
    assert r.stdout.splitlines() == block.splitlines()[1:]
