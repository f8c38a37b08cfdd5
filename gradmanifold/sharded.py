"""Sharded gradients: each rank projects its own piece at its global offsets; one all-reduce sums them.

The projection is a pure function of (seed, group, global index), so the projection of a tensor is the sum of
the projections of any partition of it, each piece projected at its global indices (docs/SHARDED.md). This
module finds the pieces a rank holds and combines the ranks' rows:

- DTensor (FSDP2 `fully_shard`, tensor parallel): the local block of a Shard(d)/Replicate placement, from
  its global offset; a block is a set of contiguous runs of the global C-order flattening (block_runs). On a
  mesh dimension with a Replicate placement only coordinate 0 contributes, so a replicated value counts once.
- FSDP1 FlatParameter (use_orig_params False or True): each original parameter's slice of the rank's flat
  shard, at its start index in that parameter (`_shard_param_infos`); named by the original parameter.
- Exchange: one float64 all-reduce (SUM) per recorded step of [G, k] rows, [G] squared norms, [G] presence
  counts, the update rows when recorded, and two stop counters, so that an error on any rank stops every rank
  at the same step: no rank ever waits in a collective the others left.

torch (and the projection kernels) are imported only inside the functions that need them: wrap mode
imports this module at an optimizer's first step on every rank, also where it then records nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import sys
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gradmanifold.errors import InputError

if TYPE_CHECKING:
    from gradmanifold.projection import ProjectionSpec

#: seconds a rank waits, at its first record(), for every other rank's first record()
HANDSHAKE_TIMEOUT_S = 120.0
#: the name prefix a wrapper module adds to its inner module's parameter names (dropped from tensor names)
WRAPPER_PREFIXES = {
    "DistributedDataParallel": "module.",
    "DataParallel": "module.",
    "FullyShardedDataParallel": "_fsdp_wrapped_module.",
    "OptimizedModule": "_orig_mod.",
}
FSDP1_SEGMENT = "_fsdp_wrapped_module."
FLAT_PARAM = "_flat_param"
_HYBRID = ("HYBRID_SHARD", "_HYBRID_SHARD_ZERO2")


@dataclass(frozen=True)
class Pieces:
    """This rank's part of one tensor of global `shape`: runs of its C-order flattening.

    Each part is (values, starts, run): `values` (flat, len(starts) * run) holds runs of `run` consecutive
    global indices, the r-th starting at starts[r]. No parts: this rank contributes nothing to the tensor.
    Supports what the update tracker needs of a tensor: numel, detach, clone, subtraction.
    """

    shape: tuple[int, ...]
    parts: tuple[tuple[Any, np.ndarray, int], ...]

    def numel(self) -> int:
        return math.prod(self.shape)

    def detach(self) -> Pieces:
        return Pieces(self.shape, tuple((_detach(v), s, r) for v, s, r in self.parts))

    def clone(self) -> Pieces:
        return Pieces(self.shape, tuple((_clone(v), s, r) for v, s, r in self.parts))

    def __sub__(self, other: Pieces) -> Pieces:
        if not isinstance(other, Pieces) or len(other.parts) != len(self.parts):
            raise InputError("a sharded parameter changed how it is sharded between two recorded steps")
        return Pieces(
            self.shape,
            tuple((a - b, s, r) for (a, s, r), (b, _, _) in zip(self.parts, other.parts, strict=True)),
        )


def _detach(v: Any) -> Any:
    return v.detach() if hasattr(v, "detach") else v


def _clone(v: Any) -> Any:
    return v.detach().clone() if hasattr(v, "clone") else np.array(v, copy=True)


def _is_dtensor(x: Any) -> bool:
    mod = sys.modules.get("torch.distributed.tensor")
    cls = getattr(mod, "DTensor", None) if mod is not None else None
    return cls is not None and isinstance(x, cls)


def is_distributed(x: Any) -> bool:
    """True for a value that holds only this rank's part of a tensor (a DTensor or Pieces)."""
    return isinstance(x, Pieces) or _is_dtensor(x)


