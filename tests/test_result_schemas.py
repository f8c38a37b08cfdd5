"""One output layer: info, verify, repair and record print typed results as versioned JSON (docs/JSON.md),
the keys they had plus `schema`; one progress bar; the options shared by analyze and check defined once."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from gradmanifold.report import results
from gradmanifold.report.json import INFO_SCHEMA
from gradmanifold.store import open_store
from gradmanifold.store.layout import chunk_file
from gradmanifold.store.verify import verify_store

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
from faultkit import assert_one_line_error, cli, write

DOCS = (Path(__file__).resolve().parent.parent / "docs" / "JSON.md").read_text()


def _section(schema: str) -> str:
    """The part of docs/JSON.md about one schema: from its heading to the next `## ` heading."""
    start = DOCS.index(f"schema `{schema}`")
    end = DOCS.find("\n## ", start)
    return DOCS[start : end if end >= 0 else len(DOCS)]


def _documented(schema: str, keys: set[str]) -> None:
    text = _section(schema)
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert not missing, f"docs/JSON.md does not describe {missing} of {schema}"


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    path = tmp_path / "run.zarr"
    write(path, list(range(10)), fsync=False)
    return path


def test_schema_ids() -> None:
    assert results.INFO_SCHEMA == INFO_SCHEMA == "gradmanifold.info/1"
    assert (results.VERIFY_SCHEMA, results.REPAIR_SCHEMA, results.RECORD_SCHEMA) == (
        "gradmanifold.verify/1",
        "gradmanifold.repair/1",
        "gradmanifold.record/1",
    )


def test_info_json_is_the_store_description_with_its_schema(store: Path) -> None:
    described = open_store(store).info()
    doc = json.loads(cli("info", str(store), "--json").stdout)
    assert doc == {"schema": "gradmanifold.info/1", **json.loads(json.dumps(described))}
    typed = results.InfoResult.from_dict(described)
    assert typed.groups[0] == results.StoreGroup("a", 100, 0, 0) and typed.n_steps == 10
    assert results.InfoResult.from_dict(doc).to_dict() == doc  # reads its own JSON back
    _documented("gradmanifold.info/1", set(doc))


def test_info_keeps_keys_it_does_not_name(store: Path) -> None:
    described = {**open_store(store).info(), "url": "s3://bucket/run.zarr"}
    assert results.InfoResult.from_dict(described).to_dict()["url"] == "s3://bucket/run.zarr"


def test_verify_json(store: Path) -> None:
    res = cli("verify", str(store), "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc == {"schema": "gradmanifold.verify/1", **json.loads(json.dumps(verify_store(store).to_dict()))}
    assert doc["ok"] is True and doc["n_rows"] == 10
    _documented("gradmanifold.verify/1", set(doc))


def test_verify_json_of_a_damaged_store(store: Path) -> None:
    chunk_file(store, "proj", 1).write_bytes(b"\0")
    res = cli("verify", str(store), "--json")
    assert res.exit_code == 3
    doc = json.loads(res.stdout)  # the report on stdout, the one-line verdict on stderr
    assert doc["schema"] == "gradmanifold.verify/1" and doc["ok"] is False and doc["bad_chunks"] == [1]
    assert len(res.stderr.strip().splitlines()) == 1


def test_repair_json(store: Path, tmp_path: Path) -> None:
    chunk_file(store, "proj", 2).write_bytes(b"\0")
    res = cli("repair", str(store), "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["schema"] == "gradmanifold.repair/1" and doc["dry_run"] is True
    assert doc["rows_before"] == 10 and doc["rows_after"] == 8 and doc["changed"] is True
    _documented("gradmanifold.repair/1", set(doc))


def test_record_json_synthetic(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    argv = [
        "record",
        "--out",
        str(out),
        "--synthetic",
        "white-noise",
        "--steps",
        "12",
        "--dim",
        "8",
        "--k",
        "8",
    ]
    doc = json.loads(cli(*argv, "--json").stdout)
    assert set(doc) == {"schema", "store", "mode", "steps_recorded", "task", "ground_truth"}
    assert (
        doc["schema"] == "gradmanifold.record/1"
        and doc["mode"] == "synthetic"
        and doc["steps_recorded"] == 12
    )
    assert doc["task"]["name"] == "white-noise" and doc["ground_truth"]["kappa"]["zero"] == 1.0
    _documented("gradmanifold.record/1", set(doc))


def test_record_json_from_dumps(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    for s in range(3):
        np.save(dumps / f"g_{s}.npy", np.full(5, s, np.float32))
    doc = json.loads(cli("record", "--out", str(tmp_path / "d.zarr"), "--from", str(dumps), "--json").stdout)
    want = {"schema", "store", "mode", "steps_recorded", "files_ingested", "files_skipped", "files_deleted"}
    assert set(doc) == want | {"first_step", "last_step", "stopped", "groups"}
    assert (
        doc["mode"],
        doc["steps_recorded"],
        doc["files_ingested"],
        doc["first_step"],
        doc["last_step"],
    ) == (
        "dumps",
        3,
        3,
        0,
        2,
    )
    _documented("gradmanifold.record/1", set(doc))


def test_record_summary_round_trip() -> None:
    from gradmanifold.ingest import IngestReport

    rep = IngestReport(store="x.zarr", mode="follow", steps_recorded=4, files_ingested=4, groups=["w"])
    doc = results.RecordSummary.from_dict(rep.to_dict()).to_dict()
    assert doc == {"schema": "gradmanifold.record/1", **rep.to_dict()}
    assert results.RecordSummary.from_dict(doc).to_dict() == doc


def test_every_schema_is_documented() -> None:
    for schema in ("analysis", "info", "verify", "repair", "record", "spectrum"):
        assert re.search(rf"schema `gradmanifold\.{schema}/1`", DOCS), schema
    assert "| `modules` | int or null |" in DOCS


# ---------------------------------------------------------------------------------------------- one helper


def test_one_progress_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradmanifold.cli import analyze, progress, record

    assert analyze.ProgressBar is progress.ProgressBar
    assert not hasattr(record, "_Progress")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    with progress.ProgressBar("recording") as bar:
        bar(3, None)
        assert bar.bar is None  # not before a second
        bar.t0 -= 2.0
        bar(4, None)  # total unknown (a followed folder): a count and the time elapsed
        assert bar.bar is not None
        assert bar.bar.tasks[0].fields["count"] == "4 steps" and bar.bar.tasks[0].total is None
    assert bar.bar is None
    bar = progress.ProgressBar("analyzing")
    bar.t0 -= 2.0
    bar(5, 10)
    assert bar.bar.tasks[0].fields["count"] == "5/10 steps"
    bar.close()


def test_options_are_defined_once() -> None:
    from gradmanifold.cli import analyze, check, options

    for name in ("PredictorsOpt", "EpsOpt", "GroupsOpt", "ByModuleOpt", "analysis_options"):
        assert getattr(analyze, name) is getattr(options, name)
    assert check.analysis_options is options.analysis_options
    source = Path(check.__file__).read_text()
    assert "from gradmanifold.cli.analyze import" not in source


def test_shared_options_reach_the_analysis() -> None:
    from gradmanifold.cli.options import analysis_options

    opts = analysis_options(["last"], None, ["0.1,0.2"], None, "exact", 8, None, None, ["a, b"], 0, True, 2)
    assert opts["modules"] == 2 and opts["eps"] == ("0.1", "0.2") and opts["groups"] == ("a", "b")
    assert "modules" not in analysis_options(None, None, None, None, "auto", 8, None, None, None, 0)


@pytest.mark.parametrize("command", ["info", "verify", "repair"])
def test_json_of_a_missing_store_is_one_line(tmp_path: Path, command: str) -> None:
    res = cli(command, str(tmp_path / "nope.zarr"), "--json")
    assert "does not exist" in assert_one_line_error(res, 2) and res.stdout == ""
