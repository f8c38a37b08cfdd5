"""`gradmanifold compare A B` and report/compare.py: two runs side by side.

Ground truth: kappa and r* are invariant under scaling every gradient by 2 (exact in floating point: a power
of two), so a run compared with its scaled copy moves by exactly 0; a run compared with a different one
shows the differences and relative changes computed here independently from the two analyses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from faults.faultkit import assert_one_line_error, cli

from gradmanifold.analysis import analyze
from gradmanifold.errors import SchemaVersionError, UsageError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.report.compare import Change, compare, relative_change, scope_quantities, to_dict
from gradmanifold.report.console_compare import render
from gradmanifold.report.json import to_dict as analysis_dict
from gradmanifold.store import StoreWriter


def _store(path: Path, seed: int = 0, scale: float = 1.0, steps: int = 150, k: int = 16) -> Path:
    """Two groups; g_t = mu + noise (seeded), every row multiplied by `scale`."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((2, k))
    with StoreWriter(path, ProjectionSpec(k=k, seed=3), [("a", 100), ("b", 50)], fsync=False) as w:
        for t in range(steps):
            p = (scale * (mu + rng.standard_normal((2, k)))).astype(np.float32)
            w.append(t, p, (p.astype(np.float64) ** 2).sum(axis=1))
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    return {
        "a": _store(root / "a.zarr"),
        "a2": _store(root / "a2.zarr", scale=2.0),
        "b": _store(root / "b.zarr", seed=1),
    }


def test_relative_change() -> None:
    assert relative_change(2.0, 3.0) == 0.5
    assert relative_change(-2.0, -3.0) == -0.5  # relative to |a|
    assert relative_change(4, 3) == -0.25
    assert relative_change(0.0, 0.0) == 0.0
    assert relative_change(0.0, 1.0) == math.inf and relative_change(0.0, -1.0) == -math.inf
    assert relative_change(None, 1.0) is None and relative_change(1.0, None) is None
    assert relative_change(math.nan, 1.0) is None
    c = Change("model", "rank.r_star.0.1", 12, 9)
    assert (c.path, c.diff, c.rel) == ("model.rank.r_star.0.1", -3, -0.25)


def test_scaled_copy_moves_by_exactly_nothing(stores: dict[str, Path]) -> None:
    ra, ra2 = analyze(stores["a"]), analyze(stores["a2"])
    cmp = compare(ra, ra2)
    assert cmp.scopes == ("model", "a", "b") and cmp.only == ((), ())
    moved = {c.path: c.rel for c in cmp.changes if c.quantity.startswith(("kappa.", "rank."))}
    assert len(moved) == 3 * (4 + 4 + 1)  # 4 kappas, 4 r*, the participation ratio, in every scope
    assert all(rel == 0.0 for rel in moved.values()), moved


def test_changes_are_the_two_analyses_numbers(stores: dict[str, Path]) -> None:
    ra, rb = analyze(stores["a"]), analyze(stores["b"])
    cmp = compare(ra, rb, labels=("A", "B"))
    by = {c.path: c for c in cmp.changes}
    for scope in ("model", "a", "b"):
        sa, sb = ra.scopes[scope], rb.scopes[scope]
        for p in ("last", "ema:0.9", "ema:0.99", "trend"):
            c = by[f"{scope}.kappa.{p}"]
            assert (c.a, c.b) == (sa.kappa[p], sb.kappa[p])
            assert c.diff == sb.kappa[p] - sa.kappa[p]
            assert c.rel == pytest.approx((sb.kappa[p] - sa.kappa[p]) / sa.kappa[p], rel=1e-12)
        for e, rs in sa.rank.r_star.items():
            c = by[f"{scope}.rank.r_star.{e}"]
            assert (c.a, c.b) == (rs, sb.rank.r_star[e]) and isinstance(c.a, int)
        assert f"{scope}.kappa.zero" not in by  # 1 by definition
    # the order of the report: kappa in the predictors' order, r* in the eps order
    names = [c.quantity for c in cmp.changes if c.scope == "model"]
    assert names[:6] == ["n_steps", "kappa.last", "kappa.ema:0.9", "kappa.ema:0.99", "kappa.trend",
                         "rank.r_star.0.5"]  # fmt: skip


def test_a_saved_json_compares_like_the_result(stores: dict[str, Path], tmp_path: Path) -> None:
    ra, rb = analyze(stores["a"]), analyze(stores["b"])
    doc = json.loads(json.dumps(analysis_dict(rb)))  # through text, as a file would be
    assert to_dict(compare(ra, doc)) == to_dict(compare(ra, rb))
    assert scope_quantities(doc["scopes"]["a"], doc["config"]) == scope_quantities(
        analysis_dict(rb)["scopes"]["a"], analysis_dict(rb)["config"]
    )


def test_scopes_only_in_one_run_and_config_notes(stores: dict[str, Path]) -> None:
    ra = analyze(stores["a"])
    rb = analyze(stores["b"], groups=("a",), predictors=("last",), eps=(0.1,))
    cmp = compare(ra, rb, labels=("full", "part"))
    assert cmp.scopes == ("model", "a")  # one selected group: its scope repeats the model's
    assert cmp.only == (("b",), ())
    by = {c.quantity: c for c in cmp.changes}
    assert by["kappa.trend"].b is None and by["kappa.trend"].diff is None and by["kappa.trend"].rel is None
    assert any(n.startswith("groups differs (full: a,b, part: a)") for n in cmp.notes)
    assert any(n.startswith("predictors differs") for n in cmp.notes)
    text = render(cmp, rtol=0.1)
    assert "only in full: b" in text and "note: groups differs" in text