def rank() -> int:
    """This process's rank in the default process group (0 when torch.distributed is not initialised)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return 0


def block_runs(
    local_shape: Sequence[int], global_shape: Sequence[int], offset: Sequence[int]
) -> tuple[np.ndarray, int]:
    """(starts, run): the block local_shape at `offset` in a C-order tensor of global_shape, as runs.

    The dimensions after the last one the block cuts are whole, so the block is prod(local_shape[:j]) runs of
    prod(local_shape[j:]) consecutive global indices, j the last cut dimension; in the block's own C order.
    """
    lo, gs, off = tuple(map(int, local_shape)), tuple(map(int, global_shape)), tuple(map(int, offset))
    if len(lo) != len(gs) or len(off) != len(gs):
        raise InputError(f"a block {lo} at {off} does not fit a tensor of shape {gs}")
    if any(o < 0 or o + n > g for o, n, g in zip(off, lo, gs, strict=True)):
        raise InputError(f"a block {lo} at {off} lies outside a tensor of shape {gs}")
    if math.prod(lo) == 0:
        return np.zeros(0, np.int64), 0
    cut = [i for i in range(len(gs)) if lo[i] != gs[i]]
    if not cut:
        return np.zeros(1, np.int64), math.prod(gs)
    j = cut[-1]
    stride = [math.prod(gs[i + 1 :]) for i in range(len(gs))]
    starts = np.full(1, off[j] * stride[j], np.int64)
    for i in range(j - 1, -1, -1):  # outer dimensions vary slowest: C order of the block's runs
        rows = (off[i] + np.arange(lo[i], dtype=np.int64)) * stride[i]
        starts = (rows[:, None] + starts[None, :]).reshape(-1)
    return starts, math.prod(lo[j:])


def dtensor_pieces(x: Any) -> Pieces:
    """This rank's runs of a DTensor (placements Shard(d) and Replicate only)."""
    shape = tuple(int(d) for d in x.shape)
    mesh, placements = x.device_mesh, tuple(x.placements)
    key = (shape, mesh, placements)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan(shape, mesh, placements)
    local_shape, starts, run = plan
    if not run:
        return Pieces(shape, ())
    local = getattr(x, "_local_tensor", None)  # what to_local() returns, without its autograd wrapper
    local = (x.to_local() if local is None else local).detach()
    if tuple(local.shape) != local_shape:
        raise InputError(
            f"a DTensor's local shard has shape {tuple(local.shape)}, not the {local_shape} its "
            "placements give; cannot place it in the whole tensor"
        )
    return Pieces(shape, ((local.reshape(-1), starts, run),))


_PLANS: dict[tuple[Any, ...], tuple[tuple[int, ...], np.ndarray, int]] = {}


def _plan(
    shape: tuple[int, ...], mesh: Any, placements: tuple[Any, ...]
) -> tuple[tuple[int, ...], np.ndarray, int]:
    """(local shape, run starts, run length) of this rank's block of a DTensor; no runs where it contributes
    nothing (not in the mesh, or not coordinate 0 of a mesh dimension it is replicated on)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    for p in placements:
        if type(p) not in (Shard, Replicate):
            raise InputError(
                f"cannot record a DTensor with placement {p}: only Shard(dim) and Replicate are supported "
                "(a Partial gradient is not reduced yet; a strided shard, FSDP2 over tensor parallel, is not "
                "placed yet); see docs/SHARDED.md"
            )
    coord = mesh.get_coordinate()
    if coord is None or any(isinstance(p, Replicate) and c for p, c in zip(placements, coord, strict=True)):
        return (), np.zeros(0, np.int64), 0
    local_shape, offset = compute_local_shape_and_global_offset(shape, mesh, placements)
    starts, run = block_runs(local_shape, shape, offset)
    return tuple(int(d) for d in local_shape), starts, run


# ------------------------------------------------------------------------------------------- FSDP1 (flat)


def fsdp1_index(modules: Iterable[Any]) -> dict[int, tuple[Any, int | None]]:
    """id(parameter) -> (FlatParamHandle, index of the original parameter, None for the FlatParameter).

    modules: every module to look in (FullyShardedDataParallel instances are recognised by their handle).
    Hybrid sharding (shards replicated across nodes) is refused: its replicas would be counted twice.
    """
    out: dict[int, tuple[Any, int | None]] = {}
    for m in modules:
        handle = getattr(m, "_handle", None)
        flat = getattr(handle, "flat_param", None)
        if type(m).__name__ != "FullyShardedDataParallel" or flat is None:
            continue
        strategy = getattr(getattr(handle, "_sharding_strategy", None), "name", "")
        if strategy in _HYBRID:
            raise InputError(
                f"FSDP with sharding_strategy={strategy} keeps a copy of each shard per node; gradmanifold "
                "records FULL_SHARD, SHARD_GRAD_OP and NO_SHARD (or FSDP2 fully_shard); see docs/SHARDED.md"
            )
        out[id(flat)] = (handle, None)
        for i, p in enumerate(getattr(flat, "_params", None) or ()):  # use_orig_params=True: the originals
            out[id(p)] = (handle, i)
    return out


def clean_name(name: str) -> str:
    """A parameter name without FSDP1's wrapper segments: `_fsdp_wrapped_module.0.weight` -> `0.weight`."""
    return name.replace(FSDP1_SEGMENT, "")


