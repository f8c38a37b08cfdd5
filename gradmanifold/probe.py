"""Active probes at one batch: per-layer gradient spectra with curvature, and the two-rank-one split.

`curvature(model, loss_fn, batch)`: for each matrix-shaped parameter W (m x n; conv kernels out x in*kh*kw)
the full-batch gradient G = U diag(sigma) V^T (exact float64 SVD) and the curvature along its top singular
pairs, h_k = vec(u_k v_k^T)^T Hess_W L vec(u_k v_k^T), by exact Hessian-vector products (double backprop,
the other parameters held fixed). `fit_spectral` (from gradmanifold.layerspec) fits gamma, alpha, s on them.

`two_layer(W, a, X, ...)`: the gradient of a two-layer network f(x) = sum_j a_j act(w_j^T x) split into a
residue spike S1, a data spike S2 (both rank one) and a remainder E (arXiv 2510.01303). docs/PROBES.md has
the formulas, costs and how exactness is tested. torch is imported only inside `curvature`.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradmanifold.errors import InputError, UsageError
from gradmanifold.glass import GlassGroup, GlassProbe, glass
from gradmanifold.layerspec import MIN_POINTS, BicProfiles, SpectralFit, as_matrix_shape, fit_spectral

FIT_FIELDS: tuple[str, ...] = (  # the float fields of SpectralFit (NaN where undefined)
    "gamma",
    "r2_gamma",
    "alpha",
    "s",
    "alpha_gamma",
    "rel_err",
    "pr_h",
    "pr_bound",
    "r2_alpha",
    "r2_s",
)
PROBE_VERSION = 1


def _num(x: Any) -> float | None:
    """JSON-safe: a finite float, or None for NaN and infinities (docs/JSON.md)."""
    v = float(x)
    return v if math.isfinite(v) else None


def _nan(x: Any) -> float:
    """Inverse of _num: None back to NaN."""
    return math.nan if x is None else float(x)


def _frozen(a: Any) -> np.ndarray:
    out = np.array(a, dtype=np.float64)
    out.flags.writeable = False
    return out


def _bic_to_dict(b: BicProfiles) -> dict[str, Any]:
    return {
        "power": _num(b.power),
        "exponential": _num(b.exponential),
        "lognormal": _num(b.lognormal),
        "winner": b.winner,
        "n": b.n,
        "power_coef": [_num(x) for x in b.power_coef],
        "exponential_coef": [_num(x) for x in b.exponential_coef],
        "lognormal_coef": [_num(x) for x in b.lognormal_coef],
    }


def _bic_from_dict(d: dict[str, Any]) -> BicProfiles:
    pc, ec, lc = (tuple(_nan(x) for x in d[k]) for k in ("power_coef", "exponential_coef", "lognormal_coef"))
    return BicProfiles(
        _nan(d["power"]),
        _nan(d["exponential"]),
        _nan(d["lognormal"]),
        None if d["winner"] is None else str(d["winner"]),
        int(d["n"]),
        (pc[0], pc[1]),
        (ec[0], ec[1]),
        (lc[0], lc[1], lc[2]),
    )


@dataclass(frozen=True, eq=False)
class LayerCurvature:
    """One matrix layer: top singular values of its gradient, curvature along them, and the spectral fit.

    shape: the (m, n) matrix the parameter is read as; param_shape: the tensor's own shape; top: pairs probed,
    min(requested, m, n); clipped: True when fewer than requested; frob_sq: ||G||_F^2; sigma, h: float64[top];
    gamma ... notes: the fields of gradmanifold.layerspec.SpectralFit (NaN where a fit is not defined);
    `spectral_fit` gives them back as one SpectralFit.
    """

    name: str
    shape: tuple[int, int]
    param_shape: tuple[int, ...]
    top: int
    clipped: bool
    sigma: np.ndarray
    h: np.ndarray
    frob_sq: float
    gamma: float
    r2_gamma: float
    alpha: float
    s: float
    alpha_gamma: float
    rel_err: float
    pr_h: float
    pr_bound: float
    pr_bound_n: int
    r2_alpha: float
    r2_s: float
    bic: BicProfiles
    notes: tuple[str, ...] = ()

    @property
    def spectral_fit(self) -> SpectralFit:
        """The fit as gradmanifold.layerspec returns it."""
        floats = {f: getattr(self, f) for f in FIT_FIELDS}
        return SpectralFit(bic=self.bic, n=self.top, pr_bound_n=self.pr_bound_n, notes=self.notes, **floats)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: arrays as lists, NaN as None."""
        out: dict[str, Any] = {
            "name": self.name,
            "shape": list(self.shape),
            "param_shape": list(self.param_shape),
            "top": self.top,
            "clipped": self.clipped,
            "sigma": [float(x) for x in self.sigma],
            "h": [float(x) for x in self.h],
            "frob_sq": self.frob_sq,
        }
        out.update({f: _num(getattr(self, f)) for f in FIT_FIELDS})
        out.update(pr_bound_n=self.pr_bound_n, bic=_bic_to_dict(self.bic), notes=list(self.notes))
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerCurvature:
        """Inverse of to_dict (UsageError names a missing key)."""
        try:
            return cls(
                name=str(d["name"]),
                shape=(int(d["shape"][0]), int(d["shape"][1])),
                param_shape=tuple(int(x) for x in d["param_shape"]),
                top=int(d["top"]),
                clipped=bool(d["clipped"]),
                sigma=_frozen(d["sigma"]),
                h=_frozen(d["h"]),
                frob_sq=float(d["frob_sq"]),
                pr_bound_n=int(d["pr_bound_n"]),
                bic=_bic_from_dict(d["bic"]),
                notes=tuple(str(x) for x in d["notes"]),
                **{f: _nan(d[f]) for f in FIT_FIELDS},
            )
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise UsageError(f"malformed curvature layer record: {e!r}") from None


