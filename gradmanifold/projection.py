"""Seeded random projection of gradients to k dims: a pure function of (seed, group, index).

INTERFACE PLACEHOLDER: the implementation lands with the projection kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Kind = Literal["sparse", "gaussian"]


@dataclass(frozen=True)
class ProjectionSpec:
    """What identifies a projection: output dims k, seed, kind and (sparse) nonzeros per input coordinate."""

    k: int = 256
    seed: int = 0
    kind: Kind = "sparse"
    s: int = 4

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "seed": self.seed, "kind": self.kind, "s": self.s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProjectionSpec:
        return cls(k=int(d["k"]), seed=int(d["seed"]), kind=d["kind"], s=int(d["s"]))


def project_with_norm(x: Any, spec: ProjectionSpec, group: str, offset: int = 0) -> tuple[np.ndarray, float]:
    """Project x (flattened, starting at `offset` within its group) to float64[k]; also its exact ||x||^2."""
    raise NotImplementedError


def fingerprint(spec: ProjectionSpec) -> str:
    """Hex digest of the projection of a fixed probe vector: changes whenever the projection would."""
    raise NotImplementedError
