"""Projection kernels (numba) and their numpy twins. Callers: gradmanifold.projection, which validates.

Every function here trusts its arguments: x is 1-D, C-contiguous, float32 or float64; `base` is the global
index (within the group's flattened gradient) of x[0]; keys are uint64 arrays; `total` is float64[k + 1].

Kernels ADD into `total`: total[:k] receives the unscaled projection (signs only for `sparse`, standard
normals for `gaussian`; the caller applies 1/sqrt(s) or 1/sqrt(k)) and total[k] receives the exact squared
norm (float64 squares of the raw values). Splitting the input at global multiples of the super-block size
(`sparse_superblock`, GAUSSIAN_SUPERBLOCK) and calling a kernel per piece gives the same bits as one call.

Reproducibility: work is split into fixed super-blocks anchored at global indices; each super-block's
partial is computed by one thread in a fixed order and the partials are added into `total` in index order,
so the bits do not depend on the thread count. No fastmath: the summation order is the one written here.
The integer hash (splitmix64) is exact on every machine; `gaussian` also calls log/cos/sin/sqrt from the
platform's libm, which may differ in the last bit between C libraries.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

U64 = np.uint64
GOLDEN = U64(0x9E3779B97F4A7C15)
_M1 = U64(0xBF58476D1CE4E5B9)
_M2 = U64(0x94D049BB133111EB)
_S30 = U64(30)
_S27 = U64(27)
_S31 = U64(31)
_S32 = U64(32)
_ONE = U64(1)
_LOW32 = U64(0xFFFFFFFF)
_TWO_M32 = 2.0**-32
_TWO_PI = 2.0 * math.pi

#: coordinates per sign word: one 64-bit hash gives the signs of 64 consecutive local indices
SIGN_WORD = 64
#: super-block of the sparse kernel holds about this many coordinates (a whole number of blocks of m)
SPARSE_SUPERBLOCK_TARGET = 1 << 16
#: super-block of the gaussian kernel (coordinates); each costs k hash + Box-Muller evaluations
GAUSSIAN_SUPERBLOCK = 1 << 10
#: super-blocks whose partials are held at once (bounds memory to ROUND * (k + 1) float64)
_ROUND = 64


def sparse_superblock(m: int) -> int:
    """Super-block size (coordinates) of the sparse kernel for sub-block size m: a multiple of m."""
    return m * max(1, SPARSE_SUPERBLOCK_TARGET // m)


@numba.njit(cache=True, inline="always")
def _mix64(z):  # type: ignore[no-untyped-def]
    """splitmix64 finalizer (Steele, Lea, Flood 2014): a bijection of uint64 with full avalanche."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@numba.njit(cache=True, inline="always")
def _hash(key, ctr):  # type: ignore[no-untyped-def]
    """Counter-based hash: the ctr-th output of a splitmix64 stream whose state starts at key."""
    return _mix64(key + U64(ctr) * GOLDEN)