@dataclass(frozen=True, eq=False)
class CurvatureProbe:
    """The result of `curvature`: loss at the batch, requested top, parameter dtype, wall time, and layers."""

    layers: dict[str, LayerCurvature]
    loss: float
    top: int
    dtype: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for Recorder.probe); `from_dict` reads it back."""
        return {
            "probe": "curvature",
            "version": PROBE_VERSION,
            "loss": self.loss,
            "top": self.top,
            "dtype": self.dtype,
            "seconds": self.seconds,
            "layers": {name: layer.to_dict() for name, layer in self.layers.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CurvatureProbe:
        """Rebuild a probe from `to_dict`'s output (UsageError if it is not one)."""
        if d.get("probe") != "curvature":
            raise UsageError(f"not a curvature probe record (probe = {d.get('probe')!r})")
        if int(d.get("version", 0)) > PROBE_VERSION:
            raise UsageError(f"curvature probe record version {d['version']} is newer than this gradmanifold")
        try:
            layers = {str(k): LayerCurvature.from_dict(v) for k, v in d["layers"].items()}
            return cls(layers, float(d["loss"]), int(d["top"]), str(d["dtype"]), float(d["seconds"]))
        except (KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"malformed curvature probe record: {e!r}") from None


# ---------------------------------------------------------------------------------------------- curvature


