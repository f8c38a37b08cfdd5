"""Stateful: record, flush, reopen, rewind, crash, damage and repair in any order; after every rule the store
equals an in-memory model of what was committed (the same steps, each row exactly as written) and verifies.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from faultkit import GROUPS, SPEC, examples, make_row
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gradmanifold.store import StoreWriter, open_store
from gradmanifold.store.layout import chunk_file
from gradmanifold.store.repair import repair_store
from gradmanifold.store.verify import verify_store

C = 3  # rows per chunk: small, so that rules cross chunk boundaries often


class StoreModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="gm-state-"))
        self.path = self.dir / "r.zarr"
        self.committed: list[tuple[int, int]] = []  # (step, version) of each committed row
        self.pending: list[tuple[int, int]] = []  # what the open writer holds: committed prefix + buffer
        self.base = 0  # first row of the writer's buffer (a chunk boundary)
        self.version = 0
        self.writer: StoreWriter | None = None

    def teardown(self) -> None:
        if self.writer is not None:
            self.writer.abandon()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------------ writer rules
    @precondition(lambda self: self.writer is None)
    @rule()
    def open_writer(self) -> None:
        self.writer = StoreWriter(self.path, SPEC, GROUPS, chunk_rows=C, fsync=False)
        self.pending = list(self.committed)
        self.base = len(self.committed) // C * C

    @precondition(lambda self: self.writer is not None)
    @rule(n=st.integers(1, 5))
    def append(self, n: int) -> None:
        for _ in range(n):
            step = self.pending[-1][0] + 1 if self.pending else 0
            self._append(step)

    @precondition(lambda self: self.writer is not None and self.pending)
    @rule(back=st.integers(0, 10))
    def rewind(self, back: int) -> None:
        """A job restarted from a checkpoint: re-record a step at or below the last one."""
        keep = max(0, len(self.pending) - 1 - back)
        step = self.pending[keep][0]
        self.version += 1
        self.pending = self.pending[:keep]
        if keep < self.base:
            self.base = keep // C * C
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "rewinding: rows from step ... are replaced"
            self._append(step)

    def _append(self, step: int) -> None:
        assert self.writer is not None
        self.writer.append(step, *make_row(step, self.version), loss=float(step))
        self.pending.append((step, self.version))
        if len(self.pending) - self.base >= C:  # a full chunk is flushed at once
            self._committed_now()

    def _committed_now(self) -> None:
        self.committed = list(self.pending)
        self.base = len(self.committed) // C * C

    @precondition(lambda self: self.writer is not None)
    @rule()
    def flush(self) -> None:
        assert self.writer is not None
        self.writer.flush()
        self._committed_now()

    @precondition(lambda self: self.writer is not None)
    @rule()
    def close(self) -> None:
        assert self.writer is not None
        self.writer.close()
        self._committed_now()
        self.writer = None

    @precondition(lambda self: self.writer is not None)
    @rule()
    def crash(self) -> None:
        """The writer stops without committing (an error it gave up on): the buffered rows are lost."""
        assert self.writer is not None
        self.writer.abandon()
        self.writer = None

    # ------------------------------------------------------------------ damage and repair
    @precondition(lambda self: self.writer is None and self.committed)
    @rule(array=st.sampled_from(["proj", "sqnorm", "step", "flags", "loss"]))
    def damage_last_chunk_and_repair(self, array: str) -> None:
        last = (len(self.committed) - 1) // C
        f = chunk_file(self.path, array, last)
        f.write_bytes(f.read_bytes()[:-1])  # truncated
        assert not verify_store(self.path).ok
        result = repair_store(self.path, backup_dir=self.dir / "backups")
        assert result.rows_after == last * C
        self.committed = self.committed[: last * C]

    # ------------------------------------------------------------------ the store equals the model
    @invariant()
    def store_matches_model(self) -> None:
        if not self.path.exists():
            return
        r = open_store(self.path)
        assert r.n_steps == len(self.committed)
        chunks = list(r.iter_chunks())
        steps = np.concatenate([c.step for c in chunks]) if chunks else np.zeros(0, np.int64)
        assert steps.tolist() == [s for s, _ in self.committed]
        if chunks:
            proj = np.concatenate([c.proj for c in chunks])
            sq = np.concatenate([c.sqnorm for c in chunks])
            for i, (s, v) in enumerate(self.committed):
                want_proj, want_sq = make_row(s, v)
                np.testing.assert_array_equal(proj[i], want_proj)
                np.testing.assert_array_equal(sq[i], want_sq)
        assert r.verify() == []


StoreModel.TestCase.settings = settings(max_examples=examples(1 / 3), stateful_step_count=25, deadline=None)
test_store_model = StoreModel.TestCase


class StoreModelLong(StoreModel):
    pass


StoreModelLong.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_store_model_many = pytest.mark.slow(StoreModelLong.TestCase)
