"""The unit that flows from the store to the analysis: a block of committed rows, plain numpy arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLAG_NONFINITE = np.uint8(1)
FLAG_SKIPPED = np.uint8(2)


@dataclass(frozen=True)
class Chunk:
    """Rows [row0, row0 + n) of a store (only committed rows), for a selection of groups.

    proj is float32 [n, G, k]; sqnorm float64 [n, G]; flags uint8 [n, G] (bit 0 non-finite, bit 1 skipped);
    step int64 [n]; loss and lr float64 [n] (NaN where not recorded) or None when the store has none.
    """

    row0: int
    step: np.ndarray
    proj: np.ndarray
    sqnorm: np.ndarray
    flags: np.ndarray
    loss: np.ndarray | None = None
    lr: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.step.shape[0])
