"""Reopening a store to append: the spec must match, and committed rows are re-read only when verified.

A writer that continues a store re-reads the committed steps and the committed rows of the chunk it goes on
filling. It checks each against the manifest's checksums first: re-committing unverified rows would give
damaged bytes a fresh, valid checksum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradmanifold.errors import CorruptStoreError, SpecMismatchError, StoreWriteError, one_line
from gradmanifold.projection import ProjectionSpec, fingerprint
from gradmanifold.store.layout import ARRAY_BY_NAME, TABLE_BY_NAME, checksum
from gradmanifold.store.manifest import GroupInfo, Manifest, TableState


def check_spec(root: Path, m: Manifest, spec: ProjectionSpec, groups: Sequence[GroupInfo]) -> None:
    """Raise SpecMismatchError naming every field in which (spec, groups) differ from the store's."""
    problems = []
    for key, want in spec.to_dict().items():
        have = m.projection.get(key)
        if have != want:
            problems.append(f"projection {key}: store has {have!r}, writer asks {want!r}")
    if not problems and m.fingerprint != fingerprint(spec):
        problems.append(
            f"projection fingerprint: store has {m.fingerprint}, this gradmanifold computes "
            f"{fingerprint(spec)} (the projection code changed)"
        )
    have_names = [g.name for g in m.groups]
    want_names = [g.name for g in groups]
    if have_names != want_names:
        missing = [n for n in have_names if n not in want_names]
        extra = [n for n in want_names if n not in have_names]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"new {extra}")
        if not detail:
            detail.append("same names in another order")
        problems.append(f"groups differ: {'; '.join(detail)}")
    else:
        for a, b in zip(m.groups, groups, strict=True):
            if a.size != b.size:
                problems.append(f"group {a.name!r} size: store has {a.size}, writer has {b.size}")
    if problems:
        raise SpecMismatchError(
            f"cannot append to {root}: " + "; ".join(problems) + "; a store holds one projection "
            "of one set of groups: resume with the store's settings, or record to a new store"
        )


def check_table(root: Path, name: str, have: TableState, dims: dict[str, int], meta: dict[str, Any]) -> None:
    """Raise SpecMismatchError when a table the writer asks for differs from the one the store holds."""
    problems = [
        f"{key}: store has {have.dims.get(key)}, writer asks {dims.get(key)}"
        for key in sorted(set(have.dims) | set(dims))
        if have.dims.get(key) != dims.get(key)
    ]
    for key in sorted(set(have.meta) | set(meta)):
        if have.meta.get(key) != meta.get(key):
            problems.append(f"{key} differ")
    if problems:
        raise SpecMismatchError(
            f"cannot append to table {name!r} of {root}: " + "; ".join(problems) + "; resume with the "
            "store's settings, or record to a new store"
        )


def read_committed_chunk(
    root: Path, arrays: Mapping[str, Any], m: Manifest, index: int, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """The committed rows of chunk `index` of each array in `names` (one table's), checked against the
    manifest."""
    t = m.table(ARRAY_BY_NAME[names[0]].table)
    c = t.chunk_rows
    lo, hi = index * c, min((index + 1) * c, t.n_rows)
    out: dict[str, np.ndarray] = {}
    for name in names:
        data: np.ndarray | None = None
        try:
            data = np.asarray(arrays[name][lo:hi])
        except OSError as exc:
            raise StoreWriteError(
                f"{root}: cannot read chunk {index} of {name!r}: {exc.strerror or exc}"
            ) from None
        except Exception as exc:  # the plain reader's ValueError names the file and what is wrong with it
            why = one_line(str(exc), 200) or type(exc).__name__
        else:
            why = "" if checksum(data) == t.checksums[name][index] else "checksum mismatch"
        if why or data is None:
            raise CorruptStoreError(
                f"{root}: chunk {index} of {name!r} (rows {lo}..{hi - 1}) is damaged ({why}), so "
                "the writer cannot append after it; run `gradmanifold verify` to list the damage and "
                "`gradmanifold repair` to drop the damaged tail"
            )
        out[name] = data
    return out


def load_committed_steps(root: Path, arrays: Mapping[str, Any], m: Manifest, table: str) -> np.ndarray:
    """The step of every committed row of `table`, verified chunk by chunk, strictly increasing up to its
    last step."""
    t = m.table(table)
    key = TABLE_BY_NAME[table].step
    n_rows, c = t.n_rows, t.chunk_rows
    steps: np.ndarray | None
    try:  # one read (zarr fetches the chunks concurrently), then each chunk checked
        steps = np.asarray(arrays[key][:n_rows], dtype=np.int64)
    except OSError as exc:
        raise StoreWriteError(f"{root}: cannot read the committed steps: {exc.strerror or exc}") from None
    except Exception:
        steps = None
    for i in range(t.n_chunks):
        lo, hi = i * c, min((i + 1) * c, n_rows)
        if steps is None or checksum(steps[lo:hi]) != t.checksums[key][i]:
            steps = None
            read_committed_chunk(root, arrays, m, i, (key,))  # raises, naming the chunk, when damaged
    if steps is None:  # the bulk read failed, yet every chunk verifies alone: use those
        parts = [read_committed_chunk(root, arrays, m, i, (key,))[key] for i in range(t.n_chunks)]
        steps = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    if n_rows and (int(steps[-1]) != t.last_step or np.any(np.diff(steps) <= 0)):
        raise CorruptStoreError(
            f"{root}: the committed steps of {key!r} are not strictly increasing up to last step "
            f"{t.last_step}; run `gradmanifold verify`"
        )
    return steps