def test_bad_documents() -> None:
    good = analysis_dict(analyze(np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)))
    with pytest.raises(UsageError, match="not a JSON object"):
        compare(good, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"is not 'gradmanifold\.analysis/1'"):
        compare(good, {"schema": "gradmanifold.spectrum/1"})
    with pytest.raises(SchemaVersionError, match="newer"):
        compare(good, {**good, "schema": "gradmanifold.analysis/2"})
    with pytest.raises(UsageError, match=r"no scopes\.model"):
        compare(good, {**good, "scopes": {"x": {}}})
    with pytest.raises(UsageError, match="unknown scope"):
        compare(good, good, scopes=["nope"])
    # garbage inside a valid envelope: quantities that are not numbers are "not measured"
    odd = {**good, "scopes": {"model": {"kappa": {"last": "x"}, "rank": [1], "n_steps": True}}}
    by = {c.quantity: c for c in compare(good, odd).changes}
    assert by["kappa.last"].b is None and by["n_steps"].b is None


# ------------------------------------------------------------------------------------------ the command


def test_cli_table_and_json(stores: dict[str, Path], tmp_path: Path) -> None:
    saved = tmp_path / "b.json"
    r = cli("analyze", str(stores["b"]), "--json")
    assert r.exit_code == 0
    saved.write_text(r.stdout)
    r = cli("compare", str(stores["a"]), str(saved), "--rtol", "0.05", "--scope", "model")
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    assert "A: a.zarr" in r.stdout and "B: b.json" in r.stdout and "moved > 5%" in r.stdout
    ra, rb = analyze(stores["a"]), analyze(stores["b"])
    rel = (rb.model.kappa["trend"] - ra.model.kappa["trend"]) / ra.model.kappa["trend"]
    row = next(ln for ln in r.stdout.splitlines() if "kappa.trend" in ln)
    assert f"{100 * rel:+.1f}%" in row and (row.rstrip().endswith("*") == (abs(rel) > 0.05))
    r = cli("compare", str(stores["a"]), str(stores["a2"]), "--json")
    assert r.exit_code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "gradmanifold.compare/1" and doc["labels"] == ["a.zarr", "a2.zarr"]
    kappas = [c for c in doc["changes"] if c["quantity"].startswith("kappa.")]
    assert len(kappas) == 12 and all(c["diff"] == 0 and c["rel"] == 0 for c in kappas)


def test_cli_same_names_get_their_folder(tmp_path: Path) -> None:
    a = _store(tmp_path / "x" / "run.zarr", steps=30)
    b = _store(tmp_path / "y" / "run.zarr", steps=30, seed=2)
    r = cli("compare", str(a), str(b), "--scope", "model")
    assert r.exit_code == 0, r.stderr
    assert "A: x/run.zarr" in r.stdout and "B: y/run.zarr" in r.stdout


@pytest.mark.parametrize(
    ("make", "args", "words"),
    [
        (None, ["{tmp}/missing.zarr", "{a}"], "does not exist"),
        ("not json", ["{a}", "{tmp}/f.json"], "not readable JSON"),
        ("[1, 2]", ["{a}", "{tmp}/f.json"], "not a JSON object"),
        ('{"schema": "gradmanifold.info/1"}', ["{a}", "{tmp}/f.json"], "is not 'gradmanifold.analysis/1'"),
        ('{"schema": "gradmanifold.analysis/9"}', ["{a}", "{tmp}/f.json"], "newer than this gradmanifold"),
        ('{"schema": "gradmanifold.analysis/1"}', ["{a}", "{tmp}/f.json"], "no scopes.model"),
        (b"\xff\xfe", ["{a}", "{tmp}/f.json"], "not readable JSON"),
        (None, ["{a}", "{a}", "--rtol", "-1"], "--rtol -1.0 is invalid"),
        (None, ["{a}", "{a}", "--rtol", "nan"], "is invalid"),
        (None, ["{a}", "{a}", "--rtol", "inf"], "is invalid"),
        (None, ["{a}", "{a}", "--scope", ","], "names no scope"),
        (None, ["{a}", "{a}", "--scope", "zz"], "unknown scope(s) 'zz'"),
        (None, ["{a}", "{a}", "--eps", "0"], "outside (0, 1)"),
        (None, ["{a}", "{a}", "--groups", "zz"], "unknown group"),
    ],
)
def test_bad_input_is_one_line(
    stores: dict[str, Path], tmp_path: Path, make: str | bytes | None, args: list[str], words: str
) -> None:
    if isinstance(make, bytes):
        (tmp_path / "f.json").write_bytes(make)
    elif make is not None:
        (tmp_path / "f.json").write_text(make)
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{a}", str(stores["a"])) for a in args]
    line = assert_one_line_error(cli("compare", *argv), 2)
    assert words in line, line
