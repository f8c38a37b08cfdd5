"""What the Recorder measures beside each step's projected gradient: layer spectra and parameter updates.

Layer spectra (docs/SPECTRA.md): the top singular values and ||G||_F^2 of every matrix-shaped gradient.
Parameter updates (docs/UPDATES.md): u_t = theta_t - theta_{t-1} between consecutive recorded steps,
projected with the gradient's own R, and ||u_t||^2.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from gradmanifold.errors import InputError
from gradmanifold.projection import ProjectionSpec
from gradmanifold.sharded import project_local


def numel(x: Any) -> int:
    if hasattr(x, "numel") and callable(x.numel):
        return int(x.numel())
    size = getattr(x, "size", None)
    if isinstance(size, int | np.integer):
        return int(size)
    return int(np.asarray(x).size)


def shape_of(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(int(d) for d in (shape if shape is not None else np.shape(x)))


def matrix_layers(named: list[tuple[str, Any]], top: int) -> list[tuple[str, tuple[int, int]]]:
    """The tensors whose spectra are recorded (ndim >= 2, read as shape[0] x the rest), with (m, n)."""
    layers = []
    for name, g in named:
        shape = shape_of(g) if g is not None else ()
        if len(shape) >= 2:
            layers.append((name, (shape[0], int(np.prod(shape[1:])))))
    if not layers:
        raise InputError(
            "spectra_every is set but no gradient has two or more dimensions (a singular spectrum needs a "
            "matrix: record a model with weight matrices, or dumps that keep each tensor's shape)"
        )
    biggest = max(min(mn) for _, mn in layers)
    if top > biggest:
        raise InputError(
            f"spectra_top={top} is more singular values than any layer has (the largest min(m, n) is "
            f"{biggest}); use spectra_top <= {biggest}"
        )
    return layers


def spectra_row(
    named: list[tuple[str, Any]], layers: list[tuple[str, tuple[int, int]]], q: int, seed: int
) -> dict[str, np.ndarray]:
    """Top singular values (NaN beyond a layer's min(m, n), or for a missing or non-finite gradient) and
    ||G||_F^2 of each recorded layer, computed where its gradient lives."""
    from gradmanifold.lowrank import top_singular_values

    grads = dict(named)
    sigma = np.full((len(layers), q), np.nan)
    frob = np.full(len(layers), np.nan)
    for i, (name, (m, n)) in enumerate(layers):
        g = grads.get(name)
        if g is None:
            continue
        if shape_of(g)[0] != m or numel(g) != m * n:
            raise InputError(f"gradient {name!r} changed shape: its spectra were recorded as {m} x {n}")
        try:
            mat = g.reshape(m, n) if hasattr(g, "reshape") else np.asarray(g).reshape(m, n)
            values, frob[i] = top_singular_values(mat, q, seed=seed)
        except InputError:  # non-finite: the main row flags it; the spectra row says NaN
            continue
        sigma[i, : len(values)] = values
    return {"spectra_sigma": sigma, "spectra_frob_sq": frob}


def copy_value(x: Any) -> Any:
    """A copy of a tensor or array that nothing else changes (a torch tensor stays where it is)."""
    if hasattr(x, "detach") and hasattr(x, "clone"):
        return x.detach().clone()
    return np.array(x, copy=True)


class UpdateTracker:
    """The projected update R(theta_t - theta_{t-1}) and ||theta_t - theta_{t-1}||^2 per group, between
    consecutive calls.

    mode "exact" keeps a copy of the previous parameters (one model's worth of memory, on the parameters'
    device) and projects the difference itself: in the parameters' dtype the difference of two nearby floats
    is exact (Sterbenz), so R u and ||u||^2 are as exact as the gradient's. mode "projected" keeps only the
    float64 projections R theta and differences them: no copy, but ||u||^2 is unknown (NaN) and the
    difference loses |R theta| * 1e-16 to cancellation. The first call (and the first after reset) has no
    previous parameters: None. Sharded parameters (DTensors, gradmanifold.sharded.Pieces) give this rank's
    share of R u and ||u||^2, which the Recorder sums over ranks; update(keep=False) then accept() keeps the
    parameters only once the row is known to be recorded.
    """

    def __init__(self, mode: str, spec: ProjectionSpec, where: Mapping[str, tuple[int, Any]], n_groups: int):
        self.plain = True  # whether this rank contributes unsharded parameters (rank 0 of a sharded job)
        self.mode = mode
        self.spec = spec
        self.where = where  # tensor name -> (group index, member with .offset, .size)
        self.groups = n_groups
        self.group_names: list[str] = []
        self._prev: dict[str, Any] | None = None
        self._prev_proj: np.ndarray | None = None
        self._next: tuple[dict[str, Any] | None, np.ndarray | None] | None = None

    def reset(self) -> None:
        """Forget the previous parameters (a rewind: the next update is unknown)."""
        self._prev = None
        self._prev_proj = None
        self._next = None

    def accept(self) -> None:
        """Remember the parameters of the last update(keep=False) call."""
        if self._next is not None:
            self._prev, self._prev_proj = self._next
            self._next = None

    def check(self, params: Mapping[str, Any]) -> None:
        """Raise InputError unless params name exactly the recorded tensors, with their sizes."""
        missing = sorted(set(self.where) - set(params))
        extra = sorted(set(params) - set(self.where))
        if missing or extra:
            raise InputError(
                "params must name the same tensors as the gradients: "
                + "; ".join(
                    part
                    for part in (
                        f"missing {missing[:5]}" if missing else "",
                        f"not recorded {extra[:5]}" if extra else "",
                    )
                    if part
                )
            )
        for name, p in params.items():
            size = self.where[name][1].size
            if numel(p) != size:
                raise InputError(f"parameter {name!r} has {numel(p)} elements but its gradient has {size}")

    def update(
        self, params: Mapping[str, Any], group_names: list[str], keep: bool = True, owned: bool = False
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(R u [G, k], ||u||^2 [G]) since the previous kept call (None, None on the first).

        params: name -> parameter, the recorded tensors. group_names: the groups, by index. keep: remember
        these parameters now (False: only once accept() is called). owned: params are copies nobody else
        changes (the Recorder's snapshots), kept without another copy.
        """
        self.check(params)
        k = self.spec.k
        if self.mode == "projected":
            proj = np.zeros((self.groups, k))
            for name, p in params.items():
                gi, member = self.where[name]
                proj[gi] += project_local(p, self.spec, group_names[gi], member.offset, self.plain)[0]
            prev, self._next = self._prev_proj, (None, proj)
            if keep:
                self.accept()
            if prev is None:
                return None, None
            return proj - prev, np.full(self.groups, np.nan)
        kept = dict(params) if owned else {name: copy_value(p) for name, p in params.items()}
        prev_params, self._next = self._prev, (kept, None)
        if keep:
            self.accept()
        if prev_params is None:
            return None, None
        w = np.zeros((self.groups, k))
        usq = np.zeros(self.groups)
        for name, p in params.items():
            gi, member = self.where[name]
            u = (p.detach() if hasattr(p, "detach") else np.asarray(p)) - prev_params[name]
            z, q = project_local(u, self.spec, group_names[gi], member.offset, self.plain)
            w[gi] += z
            usq[gi] += q
        return w, usq


def probe_row(kind: str, model: Any, result: Any, top: int) -> tuple[dict[str, int], dict[str, Any], dict]:
    """A probe as one row of its store table: (table sizes, meta, row); NaN for what was not probed.

    Every candidate parameter of the model has a place (matrix layers for "curvature", all parameters with
    requires_grad for "glass"), so probes of other layer selections share one table.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if kind == "curvature":
        mats = [(n, (int(p.shape[0]), int(np.prod(tuple(p.shape[1:]))))) for n, p in named if p.ndim >= 2]
        sigma = np.full((len(mats), top), np.nan)
        h = np.full((len(mats), top), np.nan)
        frob = np.full(len(mats), np.nan)
        for i, (name, _) in enumerate(mats):
            ly = result.layers.get(name)
            if ly is not None:
                sigma[i, : len(ly.sigma)] = ly.sigma
                h[i, : len(ly.h)] = ly.h
                frob[i] = ly.frob_sq
        meta = {"layers": [{"name": n, "shape": list(mn)} for n, mn in mats]}
        row = {"curvature_sigma": sigma, "curvature_h": h, "curvature_frob_sq": frob}
        return {"layers": len(mats), "q": top}, meta, row
    rho = np.full(len(named), np.nan)
    hm = np.full(len(named), np.nan)
    for i, (name, _) in enumerate(named):
        grp = result.groups.get(name)
        if grp is not None:
            rho[i], hm[i] = grp.rho_mean, grp.h_mean
    meta = {"params": [{"name": n, "shape": [int(d) for d in p.shape]} for n, p in named]}
    row = {"glass_sigma": np.asarray(result.sigma, np.float64), "glass_rho": rho, "glass_h": hm}
    return {"params": len(named)}, meta, row
