"""Fault: a damaged manifest (hypothesis-fuzzed JSON: missing keys, wrong types, huge numbers, wrong nesting).

Required: CorruptStoreError (exit 3), or SchemaVersionError for a newer schema (exit 2), as one line on
stderr; never a traceback, never an internal error; a manifest that still parses reads without surprises.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from faultkit import cli, examples, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradmanifold.errors import CorruptStoreError, GradManifoldError, SchemaVersionError
from gradmanifold.store import open_store
from gradmanifold.store.manifest import Manifest
from gradmanifold.store.verify import verify_store

HUGE = [2**63, -(2**63) - 1, 10**30, -1, 2**64, 10**400, 1e308, -0.0]
json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["\ud800", "a\nb", "x" * 5000, "sparse", "proj"]),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "r.zarr"
    write(path, list(range(10)), fsync=False)
    return path


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside obj (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _parent(obj: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        obj = obj[key]
    return obj


@st.composite
def damaged(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    m = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(m)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(m, path), path[-1]
        how = draw(st.sampled_from(["delete", "replace", "wrap", "huge"]))
        if how == "delete":
            del parent[key]
        elif how == "replace":
            parent[key] = draw(json_value)
        elif how == "wrap":
            parent[key] = draw(st.sampled_from([[parent[key]], {"value": parent[key]}]))
        else:
            parent[key] = draw(st.sampled_from(HUGE))
    return m


def _check_store(store: Path) -> None:
    """Library: only the documented errors. CLI: exit 0, 2 or 3 with one stderr line, never a traceback."""
    try:
        r = open_store(store)
        list(r.iter_chunks())
        r.info()
        verify_store(store)
    except GradManifoldError as exc:
        assert "\n" not in str(exc)
        if not isinstance(exc, CorruptStoreError | SchemaVersionError):
            assert exc.exit_code in (2, 3), exc
    for command in ("verify", "info"):
        res = cli(command, str(store))
        assert res.exit_code in (0, 2, 3), (command, res.exit_code, res.stderr, res.exception)
        assert "Traceback" not in res.stdout + res.stderr
        if res.exit_code:
            lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
            assert lines and lines[-1].startswith("gradmanifold: error: "), res.stderr
            assert "internal error" not in res.stderr, res.stderr
            assert len(lines) == 1, res.stderr


@settings(
    max_examples=examples(4), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_manifest_json(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    base = json.loads((pristine / "manifest.json").read_text())
    m = data.draw(damaged(base))
    store = tmp_path_factory.getbasetemp() / "fuzzed.zarr"
    if not store.exists():
        shutil.copytree(pristine, store)
    (store / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    try:
        Manifest.from_dict(m)
    except GradManifoldError as exc:
        assert isinstance(exc, CorruptStoreError | SchemaVersionError)
    _check_store(store)


@settings(
    max_examples=examples(1), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)), cut=st.integers(0, 4000)
)
def test_fuzzed_manifest_bytes(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, raw: bytes, cut: int
) -> None:
    store = tmp_path_factory.getbasetemp() / "fuzzed_bytes.zarr"
    if not store.exists():
        shutil.copytree(pristine, store)
    text = (pristine / "manifest.json").read_bytes()
    for content in (raw, text[:cut], text[:cut] + raw):
        (store / "manifest.json").write_bytes(content)
        _check_store(store)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("n_rows"), "'n_rows' is missing"),
        (lambda m: m.update(n_rows="10"), "'n_rows' must be an integer, found a string"),
        (lambda m: m.update(n_rows=10**30), "'n_rows' = 1000000000000000000000000000000 is out of range"),
        (lambda m: m.update(groups={"a": 1}), "'groups' must be a non-empty list, found an object"),
        (lambda m: m["groups"][0].update(size=-1), "groups[0]: 'size' = -1 is out of range"),
        (lambda m: m["segments"][0].update(pid="x"), "segments[0]: 'pid' must be an integer"),
        (lambda m: m["segments"].append([1, 2]), "segments[1] must be an object, found a list"),
        (lambda m: m["checksums"].update(proj=["zz"]), "checksums['proj'] must list 3 checksums"),
        (lambda m: m.update(last_step=None), "'last_step' is None but 'n_rows' is 10"),
        (lambda m: m["projection"].update(kind="dense"), "projection 'kind' is 'dense'"),
        (lambda m: m["projection"].update(k=True), "'k' must be an integer, found a boolean"),
        (lambda m: m.update(fingerprint=["a"]), "'fingerprint' must be a string, found a list"),
        (lambda m: m.update(schema="other"), "'schema' is 'other'"),
        (lambda m: m["groups"][0].update(name="a\ud800"), "invalid unicode"),
    ],
)
def test_each_malformation_is_named(pristine: Path, tmp_path: Path, change: Any, message: str) -> None:
    store = tmp_path / "r.zarr"
    shutil.copytree(pristine, store)
    m = json.loads((store / "manifest.json").read_text())
    change(m)
    (store / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptStoreError) as info:
        open_store(store)
    assert message in str(info.value), str(info.value)
    res = cli("verify", str(store))
    assert res.exit_code == 3 and message in res.stderr


def test_too_many_digits_and_deep_nesting(pristine: Path, tmp_path: Path) -> None:
    store = tmp_path / "r.zarr"
    shutil.copytree(pristine, store)
    text = (store / "manifest.json").read_text()
    for bad in (text.replace('"n_rows": 10', '"n_rows": 1' + "0" * 5000), "[" * 100000 + "]" * 100000):
        (store / "manifest.json").write_text(bad)
        with pytest.raises(CorruptStoreError, match="not valid JSON"):
            open_store(store)
        assert cli("verify", str(store)).exit_code == 3
