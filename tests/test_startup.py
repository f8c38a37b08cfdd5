"""Start-up cost: reading or verifying a local store imports neither zarr nor numba; analyzing one imports
numba but not scipy.linalg.

zarr alone costs ~0.2 s to import, most of `gradmanifold info`; the reader reads a local store's plain array
metadata (zarr.json) and chunk files itself (store.plainmeta, store.rawchunk). numba's set-up would import
scipy.linalg (~0.25 s) for a BLAS check no gradmanifold kernel needs (gradmanifold.kernels). Each case runs
in a fresh interpreter and reports which of the heavy modules it ended up importing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_logs" / "mlp_digits_adamw.zarr"

_CLI = """
import json, sys
HEAVY = ("zarr", "numba")
from gradmanifold.cli import main
out, sys.argv = sys.argv[1], ["gradmanifold", *sys.argv[2:]]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
with open(out, "w") as f:
    json.dump({"code": code, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)}, f)
"""

_ITER = """
import json, sys
HEAVY = ("zarr", "numba")
from gradmanifold.store import open_store
out, path = sys.argv[1], sys.argv[2]
r = open_store(path)
rows = sum(c.n for c in r.iter_chunks())
with open(out, "w") as f:
    json.dump({"rows": rows, "n_steps": r.n_steps, "steps": len(r.steps()),
               "loaded": sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)}, f)
"""


def _run(script: str, tmp_path: Path, *args: str) -> dict[str, object]:
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    res = subprocess.run(
        [sys.executable, "-c", script, str(out), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    result: dict[str, object] = json.loads(out.read_text())
    return result


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    """A copy of the sample store (reading never writes, but a test leaves the repository alone)."""
    if not SAMPLE.is_dir():
        pytest.skip("no sample store")
    return Path(shutil.copytree(SAMPLE, tmp_path / "run.zarr"))


def test_help_imports_neither_zarr_nor_numba(tmp_path: Path) -> None:
    got = _run(_CLI, tmp_path, "--help")
    assert got["code"] == 0
    assert got["loaded"] == []


def test_info_imports_neither_zarr_nor_numba(sample: Path, tmp_path: Path) -> None:
    got = _run(_CLI, tmp_path, "info", str(sample))
    assert got["code"] == 0
    assert got["loaded"] == []


def test_verify_imports_neither_zarr_nor_numba(sample: Path, tmp_path: Path) -> None:
    """The writer's plain metadata is checked as JSON; only metadata in another layout would need zarr."""
    got = _run(_CLI, tmp_path, "verify", str(sample))
    assert got["code"] == 0
    assert got["loaded"] == []


def test_verify_of_damaged_group_metadata_still_names_it(sample: Path, tmp_path: Path) -> None:
    """Metadata the plain check does not accept goes to zarr, which decides: here it is damage (exit 3)."""
    (sample / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array"}')
    got = _run(_CLI, tmp_path, "verify", str(sample))
    assert got["code"] == 3
    assert "zarr" in got["loaded"]  # type: ignore[operator]


def test_reading_a_local_store_imports_neither_zarr_nor_numba(sample: Path, tmp_path: Path) -> None:
    got = _run(_ITER, tmp_path, str(sample))
    assert got["rows"] == got["n_steps"] == got["steps"] and got["rows"]
    assert got["loaded"] == []


_BLAS = """
import json, sys
import numpy as np
import gradmanifold.kernels
after_import = "scipy.linalg" in sys.modules
import numba
import numba.np.arraymath as arraymath
import numba.np.linalg as nplinalg

@numba.njit
def dot(a, b):
    return np.dot(a, b)

a = np.arange(12.0).reshape(3, 4)
b = np.arange(4.0)
with open(sys.argv[1], "w") as f:
    json.dump({"after_import": after_import, "have_blas": arraymath._HAVE_BLAS,
               "same_function": arraymath.ensure_blas is nplinalg.ensure_blas,
               "dot": dot(a, b).tolist(), "want": (a @ b).tolist(),
               "after_dot": "scipy.linalg.cython_blas" in sys.modules}, f)
"""


def test_kernels_load_numba_without_scipy_and_blas_still_works(tmp_path: Path) -> None:
    """numba's import-time BLAS check is answered without importing scipy.linalg (gradmanifold.kernels); the
    check's function is numba's own again afterwards, and a numba kernel that calls BLAS still gets it."""
    got = _run(_BLAS, tmp_path)
    assert got["after_import"] is False
    assert got["have_blas"] is True and got["same_function"] is True
    assert got["dot"] == got["want"] and got["after_dot"] is True


_ANALYZE = _CLI.replace('HEAVY = ("zarr", "numba")', 'HEAVY = ("zarr", "numba", "scipy")')


def test_analyze_imports_numba_but_not_scipy(sample: Path, tmp_path: Path) -> None:
    got = _run(_ANALYZE, tmp_path, "analyze", "--json", str(sample))
    assert got["code"] == 0
    loaded = got["loaded"]
    assert isinstance(loaded, list) and "numba" in loaded
    # numba imports scipy's top package itself (a few ms); scipy.linalg would be ~0.25 s
    assert not [m for m in loaded if m.startswith(("scipy.linalg", "scipy._lib._array_api"))], loaded
