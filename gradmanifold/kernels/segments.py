"""Batched projection kernels: every tensor of a recorded step in one call (gradmanifold.hotpath).

The per-tensor sums are the ones of kernels.projection (same super-blocks, same order), so a step projected
here has the bits of one project_with_norm call per tensor. Both kernels release the GIL.
"""

from __future__ import annotations

import numba
import numpy as np

from gradmanifold.kernels.projection import SPARSE_SUPERBLOCK_TARGET, _sparse_range


@numba.njit(cache=True, nogil=True)
def _sparse_segments(buf, lo, n, base, key, row, m, kshift, ksign, scale, z):  # type: ignore[no-untyped-def]
    """Project segment j of buf (buf[lo[j]:lo[j] + n[j]], at global index base[j] of the group whose keys
    are row key[j] of kshift and ksign) into z[row[j]]: z[:k] the scaled projection, z[k] the squares.

    Each segment is summed exactly as _sparse_accumulate sums one tensor (per super-block partials added in
    index order into zeros), one thread, no GIL: the bits of one project_with_norm call per tensor.
    """
    width = z.shape[1]
    k = width - 1
    sb = m * max(1, SPARSE_SUPERBLOCK_TARGET // m)
    tmp = np.zeros(width)
    part = np.zeros(width)
    for j in range(lo.size):
        tmp[:] = 0.0
        nj = n[j]
        if nj > 0:
            x = buf[lo[j] : lo[j] + nj]
            g0 = base[j]
            g1 = g0 + nj
            ks = kshift[key[j]]
            kn = ksign[key[j]]
            for q in range(g0 // sb, (g1 - 1) // sb + 1):
                part[:] = 0.0
                _sparse_range(x, g0, max(g0, q * sb), min(g1, (q + 1) * sb), m, ks, kn, part)
                for o in range(width):
                    tmp[o] += part[o]
        r = row[j]
        for o in range(k):
            z[r, o] = tmp[o] * scale
        z[r, k] = tmp[k]


_F32_MAX = float(np.finfo(np.float32).max)


@numba.njit(cache=True, nogil=True)
def _combine(z, present, group, proj, sq, count, p32, flags):  # type: ignore[no-untyped-def]
    """Add tensor rows of z into their groups in tensor order (the order of the per-tensor path), then the
    stored row: float32 projections (zeros where non-finite or beyond float32) and flags (1: non-finite,
    2: no tensor of the group had a gradient)."""
    k = proj.shape[1]
    for r in range(z.shape[0]):
        if present[r]:
            g = group[r]
            for o in range(k):
                proj[g, o] += z[r, o]
            sq[g] += z[r, k]
            count[g] += 1
    _finish(proj, sq, count, p32, flags)


@numba.njit(cache=True, nogil=True)
def _finish(proj, sq, count, p32, flags):  # type: ignore[no-untyped-def]
    """The stored row of summed projections: float32, zeros where a group is non-finite or beyond float32's
    range (flag 1), and flag 2 where no tensor of the group had a gradient."""
    k = proj.shape[1]
    for g in range(proj.shape[0]):
        f = 0
        if count[g] == 0:
            f |= 2
        bad = not np.isfinite(sq[g])
        for o in range(k):
            if not abs(proj[g, o]) <= _F32_MAX:
                bad = True
        if bad:
            f |= 1
        for o in range(k):
            p32[g, o] = 0.0 if bad else np.float32(proj[g, o])
        flags[g] = f


@numba.njit(cache=True, nogil=True)
def _step(buf32, seg32, buf64, seg64, m, kshift, ksign, scale, z, present, group, n_groups):  # type: ignore[no-untyped-def]
    """A whole sparse step in one call: the float32 and float64 buffers' segments (rows lo, n, base, key, row
    of seg32 / seg64) into z, then the groups combined and finished; returns (p32, sq, flags)."""
    if seg32.shape[1]:
        _sparse_segments(buf32, seg32[0], seg32[1], seg32[2], seg32[3], seg32[4], m, kshift, ksign, scale, z)
    if seg64.shape[1]:
        _sparse_segments(buf64, seg64[0], seg64[1], seg64[2], seg64[3], seg64[4], m, kshift, ksign, scale, z)
    k = z.shape[1] - 1
    sq = np.zeros(n_groups)
    p32 = np.empty((n_groups, k), np.float32)
    flags = np.empty(n_groups, np.uint8)
    _combine(z, present, group, np.zeros((n_groups, k)), sq, np.zeros(n_groups, np.int64), p32, flags)
    return p32, sq, flags


def finish(proj: np.ndarray, sq: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 row, flags) of summed float64 projections [G, k], squared norms [G] and tensors present [G]
    (a sharded step, whose sums come from an all-reduce)."""
    p32 = np.empty(proj.shape, np.float32)
    flags = np.empty(proj.shape[0], np.uint8)
    _finish(
        np.ascontiguousarray(proj, np.float64),
        np.asarray(sq, np.float64),
        np.asarray(count, np.int64),
        p32,
        flags,
    )
    return p32, flags


def sparse_segments(
    buf: np.ndarray,
    lo: np.ndarray,
    n: np.ndarray,
    base: np.ndarray,
    key: np.ndarray,
    row: np.ndarray,
    m: int,
    kshift: np.ndarray,
    ksign: np.ndarray,
    scale: float,
    z: np.ndarray,
) -> None:
    """Sparse kernel over many tensors in one call (int64 segment arrays; kshift, ksign uint64 [groups, s]);
    z: float64 [tensors, k + 1], rows written, not added. Releases the GIL."""
    if getattr(numba.config, "DISABLE_JIT", False):  # the uint64 hash wraps around: warns only as Python
        with np.errstate(over="ignore"):
            _sparse_segments(buf, lo, n, base, key, row, np.int64(m), kshift, ksign, np.float64(scale), z)
        return
    _sparse_segments(buf, lo, n, base, key, row, np.int64(m), kshift, ksign, np.float64(scale), z)


def combine(
    z: np.ndarray, present: np.ndarray, group: np.ndarray, sq: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per group, over present rows in row order: the projection (sum of z[:, :k]) as stored (float32, zeros
    where non-finite) and the flags; sq [G] receives the squared norms (sum of z[:, k]). Releases the GIL."""
    g, k = sq.shape[0], z.shape[1] - 1
    proj = np.zeros((g, k))
    p32 = np.empty((g, k), np.float32)
    flags = np.empty(g, np.uint8)
    _combine(z, present, group, proj, sq, np.zeros(g, np.int64), p32, flags)
    return p32, flags


def sparse_step(
    buf32: np.ndarray,
    seg32: np.ndarray,
    buf64: np.ndarray,
    seg64: np.ndarray,
    m: int,
    kshift: np.ndarray,
    ksign: np.ndarray,
    scale: float,
    z: np.ndarray,
    present: np.ndarray,
    group: np.ndarray,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sparse_segments over a float32 and a float64 buffer (seg: int64 [5, segments], rows lo, n, base, key,
    row; either may have no segment) then combine, in one call: (float32 row [G, k], squared norms [G], flags
    [G]). z: float64 [tensors, k + 1] scratch, the present rows written. Releases the GIL."""
    args = (buf32, seg32, buf64, seg64, np.int64(m), kshift, ksign, np.float64(scale), z, present, group)
    if getattr(numba.config, "DISABLE_JIT", False):  # the uint64 hash wraps around: warns only as Python
        with np.errstate(over="ignore"):
            return _step(*args, np.int64(n_groups))
    return _step(*args, np.int64(n_groups))
