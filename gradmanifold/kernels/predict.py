"""Predictor-error kernel: one fused pass over a block of rows for every scope and every predictor.

A *scope* is a set of groups whose projections are summed (in float64, in group order) into the row x_t: one
group, or all selected groups for the model total. For each scope the kernel

- skips rows that are not valid for it (flagged): the stream goes on from the last valid row;
- for every predictor, forms m_t from the carried state and adds (x_t - m_t)_j^2 to a per-coordinate float64
  accumulator (only on counted rows; burn-in rows only update state). No scalar reduction runs inside the
  kernel, so every inner loop is an elementwise loop over the k coordinates that the compiler vectorises
  without reordering any sum;
- writes the increment h_t = x_t - x_prev of counted rows into a buffer for the Gram (increments need a
  previous valid row, so the first row of a stream has none);
- updates the state: the last three rows (a ring) and one EMA vector per EMA predictor.

In the steady state rows go through a scope's state UNROLL at a time (each state element loaded and stored
once per UNROLL rows: ~1.4x faster), doing the same float operations in the same order as row by row.

State lives in arrays owned by the caller, so a stream split into blocks at any boundary gives the same
per-coordinate sums, in the same order: results do not depend on chunking.

`predict_block` is the Numba kernel (it releases the GIL: the analysis runs one call per core on disjoint
scopes); `predict_block_numpy` is its plain numpy twin with the same signature, used as the test oracle.
Both mutate the state and output arrays in place.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gradmanifold.predictors import EMA, LAST, TREND, ZERO

UNROLL = 4  # rows per pass over a scope's state in the steady state (>= 3: the ring is refilled from them)


@njit(cache=True, nogil=True)
def predict_block(  # pragma: no cover - compiled; the numpy twin and the JIT-disabled run cover the logic
    proj: np.ndarray,  # float32 [n, G, k]
    members: np.ndarray,  # int64 [M]: group indices of all scopes, concatenated
    offsets: np.ndarray,  # int64 [S + 1]: scope s sums members[offsets[s]:offsets[s + 1]]
    valid: np.ndarray,  # bool [n, S]
    counted: np.ndarray,  # bool [n]
    kinds: np.ndarray,  # int64 [P]
    betas: np.ndarray,  # float64 [P]
    hist: np.ndarray,  # float64 [S, 3, k]: ring of the last three valid rows
    nseen: np.ndarray,  # int64 [S]: valid rows seen so far (state)
    ema: np.ndarray,  # float64 [S, P, k]: EMA states (rows of non-EMA predictors unused)
    acc: np.ndarray,  # float64 [S, P, k]: per-coordinate error sums of counted rows (accumulated)
    count: np.ndarray,  # int64 [S]: counted valid rows (accumulated)
    hbuf: np.ndarray,  # float64 [S, cap, k]: increments (appended at hcount[s])
    hcount: np.ndarray,  # int64 [S]: rows used in hbuf (accumulated)
) -> None:
    n = proj.shape[0]
    k = proj.shape[2]
    n_scopes = offsets.shape[0] - 1
    xs = np.empty((UNROLL, k))
    rows = np.empty(n, np.int64)
    for s in range(n_scopes):
        first = members[offsets[s]]
        m = 0
        for t in range(n):
            if valid[t, s]:
                rows[m] = t
                m += 1
        i = 0
        while i < m:
            ns = nseen[s]
            # Steady state: UNROLL counted rows with two rows of history go through the state in one pass
            # (each state element is loaded and stored once for UNROLL rows); anything else row by row.
            full = ns >= 2 and i + UNROLL <= m
            if full:
                for q in range(UNROLL):
                    if not counted[rows[i + q]]:
                        full = False
            nr = UNROLL if full else 1
            for q in range(nr):
                t = rows[i + q]
                for j in range(k):
                    xs[q, j] = np.float64(proj[t, first, j])
                for mi in range(offsets[s] + 1, offsets[s + 1]):
                    g = members[mi]
                    for j in range(k):
                        xs[q, j] += np.float64(proj[t, g, j])
                if counted[t]:
                    count[s] += 1
                    if ns + q > 0:
                        c = hcount[s]
                        if q == 0:
                            p1 = (ns + 2) % 3
                            for j in range(k):
                                hbuf[s, c, j] = xs[0, j] - hist[s, p1, j]
                        else:
                            for j in range(k):
                                hbuf[s, c, j] = xs[q, j] - xs[q - 1, j]
                        hcount[s] = c + 1
            if full:
                _rows_unrolled(xs, s, ns, kinds, betas, hist, ema, acc)
            else:
                _row(xs, s, ns, counted[rows[i]], kinds, betas, hist, ema, acc)
            nseen[s] = ns + nr
            i += nr


@njit(cache=True, nogil=True)
def _row(  # pragma: no cover - compiled
    xs: np.ndarray,
    s: int,
    ns: int,
    cnt: bool,
    kinds: np.ndarray,
    betas: np.ndarray,
    hist: np.ndarray,
    ema: np.ndarray,
    acc: np.ndarray,
) -> None:
    """One row xs[0] (the stream's row number ns): errors if counted, then the state."""
    k = xs.shape[1]
    p1 = (ns + 2) % 3  # ring slot of the previous row
    p2 = (ns + 1) % 3  # the row before it (and the slot this row overwrites)
    for p in range(kinds.shape[0]):
        kind = kinds[p]
        if kind == EMA:
            b = betas[p]
            omb = 1.0 - b
            if cnt:
                for j in range(k):
                    m = ema[s, p, j]
                    d = xs[0, j] - m
                    acc[s, p, j] += d * d
                    ema[s, p, j] = b * m + omb * xs[0, j]
            else:
                for j in range(k):
                    ema[s, p, j] = b * ema[s, p, j] + omb * xs[0, j]
        elif not cnt:
            continue
        elif kind == ZERO or (ns == 0 and (kind in (LAST, TREND))):
            for j in range(k):
                acc[s, p, j] += xs[0, j] * xs[0, j]
        elif kind == LAST or (kind == TREND and ns == 1):
            for j in range(k):
                d = xs[0, j] - hist[s, p1, j]
                acc[s, p, j] += d * d
        else:  # TREND, ns >= 2
            for j in range(k):
                d = xs[0, j] - (2.0 * hist[s, p1, j] - hist[s, p2, j])
                acc[s, p, j] += d * d
    cur = ns % 3
    for j in range(k):
        hist[s, cur, j] = xs[0, j]


@njit(cache=True, nogil=True)
def _rows_unrolled(  # pragma: no cover - compiled
    xs: np.ndarray,
    s: int,
    ns: int,
    kinds: np.ndarray,
    betas: np.ndarray,
    hist: np.ndarray,
    ema: np.ndarray,
    acc: np.ndarray,
) -> None:
    """UNROLL counted rows xs[0..UNROLL) (stream rows ns.., ns >= 2); the same float operations, in the same
    order, as UNROLL calls of `_row`, so results are bit-identical to the row-by-row path."""
    k = xs.shape[1]
    p1 = (ns + 2) % 3
    p2 = (ns + 1) % 3
    for p in range(kinds.shape[0]):
        kind = kinds[p]
        if kind == EMA:
            b = betas[p]
            omb = 1.0 - b
            for j in range(k):
                m = ema[s, p, j]
                a = acc[s, p, j]
                for q in range(UNROLL):
                    xq = xs[q, j]
                    d = xq - m
                    a += d * d
                    m = b * m + omb * xq
                acc[s, p, j] = a
                ema[s, p, j] = m
        elif kind == ZERO:
            for j in range(k):
                a = acc[s, p, j]
                for q in range(UNROLL):
                    a += xs[q, j] * xs[q, j]
                acc[s, p, j] = a
        elif kind == LAST:
            for j in range(k):
                a = acc[s, p, j]
                pv = hist[s, p1, j]
                for q in range(UNROLL):
                    d = xs[q, j] - pv
                    a += d * d
                    pv = xs[q, j]
                acc[s, p, j] = a
        else:  # TREND
            for j in range(k):
                a = acc[s, p, j]
                pv = hist[s, p1, j]
                pv2 = hist[s, p2, j]
                for q in range(UNROLL):
                    d = xs[q, j] - (2.0 * pv - pv2)
                    a += d * d
                    pv2 = pv
                    pv = xs[q, j]
                acc[s, p, j] = a
    for q in range(UNROLL - 3, UNROLL):
        c = (ns + q) % 3
        for j in range(k):
            hist[s, c, j] = xs[q, j]


def predict_block_numpy(
    proj: np.ndarray,
    members: np.ndarray,
    offsets: np.ndarray,
    valid: np.ndarray,
    counted: np.ndarray,
    kinds: np.ndarray,
    betas: np.ndarray,
    hist: np.ndarray,
    nseen: np.ndarray,
    ema: np.ndarray,
    acc: np.ndarray,
    count: np.ndarray,
    hbuf: np.ndarray,
    hcount: np.ndarray,
) -> None:
    """Numpy twin of `predict_block`: same arguments, same effect (up to float summation order)."""
    n_scopes = offsets.shape[0] - 1
    for s in range(n_scopes):
        groups = members[offsets[s] : offsets[s + 1]]
        rows = np.flatnonzero(valid[:, s])
        if rows.size == 0:
            continue
        x = proj[rows][:, groups].astype(np.float64).sum(axis=1)  # [m, k]
        m = x.shape[0]
        cnt = counted[rows]
        ns0 = int(nseen[s])
        # The two rows before each row: from the carried ring, then from this block.
        lead = np.zeros((2, x.shape[1]))
        for i in (1, 2):
            if ns0 >= i:
                lead[2 - i] = hist[s, (ns0 - i) % 3]
        ext = np.concatenate([lead, x])  # ext[i + 2] = x[i]
        prev = ext[1 : m + 1]
        prev2 = ext[0:m]
        seen = ns0 + np.arange(m)  # valid rows seen before each row
        for p, kind in enumerate(kinds):
            if kind == EMA:
                b = betas[p]
                e = ema[s, p].copy()
                preds = np.empty_like(x)
                for i in range(m):
                    preds[i] = e
                    e = b * e + (1.0 - b) * x[i]
                ema[s, p] = e
            elif kind == ZERO:
                preds = np.zeros_like(x)
            elif kind == LAST:
                preds = np.where((seen > 0)[:, None], prev, 0.0)
            else:  # TREND
                preds = np.where((seen >= 2)[:, None], 2.0 * prev - prev2, 0.0)
                preds = np.where((seen == 1)[:, None], prev, preds)
            err = (x - preds) ** 2 * cnt[:, None]
            acc[s, p] += err.sum(axis=0)
        count[s] += int(cnt.sum())
        has_prev = cnt & (seen > 0)
        inc = (x - prev)[has_prev]
        c = int(hcount[s])
        hbuf[s, c : c + inc.shape[0]] = inc
        hcount[s] = c + inc.shape[0]
        # Carry the ring: the last up-to-three rows land at their slots.
        for i in range(max(0, m - 3), m):
            hist[s, (ns0 + i) % 3] = x[i]
        nseen[s] = ns0 + m


def default_kernel() -> object:
    """The compiled kernel, or its numpy twin under NUMBA_DISABLE_JIT (the kernel would crawl in Python)."""
    from numba import config

    return predict_block_numpy if getattr(config, "DISABLE_JIT", False) else predict_block
