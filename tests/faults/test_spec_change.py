"""Fault: a resumed job asks for another projection or other groups (seed, k, kind, s, names, sizes).

Required: refused, each differing field named; the store left exactly as it was, and no lock behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from faultkit import GROUPS, SPEC, assert_clean_prefix, snapshot, write

from gradmanifold import Recorder
from gradmanifold.errors import SpecMismatchError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.store import StoreWriter
from gradmanifold.store.manifest import MANIFEST_NAME

CASES = [
    (ProjectionSpec(k=8, seed=4), GROUPS, ["projection seed: store has 3, writer asks 4"]),
    (ProjectionSpec(k=16, seed=3), GROUPS, ["projection k: store has 8, writer asks 16"]),
    (ProjectionSpec(k=8, seed=3, kind="gaussian"), GROUPS, ["projection kind: store has 'sparse'"]),
    (ProjectionSpec(k=8, seed=3, s=4), GROUPS, [f"projection s: store has {SPEC.s}, writer asks 4"]),
    (SPEC, [("a", 100)], ["groups differ: missing ['b']"]),
    (SPEC, [("a", 100), ("b", 7), ("c", 1)], ["groups differ: new ['c']"]),
    (SPEC, [("b", 7), ("a", 100)], ["same names in another order"]),
    (SPEC, [("a", 100), ("b", 8)], ["group 'b' size: store has 7, writer has 8"]),
    (SPEC, [("a", 99), ("b", 8)], ["group 'a' size: store has 100, writer has 99", "group 'b' size"]),
    (
        ProjectionSpec(k=16, seed=9, kind="gaussian", s=8),
        [("a", 100), ("z", 7)],
        [
            "projection k:",
            "projection seed:",
            "projection kind:",
            "projection s:",
            "missing ['b']",
            "new ['z']",
        ],
    ),
]


@pytest.mark.parametrize(("spec", "groups", "parts"), CASES)
def test_changed_spec_is_refused_naming_each_field(
    tmp_path: Path, spec: ProjectionSpec, groups: list[tuple[str, int]], parts: list[str]
) -> None:
    path = tmp_path / "r.zarr"
    write(path, list(range(6)))
    before = snapshot(path)
    with pytest.raises(SpecMismatchError) as info:
        StoreWriter(path, spec, groups)
    msg = str(info.value)
    assert msg.startswith(f"cannot append to {path}: ")
    for part in parts:
        assert part in msg, (part, msg)
    assert snapshot(path) == before  # untouched, and no lock left behind
    assert assert_clean_prefix(path) == 6


def test_changed_projection_code_is_refused(tmp_path: Path) -> None:
    """Same spec, but the store's fingerprint differs (written by a gradmanifold whose projection changed)."""
    path = tmp_path / "r.zarr"
    write(path, [0, 1])
    mpath = path / MANIFEST_NAME
    m = json.loads(mpath.read_text())
    m["fingerprint"] = "0" * 32
    mpath.write_text(json.dumps(m))
    before = snapshot(path)
    with pytest.raises(
        SpecMismatchError, match=r"projection fingerprint: store has 0{32}.*the projection code changed"
    ):
        StoreWriter(path, SPEC, GROUPS)
    assert snapshot(path) == before


def test_recorder_resume_with_other_shapes_is_refused(tmp_path: Path) -> None:
    """Through the training-loop API: a resumed job whose model changed shape, or its projection seed."""
    path = tmp_path / "r.zarr"
    with Recorder(path, k=8, seed=0, groups="tensor") as rec:
        rec.record(0, {"w": np.ones(10), "b": np.ones(3)})
    before = snapshot(path)
    rec = Recorder(path, k=8, seed=0, groups="tensor")
    with pytest.raises(SpecMismatchError, match="group 'w' size: store has 10, writer has 12"):
        rec.record(1, {"w": np.ones(12), "b": np.ones(3)})
    rec.close()
    rec = Recorder(path, k=8, seed=1, groups="tensor")
    with pytest.raises(SpecMismatchError, match="projection seed: store has 0, writer asks 1"):
        rec.record(1, {"w": np.ones(10), "b": np.ones(3)})
    rec.close()
    assert snapshot(path) == before
