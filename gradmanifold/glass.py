"""The active "glass" probe (arXiv 2411.16914): how the gradient changes when the parameters move by sigma s.

Near the kinks of a ReLU network the Hessian misstates the change of the gradient under a step: the squared
change grows linearly in |step| (a "glass") instead of quadratically. `glass(model, loss_fn, batch)` takes
three gradients on the same batch with the same RNG state, g+ at theta + sigma s, g- at theta - sigma s and
g0 at theta (s a Rademacher direction, +-1 per coordinate), and per coordinate

    h_i   = |g+_i - g-_i| / (2 sigma)                    curvature magnitude, |(H s)_i| on a quadratic
    rho_i = 2 ((g+_i + g-_i) / 2 - g0_i)^2 / sigma        glass density, 0 on a quadratic

reported as means per parameter tensor. On a smooth loss rho is O(sigma^3); across kinks it stays O(1).
docs/PROBES.md has the details, costs and how exactness is tested. torch is imported only inside functions.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gradmanifold.errors import InputError, UsageError

GLASS_VERSION = 1
DIRECTIONS: tuple[str, ...] = ("rademacher", "given")


@dataclass(frozen=True)
class GlassGroup:
    """One parameter tensor: its name, shape, coordinate count n, and the means of rho_i and h_i over it."""

    name: str
    shape: tuple[int, ...]
    n: int
    rho_mean: float
    h_mean: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and infinities as None)."""
        from gradmanifold.probe import _num

        return {
            "name": self.name,
            "shape": list(self.shape),
            "n": self.n,
            "rho_mean": _num(self.rho_mean),
            "h_mean": _num(self.h_mean),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GlassGroup:
        """Inverse of to_dict (UsageError names what is missing or malformed)."""
        from gradmanifold.probe import _nan

        try:
            shape = tuple(int(x) for x in d["shape"])
            return cls(str(d["name"]), shape, int(d["n"]), _nan(d["rho_mean"]), _nan(d["h_mean"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"malformed glass group record: {e!r}") from None


@dataclass(frozen=True)
class GlassProbe:
    """The result of `glass`: groups (parameter name -> GlassGroup, in model order), the step sigma, the seed
    of the Rademacher draw (unused when direction == "given"), the loss at theta, wall time in seconds, and
    where the direction came from ("rademacher" or "given")."""

    groups: dict[str, GlassGroup]
    sigma: float
    seed: int
    loss: float
    seconds: float
    direction: str

    @property
    def n(self) -> int:
        """Coordinates probed, over all groups."""
        return sum(g.n for g in self.groups.values())

    @property
    def rho_mean(self) -> float:
        """Mean of rho_i over every probed coordinate (the groups' means weighted by their sizes)."""
        return sum(g.rho_mean * g.n for g in self.groups.values()) / self.n if self.n else math.nan

    @property
    def h_mean(self) -> float:
        """Mean of h_i over every probed coordinate."""
        return sum(g.h_mean * g.n for g in self.groups.values()) / self.n if self.n else math.nan

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON dict (NaN -> null); `from_dict` reads it back."""
        from gradmanifold.probe import _num

        return {
            "probe": "glass",
            "version": GLASS_VERSION,
            "sigma": self.sigma,
            "seed": self.seed,
            "loss": _num(self.loss),
            "seconds": self.seconds,
            "direction": self.direction,
            "groups": {name: g.to_dict() for name, g in self.groups.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GlassProbe:
        """Rebuild a probe from `to_dict`'s output (UsageError if it is not one)."""
        from gradmanifold.probe import _nan

        if not isinstance(d, Mapping) or d.get("probe") != "glass":
            got = d.get("probe") if isinstance(d, Mapping) else type(d).__name__
            raise UsageError(f"not a glass probe record (probe = {got!r})")
        try:
            if int(d.get("version", 0)) > GLASS_VERSION:
                raise UsageError(f"glass probe record version {d['version']} is newer than this gradmanifold")
            groups = {str(k): GlassGroup.from_dict(v) for k, v in d["groups"].items()}
            direction = str(d["direction"])
            if direction not in DIRECTIONS:
                raise UsageError(f"glass probe record: direction {direction!r} is not one of {DIRECTIONS}")
            return cls(
                groups, float(d["sigma"]), int(d["seed"]), _nan(d["loss"]), float(d["seconds"]), direction
            )
        except UsageError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UsageError(f"malformed glass probe record: {e!r}") from None


def _select(model: Any, layers: str | Sequence[str] | None) -> list[tuple[str, Any]]:
    """Every trainable parameter (1-D ones included), in named_parameters order, filtered by fnmatch globs."""
    if not hasattr(model, "named_parameters"):
        raise UsageError(f"glass needs a torch Module, not a {type(model).__name__}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise UsageError("glass needs trainable parameters; the model has none with requires_grad")
    if layers is None:
        return named
    patterns = [layers] if isinstance(layers, str) else list(layers)
    if not patterns:
        raise UsageError("layers is empty; pass None for every trainable parameter, or names / fnmatch globs")
    for pat in patterns:
        if not isinstance(pat, str) or not any(fnmatch.fnmatchcase(n, pat) for n, _ in named):
            names = ", ".join(n for n, _ in named[:6]) + (", ..." if len(named) > 6 else "")
            raise UsageError(f"layers pattern {pat!r} matches no trainable parameter ({names})")
    return [(n, p) for n, p in named if any(fnmatch.fnmatchcase(n, pat) for pat in patterns)]


def rademacher(model: Any, seed: int = 0, layers: str | Sequence[str] | None = None) -> dict[str, Any]:
    """The direction `glass` draws: name -> tensor of +-1 (the parameter's dtype and device).

    One torch.Generator on the CPU seeded with `seed`, then per selected parameter in named_parameters order
    `torch.randint(0, 2, shape, generator=gen) * 2 - 1`; torch's global RNG is neither read nor advanced.
    model, layers: as for `glass`; seed: an integer in [0, 2**63).
    """
    import torch

    _check_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    out = {}
    for name, p in _select(model, layers):
        s = torch.randint(0, 2, tuple(p.shape), generator=gen, dtype=torch.int8) * 2 - 1
        out[name] = s.to(device=p.device, dtype=p.dtype)
    return out


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**63:
        raise UsageError(f"seed must be an integer in [0, 2**63), not {seed!r}")


def _given(direction: Mapping[str, Any], selected: list[tuple[str, Any]], torch: Any) -> dict[str, Any]:
    """Check a given direction against the selected parameters: the same names, shapes, and only +-1."""
    if not isinstance(direction, Mapping):
        raise UsageError(
            f"direction must be a mapping name -> tensor of +-1, not a {type(direction).__name__}"
        )
    names = [n for n, _ in selected]
    unknown = [str(k) for k in direction if k not in names]
    if unknown:
        raise UsageError(f"direction names {', '.join(unknown[:5])}, not among the selected parameters")
    missing = [n for n in names if n not in direction]
    if missing:
        raise UsageError(f"direction has no entry for the selected parameter(s) {', '.join(missing[:5])}")
    out = {}
    for name, p in selected:
        s = torch.as_tensor(direction[name])
        if tuple(s.shape) != tuple(p.shape):
            raise UsageError(
                f"direction[{name!r}] has shape {tuple(s.shape)}, the parameter {tuple(p.shape)}"
            )
        if s.dtype == torch.bool or not bool(((s == 1) | (s == -1)).all()):
            raise UsageError(f"direction[{name!r}] holds values other than +1 and -1")
        out[name] = s.to(device=p.device, dtype=p.dtype)
    return out


def _loss_value(loss: Any, where: str, torch: Any) -> float:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        got = (
            f"a tensor of shape {tuple(loss.shape)}"
            if isinstance(loss, torch.Tensor)
            else type(loss).__name__
        )
        raise UsageError(f"loss_fn(model, batch) must return a scalar tensor, not {got}")
    if loss.grad_fn is None:
        raise UsageError("the loss does not depend on the model's parameters (it has no autograd graph)")
    value = float(loss.detach().reshape(()).item())
    if not math.isfinite(value):
        raise InputError(f"the loss at {where} is {value}; glass needs a finite loss")
    return value


def glass(
    model: Any,
    loss_fn: Callable[[Any, Any], Any],
    batch: Any,
    sigma: float = 1e-3,
    seed: int = 0,
    direction: Mapping[str, Any] | None = None,
    layers: str | Sequence[str] | None = None,
) -> GlassProbe:
    """Glass density rho and curvature magnitude h per parameter tensor from three gradients at one batch.

    model: a torch Module, probed in whatever train/eval mode it is in; loss_fn(model, batch) returns a scalar
    tensor; batch: passed through untouched; sigma: the step, finite and > 0, in parameter units; seed: seeds
    the Rademacher direction (see `rademacher`), ignored when `direction` is given; direction: a mapping
    name -> tensor of +-1 with exactly the selected parameters' names and shapes; layers: a name or fnmatch
    glob, or a list of them (default: every parameter with requires_grad, 1-D ones included). Only the
    selected parameters move; the means are over their coordinates.
    The gradients come in the parameters' dtype, the estimators in float64. Before each of the three
    passes the parameters, buffers, module modes and torch's RNG state (CPU, and CUDA when initialised) are
    set to what they were at the call, so dropout draws the same mask three times; afterwards the model is
    left as found: parameters bit for bit (copied back, never un-stepped), buffers, each .grad (the probe
    never calls backward), modes and the RNG state.
    """
    import torch

    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not 0 < float(sigma) < math.inf:
        raise UsageError(f"sigma must be a finite number > 0, not {sigma!r}")
    sigma = float(sigma)
    _check_seed(seed)
    selected = _select(model, layers)
    if direction is None:
        signs, source = rademacher(model, seed, layers), "rademacher"
    else:
        signs, source = _given(direction, selected, torch), "given"
    params = [p for _, p in selected]
    modes = [(mod, mod.training) for mod in model.modules()]
    saved_grads = [(p, p.grad) for p in model.parameters()]
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
    saved_params = [p.detach().clone() for p in params]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def reset() -> None:
        with torch.no_grad():
            for p, saved in zip(params, saved_params, strict=True):
                p.copy_(saved)
            for b, saved in saved_buffers:
                b.copy_(saved)
        for mod, mode in modes:
            mod.training = mode
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)

    def gradients(sign: int, where: str) -> tuple[float, list[Any]]:
        reset()
        if sign:
            with torch.no_grad():
                for (name, p), saved in zip(selected, saved_params, strict=True):
                    p.copy_(saved + sign * sigma * signs[name])
        with torch.enable_grad():
            loss = loss_fn(model, batch)
            value = _loss_value(loss, where, torch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        out = []
        for (name, p), g in zip(selected, grads, strict=True):
            g64 = torch.zeros(p.shape, dtype=torch.float64, device=p.device) if g is None else g.double()
            if not bool(torch.isfinite(g64).all()):
                raise InputError(f"the gradient of {name} at {where} holds NaN or Inf; glass needs it finite")
            out.append(g64)
        return value, out

    t0 = time.perf_counter()
    try:
        _, g_plus = gradients(+1, "theta + sigma s")
        _, g_minus = gradients(-1, "theta - sigma s")
        value, g_zero = gradients(0, "theta")
    finally:
        reset()
        for p, g in saved_grads:
            p.grad = g
    groups = {}
    for (name, p), gp, gm, g0 in zip(selected, g_plus, g_minus, g_zero, strict=True):
        h = (gp - gm).abs() / (2.0 * sigma)
        rho = 2.0 * ((gp + gm) / 2.0 - g0) ** 2 / sigma
        n = int(p.numel())
        groups[name] = GlassGroup(
            name,
            tuple(int(x) for x in p.shape),
            n,
            float(rho.mean().item()) if n else math.nan,
            float(h.mean().item()) if n else math.nan,
        )
    return GlassProbe(groups, sigma, int(seed), value, time.perf_counter() - t0, source)


__all__ = ["DIRECTIONS", "GLASS_VERSION", "GlassGroup", "GlassProbe", "glass", "rademacher"]
