"""Seeded random projection of gradients to k dims: a pure function of (seed, group, index).

R maps the flattened gradient of one group (C order) to k numbers. Entry R[:, j] depends only on the group's
key, blake2b(seed, group name), and the global index j of the coordinate within the group, through an integer
counter hash (splitmix64): no RNG state, no dependence on call order, thread count or machine. A job that
holds a shard of a group projects it with the shard's `offset`; the shard results add up to the projection of
the whole to float64 rounding (not bit for bit: float addition is not associative), while the same input and
offset give the same bits every time, in any process, with any thread count. Whole-model projection is the sum
of the group projections (independent columns of one Johnson-Lindenstrauss map).

Kinds
-----
``sparse`` (default), an OSNAP-style sparse JL map (Nelson & Nguyen 2013, arXiv:1211.1002) built for speed:
the k outputs are s sub-sketches of m = k / s rows; the input is cut into blocks of m consecutive global
indices. In sub-sketch r, block b is cyclically shifted by a(b, r) = hash % m: local index i goes to row
r*m + (i + a) mod m, with a sign from bit i % 64 of a hashed 64-bit word (one hash per 64 coordinates), and
scale 1/sqrt(s). So each coordinate lands in exactly s rows, one per sub-sketch, and the inner loops are
contiguous. Statistics, for signs independent across coordinates: E||Rx||^2 = ||x||^2 exactly; two
coordinates never collide inside a block and collide with probability 1/m across blocks (uniform shift), so

    Var(||Rx||^2) = (2 / (s m)) * sum over pairs in different blocks x_i^2 x_j^2  <=  (2 / k) ||x||^4,

the CountSketch variance at the same k (the sign products are what decorrelate, so the dependence between
collisions inside a block pair does not enter).

``gaussian``: dense N(0, 1/k) entries regenerated from counters, super-block by super-block, never the whole
matrix; cost O(k d). Entry pair p of coordinate j: hash(key, j * ceil(k/2) + p) -> two 32-bit uniforms ->
Box-Muller in float32 arithmetic, with series for log, sin and cos in place of libm
(kernels.projection.box_muller32: within 1e-6 * max(1, radius) of exact Box-Muller of the same uniforms, and
the same bits on every machine and in the torch path). The normals of 8 coordinates are generated into a
small buffer (vectorized on 32-bit lanes), then multiplied in with float64 additions in coordinate order.
Measured here (one core, k = 256, same run): ~1.1-1.4 GMAC/s against 0.066 for scalar libm Box-Muller
(17x); ~0.2 s per 1e6 parameters at k = 256, so for small and medium groups and to match the paper, while
the sparse kind is the one for whole large models.

Default s = 2. s >= 2 embeds subspaces much better than a CountSketch (s = 1), which matters because the
predictable rank is read from the spectrum of projected increments; each doubling of s halves the
throughput (the kernel is bound by the s float64 accumulator updates per input coordinate, not by memory).
Measured here (AMD EPYC, one core, d = 1e8 float32, k = 256, read roofline = np.sum over the same array
5.6-5.8 Gparam/s): s = 1 3.3, s = 2 2.2 (0.39 of the roofline), s = 4 1.1, s = 8 0.43 Gparam/s; two cores:
s = 2 4.1 (bench/bench_projection.py).
s = 2 is the largest s that keeps ~2 Gparam/s per core; s = 4 or 8 are there for small k or when embedding
quality matters more than time.

Inputs: numpy float16/32/64 (and ml_dtypes bfloat16), anything with __array__ or __dlpack__, torch tensors.
A CPU tensor is read without a copy and projected by the numba kernel (same bits as the numpy array); a tensor
on another device is projected there with torch ops implementing the same hash, and only k + 1 numbers come
back to the host. torch is imported only when the input is a torch tensor.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from gradmanifold.errors import InputError, UsageError

if TYPE_CHECKING:
    from types import ModuleType


def _kernels() -> ModuleType:
    """gradmanifold.kernels.projection, imported on first use: numba loads only where something projects."""
    from gradmanifold.kernels import projection

    return projection


Kind = Literal["sparse", "gaussian"]
KINDS = ("sparse", "gaussian")
SPARSE_S = (1, 2, 4, 8)
#: default nonzeros per input coordinate of the sparse kind (see the module docstring for the measurements)
DEFAULT_S = 2
#: coordinates converted per piece when the input is not a contiguous float32/float64 array
_PIECE = 1 << 22
FINGERPRINT_GROUP = "__fingerprint__"
FINGERPRINT_PROBE = 4096
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class ProjectionSpec:
    """What identifies a projection: output dims k, seed, kind and (sparse) nonzeros per input coordinate.

    Validated on construction: k >= 1; kind "sparse" or "gaussian"; for sparse, s in {1, 2, 4, 8} dividing k.
    """

    k: int = 256
    seed: int = 0
    kind: Kind = "sparse"
    # s >= 2 embeds subspaces better than CountSketch; s = 2 keeps ~2 Gparam/s per core (module docstring)
    s: int = DEFAULT_S

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int | np.integer) or self.k < 1:
            raise UsageError(
                f"projection k={self.k!r} is invalid: k is the output dimension; use an integer >= 1"
            )
        if (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int | np.integer)
            or not 0 <= self.seed < 1 << 64
        ):
            raise UsageError(
                f"projection seed={self.seed!r} is invalid: use an integer in [0, 2**64) (the store keeps it)"
            )
        if self.kind not in KINDS:
            raise UsageError(f"projection kind {self.kind!r} is unknown: use one of {', '.join(KINDS)}")
        if self.kind == "sparse" and (self.s not in SPARSE_S or self.k % self.s):
            raise UsageError(
                f"sparse projection with k={self.k}, s={self.s} is invalid: s must be one of {SPARSE_S} and "
                f"divide k (the k outputs are s sub-sketches of k/s rows); pick such an s or k"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "seed": self.seed, "kind": self.kind, "s": self.s}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProjectionSpec:
        return cls(k=int(d["k"]), seed=int(d["seed"]), kind=d["kind"], s=int(d["s"]))


def group_key(seed: int, name: str) -> int:
    """64-bit key of a group: blake2b of (seed, name); stable across processes, versions and machines."""
    h = hashlib.blake2b(f"{int(seed)}\x00{name}".encode(), digest_size=8, person=b"gradmanifold")
    return int.from_bytes(h.digest(), "little")


def _subkey(key: int, purpose: str, r: int) -> int:
    h = hashlib.blake2b(key.to_bytes(8, "little") + f"\x00{purpose}\x00{r}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


@dataclass(frozen=True)
class _Keys:
    kshift: np.ndarray  # uint64[s]: cyclic shift of each block in sub-sketch r
    ksign: np.ndarray  # uint64[s]: sign words of sub-sketch r
    kgauss: int  # key of the gaussian entries


@functools.lru_cache(maxsize=4096)
def _keys(seed: int, name: str, s: int) -> _Keys:
    key = group_key(seed, name)
    return _Keys(
        kshift=np.array([_subkey(key, "shift", r) for r in range(s)], dtype=np.uint64),
        ksign=np.array([_subkey(key, "sign", r) for r in range(s)], dtype=np.uint64),
        kgauss=_subkey(key, "gaussian", 0),
    )


class Projector:
    """A validated spec with the per-group keys cached: the object to hold in a training loop."""

    def __init__(self, spec: ProjectionSpec) -> None:
        self.spec = spec

    def project_with_norm(self, x: Any, group: str, offset: int = 0) -> tuple[np.ndarray, float]:
        """float64[k] projection of x (flattened in C order, at global `offset` in its group) and ||x||^2."""
        if not isinstance(group, str):
            raise UsageError(
                f"group name {group!r} is not a string: the key of a group is hashed from its name"
            )
        if isinstance(offset, bool) or not isinstance(offset, int | np.integer) or offset < 0:
            raise UsageError(
                f"offset={offset!r} is invalid: it is the index of x's first element within its group; "
                "use an integer >= 0"
            )
        keys = _keys(int(self.spec.seed), group, self.spec.s)
        if "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor):
            if x.device.type != "cpu":
                return _project_torch(x, self.spec, keys, int(offset))
            return _project_pieces(*_torch_cpu_source(x), self.spec, keys, int(offset))
        return _project_pieces(*_numpy_source(x), self.spec, keys, int(offset))

    def project(self, x: Any, group: str, offset: int = 0) -> np.ndarray:
        """float64[k] projection of x; see project_with_norm."""
        return self.project_with_norm(x, group, offset)[0]

    def project_runs_with_norm(
        self, x: Any, group: str, starts: np.ndarray, run: int
    ) -> tuple[np.ndarray, float]:
        """Projection and ||x||^2 of x, flat, whose r-th run of `run` values starts at global index starts[r].

        A block of a sharded tensor is such a set of runs (gradmanifold.sharded). Each run costs one kernel
        call, not one project_with_norm call, so a shard of thousands of short rows stays cheap.
        """
        if not isinstance(group, str):
            raise UsageError(
                f"group name {group!r} is not a string: the key of a group is hashed from its name"
            )
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        if isinstance(run, bool) or not isinstance(run, int | np.integer) or run < 0 or (starts < 0).any():
            raise UsageError(
                f"runs of {run!r} values at {starts[:4]!r}...: use a length >= 0 and starts >= 0"
            )
        k = self.spec.k
        if run == 0 or starts.size == 0:
            return np.zeros(k), 0.0
        keys = _keys(int(self.spec.seed), group, self.spec.s)
        if "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor) and x.device.type != "cpu":
            flat = x.reshape(-1)
            if flat.numel() != starts.size * run:
                raise UsageError(f"{flat.numel()} values are not {starts.size} runs of {run}")
            z, q = np.zeros(k), 0.0
            for r, g in enumerate(starts.tolist()):
                zr, qr = _project_torch(flat[r * run : (r + 1) * run], self.spec, keys, int(g))
                z, q = z + zr, q + qr
            return z, q
        if "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor):
            n, whole, get = _torch_cpu_source(x)
        else:
            n, whole, get = _numpy_source(x)
        if n != starts.size * run:
            raise UsageError(f"{n} values are not {starts.size} runs of {run}")
        total = np.zeros(k + 1)
        acc, _, scale = _accumulator(self.spec, keys, total)
        for r, g in enumerate(starts.tolist()):
            lo = r * run
            acc(whole[lo : lo + run] if whole is not None else np.ascontiguousarray(get(lo, lo + run)), g)
        return total[:k] * scale, float(total[k])


def project_with_norm(x: Any, spec: ProjectionSpec, group: str, offset: int = 0) -> tuple[np.ndarray, float]:
    """Project x (flattened, starting at `offset` within its group) to float64[k]; also its exact ||x||^2.

    Non-finite values give a non-finite squared norm (and projection); nothing is raised for them.
    """
    return Projector(spec).project_with_norm(x, group, offset)


def project(x: Any, spec: ProjectionSpec, group: str, offset: int = 0) -> np.ndarray:
    """Project x (flattened, starting at `offset` within its group) to float64[k]."""
    return Projector(spec).project_with_norm(x, group, offset)[0]


def project_runs_with_norm(
    x: Any, spec: ProjectionSpec, group: str, starts: np.ndarray, run: int
) -> tuple[np.ndarray, float]:
    """Project x, flat, made of runs of `run` values, the r-th at global index starts[r] within its group.

    x: the runs back to back (len(starts) * run values). Returns float64[k] and ||x||^2, like
    project_with_norm: the sum over runs of project_with_norm(run_r, spec, group, starts[r]).
    """
    return Projector(spec).project_runs_with_norm(x, group, starts, run)


@functools.lru_cache(maxsize=64)
def fingerprint(spec: ProjectionSpec) -> str:
    """Hex digest of the projection of a fixed probe vector: changes whenever the projection would.

    The probe holds FINGERPRINT_PROBE float32 values in [-1, 1) from a fixed hash; it is projected under the
    group name "__fingerprint__", rounded to float32 and hashed together with the spec.
    """
    _k = _kernels()
    u = _k.hash_numpy(0x5EED, np.arange(FINGERPRINT_PROBE)) >> np.uint64(11)
    probe = (u.astype(np.float64) * 2.0**-52 - 1.0).astype(np.float32)
    z = project(probe, spec, FINGERPRINT_GROUP).astype("<f4")
    h = hashlib.blake2b(json.dumps(spec.to_dict(), sort_keys=True).encode(), digest_size=16)
    h.update(z.tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------------
# inputs: a length, the dtype to work in, and a function returning contiguous pieces [lo, hi) in that dtype

Source = tuple[int, np.ndarray | None, Callable[[int, int], np.ndarray]]


def _bad_dtype(dtype: Any) -> InputError:
    return InputError(
        f"cannot project a gradient of dtype {dtype}: the projection takes real floating point values "
        "(float16, bfloat16, float32, float64); cast it first, e.g. x.astype(np.float32)"
    )


def _numpy_source(x: Any) -> Source:
    if not isinstance(x, np.ndarray):
        try:
            x = (
                np.asarray(x)
                if hasattr(x, "__array__") or not hasattr(x, "__dlpack__")
                else np.from_dlpack(x)
            )
        except (TypeError, ValueError, RuntimeError, BufferError) as e:
            raise InputError(
                f"cannot read a {type(x).__name__} as an array ({e}); pass a numpy array, a torch tensor or "
                "an object with __array__ or __dlpack__ on the CPU"
            ) from None
    dt = x.dtype
    if dt.name == "bfloat16":  # ml_dtypes
        work: Any = np.float32
    elif dt.kind != "f":
        raise _bad_dtype(dt)
    else:
        work = np.float32 if dt.itemsize <= 4 else np.float64
    if x.flags.c_contiguous and dt == work:
        flat = x.reshape(-1)
        return flat.size, flat, lambda lo, hi: flat[lo:hi]
    if x.flags.c_contiguous:
        flat = x.reshape(-1)
        return flat.size, None, lambda lo, hi: flat[lo:hi].astype(work)
    return x.size, None, lambda lo, hi: np.asarray(x.flat[lo:hi], dtype=work)


def _torch_cpu_source(t: Any) -> Source:
    import torch

    if not t.is_floating_point():
        raise _bad_dtype(t.dtype)
    t = t.detach()
    if t.dtype in (torch.float32, torch.float64):
        if t.is_contiguous() and not t.is_conj() and not t.is_neg():
            flat = t.reshape(-1).numpy()
            return flat.size, flat, lambda lo, hi: flat[lo:hi]
        return _numpy_source(t.numpy() if not (t.is_conj() or t.is_neg()) else t.resolve_neg().numpy())
    flat_t = t.reshape(-1)  # float16 / bfloat16: a copy only if t is not contiguous, in its own dtype
    return flat_t.numel(), None, lambda lo, hi: flat_t[lo:hi].to(torch.float32).numpy()


def _accumulator(
    spec: ProjectionSpec, keys: _Keys, total: np.ndarray
) -> tuple[Callable[[np.ndarray, int], None], int, float]:
    """(add(x, base): accumulate x at global index `base` into total, super-block size, output scale)."""
    _k = _kernels()
    k = spec.k
    if spec.kind == "sparse":
        m = k // spec.s

        def run(x: np.ndarray, base: int) -> None:
            _k.sparse_accumulate(x, base, m, keys.kshift, keys.ksign, total)

        return run, _k.sparse_superblock(m), 1.0 / math.sqrt(spec.s)

    def run_gaussian(x: np.ndarray, base: int) -> None:
        _k.gaussian_accumulate(x, base, keys.kgauss, k, total)

    return run_gaussian, _k.GAUSSIAN_SUPERBLOCK, 1.0 / math.sqrt(k)


def _project_pieces(
    n: int,
    whole: np.ndarray | None,
    get: Callable[[int, int], np.ndarray],
    spec: ProjectionSpec,
    keys: _Keys,
    offset: int,
) -> tuple[np.ndarray, float]:
    k = spec.k
    total = np.zeros(k + 1)
    run, sb, scale = _accumulator(spec, keys, total)
    if whole is not None:
        run(whole, offset)
    else:
        # pieces end at global multiples of the super-block size: the same bits as one call on the whole
        piece = max(1, _PIECE // sb) * sb
        g = offset
        while g < offset + n:
            nxt = min((g // piece + 1) * piece, offset + n)
            run(np.ascontiguousarray(get(g - offset, nxt - offset)), g)
            g = nxt
    return total[:k] * scale, float(total[k])


# --------------------------------------------------------------------------------------------------------
# torch path (tensors on a device): the same map with int64 tensor ops; wrap-around multiply, logical shifts.


def _signed(v: int) -> int:
    v &= _MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


_T_GOLDEN = _signed(0x9E3779B97F4A7C15)
_T_M1 = _signed(0xBF58476D1CE4E5B9)
_T_M2 = _signed(0x94D049BB133111EB)


def _t_srl(z: Any, n: int) -> Any:
    return (z >> n) & ((1 << (64 - n)) - 1)


def _t_hash(key: int, ctr: Any) -> Any:
    z = ctr * _T_GOLDEN + _signed(key)
    z = (z ^ _t_srl(z, 30)) * _T_M1
    z = (z ^ _t_srl(z, 27)) * _T_M2
    return z ^ _t_srl(z, 31)


def _t_umod(h: Any, m: int) -> Any:
    """(h as uint64) mod m for int64 tensors h and 1 <= m < 2**31."""
    hi = _t_srl(h, 32) % m
    lo = (h & 0xFFFFFFFF) % m
    return (hi * ((1 << 32) % m) + lo) % m


def _project_torch(t: Any, spec: ProjectionSpec, keys: _Keys, offset: int) -> tuple[np.ndarray, float]:
    import torch

    if not t.is_floating_point():
        raise _bad_dtype(t.dtype)
    flat = t.detach().reshape(-1)
    n, dev, k = flat.numel(), flat.device, spec.k
    acc = torch.zeros(k, dtype=torch.float64, device=dev)
    sq = torch.zeros((), dtype=torch.float64, device=dev)
    piece = _PIECE if spec.kind == "sparse" else max(1, _PIECE // k)
    for lo in range(0, n, piece):
        x = flat[lo : min(lo + piece, n)].to(torch.float64)
        sq += torch.dot(x, x)
        if spec.kind == "sparse":
            acc += _t_sparse(x, offset + lo, k // spec.s, keys)
        else:
            acc += _t_gaussian(x, offset + lo, k, keys.kgauss)
    scale = 1.0 / math.sqrt(spec.s if spec.kind == "sparse" else k)
    out = torch.cat([acc * scale, sq.reshape(1)]).cpu().numpy()
    return out[:k].copy(), float(out[k])


def _t_sparse(x: Any, g0: int, m: int, keys: _Keys) -> Any:
    import torch

    dev = x.device
    pad0 = g0 % m
    nb = -(-(pad0 + x.numel()) // m)
    v = torch.zeros(nb * m, dtype=torch.float64, device=dev)
    v[pad0 : pad0 + x.numel()] = x
    v = v.view(nb, m)
    b = torch.arange(g0 // m, g0 // m + nb, dtype=torch.int64, device=dev)[:, None]
    i = torch.arange(m, dtype=torch.int64, device=dev)[None, :]
    _k = _kernels()
    nw = -(-m // _k.SIGN_WORD)
    out = []
    for r in range(len(keys.kshift)):
        a = _t_umod(_t_hash(int(keys.kshift[r]), b), m)  # [nb, 1]
        words = _t_hash(int(keys.ksign[r]), b * nw + i // _k.SIGN_WORD)  # [nb, m]: the word of each index
        neg = ((words >> (i % _k.SIGN_WORD)) & 1).bool()
        signed = torch.where(neg, -v, v)
        # row p of sub-sketch r collects local index (p - a) mod m of every block: a gather, then a sum over
        # blocks (deterministic on a given device, unlike a scatter with atomics)
        out.append(torch.gather(signed, 1, (i - a) % m).sum(0))
    return torch.cat(out)


@functools.cache
def _t_bm() -> dict[str, float]:
    """The float32 constants of kernels.projection.box_muller32, by name."""
    _k = _kernels()
    names = ("Q0", "Q1", "Q2", "Q3", "Q4", "KE", "PHI", "S1", "S2", "S3", "S4", "C1", "C2", "C3", "C4")
    return {name: float(getattr(_k, "_BM_" + name)) for name in names}


def _t_box_muller32(a: Any, b: Any) -> tuple[Any, Any]:
    """kernels.projection.box_muller32 in torch ops, for a, b int64 tensors in [0, 2**32): the same bits.

    Integers stay in int64 (or int32 for float bit patterns), floats in float32; every float operation is an
    IEEE basic operation in the order of the numpy twin, and the float constants are float32 values (so a
    Python scalar means the same number whether torch rounds it to float32 or not).
    """
    import torch

    _k = _kernels()
    f32 = torch.float32
    v = a.to(f32) + 0.5
    bits = v.view(torch.int32)
    mb = bits & 0x7FFFFF
    big = (mb > int(_k._BM_SQRT2_MANT)).to(torch.int32)
    e = (bits >> 23) - int(_k._BM_EXP_BIAS) + big
    m = ((mb | int(_k._BM_ONE_BITS)) - (big << 23)).view(f32)
    w = (0xFFFFFFFF - a).to(f32) + 0.5
    top = e == 0
    f = torch.where(top, -w, m - 1.0) / torch.where(top, float(_k._BM_TWO33) - w, m + 1.0)
    s = f * f
    c = _t_bm()
    q = (((s * c["Q4"] + c["Q3"]) * s + c["Q2"]) * s + c["Q1"]) * s + c["Q0"]
    # torch's CPU sqrt is not correctly rounded (SLEEF-style, ~20% of float32 results 1 ulp off); the float64
    # square root of a float32, rounded to float32, is (53 >= 2 * 24 + 2 bits: no double-rounding error)
    rad = torch.sqrt((e.to(f32) * c["KE"] + f * q).to(torch.float64)).to(f32)
    y = (b + (1 << 29)) & 0xFFFFFFFF
    quad = y >> 30
    phi = (((y & ((1 << 30) - 1)) - (1 << 29)).to(f32) + 0.5) * c["PHI"]
    t = phi * phi
    sn = phi + (phi * t) * (((t * c["S4"] + c["S3"]) * t + c["S2"]) * t + c["S1"])
    cs = 1.0 + t * (((t * c["C4"] + c["C3"]) * t + c["C2"]) * t + c["C1"])
    odd = (quad & 1) == 1
    zc = rad * torch.where(odd, sn, cs)
    zs = rad * torch.where(odd, cs, sn)
    zc = torch.where((quad == 1) | (quad == 2), -zc, zc)
    zs = torch.where(quad >= 2, -zs, zs)
    return zc, zs


def _t_gaussian_normals(g0: int, n: int, k: int, kg: int, dev: Any) -> Any:
    """float32[n, k] normals of global coordinates g0 .. g0 + n - 1 (kernels.projection.gaussian_normals)."""
    import torch

    kp = (k + 1) // 2
    j = torch.arange(g0, g0 + n, dtype=torch.int64, device=dev)[:, None]
    h = _t_hash(kg, j * kp + torch.arange(kp, dtype=torch.int64, device=dev)[None, :])
    zc, zs = _t_box_muller32(_t_srl(h, 32), h & 0xFFFFFFFF)
    return torch.cat([zc, zs[:, : k - kp]], dim=1)


def _t_gaussian(x: Any, g0: int, k: int, kg: int) -> Any:
    return x @ _t_gaussian_normals(g0, x.numel(), k, kg, x.device).to(x.dtype)
