"""The store's table registry: tables besides the main rows (layer spectra, probes) are written, read,
rewound, verified and repaired by the same code as the main rows; version-1 stores keep opening."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradmanifold.errors import CorruptStoreError, InputError, SpecMismatchError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import StoreWriter, open_store
from gradmanifold.store.layout import ARRAY_BY_NAME, TABLES, chunk_file
from gradmanifold.store.manifest import SCHEMA_VERSION, read_manifest
from gradmanifold.store.repair import repair_store
from gradmanifold.store.verify import verify_store

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1.zarr"
SPEC = ProjectionSpec(k=8, seed=3)
GROUPS = [("fc1", 40), ("fc2", 12)]
LAYERS = {"layers": [{"name": "fc1.weight", "shape": [5, 8]}, {"name": "fc2.weight", "shape": [2, 6]}]}
DIMS = {"layers": 2, "q": 4}


def v1_rows() -> dict[str, np.ndarray]:
    """The rows of the committed version-1 fixture, regenerated (tests/fixtures/README.md)."""
    rng = np.random.default_rng(20261202)
    steps = np.arange(0, 60, 2)
    proj, sq = [], []
    for _ in steps:
        proj.append(rng.standard_normal((2, 8)).astype(np.float32))
        sq.append(rng.random(2) * 10)
    return {"step": steps, "proj": np.stack(proj), "sqnorm": np.stack(sq), "loss": steps / 7}


def spectra_row(step: int, version: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([step, version, 7])
    sigma = np.sort(rng.random((2, 4)), axis=1)[:, ::-1].copy()
    return {"spectra_sigma": sigma, "spectra_frob_sq": (sigma**2).sum(axis=1) + version}


def test_every_array_has_one_declaration() -> None:
    names = [a.name for t in TABLES for a in t.arrays]
    assert len(names) == len(set(names))
    for t in TABLES:
        assert ARRAY_BY_NAME[t.step].dtype == "int64" and ARRAY_BY_NAME[t.step].dims == ()
        assert all(set(a.dims) <= set(t.dims) for a in t.arrays)


def test_version_1_store_reads_bit_for_bit() -> None:
    r = open_store(FIXTURE)
    assert r.manifest.schema_version == 1 and r.tables == ("rows",)
    want = v1_rows()
    chunks = list(r.iter_chunks())
    np.testing.assert_array_equal(np.concatenate([c.step for c in chunks]), want["step"])
    np.testing.assert_array_equal(np.concatenate([c.proj for c in chunks]), want["proj"])
    np.testing.assert_array_equal(np.concatenate([c.sqnorm for c in chunks]), want["sqnorm"])
    np.testing.assert_array_equal(
        np.concatenate([c.loss for c in chunks if c.loss is not None]), want["loss"]
    )
    assert verify_store(FIXTURE).ok


def test_version_1_store_continues_as_version_1_then_gains_a_table(tmp_path: Path) -> None:
    path = tmp_path / "v1.zarr"
    shutil.copytree(FIXTURE, path)
    with StoreWriter(path, SPEC, GROUPS) as w:
        w.append(60, np.ones((2, 8)), np.ones(2))
    assert read_manifest(path).schema_version == 1  # an old reader can still read it
    assert open_store(path).n_steps == 31
    with StoreWriter(path, SPEC, GROUPS) as w:
        w.add_table("spectra", DIMS, LAYERS)
        w.append(62, np.ones((2, 8)), np.ones(2))
        w.append_row("spectra", 62, spectra_row(62))
    r = open_store(path)
    assert r.manifest.schema_version == SCHEMA_VERSION == 2 and r.tables == ("rows", "spectra")
    assert list(r.read_table("spectra")["spectra_step"]) == [62]
    np.testing.assert_array_equal(
        np.concatenate([c.proj for c in r.iter_chunks(0, 30)]), v1_rows()["proj"]
    )  # the old rows kept their bytes
    assert verify_store(path).ok


def write_with_spectra(path: Path, steps: list[int], every: int = 3, chunk_rows: int = 8) -> None:
    with StoreWriter(path, SPEC, GROUPS, chunk_rows=chunk_rows) as w:
        w.add_table("spectra", DIMS, LAYERS, chunk_rows=chunk_rows)
        for s in steps:
            w.append(s, np.full((2, 8), s, np.float32), np.array([s, 1.0]))
            if s % every == 0:
                w.append_row("spectra", s, spectra_row(s))


def test_table_round_trip_and_chunking(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    write_with_spectra(path, list(range(100)))
    r = open_store(path)
    got = r.read_table("spectra")
    steps = list(range(0, 100, 3))
    assert list(got["spectra_step"]) == steps
    for i, s in enumerate(steps):
        want = spectra_row(s)
        np.testing.assert_array_equal(got["spectra_sigma"][i], want["spectra_sigma"])
        np.testing.assert_array_equal(got["spectra_frob_sq"][i], want["spectra_frob_sq"])
    part = r.read_table("spectra", rows=(5, 9))
    assert list(part["spectra_step"]) == steps[5:9]
    t = r.table("spectra")
    assert t.meta == LAYERS and t.dims == DIMS and t.n_rows == len(steps)
    assert verify_store(path).ok


@settings(deadline=None, max_examples=max(8, settings().max_examples // 3))
@given(
    steps=st.lists(st.integers(0, 60), min_size=1, max_size=40),
    flush_at=st.sets(st.integers(0, 40)),
)
def test_resumed_runs_equal_an_uninterrupted_run(
    tmp_path_factory: pytest.TempPathFactory, steps: list[int], flush_at: set[int]
) -> None:
    """Any sequence of steps (a job restarted from checkpoints) leaves what the last pass wrote: every table
    holds exactly the rows of the steps as finally recorded, in order."""
    path = tmp_path_factory.mktemp("t") / "run.zarr"
    final: dict[int, int] = {}  # step -> version of the row that must survive
    spectra: dict[int, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rewind warnings
        with StoreWriter(path, SPEC, GROUPS, chunk_rows=3, fsync=False) as w:
            w.add_table("spectra", DIMS, LAYERS, chunk_rows=2)
            for i, s in enumerate(steps):
                for d in (final, spectra):
                    for k in [k for k in d if k >= s]:
                        del d[k]
                w.append(s, np.full((2, 8), i, np.float32), np.array([s, i]))
                final[s] = i
                if s % 2 == 0:
                    w.append_row("spectra", s, spectra_row(s, i))
                    spectra[s] = i
                if i in flush_at:
                    w.flush()
    r = open_store(path)
    rows = list(r.iter_chunks())
    got_steps = np.concatenate([c.step for c in rows])
    assert list(got_steps) == sorted(final)
    sq = np.concatenate([c.sqnorm for c in rows])
    assert [int(v) for v in sq[:, 0]] == sorted(final)
    assert [int(v) for v in sq[:, 1]] == [final[s] for s in sorted(final)]
    tab = r.read_table("spectra")
    assert list(tab["spectra_step"]) == sorted(spectra)
    for j, s in enumerate(sorted(spectra)):
        np.testing.assert_array_equal(
            tab["spectra_frob_sq"][j], spectra_row(s, spectra[s])["spectra_frob_sq"]
        )
    assert verify_store(path).ok


def test_table_rewinds_alone(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    write_with_spectra(path, list(range(12)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with StoreWriter(path, SPEC, GROUPS) as w:
            w.append_row("spectra", 6, spectra_row(6, 1))  # spectra rewound to step 6; main rows untouched
    assert any("spectra: step 6" in str(c.message) for c in caught)
    r = open_store(path)
    assert r.n_steps == 12 and list(r.read_table("spectra")["spectra_step"]) == [0, 3, 6]


def test_add_table_on_resume_must_match(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    write_with_spectra(path, list(range(5)))
    with StoreWriter(path, SPEC, GROUPS) as w:
        w.add_table("spectra", DIMS, LAYERS)  # the same: fine
        with pytest.raises(SpecMismatchError, match="q: store has 4, writer asks 5"):
            w.add_table("spectra", {"layers": 2, "q": 5}, LAYERS)
        with pytest.raises(SpecMismatchError, match="layers differ"):
            w.add_table("spectra", DIMS, {"layers": LAYERS["layers"][::-1]})
        with pytest.raises(InputError, match="unknown table"):
            w.add_table("nope", DIMS)
        with pytest.raises(InputError, match="needs the sizes"):
            w.add_table("curvature", {"layers": 2})
        with pytest.raises(InputError, match="must have shape"):
            w.append_row("spectra", 9, {"spectra_sigma": np.zeros((2, 3)), "spectra_frob_sq": np.zeros(2)})
        with pytest.raises(InputError, match="needs 'spectra_frob_sq'"):
            w.append_row("spectra", 9, {"spectra_sigma": np.zeros((2, 4))})
        with pytest.raises(InputError, match="no table 'curvature'"):
            w.append_row("curvature", 9, {})


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_table_chunk_is_found_and_repaired(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "run.zarr"
    write_with_spectra(path, list(range(60)), every=2)  # 30 spectra rows in chunks of 4 rows
    r = open_store(path)
    t = r.table("spectra")
    assert t.chunk_rows < t.n_rows
    last = t.n_chunks - 1
    f = chunk_file(path, "spectra_sigma", last)
    if damage == "flip":
        data = bytearray(f.read_bytes())
        data[3] ^= 0x10
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:10])
    else:
        f.unlink()
    report = verify_store(path)
    assert not report.ok and report.bad_chunks == () and report.bad_chunks_of("spectra") == (last,)
    assert "'spectra_sigma'" in report.problems[0].message
    with pytest.raises(CorruptStoreError, match="spectra_sigma"):
        open_store(path).read_table("spectra")
    assert open_store(path).n_steps == 60  # the main rows are untouched and readable
    res = repair_store(path)
    kept = last * t.chunk_rows
    assert res.tables_cut == {"spectra": (t.n_rows, kept)} and res.rows_after == res.rows_before == 60
    assert verify_store(path).ok
    assert list(open_store(path).read_table("spectra")["spectra_step"]) == list(range(0, 60, 2))[:kept]
    backup = Path(res.backup or "")
    assert json.loads((backup / "REPAIR.json").read_text())["rows_after"] == 60


def test_damaged_table_metadata_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    write_with_spectra(path, list(range(20)))
    (path / "spectra_sigma" / "zarr.json").write_text("{not json")
    report = verify_store(path)
    assert report.damaged_metadata == ("spectra_sigma",)
    res = repair_store(path)
    assert res.rebuilt_metadata == ("spectra_sigma",)
    assert verify_store(path).ok and open_store(path).read_table("spectra")["spectra_step"].size == 7


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.update(dims={"layers": 2}),
        lambda t: t.update(arrays=["spectra_step"]),
        lambda t: t.update(n_rows=-1),
        lambda t: t.update(last_step=None),
        lambda t: t["checksums"].update(spectra_sigma=["0"]),
        lambda t: t["meta"].update(layers=[{"name": "a", "shape": [1]}] * 2),
        lambda t: t["meta"].update(layers="x"),
        lambda t: t.update(meta=[]),
    ],
)
def test_damaged_table_entry_is_a_corrupt_manifest(tmp_path: Path, change: object) -> None:
    path = tmp_path / "run.zarr"
    write_with_spectra(path, list(range(10)))
    doc = json.loads((path / "manifest.json").read_text())
    change(doc["tables"]["spectra"])  # type: ignore[operator]
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptStoreError, match=r"tables\['spectra'\]"):
        open_store(path)


def test_unknown_or_reserved_table_is_a_corrupt_manifest(tmp_path: Path) -> None:
    path = tmp_path / "run.zarr"
    write_with_spectra(path, list(range(10)))
    doc = json.loads((path / "manifest.json").read_text())
    doc["tables"]["rows"] = doc["tables"].pop("spectra")
    (path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(CorruptStoreError, match="unknown table 'rows'"):
        open_store(path)