@numba.njit(cache=True)
def _sparse_range(x, base, lo, hi, m, kshift, ksign, out):  # type: ignore[no-untyped-def]
    """Add the unscaled sparse projection of global coordinates [lo, hi) into out[:k]; squares into out[k:].

    Sub-sketch r of block b adds +-x[local i] at position a + i of a doubled accumulator acc[r, 0:2m]
    (a = shift of (b, r)); folding acc[r, p] + acc[r, p + m] at the end gives position (i + a) mod m. So
    the inner loop is one contiguous run of fixed length, with no wrap test: it vectorizes. Indices are
    unsigned so that numba emits no negative-index wrap-around checks.
    """
    s = kshift.size
    nw = (m + SIGN_WORD - 1) // SIGN_WORD
    k = s * m
    acc = np.zeros(2 * k)
    sq = np.zeros(m)  # squares by local index: an elementwise update, so it vectorizes in a fixed order
    b0 = lo // m
    b1 = (hi - 1) // m + 1
    for b in range(b0, b1):
        g = b * m  # global index of local index 0 of block b
        i_lo = max(lo - g, 0)
        i_hi = min(hi - g, m)
        xo = g - base  # x[xo + i] holds local index i
        for i in range(i_lo, i_hi):
            v = np.float64(x[U64(xo + i)])
            sq[U64(i)] += v * v
        for r in range(s):
            o = 2 * r * m + np.int64(_hash(kshift[r], b) % U64(m))
            if i_lo == 0 and i_hi == m:  # whole block: fixed trip counts (the hot path)
                for c in range(nw):
                    w = _hash(ksign[r], b * nw + c)
                    c0 = c * SIGN_WORD
                    n_c = min(SIGN_WORD, m - c0)
                    xc = xo + c0
                    oc = o + c0
                    for i in range(n_c):
                        v = np.float64(x[U64(xc + i)])
                        if (w >> U64(i)) & _ONE:
                            v = -v
                        acc[U64(oc + i)] += v
                continue
            for c in range(i_lo // SIGN_WORD, (i_hi - 1) // SIGN_WORD + 1):
                w = _hash(ksign[r], b * nw + c)
                c0 = c * SIGN_WORD
                for i in range(max(i_lo, c0), min(i_hi, c0 + SIGN_WORD)):
                    v = np.float64(x[U64(xo + i)])
                    if (w >> U64(i - c0)) & _ONE:
                        v = -v
                    acc[U64(o + i)] += v
    for r in range(s):
        for p in range(m):
            out[r * m + p] += acc[2 * r * m + p] + acc[2 * r * m + m + p]
    t = 0.0
    for i in range(m):
        t += sq[i]
    out[k] += t


@numba.njit(cache=True, parallel=True)
def _sparse_accumulate(x, base, m, kshift, ksign, total):  # type: ignore[no-untyped-def]
    n = x.size
    if n == 0:
        return
    sb = m * max(1, SPARSE_SUPERBLOCK_TARGET // m)
    g0 = base
    g1 = base + n
    first = g0 // sb
    nsb = (g1 - 1) // sb - first + 1
    width = total.size
    for start in range(0, nsb, _ROUND):
        cnt = min(_ROUND, nsb - start)
        part = np.zeros((cnt, width))
        for q in prange(cnt):
            j = first + start + q
            lo = max(g0, j * sb)
            hi = min(g1, (j + 1) * sb)
            _sparse_range(x, base, lo, hi, m, kshift, ksign, part[q])
        for q in range(cnt):  # index order, whatever the thread count
            for o in range(width):
                total[o] += part[q, o]
    return


@numba.njit(cache=True)
def _gaussian_range(x, base, lo, hi, kg, k, out):  # type: ignore[no-untyped-def]
    """Add sum_j x[j] * N(j, :) over global j in [lo, hi) into out[:k] of normals; ||x||^2 to out[k]."""
    kp = (k + 1) // 2
    sq = 0.0
    for j in range(lo, hi):
        xj = np.float64(x[j - base])
        sq += xj * xj
        ctr0 = j * kp
        for p in range(kp):
            h = _hash(kg, ctr0 + p)
            u1 = (np.float64(h >> _S32) + 0.5) * _TWO_M32
            u2 = (np.float64(h & _LOW32) + 0.5) * _TWO_M32
            rad = math.sqrt(-2.0 * math.log(u1))
            ang = _TWO_PI * u2
            out[2 * p] += xj * (rad * math.cos(ang))
            if 2 * p + 1 < k:
                out[2 * p + 1] += xj * (rad * math.sin(ang))
    out[k] += sq


@numba.njit(cache=True, parallel=True)
def _gaussian_accumulate(x, base, kg, k, total):  # type: ignore[no-untyped-def]
    n = x.size
    if n == 0:
        return
    sb = GAUSSIAN_SUPERBLOCK
    g0 = base
    g1 = base + n
    first = g0 // sb
    nsb = (g1 - 1) // sb - first + 1
    width = total.size
    for start in range(0, nsb, _ROUND):
        cnt = min(_ROUND, nsb - start)
        part = np.zeros((cnt, width))
        for q in prange(cnt):
            j = first + start + q
            lo = max(g0, j * sb)
            hi = min(g1, (j + 1) * sb)
            _gaussian_range(x, base, lo, hi, kg, k, part[q])
        for q in range(cnt):
            for o in range(width):
                total[o] += part[q, o]
    return


def sparse_accumulate(
    x: np.ndarray, base: int, m: int, kshift: np.ndarray, ksign: np.ndarray, total: np.ndarray
) -> None:
    """Sparse (OSNAP-style) kernel: see gradmanifold.projection for the construction."""
    with np.errstate(over="ignore"):  # uint64 wrap-around is the hash; only visible with NUMBA_DISABLE_JIT
        _sparse_accumulate(x, np.int64(base), np.int64(m), kshift, ksign, total)


def gaussian_accumulate(x: np.ndarray, base: int, kg: int, k: int, total: np.ndarray) -> None:
    """Dense gaussian kernel, entries regenerated from counters (Box-Muller)."""
    with np.errstate(over="ignore"):
        _gaussian_accumulate(x, np.int64(base), U64(kg), np.int64(k), total)


# ---------------------------------------------------------------------------------------------------------
# numpy twins: the same maps written vectorized and plainly; the oracle of the tests.


def mix64_numpy(z: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on a uint64 array (wraps modulo 2**64)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        return z ^ (z >> _S31)


def hash_numpy(key: int | np.uint64, ctr: np.ndarray) -> np.ndarray:
    """Counter-based hash of uint64 counters under one key."""
    with np.errstate(over="ignore"):
        return mix64_numpy(np.asarray(ctr, dtype=np.uint64) * GOLDEN + U64(key))


def sparse_accumulate_numpy(
    x: np.ndarray, base: int, m: int, kshift: np.ndarray, ksign: np.ndarray, total: np.ndarray
) -> None:
    """Twin of sparse_accumulate: scatter every coordinate with bincount (squares summed into total[k])."""
    s = kshift.size
    k = s * m
    nw = -(-m // SIGN_WORD)
    xd = np.asarray(x, dtype=np.float64)
    j = base + np.arange(x.size, dtype=np.int64)
    b, i = np.divmod(j, m)
    for r in range(s):
        a = (hash_numpy(kshift[r], b) % U64(m)).astype(np.int64)
        pos = r * m + (i + a) % m
        w = hash_numpy(ksign[r], b * nw + i // SIGN_WORD)
        bit = (w >> (i % SIGN_WORD).astype(np.uint64)) & _ONE
        total[:k] += np.bincount(pos, weights=np.where(bit == 1, -xd, xd), minlength=k)
    total[k] += float(np.dot(xd, xd))


def gaussian_normals_numpy(kg: int, k: int, j: np.ndarray) -> np.ndarray:
    """Standard normal matrix N[len(j), k] of global coordinates j (Box-Muller of hashed counters)."""
    kp = (k + 1) // 2
    ctr = np.asarray(j, dtype=np.int64)[:, None] * kp + np.arange(kp, dtype=np.int64)[None, :]
    h = hash_numpy(kg, ctr)
    u1 = ((h >> _S32).astype(np.float64) + 0.5) * _TWO_M32
    u2 = ((h & _LOW32).astype(np.float64) + 0.5) * _TWO_M32
    rad = np.sqrt(-2.0 * np.log(u1))
    ang = _TWO_PI * u2
    z = np.empty((len(ctr), 2 * kp))
    z[:, 0::2] = rad * np.cos(ang)
    z[:, 1::2] = rad * np.sin(ang)
    return z[:, :k]


def gaussian_accumulate_numpy(x: np.ndarray, base: int, kg: int, k: int, total: np.ndarray) -> None:
    """Twin of gaussian_accumulate: materialize N for the (small) input and multiply."""
    xd = np.asarray(x, dtype=np.float64)
    j = base + np.arange(x.size, dtype=np.int64)
    total[:k] += xd @ gaussian_normals_numpy(kg, k, j)
    total[k] += float(np.dot(xd, xd))
