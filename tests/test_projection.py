"""Projection: linearity, sharding, kernels against their numpy twins, moments, reproducibility, inputs.

Tolerances: float64 results that differ only in summation order are compared with an absolute bound of
1e-12 * sum|x| (n roundings of at most 2**-52 relative each, for n well below 1e4, is far below it).
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tracemalloc
from collections.abc import Callable

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradmanifold.errors import InputError, UsageError
from gradmanifold.kernels import projection as K
from gradmanifold.projection import (
    ProjectionSpec,
    _keys,
    _project_torch,
    fingerprint,
    group_key,
    project,
    project_with_norm,
)

JIT = not numba.config.DISABLE_JIT  # type: ignore[attr-defined]
#: fingerprint of ProjectionSpec() pinned: any change of the projection (hash, layout, default s) breaks it
DEFAULT_FINGERPRINT = "abfc4ce42f864134d5d512936ffeeebc"
#: fingerprint of GAUSSIAN_SPEC pinned (float32 Box-Muller without libm: the same on every machine)
GAUSSIAN_SPEC = ProjectionSpec(k=64, seed=3, kind="gaussian")
GAUSSIAN_FINGERPRINT = "6f5bf12e3f2cfbb4edd075505f8ac4fb"

SPECS = [
    ProjectionSpec(k=16, seed=1, s=1),
    ProjectionSpec(k=32, seed=2, s=2),
    ProjectionSpec(k=20, seed=3, s=4),
    ProjectionSpec(k=64, seed=4, s=8),
    ProjectionSpec(k=9, seed=5, kind="gaussian"),
]
spec_st = st.sampled_from(SPECS)


def _tol(*xs: np.ndarray) -> float:
    return 1e-12 * sum(float(np.abs(np.asarray(x, dtype=np.float64)).sum()) for x in xs) + 1e-300


def _vec(n: int, seed: int, dtype: type = np.float64) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


# --- algebra ----------------------------------------------------------------------------------------------


@given(spec=spec_st, n=st.integers(1, 700), a=st.floats(-3, 3), b=st.floats(-3, 3), seed=st.integers(0, 99))
def test_linear(spec: ProjectionSpec, n: int, a: float, b: float, seed: int) -> None:
    x, y = _vec(n, seed), _vec(n, seed + 1000)
    lhs = project(a * x + b * y, spec, "w")
    rhs = a * project(x, spec, "w") + b * project(y, spec, "w")
    assert np.abs(lhs - rhs).max() <= _tol(a * x, b * y)


@given(
    spec=spec_st,
    n=st.integers(1, 900),
    offset=st.integers(0, 10**6),
    cuts=st.lists(st.integers(0, 900), max_size=5),
)
def test_shards_add_up_to_the_whole(spec: ProjectionSpec, n: int, offset: int, cuts: list[int]) -> None:
    """Shard boundaries anywhere (inside blocks and sign words too) give the whole, to float64 rounding."""
    x = _vec(n, n)
    z, q = project_with_norm(x, spec, "layer.0", offset)
    bounds = sorted({0, n, *(c for c in cuts if c < n)})
    parts = [
        project_with_norm(x[lo:hi], spec, "layer.0", offset + lo) for lo, hi in itertools.pairwise(bounds)
    ]
    assert np.abs(sum(p[0] for p in parts) - z).max() <= _tol(x)
    assert abs(sum(p[1] for p in parts) - q) <= 1e-12 * q


def test_groups_and_seeds_are_independent_maps() -> None:
    x = _vec(500, 0)
    spec = ProjectionSpec(k=32)
    assert not np.allclose(project(x, spec, "a"), project(x, spec, "b"))
    assert not np.allclose(project(x, spec, "a"), project(x, ProjectionSpec(k=32, seed=1), "a"))
    assert group_key(0, "a") == group_key(0, "a") != group_key(0, "b")


# --- kernels against their numpy twins ---------------------------------------------------------------------


@given(
    n=st.integers(0, 1500),
    base=st.one_of(st.integers(0, 300), st.integers(0, 2**40)),
    m=st.sampled_from([1, 3, 8, 25, 64, 65, 130]),
    s=st.sampled_from([1, 2, 4, 8]),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32),
)
def test_sparse_kernel_matches_twin(n: int, base: int, m: int, s: int, dtype: type, seed: int) -> None:
    keys = _keys(seed, "g", s)
    x = _vec(n, seed % 1000, dtype)
    got, want = np.zeros(s * m + 1), np.zeros(s * m + 1)
    K.sparse_accumulate(x, base, m, keys.kshift, keys.ksign, got)
    K.sparse_accumulate_numpy(x, base, m, keys.kshift, keys.ksign, want)
    assert np.abs(got - want)[:-1].max(initial=0.0) <= _tol(x)
    assert abs(got[-1] - want[-1]) <= 1e-12 * want[-1] + 1e-300


@given(
    n=st.integers(0, 120),
    base=st.integers(0, 2**40),
    k=st.integers(1, 12),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32),
)
def test_gaussian_kernel_matches_twin(n: int, base: int, k: int, dtype: type, seed: int) -> None:
    kg = _keys(seed, "g", 1).kgauss
    x = _vec(n, seed % 1000, dtype)
    got, want = np.zeros(k + 1), np.zeros(k + 1)
    K.gaussian_accumulate(x, base, kg, k, got)
    K.gaussian_accumulate_numpy(x, base, kg, k, want)
    # entries are O(1) normals: the sums differ by rounding of n terms of size |x_j| * |N| (|N| < 7)
    assert np.abs(got - want)[:-1].max(initial=0.0) <= 7 * _tol(x)
    assert abs(got[-1] - want[-1]) <= 1e-12 * want[-1] + 1e-300


_EDGE_U32 = np.array(
    [0, 1, 2, 2**24, 2**24 + 1, 2**29 - 1, 2**29, 2**30, 2**31 - 1, 2**31, 0xB504F333, 0xB504F334,
     3 * 2**30, 2**32 - 129, 2**32 - 128, 2**32 - 2, 2**32 - 1],
    dtype=np.uint64,
).astype(np.uint32)  # fmt: skip


def _uniform_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n random uint32 pairs, then all pairs of edge values (quadrant, binade, sqrt 2, 0, 2**32 - 1)."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    e = _EDGE_U32
    return np.concatenate([a, np.repeat(e, e.size)]), np.concatenate([b, np.tile(e, e.size)])


def test_box_muller32_kernel_equals_twin_bit_for_bit() -> None:
    a, b = _uniform_pairs(1 << 16 if JIT else 1 << 9, 0)
    got, want = K.box_muller32_kernel(a, b), K.box_muller32(a, b)
    assert got[0].dtype == want[0].dtype == np.float32
    assert got[0].tobytes() == want[0].tobytes() and got[1].tobytes() == want[1].tobytes()


@given(
    kg=st.integers(0, 2**64 - 1),
    k=st.integers(1, 40),
    j0=st.one_of(st.integers(0, 300), st.integers(0, 2**40)),
    n=st.integers(0, 20),
)
def test_gaussian_normals_kernel_equals_twin_bit_for_bit(kg: int, k: int, j0: int, n: int) -> None:
    got = K.gaussian_normals(kg, k, j0, n)
    want = K.gaussian_normals_numpy(kg, k, j0 + np.arange(n))
    assert got.shape == want.shape == (n, k) and got.dtype == want.dtype == np.float32
    assert got.tobytes() == want.tobytes()


def test_box_muller32_accuracy() -> None:
    """Within BOX_MULLER32_TOLERANCE * max(1, radius) of exact (float64 libm) Box-Muller of the same u, v."""
    a, b = _uniform_pairs(1 << 20, 1)
    zc, zs = K.box_muller32(a, b)
    u = (a + 0.5) * 2.0**-32
    ang = 2 * np.pi * ((b + 0.5) * 2.0**-32)
    rad = np.sqrt(-2 * np.log(u))
    dev = np.maximum(np.abs(zc - rad * np.cos(ang)), np.abs(zs - rad * np.sin(ang))) / np.maximum(1.0, rad)
    assert dev.max() <= K.BOX_MULLER32_TOLERANCE
    assert dev.max() > 1e-8  # float32 results: the comparison is not vacuous
    assert np.abs(np.hypot(zc, zs)).max() <= np.sqrt(66 * np.log(2)) + 1e-5  # 32-bit uniforms: rad <= 6.76
    assert np.float32(np.sqrt(2)).view(np.uint32) & 0x7FFFFF == K._BM_SQRT2_MANT  # the m split at sqrt 2


def test_gaussian_entries_are_standard_normal() -> None:
    """2**22 entries (fixed key: deterministic) against N(0, 1): each band is about 5 standard errors wide."""
    n_coords, k = 1 << 14, 256
    z = K.gaussian_normals(0x600D, k, 12345, n_coords) if JIT else None
    if z is None:  # without the JIT: the twin (equal bit for bit, tested above)
        z = K.gaussian_normals_numpy(0x600D, k, 12345 + np.arange(n_coords))
    z = z.astype(np.float64).ravel()
    n = z.size
    mean, var = z.mean(), z.var()
    d = z - mean
    skew, kurt = (d**3).mean() / var**1.5, (d**4).mean() / var**2
    assert abs(mean) <= 5 * np.sqrt(1 / n)
    assert abs(var - 1) <= 5 * np.sqrt(2 / n)
    assert abs(skew) <= 5 * np.sqrt(6 / n)
    assert abs(kurt - 3) <= 5 * np.sqrt(24 / n)
    for c, p in ((1.0, 0.31731050786291415), (2.0, 0.04550026389635842), (3.0, 0.0026997960632601866)):
        frac = float(np.mean(np.abs(z) > c))  # two-sided tail of N(0, 1) beyond c
        assert abs(frac - p) <= 5 * np.sqrt(p * (1 - p) / n), (c, frac, p)


def test_gaussian_moment_check_has_teeth() -> None:
    """Variance-1 uniforms pass the second moment but fail the kurtosis band of the test above."""
    z = (np.random.default_rng(0).random(1 << 22) - 0.5) * np.sqrt(12)
    assert abs(z.var() - 1) <= 5 * np.sqrt(2 / z.size)
    assert abs((z**4).mean() / z.var() ** 2 - 3) > 5 * np.sqrt(24 / z.size)


def test_kernel_spans_many_superblocks() -> None:
    """Inputs longer than a round of super-blocks, starting mid-super-block, against the twin."""
    m, s = 4, 2
    sb = K.sparse_superblock(m)
    n = sb * 3 + 77 if JIT else sb + 77
    x = _vec(n, 3, np.float32)
    keys = _keys(9, "big", s)
    got, want = np.zeros(s * m + 1), np.zeros(s * m + 1)
    K.sparse_accumulate(x, sb - 5, m, keys.kshift, keys.ksign, got)
    K.sparse_accumulate_numpy(x, sb - 5, m, keys.kshift, keys.ksign, want)
    assert np.abs(got - want).max() <= _tol(x)


# --- moments: E||Rx||^2 = ||x||^2, Var(||Rx||^2 / ||x||^2) ~ 2/k --------------------------------------------

STAT_K = 32
STAT_TRIALS = 300  # fixed seeds 0..299, group "stat": deterministic, so the test never flakes
STAT_VECTORS = {"ones": np.ones(1000), "gauss": _vec(1000, 12345)}


def _moments_ok(proj: Callable[[np.ndarray, int], np.ndarray], k: int = STAT_K) -> list[str]:
    """Acceptance band, per test vector: |mean - 1| <= 0.06 (about 4 standard errors of sqrt(2/k/N)) and
    var / (2/k) in [0.6, 1.5] (the sample variance of N = 300 chi-square-like ratios has a relative standard
    error near 0.09). Returns the failures."""
    failures = []
    for name, x in STAT_VECTORS.items():
        r = np.array([np.sum(proj(x, seed) ** 2) for seed in range(STAT_TRIALS)]) / np.dot(x, x)
        mean, var = r.mean(), r.var(ddof=1)
        if abs(mean - 1) > 0.06 or not 0.6 <= var / (2 / k) <= 1.5:
            failures.append(f"{name}: mean {mean:.4f}, var*k/2 {var * k / 2:.3f}")
    return failures


def _twin_project(x: np.ndarray, spec: ProjectionSpec) -> np.ndarray:
    keys, total = _keys(spec.seed, "stat", spec.s), np.zeros(spec.k + 1)
    if spec.kind == "sparse":
        K.sparse_accumulate_numpy(x, 0, spec.k // spec.s, keys.kshift, keys.ksign, total)
        return total[:-1] / np.sqrt(spec.s)
    K.gaussian_accumulate_numpy(x, 0, keys.kgauss, spec.k, total)
    return total[:-1] / np.sqrt(spec.k)


@pytest.mark.parametrize(("kind", "s"), [("sparse", 1), ("sparse", 2), ("sparse", 8), ("gaussian", 2)])
def test_second_moment(kind: str, s: int) -> None:
    def proj(x: np.ndarray, seed: int) -> np.ndarray:
        spec = ProjectionSpec(k=STAT_K, seed=seed, kind=kind, s=s)  # type: ignore[arg-type]
        # without the JIT the gaussian kernel runs in pure Python: use its twin (equal, tested above)
        return project(x, spec, "stat") if JIT or kind == "sparse" else _twin_project(x, spec)

    assert _moments_ok(proj) == []


def test_second_moment_rejects_broken_sketches() -> None:
    """The same acceptance test fails for sketches that get the signs or the buckets wrong (it has teeth)."""

    def no_signs(x: np.ndarray, seed: int) -> np.ndarray:  # buckets right, every sign +1
        h = K.hash_numpy(seed, np.arange(x.size)) % np.uint64(STAT_K)
        return np.bincount(h.astype(np.int64), weights=x, minlength=STAT_K)

    def one_bucket(x: np.ndarray, seed: int) -> np.ndarray:  # signs right, every coordinate in bucket 0
        sign = 1.0 - 2.0 * (K.hash_numpy(seed, np.arange(x.size)) & np.uint64(1)).astype(np.float64)
        out = np.zeros(STAT_K)
        out[0] = np.dot(sign, x)
        return out

    assert any(f.startswith("ones") for f in _moments_ok(no_signs))
    assert len(_moments_ok(one_bucket)) == 2


# --- reproducibility ----------------------------------------------------------------------------------------


def test_fingerprint_pinned_and_sensitive() -> None:
    assert fingerprint(ProjectionSpec()) == DEFAULT_FINGERPRINT
    assert fingerprint(GAUSSIAN_SPEC) == GAUSSIAN_FINGERPRINT
    base = ProjectionSpec(k=64)
    variants = [base, ProjectionSpec(k=64, seed=1), ProjectionSpec(k=32), ProjectionSpec(k=64, s=4)]
    variants += [ProjectionSpec(k=64, kind="gaussian")]
    assert len({fingerprint(v) for v in variants}) == len(variants)


_SUBPROCESS = """
import numpy as np
from gradmanifold.projection import ProjectionSpec, project_with_norm
x = np.random.default_rng(7).standard_normal(70001).astype(np.float32)
for spec in (ProjectionSpec(k=64, seed=11), ProjectionSpec(k=8, seed=11, kind="gaussian")):
    z, q = project_with_norm(x if spec.kind == "sparse" else x[:3000], spec, "enc.w", 123)
    print(z.tobytes().hex(), np.float64(q).tobytes().hex())
