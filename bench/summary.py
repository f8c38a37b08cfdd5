"""The speed table: each goal beside what the latest run of its benchmark measured, from bench/results/*.json.

`make bench` prints it last, so one run shows every row beside its baseline; `python -m bench summary`
prints it alone. A row whose benchmark has not run says so.
"""

from __future__ import annotations

import json
from typing import Any

from bench._common import RESULTS, print_table


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def _row(what: str, measured: Any, baseline: str, goal: str, ok: bool | None) -> dict[str, Any]:
    verdict = "not run" if measured is None else ("met" if ok else "not met") if ok is not None else ""
    return {"what": what, "measured": measured, "beside": baseline, "goal": goal, "": verdict}


def rows() -> list[dict[str, Any]]:
    """The table's rows (measured values as printed numbers or None)."""
    out = []
    rec = _load("recorder") or {}
    loop = {(r["model"], r["recording"]): r for r in rec.get("rows", [])}
    for mode in ("threads=0", "threads=1"):
        r = loop.get(("mlp", mode))
        ratio = round(r["ratio"], 3) if r else None
        steady = f", steady {r['steady_ratio']:.3f}x" if r and "steady_ratio" in r else ""
        opened = f", open+close {r['open_close_ms']:.0f} ms" if r and "open_close_ms" in r else ""
        out.append(
            _row(
                f"Recorder in the loop, digits MLP, k=256, {mode}, {r['steps'] if r else '?'} steps",
                ratio,
                f"plain loop{steady}{opened}",
                "<= 1.05x",
                ratio is not None and ratio <= 1.05,
            )
        )
    wrap = {r["job"]: r for r in (_load("record") or {}).get("overhead", [])}
    w = wrap.get("mlp_digits_adamw")
    out.append(
        _row(
            "wrap mode, digits MLP, loop ratio",
            round(w["loop_ratio"], 3) if w else None,
            "plain loop",
            "<= 1.05x",
            w is not None and w["loop_ratio"] <= 1.05,
        )
    )
    per = rec.get("per_step", [])
    if len(per) >= 2:
        out.append(
            _row(
                "per recorded step outside the kernel, 6 tensors (us)",
                round(per[0]["outside_kernel_us"], 1),
                f"kernel {per[0]['baseline_us']:.1f} us",
                "<= 30 us",
                per[0]["outside_kernel_us"] <= 30,
            )
        )
        out.append(
            _row(
                "one more tensor in a step (us)",
                round(per[1]["us"], 2),
                f"project_with_norm call {per[1]['baseline_us']:.1f} us",
                "<= 5 us",
                per[1]["us"] <= 5,
            )
        )
    else:
        out.append(_row("per recorded step outside the kernel (us)", None, "", "<= 30 us", None))
        out.append(_row("one more tensor in a step (us)", None, "", "<= 5 us", None))
    start = {r["command"]: r for r in (_load("startup") or {}).get("rows", [])}
    for name, goal in (
        ("gradmanifold info SAMPLE", 1.5),
        ("gradmanifold --help", 1.5),
        ("gradmanifold analyze --json SAMPLE (warm)", 2.5),
    ):
        r = start.get(name)
        x = round(r["x baseline"], 2) if r else None
        out.append(
            _row(name, x, "python -c 'import numpy, zarr'", f"<= {goal}x", x is not None and x <= goal)
        )
    ana = (_load("analyze") or {}).get("summary")
    if ana:
        out.append(
            _row(
                f"store read with checksums (GB/s), {ana['chunk_file_gb']:.2f} GB",
                round(ana["store_read_gb_s"], 2),
                f"raw file read {ana['raw_read_gb_s']:.1f} GB/s",
                ">= 3 GB/s",
                ana["store_read_gb_s"] >= 3,
            )
        )
        ratio = round(ana["analyze_over_max_read_floor"], 3)
        out.append(
            _row(
                "analyze / max(store read, in-memory floor)",
                ratio,
                f"read {ana['read_s']:.2f} s, floor {ana['floor_s']:.2f} s",
                "<= 1.2x",
                ratio <= 1.2,
            )
        )
    else:
        out.append(_row("store read with checksums (GB/s)", None, "raw file read", ">= 3 GB/s", None))
        out.append(_row("analyze / max(store read, in-memory floor)", None, "", "<= 1.2x", None))
    proj = {
        (r.get("kind"), r.get("s"), r.get("threads")): r for r in (_load("projection") or {}).get("rows", [])
    }
    p = proj.get(("sparse", 2, 1))
    out.append(
        _row(
            "sparse projection s=2, one core, Gparam/s / numpy sum",
            round(p["ratio"], 3) if p else None,
            f"numpy sum {p['roofline Gparam/s']:.2f} Gparam/s" if p else "numpy sum",
            ">= 0.75",
            p is not None and p["ratio"] >= 0.75,
        )
    )
    gpu = _load("gpu")
    if gpu is not None and "skipped" in gpu:
        out.append(
            {"what": "GPU (bench_gpu)", "measured": "skipped", "beside": gpu["skipped"], "goal": "", "": ""}
        )
    elif gpu is not None:
        g = gpu["gpt2"]
        out.append(
            _row(
                "GPU: Recorder on GPT-2 small, overhead",
                round(g["overhead"], 4),
                "plain step",
                "<= 0.02",
                g["overhead"] <= 0.02,
            )
        )
    return out


def main() -> None:
    print_table("speed goals (latest result of each benchmark in bench/results/)", rows())


if __name__ == "__main__":
    main()
