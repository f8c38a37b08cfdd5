"""Top-q singular values of one gradient matrix, exact when small, randomized otherwise (docs/SPECTRA.md).

A parameter of shape (m, *rest) is read as the m x prod(rest) matrix G (conv kernels: out x in*kh*kw).
`top_singular_values` returns sigma_1 >= ... >= sigma_q and the exact ||G||_F^2 (so the energy beyond q is
known).

Randomized path: block Krylov subspace iteration (Halko, Martinsson & Tropp 2011, "Finding structure with
randomness", algorithm 4.4 with every iterate kept, as in Musco & Musco 2015, "Randomized block Krylov methods
for stronger and faster approximate singular value decomposition"). With l = q + oversample seeded Gaussian
columns Omega (n x l): P_0 = orth(Omega), then alternately Q_i = orth(G P_i) and P_{i+1} = orth(G^T Q_i), each
new block re-orthonormalized (two Gram-Schmidt passes and a QR) against all earlier ones. After step i the
estimates are the singular values of the small matrix T = P^T G^T Q (the coefficients of the G^T Q_j in the P
basis), i.e. of Q^T G: step 0 is the classic range finder Q = orth(G Omega), each later step adds one power
iteration without discarding the earlier ones. The estimates rise monotonically towards the true values; the
loop stops when they change by less than `tol` relative between steps (or after `power_iters` steps when that
is given). On a flat spectrum (a Gaussian noise matrix: neighbouring top singular values under 1 % apart, the
hard case) plain subspace iteration (only the last iterate kept) needs ~15 iterations for 1 % and 40-60 to
settle to 1e-4; keeping the iterates, 8-12 steps settle to 1e-4 with errors ~1e-6.

Precision: numpy inputs are computed in float64 (a float32 matrix is converted once when it has at most
2**22 entries, else per block of rows in each product). Torch tensors stay on their device: the big products
and QRs run in float32 (float64 for a float64 tensor); the small coefficient matrices go to the host and their
SVD is float64. In float32 the absolute error of a value is ~1e-7 to 1e-6 sigma_1, so values below ~1e-4
sigma_1 lose the 1 % relative accuracy there; pass a float64 tensor when such values matter.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradmanifold.errors import InputError, UsageError

__all__ = ["DEFAULT_OVERSAMPLE", "DEFAULT_TOL", "EXACT_MAX", "as_matrix_shape", "top_singular_values"]

# Exact SVD when min(m, n) <= EXACT_MAX. Measured (float32 input, q = 20, one BLAS thread), exact / randomized
# on a k^-1 spectrum / randomized on a flat Gaussian one: 256 x 256: 6 / 8 / 24 ms; 256 x 1152: 19 / 17 / 54
# ms; 384 x 384: 14 / 16 / 30 ms; 512 x 512: 36 / 13 / 61 ms; 512 x 2304: 150 / 55 / 205 ms; 1024 x 1024:
# 230 / 63 / 155 ms. Up to 384 exact costs about as much as the randomized path on a decaying spectrum and
# less on a flat one; from 512 on the randomized path is 3-4x faster on a decaying spectrum.
EXACT_MAX = 384
DEFAULT_OVERSAMPLE = 10
DEFAULT_TOL = 1e-4
DEFAULT_MAX_ITERS = 24
# Whole-matrix float64 copy of a non-float64 numpy input up to this many entries (32 MiB), row blocks beyond.
_WHOLE_MAX = 1 << 22
_BLOCK_ENTRIES = 1 << 20
# Values below FLOOR * sigma_1 count as converged once their absolute change is below tol * FLOOR * sigma_1:
# rounding noise of the products (~1e-16 or ~1e-7 of sigma_1) would otherwise never settle.
_FLOOR = {8: 1e-12, 4: 1e-5}


def as_matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """(m, n) = (shape[0], prod(shape[1:])) of a parameter with at least two dimensions."""
    dims = tuple(int(d) for d in shape)
    if len(dims) < 2:
        raise UsageError(
            f"shape {dims} has {len(dims)} dimension(s): a singular spectrum needs a matrix-shaped parameter "
            "(ndim >= 2); leave biases and norms out"
        )
    if any(d < 0 for d in dims):
        raise UsageError(f"shape {dims} has a negative dimension")
    return dims[0], math.prod(dims[1:])


def top_singular_values(
    g: Any,
    q: int,
    *,
    seed: int = 0,
    oversample: int = DEFAULT_OVERSAMPLE,
    power_iters: int | None = None,
    tol: float = DEFAULT_TOL,
    max_iters: int = DEFAULT_MAX_ITERS,
    exact_max: int = EXACT_MAX,
) -> tuple[np.ndarray, float]:
    """The top min(q, m, n) singular values (float64, descending) of g read as a matrix, and ||g||_F^2.

    g: numpy array (or array-like) or torch tensor, ndim >= 2, real floating point; a tensor is processed on
    its device. q: how many values. seed: seeds the Gaussian start block (same seed, same result).
    oversample: extra columns in each block (l = q + oversample). power_iters: a fixed number of power steps
    after the range finder; None (default) iterates until the values change by less than `tol` relative,
    at most `max_iters` steps (a RuntimeWarning says when that cap is hit). exact_max: a matrix with
    min(m, n) <= exact_max takes the exact SVD. A zero matrix gives zeros; NaN or Inf raises InputError.
    """
    for name, v, lo in (("q", q, 1), ("oversample", oversample, 0), ("max_iters", max_iters, 0)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise UsageError(f"{name}={v!r} is invalid: use an integer >= {lo}")
    if power_iters is not None and (
        isinstance(power_iters, bool) or not isinstance(power_iters, int | np.integer) or power_iters < 0
    ):
        raise UsageError(f"power_iters={power_iters!r} is invalid: use None (adaptive) or an integer >= 0")
    if isinstance(exact_max, bool) or not isinstance(exact_max, int | np.integer):
        raise UsageError(f"exact_max={exact_max!r} is invalid: use an integer")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise UsageError(f"seed={seed!r} is invalid: use an integer >= 0")
    if not (isinstance(tol, float | int) and 0.0 < tol < 1.0):
        raise UsageError(f"tol={tol!r} is invalid: use a relative change in (0, 1), e.g. 1e-4")
    if "torch" in sys.modules and isinstance(g, sys.modules["torch"].Tensor):
        ops: _Ops = _TorchOps(g)
    else:
        ops = _NumpyOps(g)
    m, n = ops.m, ops.n
    k = min(int(q), m, n)
    frob = ops.frob_sq()
    if not math.isfinite(frob):
        raise InputError(
            f"the gradient of shape {ops.shape} holds NaN or Inf (||G||_F^2 = {frob}): its singular values "
            "are undefined; skip this step or fix the gradient first"
            if not ops.all_finite()
            else f"||G||_F^2 of the gradient of shape {ops.shape} overflows float64: rescale it first"
        )
    if k == 0 or frob == 0.0:
        return np.zeros(k), frob
    width = k + int(oversample)
    if min(m, n) <= exact_max or width >= min(m, n):
        return ops.exact()[:k], frob
    rng = np.random.default_rng(int(seed))
    return _krylov(ops, k, width, rng, power_iters, float(tol), int(max_iters), 1.0 / math.sqrt(frob)), frob


def _krylov(
    ops: _Ops,
    k: int,
    width: int,
    rng: np.random.Generator,
    power_iters: int | None,
    tol: float,
    cap: int,
    c: float,
) -> np.ndarray:
    """Block Krylov estimates of the top k singular values (inputs trusted; see the module docstring).

    c = 1 / ||G||_F scales every product so the blocks stay O(1) whatever the gradient's magnitude.
    """
    m, n = ops.m, ops.n
    p_blocks = [ops.qr(ops.start(rng.standard_normal((n, width))))[0]]
    q_blocks: list[Any] = []
    cols: list[np.ndarray] = []  # column block j of T: coefficients of c G^T Q_j in the P basis
    prev: np.ndarray | None = None
    est = np.zeros(k)  # the first pass always sets it: Q_0 has room in R^m
    steps = cap if power_iters is None else int(power_iters)
    for _ in range(steps + 1):
        q_new = _extend(ops, q_blocks, ops.mm(p_blocks[-1]) * c, m)[0]
        if q_new is None:  # Q spans all of R^m: the last estimates are exact
            return est
        q_blocks.append(q_new)
        p_new, coef = _extend(ops, p_blocks, ops.rmm(q_new) * c, n)
        cols.append(coef)
        if p_new is not None:
            p_blocks.append(p_new)
        t = np.zeros((cols[-1].shape[0], sum(cj.shape[1] for cj in cols)))
        at = 0
        for cj in cols:
            t[: cj.shape[0], at : at + cj.shape[1]] = cj
            at += cj.shape[1]
        est = np.linalg.svd(t, compute_uv=False)[:k] / c
        floor = _FLOOR[ops.itemsize] * float(est[0])
        if power_iters is None and prev is not None and np.all(np.abs(est - prev) <= tol * (est + floor)):
            return est
        prev = est
        if p_new is None:  # P spans all of R^n: the next Q would add nothing new
            return est
    if power_iters is None:
        warnings.warn(
            f"top singular values of a {m} x {n} gradient did not settle to {tol:g} relative in {cap} power "
            "steps; the values returned are lower bounds (raise max_iters or oversample)",
            RuntimeWarning,
            stacklevel=3,
        )
    return est


def _extend(ops: _Ops, basis: list[Any], y: Any, dim: int) -> tuple[Any | None, np.ndarray]:
    """Orthonormalize y against the blocks in basis (two passes) and a QR; also the coefficients of y.

    Returns the new block (None when the basis already spans R^dim) and float64 coefficients [C; R] of y in
    the extended basis, C over the old columns and R over the new ones.
    """
    used = sum(ops.ncols(b) for b in basis)
    coef = []
    if basis:
        whole = ops.cat(basis)
        c1 = whole.T @ y
        y = y - whole @ c1
        c2 = whole.T @ y
        y = y - whole @ c2
        coef.append(ops.host(c1) + ops.host(c2))
    room = min(ops.ncols(y), dim - used)
    if room <= 0:
        return None, np.vstack(coef)
    q_new, r = ops.qr(y)
    coef.append(ops.host(r))
    return q_new[:, :room], np.vstack(coef)[: used + room]


class _Ops:
    """What the Krylov loop needs from a matrix: products with G and G^T, QR, and copies to the host."""

    m: int
    n: int
    shape: tuple[int, ...]
    itemsize: int

    def mm(self, x: Any) -> Any:
        raise NotImplementedError

    def rmm(self, y: Any) -> Any:
        raise NotImplementedError

    def qr(self, y: Any) -> Any:
        raise NotImplementedError

    def cat(self, blocks: list[Any]) -> Any:
        raise NotImplementedError

    def start(self, omega: np.ndarray) -> Any:
        raise NotImplementedError

    def host(self, x: Any) -> np.ndarray:
        raise NotImplementedError

    def ncols(self, x: Any) -> int:
        return int(x.shape[1])

    def frob_sq(self) -> float:
        raise NotImplementedError

    def all_finite(self) -> bool:
        raise NotImplementedError

    def exact(self) -> np.ndarray:
        raise NotImplementedError


def _bad_dtype(dtype: Any) -> InputError:
    return InputError(
        f"cannot take singular values of a gradient of dtype {dtype}: real floating point values are needed "
        "(float16, bfloat16, float32, float64); cast it first"
    )


class _NumpyOps(_Ops):
    """numpy input, float64 arithmetic; a non-float64 matrix is converted whole or per row block."""

    def __init__(self, g: Any) -> None:
        try:
            a = np.asarray(g)
        except (TypeError, ValueError) as e:
            raise InputError(f"cannot read a {type(g).__name__} as an array ({e})") from None
        if a.dtype.name != "bfloat16" and a.dtype.kind != "f":
            raise _bad_dtype(a.dtype)
        if a.ndim < 2:
            raise InputError(f"a gradient of shape {a.shape} is not matrix-shaped (ndim >= 2 needed)")
        self.shape = a.shape
        self.m, self.n = as_matrix_shape(a.shape)
        a = a.reshape(self.m, self.n)
        if a.dtype != np.float64 and a.size <= _WHOLE_MAX:
            a = a.astype(np.float64)
        self.a = a
        self.itemsize = 8
        self.rows = max(1, _BLOCK_ENTRIES // max(self.n, 1))

    def _blocks(self) -> Any:
        for lo in range(0, self.m, self.rows):
            yield lo, self.a[lo : lo + self.rows].astype(np.float64)

    def mm(self, x: np.ndarray) -> np.ndarray:
        if self.a.dtype == np.float64:
            return self.a @ x
        out = np.empty((self.m, x.shape[1]))
        for lo, blk in self._blocks():
            out[lo : lo + len(blk)] = blk @ x
        return out

    def rmm(self, y: np.ndarray) -> np.ndarray:
        if self.a.dtype == np.float64:
            return self.a.T @ y
        out = np.zeros((self.n, y.shape[1]))
        for lo, blk in self._blocks():
            out += blk.T @ y[lo : lo + len(blk)]
        return out

    def qr(self, y: np.ndarray) -> Any:
        # Cholesky QR twice (CholQR2): two BLAS-3 passes, 10-50x faster than Householder on a tall block and
        # orthonormal to rounding once cond(y) < ~1e6; Householder for anything worse (rank-deficient blocks).
        try:
            r1 = np.linalg.cholesky(y.T @ y).T
            if np.linalg.cond(r1) < 1e6:
                q = y @ np.linalg.inv(r1)
                r2 = np.linalg.cholesky(q.T @ q).T
                return q @ np.linalg.inv(r2), r2 @ r1
        except np.linalg.LinAlgError:
            pass
        return np.linalg.qr(y)

    def cat(self, blocks: list[np.ndarray]) -> np.ndarray:
        return blocks[0] if len(blocks) == 1 else np.hstack(blocks)

    def start(self, omega: np.ndarray) -> np.ndarray:
        return omega

    def host(self, x: np.ndarray) -> np.ndarray:
        return x

    def frob_sq(self) -> float:
        if self.a.dtype == np.float64:
            return float(np.einsum("ij,ij->", self.a, self.a))
        return float(sum(float(np.einsum("ij,ij->", b, b)) for _, b in self._blocks()))

    def all_finite(self) -> bool:
        return bool(np.isfinite(self.a).all())

    def exact(self) -> np.ndarray:
        a = self.a if self.a.dtype == np.float64 else self.a.astype(np.float64)
        return np.linalg.svd(a, compute_uv=False)


class _TorchOps(_Ops):
    """torch tensor on its own device: float32 products and QR (float64 for a float64 tensor)."""

    def __init__(self, g: Any) -> None:
        import torch

        if not g.is_floating_point():
            raise _bad_dtype(g.dtype)
        if g.ndim < 2:
            raise InputError(f"a gradient of shape {tuple(g.shape)} is not matrix-shaped (ndim >= 2 needed)")
        self.torch = torch
        self.shape = tuple(g.shape)
        self.m, self.n = as_matrix_shape(g.shape)
        work = torch.float64 if g.dtype == torch.float64 else torch.float32
        self.a = g.detach().reshape(self.m, self.n).to(work)
        self.itemsize = 8 if work == torch.float64 else 4

    def mm(self, x: Any) -> Any:
        return self.a @ x

    def rmm(self, y: Any) -> Any:
        return self.a.T @ y

    def qr(self, y: Any) -> Any:
        return self.torch.linalg.qr(y)

    def cat(self, blocks: list[Any]) -> Any:
        return blocks[0] if len(blocks) == 1 else self.torch.cat(blocks, dim=1)

    def start(self, omega: np.ndarray) -> Any:
        return self.torch.from_numpy(omega).to(device=self.a.device, dtype=self.a.dtype)

    def host(self, x: Any) -> np.ndarray:
        return np.asarray(x.detach().to("cpu", self.torch.float64).numpy())

    def frob_sq(self) -> float:
        return float(self.torch.linalg.vector_norm(self.a, dtype=self.torch.float64)) ** 2

    def all_finite(self) -> bool:
        return bool(self.torch.isfinite(self.a).all())

    def exact(self) -> np.ndarray:
        return self.host(self.torch.linalg.svdvals(self.a.to(self.torch.float64)))
