"""Projection kernels (numba) and their numpy twins. Callers: gradmanifold.projection, which validates.

Every function here trusts its arguments: x is 1-D, C-contiguous, float32 or float64; `base` is the global
index (within the group's flattened gradient) of x[0]; keys are uint64 arrays; `total` is float64[k + 1].

Kernels ADD into `total`: total[:k] receives the unscaled projection (signs only for `sparse`, standard
normals for `gaussian`; the caller applies 1/sqrt(s) or 1/sqrt(k)) and total[k] receives the exact squared
norm (float64 squares of the raw values). Splitting the input at global multiples of the super-block size
(`sparse_superblock`, GAUSSIAN_SUPERBLOCK) and calling a kernel per piece gives the same bits as one call.

Reproducibility: work is split into fixed super-blocks anchored at global indices; each super-block's
partial is computed by one thread in a fixed order and the partials are added into `total` in index order,
so the bits do not depend on the thread count. No fastmath: the summation order is the one written here,
and no multiply-add is fused. Everything is exact integer arithmetic (the splitmix64 hash) or IEEE-754
basic operations (+, -, *, /, sqrt, int <-> float conversions, round to nearest even), with no call into
the platform's libm, so the bits are the same on every machine; see `box_muller32` for the gaussian entries.
"""

from __future__ import annotations

import math
import threading

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

#: coordinates per sign word: one 64-bit hash gives the signs of 64 consecutive local indices
SIGN_WORD = 64
#: super-block of the sparse kernel holds about this many coordinates (a whole number of blocks of m)
SPARSE_SUPERBLOCK_TARGET = 1 << 16
#: super-block of the gaussian kernel (coordinates); each costs k / 2 hashes and Box-Muller pairs
GAUSSIAN_SUPERBLOCK = 1 << 10
#: coordinates whose k normals are generated into a buffer before they are multiplied in (see _gaussian_range)
GAUSSIAN_TILE = 8
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


_SIGN_BIT = U64(1 << 63)
_S63 = U64(63)
#: accumulator layout of the sparse kernel, printed by the bench
SPARSE_LAYOUT = (
    "acc[s, 2m] doubled per sub-sketch; per whole block, squares in one pass over x, then sub-sketches "
    "in pairs, one pass over x per pair"
)


@numba.njit(cache=True, inline="always")
def _flip(v, w, j):  # type: ignore[no-untyped-def]
    """float64(v), its sign bit flipped where bit j of w is set: the bits of -v (for -0.0 and NaN too)."""
    return U64(np.float64(v).view(np.uint64) ^ ((w << (_S63 - U64(j))) & _SIGN_BIT)).view(np.float64)


@numba.njit(cache=True, inline="always")
def _shift(key, b, m):  # type: ignore[no-untyped-def]
    """Cyclic shift of block b under key: hash % m (a mask when m is a power of two, the same value)."""
    h = _hash(key, b)
    if m & (m - 1) == 0:
        return np.int64(h & U64(m - 1))
    return np.int64(h % U64(m))