def expand(
    name: str, value: Any, entry: tuple[Any, int | None] | None, this_rank: int
) -> list[tuple[str, Any]]:
    """(tensor name, value) pairs for one parameter's gradient or data `value` (None: no gradient).

    entry: the parameter's fsdp1_index entry, None for any other parameter (returned as it is). A
    FlatParameter gives one Pieces per original parameter, named `<module path>.<original name>`; an original
    parameter of use_orig_params=True gives its own Pieces. Without sharding (NO_SHARD) rank 0 contributes.
    """
    if entry is None:
        return [(name, value)]
    handle, index = entry
    flat_param = handle.flat_param
    infos, shapes = flat_param._shard_param_infos, flat_param._shapes
    contributes = bool(handle.uses_sharded_strategy) or this_rank == 0
    flat = value.detach().reshape(-1) if value is not None else None

    def piece(i: int, values: Any, start_in_values: int) -> Pieces:
        info, shape = infos[i], tuple(int(d) for d in shapes[i])
        if not (contributes and info.in_shard and values is not None):
            return Pieces(shape, ())
        n = int(info.numel_in_shard)
        part = values[start_in_values : start_in_values + n]
        return Pieces(shape, ((part, np.array([int(info.intra_param_start_idx)], np.int64), n),))

    cleaned = clean_name(name)
    if index is not None:
        return [(cleaned, piece(index, flat, 0))]
    prefix = cleaned[: -len(FLAT_PARAM)] if cleaned.endswith(FLAT_PARAM) else cleaned + "."
    return [
        (prefix + fqn, piece(i, flat, int(infos[i].offset_in_shard or 0)))
        for i, fqn in enumerate(flat_param._fqns)
    ]


_MODULE_INDEX: weakref.WeakKeyDictionary[Any, dict[int, tuple[Any, int | None]]] = weakref.WeakKeyDictionary()


_PLAIN_TYPES: dict[type, bool] = {}


def plain_parameters(model: Any) -> list[tuple[str, Any]] | None:
    """model.named_parameters() read straight from each module's _modules and _parameters (~1 us a module
    against ~5 for torch's generators): the same names in the same order, each module and parameter once.
    None when a module's class overrides how torch lists them (then ask the module)."""
    out: list[tuple[str, Any]] = []
    seen_modules: set[int] = set()
    seen_params: set[int] = set()
    stack = [("", model)]
    while stack:
        prefix, mod = stack.pop()
        if id(mod) in seen_modules:
            continue
        seen_modules.add(id(mod))
        cls = type(mod)
        plain = _PLAIN_TYPES.get(cls)
        if plain is None:
            plain = _PLAIN_TYPES[cls] = _lists_like_torch(cls)
        if not plain:
            return None
        for key, p in mod._parameters.items():
            if p is None or id(p) in seen_params:
                continue
            seen_params.add(id(p))
            out.append((f"{prefix}.{key}" if prefix else key, p))
        children = [
            (f"{prefix}.{key}" if prefix else key, m) for key, m in mod._modules.items() if m is not None
        ]
        stack.extend(reversed(children))  # depth first, in registration order: torch's named_modules order
    return out


