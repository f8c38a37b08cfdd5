"""The update statistics of docs/UPDATES.md computed in the analysis pass, beside the predictors.

Fed the same chunks, validity masks and window segments as the predictor lanes; the scopes are the
analysis' scopes (the model sum of the selected groups, then each group). Rows before the counted range
(burn-in, or outside --start/--stop) do not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gradmanifold.store.chunk import Chunk
from gradmanifold.updates import UpdateAccumulator, UpdateStats


class UpdatePass:
    """Streams z (projected gradients) and w (projected updates) of every scope into an UpdateAccumulator."""

    def __init__(
        self,
        sel: Sequence[int],
        n_scopes: int,
        k: int,
        norms: str,
        cols: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.sel = list(sel)
        self.cols = cols  # positions in sel of each scope's groups after the model (None: one group each)
        self.n_scopes = n_scopes
        self.norms = norms
        self.acc = UpdateAccumulator(n_scopes, k)
        self.windows: list[list[UpdateStats]] = []

    def _scopes(self, a: np.ndarray) -> np.ndarray:
        """[n, G, ...] per group -> [n, S, ...]: the model (sum of the selected groups) then each group, or
        each module (the sum of its groups)."""
        x = np.asarray(a, dtype=np.float64)[:, self.sel]
        model = x.sum(axis=1, keepdims=True)
        if self.n_scopes == 1:
            return model
        if self.cols is not None:
            x = np.stack([x[:, list(c)].sum(axis=1) for c in self.cols], axis=1)
        return np.concatenate([model, x], axis=1)

    def feed(
        self, chunk: Chunk, valid: np.ndarray, counted: np.ndarray, segments: list[tuple[int, int, bool]]
    ) -> None:
        """Add a chunk's rows; `segments` (a, b, closes_window) as the analysis cut them."""
        if chunk.update is None or chunk.update_sqnorm is None:
            return
        z = self._scopes(chunk.proj)
        w = self._scopes(chunk.update)
        usq = self._scopes(chunk.update_sqnorm)
        ok = valid & counted[:, None]
        for a, b, close in segments:
            self.acc.add(z[a:b], w[a:b], ok[a:b], usq[a:b])
            if close:
                self.windows.append(self.acc.cut())

    def close_window(self) -> None:
        """The last (partial) window ends with the stream."""
        self.windows.append(self.acc.cut())

    def result(self, s: int) -> dict[str, Any]:
        """Scope s's statistics over the run, as JSON-ready data (`norms`: how ||u||^2 was had)."""
        return self._dict(self._run[s])

    def window(self, w: int, s: int) -> dict[str, Any]:
        return self._dict(self.windows[w][s])

    def finish(self) -> None:
        self._run = self.acc.finalize()

    def _dict(self, st: UpdateStats) -> dict[str, Any]:
        return {"norms": self.norms, "proxy": True, **st.to_dict()}