"""


def test_same_bits_in_another_process() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _SUBPROCESS], capture_output=True, text=True, check=True
    ).stdout
    x = np.random.default_rng(7).standard_normal(70001).astype(np.float32)
    here = []
    for spec in (ProjectionSpec(k=64, seed=11), ProjectionSpec(k=8, seed=11, kind="gaussian")):
        z, q = project_with_norm(x if spec.kind == "sparse" else x[:3000], spec, "enc.w", 123)
        here.append(f"{z.tobytes().hex()} {np.float64(q).tobytes().hex()}")
    assert out.split("\n")[:2] == here


@pytest.mark.skipif(not JIT, reason="threads only exist with the JIT")
def test_bits_independent_of_thread_count() -> None:
    x = _vec(K.SPARSE_SUPERBLOCK_TARGET * 5 + 99, 1, np.float32)
    results = []
    for threads in (1, 2):
        numba.set_num_threads(threads)
        try:
            results.append([project_with_norm(x, ProjectionSpec(k=32), "t", 17)])
            results[-1].append(project_with_norm(x[:9000], ProjectionSpec(k=8, kind="gaussian"), "t", 17))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    for (z1, q1), (z2, q2) in zip(*results, strict=True):
        assert z1.tobytes() == z2.tobytes() and q1 == q2


# --- inputs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [ProjectionSpec(k=16), ProjectionSpec(k=5, kind="gaussian")])
def test_dtypes_and_layouts_give_the_same_bits(spec: ProjectionSpec) -> None:
    """float16 -> float32 and float32 -> float64 are exact, so all give the bits of the float32 projection."""
    x16 = _vec(3 * 4000, 2, np.float16).reshape(3, 4000)
    x32 = x16.astype(np.float32)
    want = project_with_norm(x32, spec, "g", 5)
    for x in (x16, x32.astype(np.float64), np.asfortranarray(x32), x32.T.copy().T, memoryview(x32)):  # type: ignore[arg-type]
        z, q = project_with_norm(x, spec, "g", 5)
        assert z.tobytes() == want[0].tobytes() and q == want[1]
    strided = np.zeros((3, 8000), np.float32)[:, ::2]
    strided[...] = x32
    assert project(strided, spec, "g", 5).tobytes() == want[0].tobytes()


def test_non_finite_values_give_non_finite_norm() -> None:
    x = _vec(100, 0)
    x[3] = np.nan
    assert np.isnan(project_with_norm(x, ProjectionSpec(k=8), "g")[1])
    x[3] = np.inf
    assert np.isinf(project_with_norm(x, ProjectionSpec(k=8), "g")[1])


def test_empty_input() -> None:
    z, q = project_with_norm(np.zeros(0, np.float32), ProjectionSpec(k=8), "g")
    assert q == 0.0 and not z.any() and z.shape == (8,)


@pytest.mark.skipif(not JIT, reason="8M coordinates in pure Python")
def test_memory_stays_bounded() -> None:
    """A float16 input is converted piece by piece: no float64 (or float32) copy of the whole."""
    x = np.ones(1 << 23, np.float16)
    project(x[:10], ProjectionSpec(k=16), "g")
    tracemalloc.start()
    project(x, ProjectionSpec(k=16), "g")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.6 * x.size * 4  # a float32 copy of the whole would be 32 MiB; pieces are 16 MiB


@pytest.mark.parametrize("bad", [np.arange(10), np.ones(4, complex), np.ones(3, bool), ["a", "b"]])
def test_bad_dtype_is_an_input_error(bad: object) -> None:
    with pytest.raises(InputError, match=r"cannot project .* real floating point .* cast it"):
        project(bad, ProjectionSpec(k=8), "g")


@pytest.mark.parametrize(
    "kw", [{"k": 0}, {"k": 8, "s": 3}, {"k": 6, "s": 4}, {"k": 8, "kind": "dense"}, {"k": 2.5}]
)
def test_bad_spec_is_a_usage_error(kw: dict[str, object]) -> None:
    with pytest.raises(UsageError, match=r"use|pick"):
        ProjectionSpec(**kw)  # type: ignore[arg-type]


def test_bad_offset_or_group_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="offset"):
        project(np.ones(3), ProjectionSpec(k=8), "g", -1)
    with pytest.raises(UsageError, match="group"):
        project(np.ones(3), ProjectionSpec(k=8), 3)  # type: ignore[arg-type]


def test_spec_round_trips() -> None:
    spec = ProjectionSpec(k=12, seed=3, kind="gaussian", s=1)
    assert ProjectionSpec.from_dict(spec.to_dict()) == spec


# --- torch --------------------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("spec", [*SPECS, ProjectionSpec(k=130, s=1)])
def test_torch_path_matches_numba(spec: ProjectionSpec) -> None:
    """The int64 torch implementation of the hash (used on GPUs) gives the same map, to float64 rounding."""
    torch = pytest.importorskip("torch")
    x = _vec(2 * 1500, 4).reshape(2, 1500)
    t = torch.from_numpy(x).T  # non-contiguous
    want_z, want_q = project_with_norm(x.T, spec, "blk", 999)
    z, q = _project_torch(t, spec, _keys(spec.seed, "blk", spec.s), 999)
    assert np.abs(z - want_z).max() <= 7 * _tol(x)
    assert abs(q - want_q) <= 1e-12 * want_q


@pytest.mark.torch
def test_torch_gaussian_normals_equal_kernel_bit_for_bit() -> None:
    """The torch transform (the one used on devices), run on CPU torch, gives the kernel's float32 bits."""
    torch = pytest.importorskip("torch")
    from gradmanifold.projection import _t_box_muller32, _t_gaussian_normals

    a, b = _uniform_pairs(1 << 16, 2)
    zc, zs = _t_box_muller32(torch.from_numpy(a.astype(np.int64)), torch.from_numpy(b.astype(np.int64)))
    want = K.box_muller32(a, b)
    assert zc.numpy().tobytes() == want[0].tobytes() and zs.numpy().tobytes() == want[1].tobytes()
    for k in (1, 8, 9, 130):
        kg = _keys(7, "t", 1).kgauss
        got = _t_gaussian_normals(2**33 + 5, 64, k, kg, torch.device("cpu")).numpy()
        assert got.tobytes() == K.gaussian_normals(kg, k, 2**33 + 5, 64).tobytes()


@pytest.mark.torch
def test_torch_cpu_tensors_and_bfloat16() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(3, 700, generator=torch.Generator().manual_seed(0), requires_grad=True)
    spec = ProjectionSpec(k=16)
    want = project_with_norm(x.detach().numpy(), spec, "g")
    got = project_with_norm(x, spec, "g")
    assert got[0].tobytes() == want[0].tobytes() and got[1] == want[1]
    xb = x.detach().to(torch.bfloat16)
    zb, qb = project_with_norm(xb, spec, "g")
    z32, q32 = project_with_norm(xb.float().numpy(), spec, "g")
    assert zb.tobytes() == z32.tobytes() and qb == q32  # bfloat16 -> float32 is exact
    with pytest.raises(InputError):
        project(torch.arange(5), spec, "g")


def test_torch_not_imported_for_numpy_input() -> None:
    code = (
        "import sys, numpy as np; from gradmanifold.projection import project, ProjectionSpec;"
        "project(np.ones(10), ProjectionSpec(k=4), 'g'); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