def _lists_like_torch(cls: type) -> bool:
    """Whether a Module class lists its parameters as torch.nn.Module does (no override of the methods that
    named_parameters goes through)."""
    import torch

    base = torch.nn.Module
    names = ("named_parameters", "named_modules", "_named_members", "parameters")
    return issubclass(cls, base) and all(getattr(cls, n, None) is getattr(base, n) for n in names)


def module_tensors(model: Any, what: str) -> list[tuple[str, Any]]:
    """(name, gradient) (what="grad") or (name, detached parameter) (what="param") of a torch Module's
    parameters with requires_grad, named as in the unwrapped model: a wrapper's prefix (DDP's `module.`,
    torch.compile's `_orig_mod.`, FSDP1's segments) is dropped and FSDP1 flat parameters are expanded."""
    try:
        index = _MODULE_INDEX[model]
    except (KeyError, TypeError):
        index = fsdp1_index(model.modules())
        with contextlib.suppress(TypeError):
            _MODULE_INDEX[model] = index
    prefix = WRAPPER_PREFIXES.get(type(model).__name__, "")
    if not index and not prefix:  # the common case, once per recorded step: no FSDP1, no wrapper
        named = plain_parameters(model)
        if named is None:
            named = list(model.named_parameters())
        if what == "grad":
            return [(n, p.grad) for n, p in named if p.requires_grad]
        return [(n, p.detach()) for n, p in named if p.requires_grad]
    this_rank = rank() if index else 0
    out: list[tuple[str, Any]] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if prefix and name.startswith(prefix):
            name = name[len(prefix) :]
        value = p.grad if what == "grad" else p.detach()
        out.extend(expand(name, value, index.get(id(p)), this_rank))
    return out


# ------------------------------------------------------------------------------------------- projection


def project_local(
    x: Any, spec: ProjectionSpec, group: str, offset: int = 0, plain: bool = True
) -> tuple[np.ndarray, float]:
    """This rank's share of the projection and squared norm of x at `offset` in its group.

    x: an array or tensor (all of it), a DTensor (its local block) or Pieces. Summed over ranks, the shares
    give the projection of the whole tensor. plain: whether this rank contributes a plain (unsharded) x; in a
    sharded job a plain tensor is replicated on every rank, so only rank 0 contributes it.
    """
    from gradmanifold.projection import project_runs_with_norm, project_with_norm

    if _is_dtensor(x):
        x = dtensor_pieces(x)
    if not isinstance(x, Pieces):
        return project_with_norm(x, spec, group, offset) if plain else (np.zeros(spec.k), 0.0)
    z, q = np.zeros(spec.k), 0.0
    for values, starts, run in x.parts:
        zr, qr = project_runs_with_norm(values, spec, group, starts + int(offset), run)
        z += zr
        q += qr
    return z, q


def member_of(where: Mapping[str, tuple[int, Any]], name: str, n: int | None) -> tuple[int, Any]:
    """(group index, member) of a recorded tensor; InputError for a tensor not in the layout or, given its
    size n, one whose size changed."""
    got = where.get(name)
    if got is None:
        raise InputError(
            f"gradient {name!r} is not in the recorded layout ({len(where)} tensors known); "
            "the set of recorded tensors must stay the same from step to step"
        )
    if n is not None and n != got[1].size:
        raise InputError(
            f"gradient {name!r} has {n} elements, but {got[1].size} were recorded before; "
            "a group's shape cannot change within a store"
        )
    return got