def curvature(
    model: Any,
    loss_fn: Callable[[Any, Any], Any],
    batch: Any,
    top: int = 20,
    layers: str | Sequence[str] | None = None,
) -> CurvatureProbe:
    """Gradient spectrum and curvature along the top singular pairs of each matrix layer, at one batch.

    model: a torch Module; loss_fn(model, batch) returns a scalar loss tensor; top: singular pairs per layer
    (min(top, m, n) are probed); layers: fnmatch patterns or names of parameters (default: every trainable
    parameter with ndim >= 2). One forward pass, one double-backward graph, then one Hessian-vector product
    per pair. The model is left as found: parameters, buffers (batch-norm statistics), each .grad, train/eval
    flags and torch's RNG state (CPU, and CUDA when initialised).
    """
    import torch

    if isinstance(top, bool) or not isinstance(top, int | np.integer) or top < 1:
        raise UsageError(f"top must be a positive integer, not {top!r}")
    selected = _select(model, layers)
    modes = [(mod, mod.training) for mod in model.modules()]
    saved_grads = [(p, p.grad) for p in model.parameters()]
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]  # batch-norm statistics and the like
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    t0 = time.perf_counter()
    try:
        with torch.enable_grad():
            loss = loss_fn(model, batch)
            value = _check_loss(loss, torch)
            params = [p for _, p in selected]
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            out = {
                name: _layer(name, p, g, int(top), torch)
                for (name, p), g in zip(selected, grads, strict=True)
            }
            del grads, loss
    finally:
        for p, g in saved_grads:
            p.grad = g
        for mod, mode in modes:
            mod.training = mode
        with torch.no_grad():
            for b, saved in saved_buffers:
                b.copy_(saved)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    dtype = str(selected[0][1].dtype).removeprefix("torch.")
    return CurvatureProbe(out, value, int(top), dtype, time.perf_counter() - t0)


def _select(model: Any, layers: str | Sequence[str] | None) -> list[tuple[str, Any]]:
    """Trainable parameters with ndim >= 2, in model order, filtered by fnmatch patterns."""
    if not hasattr(model, "named_parameters"):
        raise UsageError(f"curvature needs a torch Module, not a {type(model).__name__}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    eligible = [(n, p) for n, p in named if p.ndim >= 2]
    if not eligible:
        what = f"only 1-D ones ({', '.join(n for n, _ in named[:5])})" if named else "none"
        raise UsageError(
            f"curvature needs trainable parameters with 2 or more dimensions; the model has {what}"
        )
    if layers is None:
        return eligible
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise UsageError("layers is empty; pass None for every matrix layer, or names / fnmatch patterns")
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(n, pat) for n, _ in eligible):
            names = ", ".join(n for n, _ in eligible[:6]) + (", ..." if len(eligible) > 6 else "")
            raise UsageError(
                f"layers pattern {pat!r} matches no trainable parameter with ndim >= 2 ({names})"
            )
    return [(n, p) for n, p in eligible if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]


def _check_loss(loss: Any, torch: Any) -> float:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        is_tensor = isinstance(loss, torch.Tensor)
        got = f"a tensor of shape {tuple(loss.shape)}" if is_tensor else type(loss).__name__
        raise UsageError(f"loss_fn(model, batch) must return a scalar tensor, not {got}")
    if loss.grad_fn is None:
        raise UsageError("the loss does not depend on the model's parameters (it has no autograd graph)")
    value = float(loss.detach().reshape(()).item())
    if not math.isfinite(value):
        raise InputError(f"the loss at this batch is {value}; curvature needs a finite loss")
    return value


def _layer(name: str, p: Any, g: Any, top: int, torch: Any) -> LayerCurvature:
    """Exact SVD of one layer's gradient and h_k = <V_k, H V_k> along V_k = u_k v_k^T (one HVP each)."""
    m, n = as_matrix_shape(tuple(p.shape))
    k = min(top, m, n)
    if g is None:  # the loss does not reach this parameter: zero gradient, zero curvature
        gmat = torch.zeros((m, n), dtype=torch.float64)
    else:
        gmat = g.detach().to(torch.float64).reshape(m, n)
    if not bool(torch.isfinite(gmat).all()):
        raise InputError(f"the gradient of {name} holds NaN or Inf at this batch; curvature needs it finite")
    u, sv, vh = torch.linalg.svd(gmat, full_matrices=False)
    sigma = sv[:k].cpu().numpy()
    h = np.zeros(k)
    if g is not None and g.requires_grad:
        for i in range(k):
            v = torch.outer(u[:, i], vh[i]).reshape(p.shape).to(dtype=p.dtype, device=p.device)
            (hv,) = torch.autograd.grad(g, p, grad_outputs=v, retain_graph=True, allow_unused=True)
            if hv is not None:
                h[i] = float((hv.to(torch.float64) * v.to(torch.float64)).sum().item())
    # the window is all k pairs; fit_spectral wants top >= MIN_POINTS and reports NaN with fewer points
    fit = fit_spectral(sigma, h, top=max(k, MIN_POINTS), shape=(m, n))
    return LayerCurvature(
        name=name,
        shape=(m, n),
        param_shape=tuple(int(x) for x in p.shape),
        top=k,
        clipped=k < top,
        sigma=_frozen(sigma),
        h=_frozen(h),
        frob_sq=float((gmat * gmat).sum().item()),
        pr_bound_n=int(fit.pr_bound_n or min(m, n)),
        bic=fit.bic,
        notes=tuple(fit.notes),
        **{f: float(getattr(fit, f)) for f in FIT_FIELDS},
    )


