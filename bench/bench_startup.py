"""Command start-up: `gradmanifold --help`, `info` and `analyze --json` on a sample store, as subprocesses,
beside `python -c "import numpy, zarr"` (the floor any command that reads a store pays), in one run.

Each command runs REPEAT times, interleaved with the baseline; the best of each is kept (this machine is
noisy). `analyze` is warm: numba's cache is filled by one run before the timing. The package's bytecode is
compiled first, as installing a wheel does: an editable checkout under PYTHONDONTWRITEBYTECODE would
otherwise compile every gradmanifold module from source at each start (~0.1 s), while numpy and zarr load
theirs. `python -X importtime` tells where a command's start-up goes (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import compileall
import os
import subprocess
import sys
import time
from pathlib import Path

from bench._common import print_table, write_json

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_logs" / "mlp_digits_adamw.zarr"
REPEAT = int(os.environ.get("GRADMANIFOLD_BENCH_REPEAT", 7))
_SCRIPT = Path(sys.executable).parent / "gradmanifold"  # the console script, as a user runs it
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "gradmanifold"]


def _wall(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    commands = {
        "python -c 'import numpy, zarr'": [sys.executable, "-c", "import numpy, zarr"],
        "gradmanifold --help": [*CLI, "--help"],
        "gradmanifold info SAMPLE": [*CLI, "info", str(SAMPLE)],
        "gradmanifold analyze --json SAMPLE (warm)": [*CLI, "analyze", "--json", str(SAMPLE)],
    }
    compileall.compile_dir(str(ROOT / "gradmanifold"), quiet=1)  # what a wheel's install leaves
    _wall(commands["gradmanifold analyze --json SAMPLE (warm)"])  # numba's cache, the page cache
    best = {name: float("inf") for name in commands}
    for _ in range(REPEAT):
        for name, argv in commands.items():
            best[name] = min(best[name], _wall(argv))
    base = best["python -c 'import numpy, zarr'"]
    goals = {"gradmanifold --help": 1.5, "gradmanifold info SAMPLE": 1.5}
    rows = [
        {
            "command": name,
            "seconds": s,
            "x baseline": s / base,
            "goal x": goals.get(name, 2.5 if "analyze" in name else None),
        }
        for name, s in best.items()
    ]
    print_table(f"command start-up, best of {REPEAT} (baseline: python -c 'import numpy, zarr')", rows)
    write_json("startup", {"rows": rows, "repeat": REPEAT, "sample": SAMPLE.name})


if __name__ == "__main__":
    main()
