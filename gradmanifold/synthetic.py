"""Synthetic gradient streams whose predictability is known: ground truth for `record --synthetic`.

Each task is a seeded generator of T gradient vectors g_0..g_{T-1} in R^d (float64), with the expected value
of the numbers `gradmanifold analyze` reports, computed independently of the recorder and the analysis:

``white-noise`` (q = 0.5)
    g_t = mu + xi_t, ||mu||^2 = q d, xi_t ~ N(0, (1 - q) I). Signal fraction q = ||mu||^2 / E||g||^2.
    Long-run kappa (docs/METHOD.md): last 2(1-q), ema:b (2/(1+b))(1-q), trend 6(1-q), zero 1.
``random-walk``
    g_t = g_{t-1} + xi_t, g_{-1} = 0, xi_t ~ N(0, I). E||g_t||^2 = (t + 1) d, so kappa(last) = 2 / (T + 1)
    in expectation and kappa(trend) ~ 4 / T. The sum of ||g_t||^2 of a random walk does not concentrate
    fast: one run's kappa scatters by about 1.5 / sqrt(d) relative around the expectation.
``lowrank-drift`` (rank = 8, revert = 0.05, noise = 0, decay = 1)
    g_t = b + z_t, z_t = (1 - revert) z_{t-1} + U c_t + nu_t: a fixed base b (||b||^2 = d) plus a slow,
    mean-reverting drift inside a planted r-dim subspace (U orthonormal, c_t ~ N(0, diag(e)), e_i ~ decay^i
    normalised to sum r), plus optional isotropic noise nu_t ~ N(0, noise^2 r / d I). With noise = 0 the
    increments have rank exactly r, in projected space too: r*(eps) = r for every eps below the smallest
    direction's energy share (1/r for equal energies).
``noisy-quadratic`` (cond = 100, lr = 0.5, noise = 1, classes = 16)
    SGD on f(x) = x^T A x / 2 with noisy gradients: g_t = A x_t + noise * xi_t, x_{t+1} = x_t - lr g_t,
    x_0 ~ N(0, I). A is diagonal with `classes` (at most d) distinct eigenvalues log-spaced in
    [1 / cond, 1] (d / classes coordinates each): a transient while the mean path decays (rate 1 - lr lambda
    per class), then a stationary AR(1) regime per coordinate.
``lqr`` (noise = 0.02, lr = 0.5, replicas = 16)
    Policy gradient on a linear-quadratic regulator, the paper's synthetic control task:
    x_{s+1} = A x_s + B u_s, u_s = -K x_s, J(K) = E sum_s (x_s^T Q x_s + u_s^T R u_s), x_0 ~ N(0, I),
    Q = R = I, A random with spectral radius 0.9 (so K_0 = 0 is stabilising), n states and m controls with
    n m = d (m the largest divisor of d up to sqrt(d / 2)). The gradient is exact (Fazel et al. 2018,
    arXiv:1801.05039: grad J = 2 ((R + B^T P_K B) K - B^T P_K A) Sigma_K) plus estimator noise
    N(0, sigma^2 I) with sigma = noise ||grad J(K_0)|| / sqrt(d); the step is K <- K - eta g with
    eta = lr / (2 ||R + B^T P B|| ||Sigma_K||) at K_0. Nonlinear, so no closed form: the ground truth is
    estimated from `replicas` independent runs (mean and standard deviation of kappa, median r*).
``spiked-two-layer`` (nu = 0.5, samples = 256, hidden = 0, lr = 0.5, batch = 0, replicas = 4)
    Gradient descent on the first layer W [hidden, p] of f(x) = sum_j a_j relu(w_j^T x) / sqrt(hidden)
    (a_j = +-1 fixed), loss (1/2n) sum (f(x_i) - y_i)^2, on the spiked data of arXiv:2510.01303:
    X = X_B + zeta z q^T, zeta = n^nu, X_B [n, p] and z [n] standard normal, q a unit p-vector, teacher
    y = tanh(X beta) (beta a unit vector). hidden * p = d (hidden = 0: the largest divisor of d up to
    sqrt(d / 2)); each step yields the flat [hidden, p] gradient (row-major); batch = 0 is full batch, else
    minibatches of that size. Step size lr n / ||X||_op^2 (the Hessian is at most ||X||_op^2 / n). kappa and
    r* are estimated from `replicas` fresh data sets; `SpikedTruth` adds, per step of this seed's stream, the
    exact split G = S1 + S2 + E of gradmanifold.probe.two_layer with the planted q: ||E||_op / ||G||_op, the
    top-2 energy share of G and its lower bound 1 - ||E||_F^2 / ||G||_F^2 (Eckart-Young: S1 + S2 has rank 2).

How the expectations are computed. The first four tasks are linear Gaussian processes that split into
independent coordinate classes (a deterministic mean part and zero-mean noise parts, whose cross terms vanish
in expectation). Each class is a scalar linear system s_{t+1} = M s_t + N w_t, g_t = c s_t + e w_t; with the
predictor states (g_{t-1}, g_{t-2}, one EMA per beta) its second-moment matrix is propagated exactly, so
`GroundTruth.kappa` is the expected path length over the expected sum of squared norms at this T (the EMA
start-up and the t = 0 term included; no large-T approximation). Both sums concentrate when d is large, so
one run lands within a few percent (random-walk: see above).

r* is reported twice: `rank`, the median over three independent replicas of the task at this T and d (an
isotropic spectrum sampled T times in d dims spreads out, Marchenko-Pastur, so r* sits well below
(1 - eps) d unless T >> d); and `rank_limit`, r* of the expected increment Gram (noise parts diagonal, mean
parts a small dense block), the T >> d value. For lowrank-drift both are the planted rank.

In projected space (what a store holds) kappa moves by the JL error of the projection (about sqrt(2/k)
relative on the mean part); r* is kept when r* << k, and an isotropic spectrum in d > k dims looks like
one in k dims.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradmanifold.errors import UsageError
from gradmanifold.truth import (
    EPS,
    PREDICTORS,
    GroundTruth,
    classes,
    exact_truth,
    increment_energies,
    kappa_reference,
    path_lengths,
    predictor_filter,
    rank_from_energies,
    rank_reference,
)

RANK_REPLICAS = 3

DEFAULTS: dict[str, dict[str, float]] = {
    "white-noise": {"q": 0.5},
    "random-walk": {},
    "lowrank-drift": {"rank": 8, "revert": 0.05, "noise": 0.0, "decay": 1.0},
    "noisy-quadratic": {"cond": 100.0, "lr": 0.5, "noise": 1.0, "classes": 16},
    "lqr": {"noise": 0.02, "lr": 0.5, "replicas": 16},
    "spiked-two-layer": {"nu": 0.5, "samples": 256, "hidden": 0, "lr": 0.5, "batch": 0, "replicas": 4},
}
TASKS: tuple[str, ...] = tuple(DEFAULTS)


@dataclass(frozen=True)
class SyntheticTask:
    """A named synthetic stream: `gradients()` yields g_0..g_{T-1}; `ground_truth()` says what to find."""

    name: str
    steps: int
    dim: int
    seed: int = 0
    params: tuple[tuple[str, float], ...] = ()

    @property
    def options(self) -> dict[str, float]:
        return {**DEFAULTS[self.name], **dict(self.params)}

    def gradients(self) -> Iterator[np.ndarray]:
        """The stream, one float64 [dim] vector per step (deterministic in seed and parameters)."""
        return _GENERATORS[self.name](self, np.random.default_rng([self.seed, _TASK_TAG[self.name]]))

    def replica_ranks(self, eps: Sequence[float], replicas: int = RANK_REPLICAS) -> dict[str, int]:
        """Median r* per eps over `replicas` independent runs of this task (other noise, same parameters)."""
        if not eps:
            return {}
        ranks: dict[str, list[int]] = {repr(float(x)): [] for x in eps}
        for i in range(replicas):
            rng = np.random.default_rng([self.seed, _TASK_TAG[self.name], 1000 + i])
            g = np.stack(list(_GENERATORS[self.name](self, rng)))
            sv2 = increment_energies(g)
            for x in eps:
                ranks[repr(float(x))].append(rank_from_energies(sv2, x))
        return {key: int(np.median(v)) for key, v in ranks.items()}

    @property
    def matrix_shape(self) -> tuple[int, int] | None:
        """(rows, cols) each flat gradient reshapes to (row-major) for matrix tasks, else None."""
        return _spiked_dims(self) if self.name == "spiked-two-layer" else None

    def array(self) -> np.ndarray:
        """The whole stream as float64 [steps, dim] (for tests and small runs)."""
        return np.stack(list(self.gradients()))

    def ground_truth(self, predictors: Sequence[str] = PREDICTORS, eps: Sequence[float] = EPS) -> GroundTruth:
        """Expected kappa per predictor and r* per eps (see the module docstring; eps=() skips the ranks)."""
        for p in predictors:
            predictor_filter(p)  # validate
        return _TRUTHS[self.name](self, tuple(predictors), tuple(eps))


def make_task(
    name: str, steps: int, dim: int, seed: int = 0, params: Mapping[str, float] | None = None
) -> SyntheticTask:
    """Validate and build a task; UsageError names what is wrong and the allowed values."""
    if name not in DEFAULTS:
        raise UsageError(f"unknown synthetic task {name!r}; choose from {', '.join(TASKS)}")
    if steps < 3:
        raise UsageError(f"--steps must be at least 3 for a synthetic task, not {steps}")
    if dim < 1:
        raise UsageError(f"--dim must be at least 1, not {dim}")
    if not 0 <= seed < 1 << 64:
        raise UsageError(f"--seed must be an integer in [0, 2**64), not {seed}")
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULTS[name]))
    if unknown:
        known = ", ".join(DEFAULTS[name]) or "none"
        raise UsageError(f"unknown parameter(s) {', '.join(unknown)} for {name}; known: {known}")
    task = SyntheticTask(name, int(steps), int(dim), int(seed), tuple(sorted(params.items())))
    o = task.options
    if name == "white-noise" and not 0.0 <= o["q"] < 1.0:
        raise UsageError(f"q (signal fraction) must be in [0, 1), not {o['q']}")
    if name == "lowrank-drift" and not 1 <= int(o["rank"]) <= dim:
        raise UsageError(f"rank must be between 1 and --dim ({dim}), not {o['rank']}")
    if name == "noisy-quadratic" and not 0.0 < o["lr"] < 2.0:
        raise UsageError(
            f"lr (times the largest curvature) must be in (0, 2) for SGD to converge, not {o['lr']}"
        )
    if name == "noisy-quadratic" and int(o["classes"]) < 1:
        raise UsageError(f"classes must be at least 1, not {o['classes']}")
    if name == "spiked-two-layer":
        _check_spiked(task)
    if name == "lqr" and dim > 4096:
        raise UsageError(f"lqr solves Lyapunov equations of n x n states; use --dim up to 4096, not {dim}")
    return task


def _limits(task: SyntheticTask, predictors: Sequence[str]) -> dict[str, float]:
    if task.name != "white-noise":
        return {}
    q = task.options["q"]
    out = {}
    for pid in predictors:
        kind, beta = predictor_filter(pid)
        out[pid] = {"zero": 1.0, "last": 2 * (1 - q), "trend": 6 * (1 - q)}.get(
            kind, 2 / (1 + beta) * (1 - q)
        )
    return out


# ---------------------------------------------------------------------------------------------- tasks

_TASK_TAG = {name: i + 1 for i, name in enumerate(TASKS)}


def _white_noise(task: SyntheticTask, rng: np.random.Generator) -> Iterator[np.ndarray]:
    q, d = task.options["q"], task.dim
    mu = _unit(rng, d) * math.sqrt(q * d)
    sigma = math.sqrt(1 - q)
    for _ in range(task.steps):
        yield mu + sigma * rng.standard_normal(d)


def _white_noise_truth(task: SyntheticTask, pr: tuple[str, ...], eps: tuple[float, ...]) -> GroundTruth:
    q, d = task.options["q"], task.dim
    # (m, n, c, e, s0, weight, partner): mean direction (deterministic), isotropic noise
    rows = [(1, 0, math.sqrt(q * d), 0, 1, 1, 1), (1, 0, 0, math.sqrt(1 - q), 0, d, -1)]
    return exact_truth(task, classes(rows), pr, eps, _limits(task, pr))


def _random_walk(task: SyntheticTask, rng: np.random.Generator) -> Iterator[np.ndarray]:
    g = np.zeros(task.dim)
    for _ in range(task.steps):
        g = g + rng.standard_normal(task.dim)
        yield g


def _random_walk_truth(task: SyntheticTask, pr: tuple[str, ...], eps: tuple[float, ...]) -> GroundTruth:
    return exact_truth(task, classes([(1, 1, 1, 1, 0, task.dim, -1)]), pr, eps, _limits(task, pr))


def _lowrank_energies(o: Mapping[str, float]) -> np.ndarray:
    r = int(o["rank"])
    e = float(o["decay"]) ** np.arange(r)
    return e * (r / e.sum())


def _lowrank(task: SyntheticTask, rng: np.random.Generator) -> Iterator[np.ndarray]:
    o, d = task.options, task.dim
    r = int(o["rank"])
    base = _unit(rng, d) * math.sqrt(d)
    u, _ = np.linalg.qr(rng.standard_normal((d, r)))
    scale = np.sqrt(_lowrank_energies(o))
    rho = 1.0 - float(o["revert"])
    nu = float(o["noise"]) * math.sqrt(r / d)
    z = np.zeros(d)
    for _ in range(task.steps):
        z = rho * z + u @ (scale * rng.standard_normal(r))
        if nu:
            z += nu * rng.standard_normal(d)
        yield base + z


def _lowrank_truth(task: SyntheticTask, pr: tuple[str, ...], eps: tuple[float, ...]) -> GroundTruth:
    o, d = task.options, task.dim
    rho = 1.0 - float(o["revert"])
    nu2 = float(o["noise"]) ** 2 * int(o["rank"]) / d
    rows = [(1.0, 0.0, math.sqrt(d), 0.0, 1.0, 1, -1)]  # the base: constant, no increments
    # z_t = rho z_{t-1} + sigma w_t: state s_t = z_{t-1}, g_t = rho s_t + sigma w_t, s_{t+1} = g_t
    rows += [(rho, math.sqrt(ei + nu2), rho, math.sqrt(ei + nu2), 0, 1, -1) for ei in _lowrank_energies(o)]
    if nu2:
        rows.append((rho, math.sqrt(nu2), rho, math.sqrt(nu2), 0, d - int(o["rank"]), -1))
    return exact_truth(task, classes(rows), pr, eps, _limits(task, pr))


def _quadratic_setup(task: SyntheticTask) -> tuple[np.ndarray, np.ndarray, float, float]:
    o, d = task.options, task.dim
    nc = min(int(o["classes"]), d)
    lam = np.logspace(-math.log10(o["cond"]), 0.0, nc)
    cls = np.arange(d) * nc // d  # coordinate -> class (contiguous blocks)
    return lam, cls, float(o["lr"]), float(o["noise"])


def _noisy_quadratic(task: SyntheticTask, rng: np.random.Generator) -> Iterator[np.ndarray]:
    lam, cls, lr, noise = _quadratic_setup(task)
    diag = lam[cls]
    x = rng.standard_normal(task.dim)
    for _ in range(task.steps):
        g = diag * x + noise * rng.standard_normal(task.dim)
        yield g
        x = x - lr * g


def _noisy_quadratic_truth(task: SyntheticTask, pr: tuple[str, ...], eps: tuple[float, ...]) -> GroundTruth:
    lam, cls, lr, noise = _quadratic_setup(task)
    x0 = np.random.default_rng([task.seed, _TASK_TAG[task.name]]).standard_normal(task.dim)
    rows = []
    nc = len(lam)
    for i, li in enumerate(lam):  # noise part of class i: x' = (1 - lr l) x - lr noise w, g = l x + noise w
        rows.append((1 - lr * li, -lr * noise, li, noise, 0.0, int(np.sum(cls == i)), -1))
    for i, li in enumerate(lam):  # mean part: the noise-free path from x_0 restricted to the class
        rows.append((1 - lr * li, 0.0, li, 0.0, float(np.linalg.norm(x0[cls == i])), 1, i))
    assert len(rows) == 2 * nc
    return exact_truth(task, classes(rows), pr, eps, _limits(task, pr))


# ---------------------------------------------------------------------------------------------- lqr


def _lqr_dims(d: int) -> tuple[int, int]:
    m = max(k for k in range(1, max(1, math.isqrt(max(d // 2, 1))) + 1) if d % k == 0)
    return d // m, m


@dataclass(frozen=True)
class _Lqr:
    a: np.ndarray
    b: np.ndarray
    eta: float
    sigma: float


def _lqr_setup(task: SyntheticTask) -> _Lqr:
    n, m = _lqr_dims(task.dim)
    rng = np.random.default_rng([task.seed, _TASK_TAG["lqr"], 7])
    a = rng.standard_normal((n, n))
    a *= 0.9 / max(np.abs(np.linalg.eigvals(a)).max(), 1e-12)
    b = rng.standard_normal((n, m)) / math.sqrt(n)
    k0 = np.zeros((1, m, n))
    grad, p, sig = _lqr_grad(a, b, k0)
    gain = np.linalg.norm(np.eye(m) + b.T @ p[0] @ b, 2) * np.linalg.norm(sig[0], 2)
    eta = float(task.options["lr"] / (2 * gain))
    sigma = task.options["noise"] * float(np.linalg.norm(grad[0])) / math.sqrt(task.dim)
    return _Lqr(a, b, eta, sigma)


def _dlyap(f: np.ndarray, q: np.ndarray) -> np.ndarray:
    """X = sum_j (f^T)^j q f^j, batched, by doubling (Smith's method); f must be stable."""
    x = q.copy()
    for _ in range(40):
        x = x + np.swapaxes(f, -1, -2) @ x @ f
        f = f @ f
        if np.abs(f).max() < 1e-13:
            return x
    raise UsageError("lqr: the policy became unstable (spectral radius >= 1); lower the lr parameter")


def _lqr_grad(a: np.ndarray, b: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact policy gradient of J(K) (Q = R = I, x_0 ~ N(0, I)), batched over K [batch, m, n]."""
    n, m = b.shape
    ak = a - b @ k
    p = _dlyap(ak, np.eye(n) + np.swapaxes(k, -1, -2) @ k)
    sig = _dlyap(np.swapaxes(ak, -1, -2), np.broadcast_to(np.eye(n), p.shape).copy())
    bt = b.T
    e = (np.eye(m) + bt @ p @ b) @ k - bt @ p @ a
    return 2 * e @ sig, p, sig


def _lqr_run(task: SyntheticTask, setup: _Lqr, rng: np.random.Generator, batch: int) -> Iterator[np.ndarray]:
    n, m = setup.b.shape
    k = np.zeros((batch, m, n))
    for _ in range(task.steps):
        grad, _, _ = _lqr_grad(setup.a, setup.b, k)
        g = grad + setup.sigma * rng.standard_normal(grad.shape)
        yield g.reshape(batch, -1)
        k = k - setup.eta * g


def _lqr(task: SyntheticTask, rng: np.random.Generator) -> Iterator[np.ndarray]:
    for g in _lqr_run(task, _lqr_setup(task), rng, 1):
        yield g[0]


def _lqr_truth(task: SyntheticTask, pr: tuple[str, ...], eps: tuple[float, ...]) -> GroundTruth:
    reps = int(task.options["replicas"])
    rng = np.random.default_rng([task.seed, _TASK_TAG["lqr"], 99])
    runs = np.stack(list(_lqr_run(task, _lqr_setup(task), rng, reps)), axis=1)  # [reps, T, d]
    kap = [kappa_reference(r, pr) for r in runs]
    sv2 = [increment_energies(r) for r in runs]
    return GroundTruth(
        task.name,
        task.steps,
        task.dim,
        {p: float(np.mean([x[p] for x in kap])) for p in pr},
        {repr(float(x)): int(np.median([rank_from_energies(e, x) for e in sv2])) for x in eps},
        f"estimated from {reps} replicas",
        kappa_sd={p: float(np.std([x[p] for x in kap], ddof=1)) if reps > 1 else 0.0 for p in pr},
    )


# ---------------------------------------------------------------------------------------------- spiked


def _spiked_dims(task: SyntheticTask) -> tuple[int, int]:
    hidden = int(task.options["hidden"]) or _lqr_dims(task.dim)[1]
    return hidden, task.dim // hidden


def _check_spiked(task: SyntheticTask) -> None:
    o, d = task.options, task.dim
    if int(o["hidden"]) < 0 or (int(o["hidden"]) and d % int(o["hidden"])):
        raise UsageError(f"hidden must divide --dim ({d}) (or be 0 for automatic), not {o['hidden']}")
    if not 2 <= int(o["samples"]) <= 1_000_000:
        raise UsageError(f"samples must be between 2 and 1000000, not {o['samples']}")
    if not 0.0 <= o["nu"] <= 2.0:
        raise UsageError(f"nu (spike size zeta = samples^nu) must be in [0, 2], not {o['nu']}")
    if not 0.0 < o["lr"] < 2.0:
        raise UsageError(f"lr (times the largest curvature) must be in (0, 2), not {o['lr']}")
    if not 0 <= int(o["batch"]) <= int(o["samples"]):
        raise UsageError(f"batch must be 0 (full batch) or between 1 and samples, not {o['batch']}")
    if int(o["replicas"]) < 1:
        raise UsageError(f"replicas must be at least 1, not {o['replicas']}")


@dataclass(frozen=True)
class _SpikedStep:
    """One step of the spiked task: the gradient [hidden, p] and what produced it."""

    grad: np.ndarray
    w: np.ndarray
    a: np.ndarray
    x: np.ndarray
    y: np.ndarray
    q: np.ndarray


def _spiked_run(task: SyntheticTask, rng: np.random.Generator) -> Iterator[_SpikedStep]:
    o = task.options
    hidden, p = _spiked_dims(task)
    n, batch = int(o["samples"]), int(o["batch"])
    q = _unit(rng, p)
    x = rng.standard_normal((n, p)) + float(n) ** o["nu"] * np.outer(rng.standard_normal(n), q)
    y = np.tanh(x @ _unit(rng, p))
    w = rng.standard_normal((hidden, p)) / math.sqrt(p)
    a = rng.choice([-1.0, 1.0], hidden) / math.sqrt(hidden)
    eta = o["lr"] * n / float(np.linalg.norm(x, 2)) ** 2
    for _ in range(task.steps):
        rows = np.sort(rng.choice(n, batch, replace=False)) if batch else slice(None)
        xb, yb = x[rows], y[rows]
        pre = xb @ w.T
        r = np.maximum(pre, 0.0) @ a - yb
        g = ((r[:, None] * a[None, :]) * (pre > 0)).T @ xb / len(yb)
        yield _SpikedStep(g, w, a, xb, yb, q)
        w = w - eta * g


def _spiked(task: SyntheticTask, rng: np.random.Generator) -> Iterator[np.ndarray]:
    for step in _spiked_run(task, rng):
        yield step.grad.ravel()


@dataclass(frozen=True)
class SpikedTruth(GroundTruth):
    """GroundTruth (kappa, r* from replicas) plus the exact two-rank-one split of each step of this stream.

    Per step t: e_ratio ||E||_op / ||G||_op, s1_ratio and s2_ratio (||S_i||_op / ||G||_op), top2_energy
    (sigma_1^2 + sigma_2^2) / ||G||_F^2 and top2_bound 1 - ||E||_F^2 / ||G||_F^2 <= top2_energy; shape is
    (hidden, p), zeta the spike size.
    """

    shape: tuple[int, int] = (0, 0)
    zeta: float = 0.0
    e_ratio: tuple[float, ...] = ()
    s1_ratio: tuple[float, ...] = ()
    s2_ratio: tuple[float, ...] = ()
    top2_energy: tuple[float, ...] = ()
    top2_bound: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        keys = ("e_ratio", "s1_ratio", "s2_ratio", "top2_energy", "top2_bound")
        split: dict[str, Any] = {k: [v if math.isfinite(v) else None for v in getattr(self, k)] for k in keys}
        finite = [v for v in self.e_ratio if math.isfinite(v)]
        split.update(shape=list(self.shape), zeta=self.zeta, e_ratio_max=max(finite, default=None))
        out["two_rank_one"] = split
        return out


def _spiked_truth(task: SyntheticTask, pr: tuple[str, ...], eps: tuple[float, ...]) -> GroundTruth:
    from gradmanifold.probe import two_layer

    reps = int(task.options["replicas"])
    kap, sv2 = [], []
    for i in range(reps):
        g = np.stack(list(_spiked(task, _spiked_rng(task, 99, i))))
        kap.append(kappa_reference(g, pr))
        sv2.append(increment_energies(g))
    split = [
        two_layer(st.w, st.a, st.x, st.y, q=st.q).summary() for st in _spiked_run(task, _spiked_rng(task))
    ]

    def per_step(key: str) -> tuple[float, ...]:
        return tuple(math.nan if (v := t[key]) is None else v for t in split)

    return SpikedTruth(
        task.name,
        task.steps,
        task.dim,
        {p: float(np.mean([x[p] for x in kap])) for p in pr},
        {repr(float(x)): int(np.median([rank_from_energies(e, x) for e in sv2])) for x in eps},
        f"estimated from {reps} replicas",
        kappa_sd={p: float(np.std([x[p] for x in kap], ddof=1)) if reps > 1 else 0.0 for p in pr},
        shape=_spiked_dims(task),
        zeta=float(task.options["samples"]) ** task.options["nu"],
        e_ratio=per_step("e_ratio"),
        s1_ratio=per_step("s1_ratio"),
        s2_ratio=per_step("s2_ratio"),
        top2_energy=per_step("top2_energy"),
        top2_bound=per_step("top2_bound"),
    )


def _spiked_rng(task: SyntheticTask, *replica: int) -> np.random.Generator:
    return np.random.default_rng([task.seed, _TASK_TAG[task.name], *replica])


def _unit(rng: np.random.Generator, d: int) -> np.ndarray:
    v = rng.standard_normal(d)
    return v / np.linalg.norm(v)


_GENERATORS = {
    "white-noise": _white_noise,
    "random-walk": _random_walk,
    "lowrank-drift": _lowrank,
    "noisy-quadratic": _noisy_quadratic,
    "lqr": _lqr,
    "spiked-two-layer": _spiked,
}
_TRUTHS = {
    "white-noise": _white_noise_truth,
    "random-walk": _random_walk_truth,
    "lowrank-drift": _lowrank_truth,
    "noisy-quadratic": _noisy_quadratic_truth,
    "lqr": _lqr_truth,
    "spiked-two-layer": _spiked_truth,
}

__all__ = [
    "DEFAULTS",
    "EPS",
    "PREDICTORS",
    "TASKS",
    "GroundTruth",
    "SpikedTruth",
    "SyntheticTask",
    "kappa_reference",
    "make_task",
    "path_lengths",
    "rank_from_energies",
    "rank_reference",
    "record_task",
]


def record_task(task: SyntheticTask, recorder: Any, progress: Any = None) -> int:
    """Record every step of `task` with `recorder` (one group, "all"); returns the steps recorded.

    A matrix task's gradient goes in as its [rows, cols] matrix (same projection: flattened in C order), so
    that a recorder with spectra on records its singular values too.
    """
    n = 0
    shape = task.matrix_shape
    for t, g in enumerate(task.gradients()):
        n += bool(recorder.record(t, g if shape is None else g.reshape(shape)))
        if progress is not None:
            progress(t + 1, task.steps)
    return n