# ---------------------------------------------------------------------------------------------- two-layer

ACTIVATIONS: tuple[str, ...] = ("relu", "tanh", "sigmoid", "linear")


def _act(name: str, pre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """act(pre) and act'(pre); relu'(0) = 0 as in torch."""
    if name == "relu":
        return np.maximum(pre, 0.0), (pre > 0).astype(np.float64)
    if name == "tanh":
        t = np.tanh(pre)
        return t, 1.0 - t * t
    if name == "sigmoid":
        s = 0.5 * (1.0 + np.tanh(0.5 * pre))
        return s, s * (1.0 - s)
    if name == "linear":
        return pre.copy(), np.ones_like(pre)
    raise UsageError(f"unknown activation {name!r}; choose from {', '.join(ACTIVATIONS)}")


@dataclass(frozen=True, eq=False)
class TwoLayerProbe:
    """G = S1 + S2 + E for the first layer of f(x) = sum_j a_j act(w_j^T x); matrices in the (h, d) layout.

    G: the gradient of L = (1/2n) sum_i (f(x_i) - y_i)^2 (or of any loss whose residual r_i = dL/df_i * n is
    given); S1 residue spike, S2 data spike (rank one each), E remainder; q: the spike direction used;
    mu: column means of act'(X W^T); xr: X^T r / n, the residue spike's input direction; sigma: singular
    values of G; g_op, s1_op, s2_op, e_op: operator norms (for the rank-one S1 and S2 equal to Frobenius).
    """

    G: np.ndarray
    S1: np.ndarray
    S2: np.ndarray
    E: np.ndarray
    q: np.ndarray
    q_source: str
    mu: np.ndarray
    residual: np.ndarray
    xr: np.ndarray
    sigma: np.ndarray
    g_op: float
    s1_op: float
    s2_op: float
    e_op: float

    @property
    def e_ratio(self) -> float:
        """||E||_op / ||G||_op: small when two rank-one terms dominate (NaN for G = 0)."""
        return self.e_op / self.g_op if self.g_op > 0 else math.nan

    @property
    def top2_energy(self) -> float:
        """(sigma_1^2 + sigma_2^2) / ||G||_F^2, the share of the best rank-2 approximation."""
        tot = float(np.sum(self.sigma**2))
        return float(np.sum(self.sigma[:2] ** 2)) / tot if tot > 0 else math.nan

    @property
    def top2_bound(self) -> float:
        """1 - ||E||_F^2 / ||G||_F^2: a lower bound on top2_energy (S1 + S2 has rank <= 2, Eckart-Young)."""
        tot = float(np.sum(self.sigma**2))
        return 1.0 - float(np.sum(self.E**2)) / tot if tot > 0 else math.nan

    @property
    def residue_alignment(self) -> float:
        """|cos| between X^T r (the residue spike's input direction) and the spike direction q."""
        nr = float(np.linalg.norm(self.xr))
        return abs(float(self.xr @ self.q)) / nr if nr > 0 else math.nan

    def summary(self) -> dict[str, float | None]:
        """The scalars, JSON-ready (None where undefined)."""
        g = self.g_op
        keys = ("g_op", "s1_op", "s2_op", "e_op", "e_ratio", "top2_energy", "top2_bound", "residue_alignment")
        out = {k: _num(getattr(self, k)) for k in keys}
        out["s1_ratio"] = _num(self.s1_op / g) if g > 0 else None
        out["s2_ratio"] = _num(self.s2_op / g) if g > 0 else None
        return out


def two_layer(
    W: Any,
    a: Any,
    X: Any,
    y: Any = None,
    *,
    residual: Any = None,
    act: str = "relu",
    q: Any = None,
) -> TwoLayerProbe:
    """Split the first-layer gradient of a two-layer network into two rank-one terms and a remainder.

    W: [h, d] first-layer weights (torch nn.Linear layout, no bias); a: [h] output weights (fold any
    1/sqrt(h) scaling into a); X: [n, d] inputs; y: [n] targets of the loss (1/2n) sum (f - y)^2, or
    residual: [n] r_i = n dL/df(x_i) for another loss (exactly one of the two); act: relu, tanh, sigmoid or
    linear; q: [d] spike direction (normalised here), default the top right singular vector of X.
    With D = act'(X W^T), mu its column means and D_c = D - 1 mu^T (all float64):
    G = [(r a^T) o D]^T X / n, S1 = (a o mu)(X^T r)^T / n, C = [(r a^T) o D_c]^T X / n, S2 = C q q^T,
    E = C (I - q q^T); G = S1 + S2 + E up to rounding.
    """
    w = np.asarray(W, dtype=np.float64)
    av = np.asarray(a, dtype=np.float64).reshape(-1)
    x = np.asarray(X, dtype=np.float64)
    if w.ndim != 2 or x.ndim != 2 or w.shape[1] != x.shape[1] or av.shape[0] != w.shape[0]:
        raise UsageError(f"two_layer: need W [h, d], a [h], X [n, d]; got {w.shape}, {av.shape}, {x.shape}")
    n, d = x.shape
    if n < 1:
        raise UsageError("two_layer: X has no rows")
    if (y is None) == (residual is None):
        raise UsageError("two_layer: pass exactly one of y (targets, squared loss) or residual=")
    pre = x @ w.T
    out, deriv = _act(act, pre)
    if residual is None:
        r = out @ av - np.asarray(y, dtype=np.float64).reshape(-1)
    else:
        r = np.asarray(residual, dtype=np.float64).reshape(-1)
    if r.shape[0] != n:
        raise UsageError(f"two_layer: y or residual needs {n} entries, not {r.shape[0]}")
    if not (np.isfinite(r).all() and np.isfinite(x).all() and np.isfinite(w).all()):
        raise InputError("two_layer: non-finite values in W, X or the residual")
    if q is None:
        qv, source = np.linalg.svd(x, full_matrices=False)[2][0], "estimated"
        qv = qv * (1.0 if qv[np.argmax(np.abs(qv))] >= 0 else -1.0)  # a fixed sign
    else:
        qv, source = np.asarray(q, dtype=np.float64).reshape(-1), "given"
        nq = float(np.linalg.norm(qv))
        if qv.shape[0] != d or not math.isfinite(nq) or nq == 0:
            raise UsageError(f"two_layer: q must be a nonzero [d] = [{d}] vector")
        qv = qv / nq
    ra = r[:, None] * av[None, :]  # (r a^T), [n, h]
    mu = deriv.mean(axis=0)
    g = (ra * deriv).T @ x / n
    xr = x.T @ r / n
    s1 = np.outer(av * mu, xr)
    c = (ra * (deriv - mu[None, :])).T @ x / n
    s2 = np.outer(c @ qv, qv)
    e = c - s2
    sigma = np.linalg.svd(g, compute_uv=False)
    norms = (
        float(sigma[0]),
        float(np.linalg.norm(s1)),
        float(np.linalg.norm(s2)),
        float(np.linalg.norm(e, 2)),
    )
    return TwoLayerProbe(g, s1, s2, e, qv, source, mu, r, xr, sigma, *norms)


__all__ = [
    "ACTIVATIONS",
    "FIT_FIELDS",
    "BicProfiles",
    "CurvatureProbe",
    "GlassGroup",
    "GlassProbe",
    "LayerCurvature",
    "SpectralFit",
    "TwoLayerProbe",
    "curvature",
    "fit_spectral",
    "glass",
    "two_layer",
]
