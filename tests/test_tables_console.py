"""Tables for models with many layers: names, width, --sort/--top, --by-module, one warning line per kind.

The store is a nanoGPT-like run (4 layers, 27 tensors: 28 scopes with the model) written with projections on a
grid of 1/64: their float32 sums are exact, so a store with the groups of each module recorded as one group
(the projection is additive: a module's projection is the sum of its tensors') must give a --by-module run
the same numbers to 1e-12.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import struct
import sys
import termios
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gradmanifold.analysis import analyze
from gradmanifold.errors import UsageError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.report import console, order
from gradmanifold.report.json import to_dict
from gradmanifold.report.names import common_prefix, elide, shorten
from gradmanifold.store import StoreWriter

sys.path.insert(0, str(Path(__file__).resolve().parent / "faults"))
from faultkit import assert_one_line_error, cli

PARTS = ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj")
NAMES = (
    ["transformer.wte.weight", "transformer.wpe.weight"]
    + [f"transformer.h.{i}.{p}.weight" for i in range(4) for p in PARTS]
    + ["transformer.ln_f.weight"]
)
BERT = ["model.embeddings.word.weight"] + [
    f"model.encoder.layers.{i}.attention.self.{q}.weight"
    for i in range(12)
    for q in ("query", "key", "value")
]
T, K = 96, 32
FLAG = (40, "transformer.h.1.mlp.c_fc.weight")  # one non-finite row
DEPTH = 3  # transformer.h.0, ..., transformer.wte.weight


def _rows() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """proj [T, G, K] on a 1/64 grid (shared slow drift plus noise of a different size per tensor), exact
    squared norms, updates on a 1/64 grid and their norms, flags."""
    rng = np.random.default_rng(7)
    g = len(NAMES)
    drift = np.cumsum(rng.standard_normal((T, 3, K)) * 0.3, axis=0)
    z = np.empty((T, g, K))
    for j in range(g):
        z[:, j] = np.einsum("c,tck->tk", rng.standard_normal(3) * (0.5 + j % 5), drift)
        z[:, j] += (0.2 + 0.15 * ((7 * j) % 11)) * rng.standard_normal((T, K))
    z = np.round(z * 64) / 64
    u = -np.round(np.roll(z, 1, axis=0) * 16 + rng.standard_normal(z.shape) * 4) / 64
    flags = np.zeros((T, g), np.uint8)
    flags[FLAG[0], NAMES.index(FLAG[1])] = 1
    return z, (z**2).sum(axis=2), u, (u**2).sum(axis=2), flags


def _write(path: Path, merge: int | None = None) -> None:
    z, sq, u, usq, flags = _rows()
    names = list(NAMES)
    sizes = [1000 + 10 * j for j in range(len(names))]
    if merge is not None:  # each module's tensors recorded as one group: every array summed over members
        modules: dict[str, list[int]] = {}
        for j, n in enumerate(names):
            modules.setdefault(".".join(n.split(".")[:merge]), []).append(j)
        members = list(modules.values())
        z, sq, u, usq = (np.stack([a[:, m].sum(axis=1) for m in members], axis=1) for a in (z, sq, u, usq))
        flags = np.stack([flags[:, m].max(axis=1) for m in members], axis=1)
        sizes = [sum(sizes[j] for j in m) for m in members]
        names = list(modules)
    spec = ProjectionSpec(k=K, seed=0)
    with StoreWriter(
        path, spec, list(zip(names, sizes, strict=True)), fsync=False, chunk_rows=32, updates="exact"
    ) as w:
        for t in range(T):
            w.append(t, z[t].astype(np.float32), sq[t], flags=flags[t], update=u[t], update_sqnorm=usq[t])


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("nano")
    _write(base / "nano.zarr")
    _write(base / "merged.zarr", merge=DEPTH)
    return {"nano": base / "nano.zarr", "merged": base / "merged.zarr"}


@pytest.fixture(scope="module")
def result(stores: dict[str, Path]) -> Any:
    return analyze(stores["nano"])


# ---------------------------------------------------------------------------------------------- names


def test_common_prefix() -> None:
    assert common_prefix(NAMES) == "transformer."
    assert common_prefix(["a.b.c", "a.b.d"]) == "a.b."
    assert common_prefix(["a.b", "a.b.c"]) == "a."  # every name keeps at least its last part
    assert common_prefix(["fc1", "fc2"]) == "" and common_prefix(["only.one"]) == ""


@pytest.mark.parametrize("names", [NAMES, BERT], ids=["nanogpt", "bert"])
def test_shorten_is_short_distinct_and_keeps_what_fits(names: list[str]) -> None:
    stripped = [n[len(common_prefix(names)) :] for n in names]
    for width in range(4, 50):
        got = shorten(stripped, width)
        assert all(len(s) <= width for s in got), width
        assert len(set(got)) == len(got), (width, got)
        for full, short in zip(stripped, got, strict=True):
            if len(full) <= width:
                assert short == full
    # a long name keeps its head and its distinguishing tail
    got = shorten([n[12:] for n in NAMES], 16)
    assert got[NAMES.index("transformer.h.2.attn.c_attn.weight")] == "h.2.a…ttn.weight"
    assert got[NAMES.index("transformer.h.2.attn.c_proj.weight")] == "h.2.a…roj.weight"
    assert got[NAMES.index("transformer.h.2.ln_1.weight")] == "h.2.ln_1.weight"


def test_elide() -> None:
    assert elide("abcdefghij", 10) == "abcdefghij"
    assert elide("abcdefghij", 7) == "ab…ghij"
    assert elide("abcdefghij", 7, head=0) == "…efghij"
    assert elide("abcdefghij", 1) == "…"


# ---------------------------------------------------------------------------------------------- width


def _tables(text: str) -> list[list[str]]:
    """The body rows of every table: the lines after a rule line, up to the next blank line."""
    lines = text.splitlines()
    out = []
    for i, line in enumerate(lines):
        if line.strip() and set(line.strip()) == {"─"}:
            rows = []
            for body in lines[i + 1 :]:
                if not body.strip():
                    break
                rows.append(body)
            out.append(rows)
    return out


@pytest.mark.parametrize("width", [80, 160])
def test_tables_fit_the_width_with_one_line_per_row(result: Any, width: int) -> None:
    text = console.render(result, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    tables = _tables(text)
    assert len(tables) == 4  # kappa, rank, bounds, updates
    short = ["model"] + [n.removeprefix("transformer.") for n in NAMES]
    for rows in tables:
        assert len(rows) == 28  # no cell wrapped onto a second line
        assert [r.split()[0] for r in rows] == short  # names without the shared prefix, in full
    assert "common prefix 'transformer.'" in text
    assert "transformer.h" not in "".join("".join(rows) for rows in tables)
    if width == 80:
        assert "some columns are left out" in text and "±" not in "".join(tables[0])
    else:
        assert "±" in "".join(tables[0]) and "top10" in text


@pytest.mark.parametrize("width", [60, 80])
def test_long_names_are_elided_not_wrapped(width: int) -> None:
    """Names longer than the room (a BERT-like model) keep head and tail, stay distinct, one line each."""
    from gradmanifold.store.chunk import ArraySource

    rng = np.random.default_rng(3)
    proj = rng.standard_normal((24, len(BERT), 8)).astype(np.float32)
    res = analyze(ArraySource(proj, (proj.astype(np.float64) ** 2).sum(axis=2), group_names=BERT))
    text = console.render(res, width=width)
    assert max(len(line) for line in text.splitlines()) <= width
    for rows in _tables(text):
        assert len(rows) == len(BERT) + 1
        names = [r.split()[0] for r in rows]
        assert len(set(names)) == len(names)
        full = [n.removeprefix("model.") for n in BERT]
        elided = [n for n, f in zip(names[1:], full, strict=True) if n != f]
        assert len(elided) == len(BERT) - 1 and all("…" in n for n in elided)  # all but the embeddings
        assert all(n.endswith("weight") for n in names[1:])  # the tail that names the tensor is kept
        assert all(re.search(rf"[.…]{i // 3}[.…]", n) for i, n in enumerate(names[2:])), names  # the layer


@pytest.mark.parametrize("columns", ["80", "160"])
def test_cli_width_from_columns(stores: dict[str, Path], columns: str) -> None:
    res = cli("analyze", str(stores["nano"]), env={"COLUMNS": columns})
    assert res.exit_code == 0, res.stderr
    widths = [len(line) for line in res.stdout.splitlines()]
    assert max(widths) <= int(columns)
    assert max(widths) > 120 if columns == "160" else True
    info = cli("info", str(stores["nano"]), env={"COLUMNS": columns})
    assert info.exit_code == 0 and max(len(x) for x in info.stdout.splitlines()) <= int(columns)
    assert "h.3.mlp.c_proj.weight" in info.stdout and "common prefix 'transformer.'" in info.stdout


def test_output_width() -> None:
    assert console.output_width(environ={"COLUMNS": "97"}) == 97
    assert console.output_width(environ={"COLUMNS": "10"}) == console.MIN_WIDTH
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 133, 0, 0))
        with os.fdopen(slave, "w", closefd=False) as tty:
            assert console.output_width(tty, environ={}) == 133  # the terminal's width
            assert console.output_width(tty, environ={"COLUMNS": "90"}) == 90  # COLUMNS says otherwise
    finally:
        os.close(master)
        os.close(slave)

    class Pipe:
        def isatty(self) -> bool:
            return False

    assert console.output_width(Pipe(), environ={}) == console.WIDTH  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- warnings


def test_one_warning_line_per_kind(result: Any) -> None:
    doc = to_dict(result)
    grows = [w for w in doc["warnings"] if "r* still grows with k" in w]
    excluded = [w for w in doc["warnings"] if "step(s) excluded" in w]
    assert len(grows) == 28 and len(excluded) == 2  # the JSON keeps every scope's warning
    text = console.render(result, width=160)
    lines = [line for line in text.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 2
    want_k = max(sc["rank"]["nested"]["suggested_k"] for sc in doc["scopes"].values())
    assert lines[0].startswith("warning: 28 of 28 scopes: r* still grows with k (most: ")
    assert f"record with k >= {want_k} (per scope in --json)" in " ".join(text.split())
    assert lines[1] == "warning: 2 of 28 scopes: 1 flagged step(s) excluded in each (per scope in --json)"


def test_single_warnings_are_kept_as_they_are(stores: dict[str, Path]) -> None:
    res = analyze(stores["nano"], groups=("transformer.wte.weight", "transformer.wpe.weight"))
    text = " ".join(console.render(res, width=200).split())
    assert "warning: 3 of 3 scopes: r* still grows" in text
    one = analyze(stores["nano"], groups=("transformer.wte.weight",))  # one group: its scope is the model
    warnings = [w for w in one.warnings if "grows" in w]
    assert len(warnings) == 1 and f"warning: {warnings[0]}" in " ".join(
        console.render(one, width=300).split()
    )


# ---------------------------------------------------------------------------------------------- sort, top


def _first_table_names(text: str) -> list[str]:
    return [row.split()[0] for row in _tables(text)[0]]


def test_top_shows_the_least_predictable(result: Any) -> None:
    doc = to_dict(result)

    def best(sc: dict[str, Any]) -> float:  # independently: the least kappa but zero's, best EMA included
        return min([v for p, v in sc["kappa"].items() if p != "zero"] + [sc["best_ema"]["kappa"]])

    others = {n: best(sc) for n, sc in doc["scopes"].items() if n != "model"}
    want = sorted(others, key=lambda n: -others[n])[:5]
    assert len(set(others.values())) == len(others)  # no ties: the order is defined
    text = console.render(result, width=160, top=5)
    assert _first_table_names(text) == ["model"] + [n.removeprefix("transformer.") for n in want]
    for rows in _tables(text):
        assert len(rows) == 6
    assert "the first 5 of 27 scopes, least predictable first" in text
    assert [sc.name for sc in order.order_scopes(result, top=5)][1:] == want
    assert order.best_kappa(result.scopes[want[0]]) == pytest.approx(others[want[0]], rel=1e-15)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("kappa:last", lambda sc: sc["kappa"]["last"]),
        ("kappa:EMA:0.90", lambda sc: sc["kappa"]["ema:0.9"]),
        ("r_star:0.1", lambda sc: sc["rank"]["r_star"]["0.1"]),
        ("pr", lambda sc: sc["rank"]["participation_ratio"]),
    ],
)
def test_sort_by_a_number(result: Any, key: str, value: Any) -> None:
    doc = to_dict(result)
    others = [n for n in doc["scopes"] if n != "model"]
    want = sorted(others, key=lambda n: (-value(doc["scopes"][n]), others.index(n)))  # ties: store order
    text = console.render(result, width=200, sort=order.parse_sort(key))
    assert _first_table_names(text) == ["model"] + [n.removeprefix("transformer.") for n in want]


def test_sort_by_name_and_store(result: Any) -> None:
    names = _first_table_names(console.render(result, width=200, sort=order.parse_sort("name")))
    assert names == ["model", *sorted(n.removeprefix("transformer.") for n in NAMES)]
    names = _first_table_names(console.render(result, width=200, sort=order.parse_sort("store"), top=3))
    assert names == ["model"] + [n.removeprefix("transformer.") for n in NAMES[:3]]


def test_cli_sort_and_top(stores: dict[str, Path]) -> None:
    res = cli("analyze", str(stores["nano"]), "--sort", "name", "--top", "4", env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.stderr
    assert _first_table_names(res.stdout) == ["model", *sorted(n[12:] for n in NAMES)[:4]]


# ---------------------------------------------------------------------------------------------- by module


def _same(got: Any, want: Any, where: str = "") -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for key in want:
            _same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _same(a, b, f"{where}.{i}")
    elif isinstance(want, float):
        assert isinstance(got, float) and math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-300), (
            where,
            got,
            want,
        )
    else:
        assert got == want, where


def test_by_module_equals_groups_recorded_as_one(stores: dict[str, Path]) -> None:
    mod = to_dict(analyze(stores["nano"], modules=DEPTH, window=40))
    merged = to_dict(analyze(stores["merged"], window=40))
    modules = ["transformer.wte.weight", "transformer.wpe.weight"] + [f"transformer.h.{i}" for i in range(4)]
    assert list(mod["scopes"]) == ["model", *modules, "transformer.ln_f.weight"]
    assert mod["config"]["modules"] == DEPTH and merged["config"]["modules"] is None
    assert mod["config"]["groups"] == NAMES  # the groups analyzed; the scopes sum them by module
    _same(mod["scopes"], merged["scopes"])  # kappa, intervals, r*, spectra, bounds, updates, excluded steps
    _same(mod["windows"], merged["windows"])
    assert mod["scopes"]["transformer.h.1"]["excluded_steps"] == 1  # flagged in one of its tensors
    assert mod["scopes"]["transformer.h.0"]["excluded_steps"] == 0
    assert "updates" in mod["scopes"]["transformer.h.2"]


def test_by_module_is_not_a_mean_of_kappas(stores: dict[str, Path], result: Any) -> None:
    """The module's kappa is that of the summed projections, not an average of its tensors' kappas."""
    mod = analyze(stores["nano"], modules=DEPTH)
    parts = [sc.kappa["last"] for n, sc in result.scopes.items() if n.startswith("transformer.h.0.")]
    assert len(parts) == 6
    assert not math.isclose(mod.scopes["transformer.h.0"].kappa["last"], float(np.mean(parts)), rel_tol=1e-3)


def test_by_module_one_module_is_the_model(stores: dict[str, Path]) -> None:
    one = analyze(stores["nano"], modules=1)
    assert list(one.scopes) == ["model", "transformer"]
    assert one.scopes["transformer"].kappa == one.scopes["model"].kappa
    deep = analyze(stores["nano"], modules=9)  # deeper than every name: one scope per group
    assert list(deep.scopes)[1:] == NAMES


def test_cli_by_module_tables_and_check(stores: dict[str, Path]) -> None:
    res = cli("analyze", str(stores["nano"]), "--by-module", "3", env={"COLUMNS": "80"})
    assert res.exit_code == 0, res.stderr
    assert "scopes: the model and 7 modules" in res.stdout
    assert _first_table_names(res.stdout) == [
        "model",
        "wte.weight",
        "wpe.weight",
        "h.0",
        "h.1",
        "h.2",
        "h.3",
        "ln_f.weight",
    ]
    doc = json.loads(cli("analyze", str(stores["nano"]), "--by-module", "3", "--json").stdout)
    value = doc["scopes"]["transformer.h.0"]["kappa"]["last"]
    ok = cli(
        "check",
        str(stores["nano"]),
        "--by-module",
        "3",
        "--max",
        f"scopes.transformer.h.0.kappa.last={value * 1.01}",
    )
    assert ok.exit_code == 0, ok.stdout + ok.stderr
    bad = cli(
        "check",
        str(stores["nano"]),
        "--by-module",
        "3",
        "--max",
        f"scopes.transformer.h.0.kappa.last={value * 0.99}",
    )
    assert bad.exit_code == 1 and "FAIL: scopes.transformer.h.0.kappa.last" in bad.stdout


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sort", "bogus"], "--sort 'bogus': unknown key; use one of store, name, kappa"),
        (["--sort", "kappa:zero"], "kappa of zero is 1 in every scope"),
        (["--sort", "kappa:lasst"], "unknown predictor 'lasst'"),
        (["--sort", "kappa:ema:0.95"], "ema:0.95 is not a reported predictor"),
        (["--sort", "kappa:ema:2"], "outside [0, 1)"),
        (["--sort", "r_star:2"], "is not a number in (0, 1)"),
        (["--sort", "r_star:x"], "is not a number in (0, 1)"),
        (["--sort", "r_star:0.3"], "eps 0.3 is not reported"),
        (["--sort", ""], "unknown key"),
        (["--top", "0"], "--top 0: give the number of scopes to show, at least 1"),
        (["--top", "-3"], "at least 1"),
        (["--json", "--top", "3"], "--json always holds every scope"),
        (["--json", "--sort", "name"], "--json always holds every scope"),
        (["--by-module", "0"], "--by-module 0: give a depth of at least 1"),
        (["--by-module", "-2"], "give a depth of at least 1"),
    ],
)
def test_bad_table_options_are_one_line(stores: dict[str, Path], args: list[str], words: str) -> None:
    msg = assert_one_line_error(cli("analyze", str(stores["nano"]), *args), 2)
    assert words in msg, msg


def test_bad_by_module_in_check(stores: dict[str, Path]) -> None:
    msg = assert_one_line_error(
        cli("check", str(stores["nano"]), "--by-module", "0", "--max", "model.kappa.last=1"), 2
    )
    assert "--by-module 0" in msg
    res = cli("analyze", str(stores["nano"]), "--by-module", "x")
    assert res.exit_code == 2 and "Traceback" not in res.stdout + res.stderr  # typer: not a valid integer


def test_a_module_named_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.zarr"
    with StoreWriter(
        path, ProjectionSpec(k=8), [("model.a", 4), ("model.b", 4), ("head", 4)], fsync=False
    ) as w:
        for t in range(4):
            w.append(t, np.ones((3, 8), np.float32) * t, np.ones(3))
    msg = assert_one_line_error(cli("analyze", str(path), "--by-module", "1"), 2)
    assert "a module is named 'model'" in msg and "give a larger depth" in msg
    assert cli("analyze", str(path), "--by-module", "2").exit_code == 0


def test_sort_keys_parse_canonically() -> None:
    assert order.parse_sort(" Kappa:EMA:0.90 ") == order.SortKey("predictor", "ema:0.9")
    assert order.parse_sort("r*:0.10").text == "r_star:0.1"
    with pytest.raises(UsageError):
        order.check_sort(order.parse_sort("kappa:trend"), ("zero", "last"), (0.1,))
    assert re.fullmatch(r"[a-z_:<>, ]+", ", ".join(order.KEYS))
