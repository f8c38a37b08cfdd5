"""Regenerate tests/golden/*.json from sample_logs/*.zarr: `make golden` (explicit, never automatic).

Each golden file is the analysis JSON (default options) of one sample store, with the store path written
relative to the repository root. tests/test_report.py compares the current code's output against them.
"""

from __future__ import annotations

from pathlib import Path

from gradmanifold.analysis import analyze
from gradmanifold.report.json import dumps, to_dict

ROOT = Path(__file__).resolve().parent.parent.parent
HERE = Path(__file__).resolve().parent


def main() -> int:
    stores = sorted((ROOT / "sample_logs").glob("*.zarr"))
    if not stores:
        print("no sample_logs/*.zarr; run `make samples` first")
        return 1
    for store in stores:
        doc = to_dict(analyze(store))
        doc["store"]["path"] = store.relative_to(ROOT).as_posix()
        out = HERE / f"{store.stem}.json"
        out.write_text(dumps(doc))
        print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
