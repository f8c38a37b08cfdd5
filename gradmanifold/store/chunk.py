"""The unit that flows from the store to the analysis: a block of committed rows, plain numpy arrays."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

FLAG_NONFINITE = np.uint8(1)
FLAG_SKIPPED = np.uint8(2)


@dataclass(frozen=True)
class Chunk:
    """Rows [row0, row0 + n) of a store (only committed rows), for a selection of groups.

    proj is float32 [n, G, k]; sqnorm float64 [n, G]; flags uint8 [n, G] (bit 0 non-finite, bit 1 skipped);
    step int64 [n]; loss and lr float64 [n] (NaN where not recorded) or None when the store has none;
    update float32 [n, G, k] and update_sqnorm float64 [n, G] (NaN where unknown) or None without updates.
    """

    row0: int
    step: np.ndarray
    proj: np.ndarray
    sqnorm: np.ndarray
    flags: np.ndarray
    loss: np.ndarray | None = None
    lr: np.ndarray | None = None
    update: np.ndarray | None = None
    update_sqnorm: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.step.shape[0])

    def rows(self, a: int, b: int) -> Chunk:
        """Rows [a, b) of this chunk."""
        return Chunk(
            row0=self.row0 + a,
            step=self.step[a:b],
            proj=self.proj[a:b],
            sqnorm=self.sqnorm[a:b],
            flags=self.flags[a:b],
            loss=None if self.loss is None else self.loss[a:b],
            lr=None if self.lr is None else self.lr[a:b],
            update=None if self.update is None else self.update[a:b],
            update_sqnorm=None if self.update_sqnorm is None else self.update_sqnorm[a:b],
        )

    def select(self, groups: np.ndarray) -> Chunk:
        """The same rows for a selection of groups (by index)."""
        return Chunk(
            row0=self.row0,
            step=self.step,
            proj=self.proj[:, groups],
            sqnorm=self.sqnorm[:, groups],
            flags=self.flags[:, groups],
            loss=self.loss,
            lr=self.lr,
            update=None if self.update is None else self.update[:, groups],
            update_sqnorm=None if self.update_sqnorm is None else self.update_sqnorm[:, groups],
        )


class ChunkSource(Protocol):
    """What the analysis reads from: a committed store (StoreReader) or arrays in memory (ArraySource)."""

    @property
    def n_steps(self) -> int: ...  # committed rows

    @property
    def k(self) -> int: ...

    @property
    def group_names(self) -> tuple[str, ...]: ...

    @property
    def group_sizes(self) -> tuple[int, ...]: ...  # parameters per group (0 when unknown)

    @property
    def chunk_rows(self) -> int: ...  # natural rows per chunk

    def steps(self) -> np.ndarray: ...  # int64 [n_steps], strictly increasing

    def iter_chunks(
        self,
        row_start: int = 0,
        row_stop: int | None = None,
        groups: Sequence[int] | None = None,
        chunk_rows: int | None = None,
    ) -> Iterator[Chunk]: ...


class ArraySource:
    """A ChunkSource over arrays in memory: proj [T, G, k], sqnorm [T, G] (and optional step, flags)."""

    def __init__(
        self,
        proj: np.ndarray,
        sqnorm: np.ndarray,
        step: np.ndarray | None = None,
        flags: np.ndarray | None = None,
        group_names: Sequence[str] | None = None,
        group_sizes: Sequence[int] | None = None,
        chunk_rows: int = 1024,
    ) -> None:
        proj = np.asarray(proj)
        if proj.ndim == 2:
            proj = proj[:, None, :]
        if proj.ndim != 3:
            raise ValueError(f"proj must be [T, G, k] or [T, k], got shape {proj.shape}")
        t, g, _ = proj.shape
        self._proj = proj.astype(np.float32, copy=False)
        self._sqnorm = np.asarray(sqnorm, dtype=np.float64).reshape(t, g)
        self._step = np.arange(t, dtype=np.int64) if step is None else np.asarray(step, dtype=np.int64)
        self._flags = (
            np.zeros((t, g), np.uint8) if flags is None else np.asarray(flags, np.uint8).reshape(t, g)
        )
        self._names = tuple(group_names) if group_names is not None else tuple(f"g{i}" for i in range(g))
        self._sizes = tuple(group_sizes) if group_sizes is not None else (0,) * g
        self._chunk_rows = int(chunk_rows)
        self.excluded: list[object] = []  # always empty; StoreReader lists damaged chunks it skipped here

    @property
    def n_steps(self) -> int:
        return int(self._proj.shape[0])

    @property
    def k(self) -> int:
        return int(self._proj.shape[2])

    @property
    def group_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def group_sizes(self) -> tuple[int, ...]:
        return self._sizes

    @property
    def chunk_rows(self) -> int:
        return self._chunk_rows

    def steps(self) -> np.ndarray:
        return self._step

    def iter_chunks(
        self,
        row_start: int = 0,
        row_stop: int | None = None,
        groups: Sequence[int] | None = None,
        chunk_rows: int | None = None,
        *,
        skip_corrupt: bool = False,
    ) -> Iterator[Chunk]:
        """Rows [row_start, row_stop) in chunks; skip_corrupt is accepted for symmetry with StoreReader
        (arrays in memory have no damaged chunks: `excluded` stays empty)."""
        stop = self.n_steps if row_stop is None else min(row_stop, self.n_steps)
        size = chunk_rows or self._chunk_rows
        sel = slice(None) if groups is None else list(groups)
        for lo in range(row_start, stop, size):
            hi = min(lo + size, stop)
            yield Chunk(
                row0=lo,
                step=self._step[lo:hi],
                proj=self._proj[lo:hi][:, sel],
                sqnorm=self._sqnorm[lo:hi][:, sel],
                flags=self._flags[lo:hi][:, sel],
            )
