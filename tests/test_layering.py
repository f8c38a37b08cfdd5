"""The data path has one direction: walk every import (ast) and check who may import what."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "gradmanifold"

# module -> the only places (path prefixes under gradmanifold/) allowed to import it
ALLOWED = {
    "zarr": ("store/",),
    "google_crc32c": ("store/",),
    "numba": ("kernels/",),
    "typer": ("cli/",),
    "rich": ("cli/", "report/console"),
    "matplotlib": ("plot",),
    "dask": ("sweep.py",),
    "distributed": ("sweep.py",),
    "fsspec": ("store/",),
    "aiohttp": ("store/",),
    "transformers": ("integrations/",),
    "lightning": ("integrations/",),
    "pytorch_lightning": ("integrations/",),
}
# package parts that must never import another part (renderers get plain results; analysis never records;
# analysis builds the plain result objects of report/model.py but never renders)
FORBIDDEN = {
    "analysis.py": (
        "gradmanifold.record",
        "gradmanifold.cli",
        "gradmanifold.report.console",
        "gradmanifold.report.json",
    ),
    "layerspectra.py": ("gradmanifold.record", "gradmanifold.cli", "gradmanifold.report.console"),
    "report/": ("gradmanifold.store", "gradmanifold.kernels", "gradmanifold.record", "gradmanifold.analysis"),
    "store/": ("gradmanifold.analysis", "gradmanifold.record", "gradmanifold.cli", "gradmanifold.report"),
    "kernels/": ("gradmanifold.store", "gradmanifold.cli", "gradmanifold.report", "gradmanifold.record"),
    # framework callbacks drive the Recorder; they never render or reach into the CLI
    "integrations/": ("gradmanifold.cli", "gradmanifold.report"),
}


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_import_direction(path: Path) -> None:
    rel = path.relative_to(PKG).as_posix()
    for name in imports(path):
        top = name.split(".")[0]
        if top in ALLOWED:
            assert rel.startswith(ALLOWED[top]), f"{rel} imports {top}; only {ALLOWED[top]} may"
        for prefix, banned in FORBIDDEN.items():
            if rel.startswith(prefix):
                assert not name.startswith(banned), f"{rel} imports {name}"


def test_modules_stay_small() -> None:
    long = {p.relative_to(PKG).as_posix(): n for p in MODULES if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"modules over 600 lines: {long}"


def test_the_layering_test_has_teeth(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("import zarr\nfrom numba import njit\n")
    assert {"zarr", "numba"} <= imports(bad)
