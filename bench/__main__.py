"""Run every benchmark module (or those named on the command line) and print their tables."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    wanted = [a for a in argv if not a.startswith("-")]
    if wanted:
        names = [n for n in names if any(w in n for w in wanted)]
    for name in names:
        mod = importlib.import_module(f"bench.{name}")
        mod.main()
    if not wanted or "summary" in wanted:
        from bench import summary

        summary.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