def project_named(
    named: Sequence[tuple[str, Any]],
    spec: ProjectionSpec,
    where: Mapping[str, tuple[int, Any]],
    group_names: list[str],
    plain: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: this rank's share of the float64 projection, the squared norm, and the tensors present.

    named: (name, tensor or None) of a step. where: name -> (group index, member with .offset and .size).
    plain: whether this rank contributes unsharded tensors (rank 0: they are replicated on every rank).
    """
    g = len(group_names)
    proj, sqnorm, present = np.zeros((g, spec.k)), np.zeros(g), np.zeros(g, np.int64)
    for name, grad in named:
        if grad is None:
            member_of(where, name, None)
            continue
        n = int(grad.numel()) if callable(getattr(grad, "numel", None)) else int(np.size(grad))
        gi, member = member_of(where, name, n)
        z, q = project_local(grad, spec, group_names[gi], member.offset, plain)
        proj[gi] += z
        sqnorm[gi] += q
        present[gi] += 1
    return proj, sqnorm, present


def refuse_spectra(named: Sequence[tuple[str, Any]]) -> None:
    """Raise for layer spectra of sharded gradients: a singular spectrum needs the whole matrix."""
    sharded = [n for n, g in named if is_distributed(g)]
    if sharded:
        raise InputError(
            f"spectra_every needs each layer's whole gradient matrix, but {sharded[0]!r} is sharded across "
            "ranks (FSDP, tensor parallel); record with spectra_every=0 (no --spectra-every), or record "
            "spectra from an unsharded run"
        )


# ------------------------------------------------------------------------------------------- the collective


class Exchange:
    """The ranks' side of one distributed Recorder: a handshake at the first step, then one all-reduce of
    a packed float64 buffer per recorded step (collective order is the same on every rank)."""

    _count = 0  # distributed Recorders made by this process: the n-th pairs with every rank's n-th

    def __init__(self, fingerprint: str, timeout: float | None = None) -> None:
        """Wait for every rank's matching Exchange (same fingerprint: tensors, groups and projection).

        fingerprint: what must agree across ranks. timeout: seconds to wait for the other ranks
        (HANDSHAKE_TIMEOUT_S). Raises InputError, on every rank, when a rank does not come or disagrees.
        """
        import torch
        import torch.distributed as dist

        self.rank = int(dist.get_rank())
        self.world = int(dist.get_world_size())
        backend = str(dist.get_backend())
        use_cuda = "gloo" not in backend and torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
        self.stop_pending = False
        Exchange._count += 1
        ns = f"gradmanifold/recorder/{Exchange._count}"
        timeout = HANDSHAKE_TIMEOUT_S if timeout is None else timeout
        try:
            store = dist.distributed_c10d._get_default_store()
        except Exception:  # a process group without a key-value store: no handshake, the all-reduce meets
            return
        digest = hashlib.blake2b(fingerprint.encode(), digest_size=16).hexdigest()
        if self.rank == 0:
            store.set(f"{ns}/layout", digest)
        if int(store.add(f"{ns}/arrived", 1)) == self.world:
            store.compare_set(f"{ns}/verdict", "", "ok")
        verdict = _wait_verdict(store, f"{ns}/verdict", timeout)
        if verdict != "ok":
            raise InputError(
                f"rank {self.rank}: waited {timeout:g} s for all {self.world} ranks to call record(): with "
                "sharded parameters (FSDP, tensor parallel) every rank must call record() at the same steps "
                "(rank 0 writes the store); see docs/SHARDED.md"
            )
        same = store.get(f"{ns}/layout").decode() == digest
        store.add(f"{ns}/differ", 0 if same else 1)
        if int(store.add(f"{ns}/checked", 1)) == self.world:
            store.compare_set(f"{ns}/agreed", "", str(int(store.add(f"{ns}/differ", 0))))
        differ = _wait_verdict(store, f"{ns}/agreed", timeout)
        if differ != "0":
            raise InputError(
                f"{differ} rank(s) record other tensors, sizes, groups or projection than rank 0: every rank "
                "must record the same model with the same options"
            )

    def step(self, local: Any, g: int, k: int, updates: bool) -> tuple[Combined, Exception | None]:
        """Run local() (this rank's (proj [g, k], sqnorm, present, update pair or None)), all-reduce it,
        and return the sum and local()'s exception. local=None sends only a stop (this rank failed)."""
        proj, sq, present, update, error = np.zeros((g, k)), np.zeros(g), np.zeros(g), None, None
        failed = local is None
        if local is not None:
            try:
                proj, sq, present, update = local()
            except Exception as exc:  # every rank learns of it from the all-reduce
                error, failed = exc, True
        self.stop_pending = False
        buf = pack(proj, sq, present, (update or (None, None)) if updates else None, failed, self.rank)
        return unpack(self.allreduce(buf), g, k, updates, self.world), error

    def allreduce(self, buf: np.ndarray) -> np.ndarray:
        """The sum over ranks of float64 `buf` (one all-reduce on the default process group)."""
        import torch
        import torch.distributed as dist

        t = torch.from_numpy(np.ascontiguousarray(buf, dtype=np.float64)).to(self.device)
        dist.all_reduce(t)
        return t.cpu().numpy()


def _wait_verdict(store: Any, key: str, timeout: float) -> str:
    """The value at `key` once set; after `timeout` s, "timeout" unless a verdict was reached meanwhile
    (compare_set decides once for everyone)."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not store.check([key]):
        if time.monotonic() > deadline:
            return str(store.compare_set(key, "", "timeout").decode())
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
    return str(store.get(key).decode())


def layout_fingerprint(spec: ProjectionSpec, groups: Sequence[tuple[str, Sequence[Any]]], extra: str) -> str:
    """Text that two ranks' recorders agree on exactly when they record the same thing."""
    parts = [repr(spec.to_dict()), extra]
    for g, members in groups:
        parts.append(g + ":" + ",".join(f"{m.tensor}@{m.offset}+{m.size}" for m in members))
    return "\n".join(parts)


def pack(
    proj: np.ndarray,
    sqnorm: np.ndarray,
    present: np.ndarray,
    update: tuple[np.ndarray | None, np.ndarray | None] | None,
    failed: bool,
    this_rank: int,
) -> np.ndarray:
    """One rank's buffer: rows, squared norms, presence, [update rows, update norms, has update], stops.

    A failed rank sends zeros and its stop flags: [failed, failed on rank 0]."""
    g, k = proj.shape
    parts = [proj.reshape(-1), sqnorm, present.astype(np.float64)]
    if update is not None:
        w, usq = update
        has = w is not None and not failed
        parts += [
            w.reshape(-1) if has else np.zeros(g * k),  # type: ignore[union-attr]
            usq if has else np.zeros(g),  # type: ignore[list-item]
            np.array([float(has)]),
        ]
    buf = np.concatenate([*parts, np.array([float(failed), float(failed and this_rank == 0)])])
    if failed:
        buf[:-2] = 0.0
    return buf


@dataclass(frozen=True)
class Combined:
    """The all-reduced buffer, unpacked."""

    proj: np.ndarray
    sqnorm: np.ndarray
    present: np.ndarray
    update: np.ndarray | None
    update_sq: np.ndarray | None
    failed: int
    rank0_failed: bool

    def why(self, step: int) -> str:
        """Why recording stopped on a rank that had no error of its own."""
        where = " (rank 0 could not write the store)" if self.rank0_failed else ""
        return f"step {step}: {self.failed} rank(s) failed to record this step{where}; stopped on every rank"


def unpack(buf: np.ndarray, g: int, k: int, updates: bool, world: int) -> Combined:
    """Split a summed buffer; the update is kept only when every rank had one."""
    proj, buf = buf[: g * k].reshape(g, k), buf[g * k :]
    sq, present, buf = buf[:g], buf[g : 2 * g], buf[2 * g :]
    w = usq = None
    if updates:
        w_all, usq_all, has, buf = (
            buf[: g * k].reshape(g, k),
            buf[g * k : g * k + g],
            buf[g * k + g],
            buf[g * k + g + 1 :],
        )
        if round(float(has)) == world:
            w, usq = w_all, usq_all
    return Combined(proj, sq, np.rint(present).astype(np.int64), w, usq, round(float(buf[0])), bool(buf[1]))
