"""Which tensors make up each recorded group, and reading a step's tensors from what record() was given."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gradmanifold.errors import InputError

GroupsArg = None | Literal["auto", "single", "tensor"] | Mapping[str, str | Sequence[str]]
SINGLE_GROUP = "all"
OTHER_GROUP = "other"


@dataclass(frozen=True)
class _Member:
    tensor: str
    offset: int
    size: int


@dataclass(frozen=True)
class _Layout:
    """Which tensors make up each group, at which offset within the group's flattened gradient."""

    groups: tuple[tuple[str, tuple[_Member, ...]], ...]

    @property
    def sizes(self) -> list[tuple[str, int]]:
        return [(name, sum(m.size for m in members)) for name, members in self.groups]


def _named_tensors(grads: Any) -> list[tuple[str, Any]]:
    """(name, gradient or None) pairs from a torch Module (named as unwrapped: gradmanifold.sharded), a
    mapping name -> array, or one array."""
    if hasattr(grads, "named_parameters") and callable(grads.named_parameters):
        from gradmanifold.sharded import module_tensors

        return module_tensors(grads, "grad")
    if isinstance(grads, Mapping):
        out = []
        for name, value in grads.items():
            if not isinstance(name, str):
                raise InputError(f"gradient mapping keys must be strings, found {type(name).__name__}")
            out.append((name, value))
        return out
    if hasattr(grads, "__array__") or hasattr(grads, "__dlpack__") or isinstance(grads, np.ndarray):
        return [(SINGLE_GROUP, grads)]
    raise InputError(
        f"cannot record a {type(grads).__name__}: pass a torch Module, a mapping name -> array, or one array"
    )


def _module_prefix(name: str, depth: int) -> str:
    parts = name.split(".")
    return ".".join(parts[: min(depth, max(len(parts) - 1, 1))])


def _build_layout(tensors: list[tuple[str, int]], groups: GroupsArg, max_groups: int) -> _Layout:
    """Group tensors: one per tensor up to max_groups, else by module prefix; or as the user mapped them."""
    assign: dict[str, list[tuple[str, int]]] = {}
    if groups in (None, "auto"):
        if len(tensors) <= max_groups:
            key = {n: n for n, _ in tensors}
        else:
            depth = max((len(n.split(".")) for n, _ in tensors), default=1)
            while depth > 0 and len({_module_prefix(n, depth) for n, _ in tensors}) > max_groups:
                depth -= 1
            key = {n: (_module_prefix(n, depth) if depth else SINGLE_GROUP) for n, _ in tensors}
    elif groups == "single":
        key = {n: SINGLE_GROUP for n, _ in tensors}
    elif groups == "tensor":
        key = {n: n for n, _ in tensors}
    elif isinstance(groups, Mapping):
        patterns = {g: [p] if isinstance(p, str) else list(p) for g, p in groups.items()}
        key = {}
        for n, _ in tensors:
            key[n] = next(
                (g for g, pats in patterns.items() if any(fnmatch.fnmatchcase(n, p) for p in pats)),
                OTHER_GROUP,
            )
    else:
        raise InputError(f"groups must be None, 'auto', 'single', 'tensor' or a mapping, not {groups!r}")
    for n, size in tensors:
        assign.setdefault(key[n], []).append((n, size))
    out = []
    for g, members in assign.items():
        offset = 0
        ms = []
        for n, size in members:
            ms.append(_Member(n, offset, size))
            offset += size
        out.append((g, tuple(ms)))
    return _Layout(tuple(out))


def _params(grads: Any, params: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The parameters beside the gradients: given, or a Module's own (those with requires_grad)."""
    if params is not None:
        if not isinstance(params, Mapping):
            raise InputError(f"params must be a mapping name -> array, not {type(params).__name__}")
        return params
    if hasattr(grads, "named_parameters") and callable(grads.named_parameters):
        from gradmanifold.sharded import module_tensors

        return dict(module_tensors(grads, "param"))
    raise InputError(
        "updates are recorded but record() got no params: pass params={name: array} with the same names "
        "and shapes as the gradients (a torch Module gives its own)"
    )


def _scalar(v: Any) -> float | None:
    if v is None:
        return None
    try:
        return float(v.item() if hasattr(v, "item") else v)
    except (TypeError, ValueError):
        raise InputError(f"loss and lr must be numbers, not {type(v).__name__}") from None