@numba.njit(cache=True)
def _sparse_range(x, base, lo, hi, m, kshift, ksign, out):  # type: ignore[no-untyped-def]
    """Add the unscaled sparse projection of global coordinates [lo, hi) into out[:k]; squares into out[k:].

    Sub-sketch r of block b adds +-x[local i] at position a + i of a doubled accumulator acc[r, 0:2m]
    (a = shift of (b, r)); folding acc[r, p] + acc[r, p + m] at the end gives position (i + a) mod m. So
    the inner loop is one contiguous run of fixed length, with no wrap test: it vectorizes. Indices are
    unsigned so that numba emits no negative-index wrap-around checks.

    Every accumulator element receives its additions in block order, whatever the loop nesting: for a whole
    block, sub-sketches 2q and 2q + 1 are updated in the same pass over x (their accumulators are disjoint;
    one float64 conversion serves both). Signs are applied by flipping the sign bit (_flip), which is what
    negation does. Measured alternatives that did not pay (same bits, slower or no faster on one core):
    squares of 4 blocks per pass (faster in cache, slower streaming), squares fused into the first pair's
    pass, four sub-sketches per pass, and a 64-byte-aligned accumulator window with x and the sign words
    shifted instead (aligned stores, but more work per block).
    """
    s = kshift.size
    nw = (m + SIGN_WORD - 1) // SIGN_WORD
    k = s * m
    acc = np.zeros(2 * k)
    sq = np.zeros(m)  # squares by local index: an elementwise update, so it vectorizes in a fixed order
    b0 = lo // m
    b1 = (hi - 1) // m + 1
    for b in range(b0, b1):
        g = b * m
        i_lo = max(lo - g, 0)
        i_hi = min(hi - g, m)
        xo = g - base  # x[xo + i] holds local index i
        if i_lo == 0 and i_hi == m:  # whole block: fixed trip counts (the hot path)
            for i in range(m):
                v = np.float64(x[U64(xo + i)])
                sq[U64(i)] += v * v
            for r0 in range(0, s - 1, 2):
                oa = 2 * r0 * m + _shift(kshift[r0], b, m)
                ob = 2 * (r0 + 1) * m + _shift(kshift[r0 + 1], b, m)
                for c in range(nw):
                    wa = _hash(ksign[r0], b * nw + c)
                    wb = _hash(ksign[r0 + 1], b * nw + c)
                    c0 = c * SIGN_WORD
                    n_c = min(SIGN_WORD, m - c0)
                    xc = xo + c0
                    pa = oa + c0
                    pb = ob + c0
                    for i in range(n_c):
                        v = np.float64(x[U64(xc + i)])
                        acc[U64(pa + i)] += _flip(v, wa, i)
                        acc[U64(pb + i)] += _flip(v, wb, i)
            if s % 2:  # s = 1: one sub-sketch
                o = 2 * (s - 1) * m + _shift(kshift[s - 1], b, m)
                for c in range(nw):
                    w = _hash(ksign[s - 1], b * nw + c)
                    c0 = c * SIGN_WORD
                    n_c = min(SIGN_WORD, m - c0)
                    xc = xo + c0
                    oc = o + c0
                    for i in range(n_c):
                        acc[U64(oc + i)] += _flip(x[U64(xc + i)], w, i)
            continue
        for i in range(i_lo, i_hi):
            v = np.float64(x[U64(xo + i)])
            sq[U64(i)] += v * v
        for r in range(s):
            o = 2 * r * m + _shift(kshift[r], b, m)
            for c in range(i_lo // SIGN_WORD, (i_hi - 1) // SIGN_WORD + 1):
                w = _hash(ksign[r], b * nw + c)
                c0 = c * SIGN_WORD
                for i in range(max(i_lo, c0), min(i_hi, c0 + SIGN_WORD)):
                    acc[U64(o + i)] += _flip(x[U64(xo + i)], w, i - c0)
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


# ---------------------------------------------------------------------------------------------------------
# gaussian entries: Box-Muller in float32 arithmetic with polynomials in place of libm (box_muller32)

F32 = np.float32
U32 = np.uint32
I32 = np.int32
_LN2 = 0.6931471805599453  # float64 nearest to ln 2, written out so that no libm is consulted at import
_BM_HALF = F32(0.5)
_BM_ONE = F32(1.0)
_BM_TWO33 = F32(2.0**33)
_BM_MANT = U32(0x7FFFFF)
_BM_ONE_BITS = U32(0x3F800000)  # exponent bits of 1.0f
_BM_SQRT2_MANT = U32(0x3504F3)  # mantissa bits of float32(sqrt 2) = 0x3FB504F3
_BM_SH23 = U32(23)
_BM_SH30 = U32(30)
_BM_EXP_BIAS = I32(127 + 32)  # float32 exponent bias, and the 2**-32 of u
_BM_KE = F32(-2.0 * _LN2)
# -2 ln m = -4 atanh(f) = f * (-4) * (1 + s/3 + s^2/5 + s^3/7 + s^4/9), s = f^2 <= 0.0295
_BM_Q0, _BM_Q1, _BM_Q2, _BM_Q3, _BM_Q4 = (F32(-4.0 / (2 * i + 1)) for i in range(5))
# sin phi = phi + phi^3 (S1 + t S2 + t^2 S3 + t^3 S4), cos phi = 1 + t (C1 + ... + t^3 C4), t = phi^2: Taylor
_BM_S1, _BM_S2, _BM_S3, _BM_S4 = (F32((-1) ** (i + 1) / math.factorial(2 * i + 3)) for i in range(4))
_BM_C1, _BM_C2, _BM_C3, _BM_C4 = (F32((-1) ** (i + 1) / math.factorial(2 * i + 2)) for i in range(4))
_BM_EIGHTH = U32(1 << 29)  # 1/8 turn in units of 2**-32 turns
_BM_M30 = U32((1 << 30) - 1)
_BM_PHI = F32(math.pi * 2.0**-31)  # radians per 2**-32 turn (pi is a constant, not a libm call)
#: bound on |box_muller32(a, b) - exact Box-Muller of the same uniforms| / max(1, radius); measured 2.2e-7
BOX_MULLER32_TOLERANCE = 1e-6


@numba.njit(cache=True, inline="always", error_model="numpy")
def _box_muller32(a, b):  # type: ignore[no-untyped-def]
    """Two standard normals from two uint32: see box_muller32 (its numpy twin) for the construction."""
    # radius: u = (a + 1/2) 2**-32 = 2**e m, m in [sqrt(1/2), sqrt 2); rad^2 = -2 ln u = -2 e ln 2 - 4 atanh f
    v = F32(a) + _BM_HALF
    bits = U32(np.float32(v).view(np.uint32))
    mb = U32(bits & _BM_MANT)
    big = mb > _BM_SQRT2_MANT
    e = I32(bits >> _BM_SH23) - _BM_EXP_BIAS + I32(big)
    m = U32(U32(mb | _BM_ONE_BITS) - U32(U32(big) << _BM_SH23)).view(np.float32)
    w = F32(U32(~a)) + _BM_HALF  # (1 - u) 2**32, exact in integers: used where u > sqrt(1/2) (e == 0)
    top = e == 0
    num = -w if top else m - _BM_ONE
    den = _BM_TWO33 - w if top else m + _BM_ONE
    f = num / den
    s = f * f
    q = (((_BM_Q4 * s + _BM_Q3) * s + _BM_Q2) * s + _BM_Q1) * s + _BM_Q0
    rad = np.sqrt(F32(e) * _BM_KE + f * q)
    # angle: 2 pi (b + 1/2) 2**-32 = quadrant * pi/2 + phi, phi in (-pi/4, pi/4)
    y = U32(b + _BM_EIGHTH)
    quad = U32(y >> _BM_SH30)
    phi = (F32(I32(U32(y & _BM_M30)) - I32(1 << 29)) + _BM_HALF) * _BM_PHI
    t = phi * phi
    sn = phi + (phi * t) * (((_BM_S4 * t + _BM_S3) * t + _BM_S2) * t + _BM_S1)
    cs = _BM_ONE + t * (((_BM_C4 * t + _BM_C3) * t + _BM_C2) * t + _BM_C1)
    odd = (quad & U32(1)) != U32(0)
    zc = rad * (sn if odd else cs)
    zs = rad * (cs if odd else sn)
    zc = -zc if U32(quad - U32(1)) < U32(2) else zc  # quadrants 1 and 2
    zs = -zs if quad >= U32(2) else zs
    return zc, zs


@numba.njit(cache=True, error_model="numpy")
def _gaussian_row(kg, j, kp, ha, hb, row):  # type: ignore[no-untyped-def]
    """row[:2 kp] = the normals of global coordinate j; entries 0 .. k - 1 are its column (kp = ceil(k/2)).

    Pair p = 0 .. kp - 1 comes from hash(kg, j * kp + p): its cosine part is row[p], its sine part
    row[kp + p] (past k - 1 for the last pair when k is odd: computed, never used). Hashing and the
    transform are separate loops (through the uint32 buffers ha, hb) so that the transform vectorizes on
    32-bit lanes.
    """
    ctr0 = j * kp
    for p in range(kp):
        h = _hash(kg, ctr0 + p)
        ha[p] = U32(h >> _S32)
        hb[p] = U32(h & _LOW32)
    for p in range(kp):
        zc, zs = _box_muller32(ha[p], hb[p])
        row[p] = zc
        row[kp + p] = zs


@numba.njit(cache=True, error_model="numpy")
def _gaussian_range(x, base, lo, hi, kg, k, out):  # type: ignore[no-untyped-def]
    """Add sum_j x[j] * N(j, :) over global j in [lo, hi) into out[:k] of normals; ||x||^2 to out[k].

    The normals of GAUSSIAN_TILE (= 8) coordinates go to a float32 buffer, then one pass over the k outputs
    adds their 8 products in coordinate order: out[r] = (((out[r] + x_j N_jr) + x_j+1 N_j+1,r) + ...), the
    same additions, in the same order, as one coordinate at a time (so tiles and super-blocks do not change
    the bits). Products of float32 values are exact in float64; only the additions round.
    """
    kp = (k + 1) // 2
    tile = np.empty((GAUSSIAN_TILE, 2 * kp), np.float32)
    ha = np.empty(kp, np.uint32)
    hb = np.empty(kp, np.uint32)
    sq = 0.0
    for j0 in range(lo, hi, GAUSSIAN_TILE):
        nb = min(GAUSSIAN_TILE, hi - j0)
        for t in range(nb):
            _gaussian_row(kg, j0 + t, kp, ha, hb, tile[t])
        i0 = j0 - base
        if nb == 8:  # GAUSSIAN_TILE, unrolled: the hot path
            x0 = np.float64(x[i0])
            x1 = np.float64(x[i0 + 1])
            x2 = np.float64(x[i0 + 2])
            x3 = np.float64(x[i0 + 3])
            x4 = np.float64(x[i0 + 4])
            x5 = np.float64(x[i0 + 5])
            x6 = np.float64(x[i0 + 6])
            x7 = np.float64(x[i0 + 7])
            sq += x0 * x0
            sq += x1 * x1
            sq += x2 * x2
            sq += x3 * x3
            sq += x4 * x4
            sq += x5 * x5
            sq += x6 * x6
            sq += x7 * x7
            n0, n1, n2, n3 = tile[0], tile[1], tile[2], tile[3]
            n4, n5, n6, n7 = tile[4], tile[5], tile[6], tile[7]
            for r in range(k):
                acc = out[r]
                acc += x0 * np.float64(n0[r])
                acc += x1 * np.float64(n1[r])
                acc += x2 * np.float64(n2[r])
                acc += x3 * np.float64(n3[r])
                acc += x4 * np.float64(n4[r])
                acc += x5 * np.float64(n5[r])
                acc += x6 * np.float64(n6[r])
                acc += x7 * np.float64(n7[r])
                out[r] = acc
        else:
            for t in range(nb):
                xt = np.float64(x[i0 + t])
                sq += xt * xt
                nt = tile[t]
                for r in range(k):
                    out[r] += xt * np.float64(nt[r])
    out[k] += sq


@numba.njit(cache=True, error_model="numpy")
def _gaussian_normals(kg, k, j0, n):  # type: ignore[no-untyped-def]
    kp = (k + 1) // 2
    z = np.empty((n, 2 * kp), np.float32)
    ha = np.empty(kp, np.uint32)
    hb = np.empty(kp, np.uint32)
    for t in range(n):
        _gaussian_row(kg, j0 + t, kp, ha, hb, z[t])
    return z[:, :k].copy()


@numba.njit(cache=True, error_model="numpy")
def _box_muller32_array(a, b, zc, zs):  # type: ignore[no-untyped-def]
    for i in range(a.size):
        c, s = _box_muller32(a[i], b[i])
        zc[i] = c
        zs[i] = s


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


@numba.njit(cache=True)
def _sparse_accumulate_one(x, base, m, kshift, ksign, total):  # type: ignore[no-untyped-def]
    """_sparse_accumulate for x inside one super-block, without the thread pool: the same bits.

    Most tensors of a model are far smaller than a super-block; for them waking numba's worker threads
    costs more than the projection itself (measured: ~20 us versus up to ~300 us per call under load).
    """
    part = np.zeros(total.size)
    _sparse_range(x, base, base, base + x.size, m, kshift, ksign, part)
    for o in range(total.size):
        total[o] += part[o]


#: one launch of a parallel kernel at a time in this process: the Recorder's background thread and the
#: training thread may both project large tensors, and numba's workqueue threading layer aborts the process on
#: concurrent launches (omp and tbb would only oversubscribe the cores)
PARALLEL_LAUNCH = threading.Lock()


def sparse_accumulate(
    x: np.ndarray, base: int, m: int, kshift: np.ndarray, ksign: np.ndarray, total: np.ndarray
) -> None:
    """Sparse (OSNAP-style) kernel: see gradmanifold.projection for the construction."""
    sb = sparse_superblock(m)
    with np.errstate(over="ignore"):  # uint64 wrap-around is the hash; only visible with NUMBA_DISABLE_JIT
        if x.size and base // sb == (base + x.size - 1) // sb:
            _sparse_accumulate_one(x, np.int64(base), np.int64(m), kshift, ksign, total)
        else:
            with PARALLEL_LAUNCH:
                _sparse_accumulate(x, np.int64(base), np.int64(m), kshift, ksign, total)


def gaussian_accumulate(x: np.ndarray, base: int, kg: int, k: int, total: np.ndarray) -> None:
    """Dense gaussian kernel, entries regenerated from counters (box_muller32 of hashed counters)."""
    with np.errstate(over="ignore"), PARALLEL_LAUNCH:
        _gaussian_accumulate(x, np.int64(base), U64(kg), np.int64(k), total)


def gaussian_normals(kg: int, k: int, j0: int, n: int) -> np.ndarray:
    """float32[n, k]: the normals of global coordinates j0 .. j0 + n - 1, as the kernel computes them."""
    with np.errstate(over="ignore"):
        z: np.ndarray = _gaussian_normals(U64(kg), np.int64(k), np.int64(j0), np.int64(n))
    return z


def box_muller32_kernel(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's transform on uint32 arrays (for tests against box_muller32)."""
    a = np.ascontiguousarray(a, dtype=np.uint32)
    b = np.ascontiguousarray(b, dtype=np.uint32)
    zc, zs = np.empty(a.size, np.float32), np.empty(a.size, np.float32)
    with np.errstate(over="ignore"):
        _box_muller32_array(a, b, zc, zs)
    return zc, zs


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


def box_muller32(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 standard normals from two uint32 uniforms: Box-Muller without libm (twin and spec).

    With u = (a + 1/2) 2**-32 and v = (b + 1/2) 2**-32 in (0, 1), exact Box-Muller is
    rad = sqrt(-2 ln u), (zc, zs) = rad (cos 2 pi v, sin 2 pi v). Here, in float32 basic operations only:

    - ln u = e ln 2 + ln m, with u = 2**e m, m in [sqrt(1/2), sqrt 2) taken from the bits of float32(a + 1/2),
      and ln m = 2 atanh f, f = (m - 1) / (m + 1) (|f| <= 0.172), by its series to f**9 (relative truncation
      error < 3e-9). Where u > sqrt(1/2) (e = 0), f = -w / (2**33 - w) with w = (2**32 - 1 - a) + 1/2, so
      1 - u is exact and rad keeps its relative accuracy as u -> 1.
    - 2 pi v = quadrant * pi/2 + phi with the quadrant and phi in (-pi/4, pi/4) cut from b in integers;
      sin phi and cos phi by their Taylor series to phi**9 and phi**8 (truncation error < 3e-8).

    Accuracy: |result - exact Box-Muller of the same u, v| <= BOX_MULLER32_TOLERANCE * max(1, rad); measured
    max 2.2e-7 * max(1, rad) (7e-7 absolute, at rad ~ 5) over 2**24 hashed pairs and the edge values, about
    three float32 roundings. The 32-bit uniforms bound rad by sqrt(66 ln 2) = 6.76 (P(rad > 6.76) = 2**-33
    for exact normals). No intermediate is subnormal, so flush-to-zero modes do not change the bits.
    """
    a = np.asarray(a, dtype=np.uint32)
    b = np.asarray(b, dtype=np.uint32)
    v = a.astype(np.float32) + _BM_HALF
    bits = v.view(np.uint32)
    mb = bits & _BM_MANT
    big = mb > _BM_SQRT2_MANT
    e = (bits >> _BM_SH23).astype(np.int32) - _BM_EXP_BIAS + big.astype(np.int32)
    m = ((mb | _BM_ONE_BITS) - (big.astype(np.uint32) << _BM_SH23)).view(np.float32)
    w = (~a).astype(np.float32) + _BM_HALF
    top = e == 0
    f = np.where(top, -w, m - _BM_ONE) / np.where(top, _BM_TWO33 - w, m + _BM_ONE)
    s = f * f
    q = (((_BM_Q4 * s + _BM_Q3) * s + _BM_Q2) * s + _BM_Q1) * s + _BM_Q0
    rad = np.sqrt(e.astype(np.float32) * _BM_KE + f * q)
    y = b + _BM_EIGHTH  # wraps modulo 2**32
    quad = y >> _BM_SH30
    phi = (((y & _BM_M30).astype(np.int32) - I32(1 << 29)).astype(np.float32) + _BM_HALF) * _BM_PHI
    t = phi * phi
    sn = phi + (phi * t) * (((_BM_S4 * t + _BM_S3) * t + _BM_S2) * t + _BM_S1)
    cs = _BM_ONE + t * (((_BM_C4 * t + _BM_C3) * t + _BM_C2) * t + _BM_C1)
    odd = (quad & U32(1)) != 0
    zc = rad * np.where(odd, sn, cs)
    zs = rad * np.where(odd, cs, sn)
    zc = np.where((quad == 1) | (quad == 2), -zc, zc)
    zs = np.where(quad >= 2, -zs, zs)
    return zc, zs


def gaussian_normals_numpy(kg: int, k: int, j: np.ndarray) -> np.ndarray:
    """Standard normal matrix float32[len(j), k] of global coordinates j (box_muller32 of hashed counters)."""
    kp = (k + 1) // 2
    ctr = np.asarray(j, dtype=np.int64)[:, None] * kp + np.arange(kp, dtype=np.int64)[None, :]
    h = hash_numpy(kg, ctr)
    zc, zs = box_muller32((h >> _S32).astype(np.uint32), (h & _LOW32).astype(np.uint32))
    return np.concatenate([zc, zs[:, : k - kp]], axis=1)


def gaussian_accumulate_numpy(x: np.ndarray, base: int, kg: int, k: int, total: np.ndarray) -> None:
    """Twin of gaussian_accumulate: materialize N for the (small) input and multiply."""
    xd = np.asarray(x, dtype=np.float64)
    j = base + np.arange(x.size, dtype=np.int64)
    total[:k] += xd @ gaussian_normals_numpy(kg, k, j).astype(np.float64)
    total[k] += float(np.dot(xd, xd))
