"""gradmanifold.probe: curvature along singular pairs against full float64 Hessians; two-rank-one split."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from gradmanifold.errors import InputError, UsageError
from gradmanifold.probe import FIT_FIELDS, CurvatureProbe, curvature, fit_spectral, two_layer

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


# ---------------------------------------------------------------- an independent float64 reference
def reference(model: torch.nn.Module, loss_fn, batch, name: str, top: int) -> tuple[np.ndarray, np.ndarray]:
    """sigma and h_k from numpy's SVD of the gradient and the full Hessian in W (other parameters fixed)."""
    params = dict(model.named_parameters())
    w0 = params[name].detach().clone()

    def loss_of(w: torch.Tensor) -> torch.Tensor:
        return loss_fn(lambda x: torch.func.functional_call(model, {**params, name: w}, (x,)), batch)

    m = w0.shape[0]
    grad = torch.autograd.functional.jacobian(loss_of, w0).reshape(m, -1).numpy()
    hess = torch.autograd.functional.hessian(loss_of, w0).reshape(w0.numel(), w0.numel()).numpy()
    assert np.allclose(hess, hess.T, rtol=0, atol=1e-12 * np.abs(hess).max())
    u, s, vh = np.linalg.svd(grad, full_matrices=False)
    k = min(top, *grad.shape)
    h = np.array(
        [np.outer(u[:, i], vh[i]).ravel() @ hess @ np.outer(u[:, i], vh[i]).ravel() for i in range(k)]
    )
    return s[:k], h


def mse(f, batch) -> torch.Tensor:  # f: the model as a function of its input
    x, y = batch
    return 0.5 * ((f(x) - y) ** 2).sum(dim=1).mean()


def call_mse(model, batch) -> torch.Tensor:
    return mse(model, batch)


def mlp() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.Tanh(), torch.nn.Linear(12, 5)).double()
    g = torch.Generator().manual_seed(1)
    return model, (
        torch.randn(32, 8, generator=g, dtype=torch.float64),
        torch.randn(32, 5, generator=g).double(),
    )


def cnn() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(2)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 3, 3), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 4)
    ).double()
    g = torch.Generator().manual_seed(3)
    return model, (torch.randn(16, 2, 6, 6, generator=g).double(), torch.randn(16, 4, generator=g).double())


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


@pytest.mark.parametrize(("make", "top"), [(mlp, 20), (cnn, 20), (mlp, 3)])
def test_curvature_matches_the_full_float64_hessian(make, top: int) -> None:
    model, batch = make()
    probe = curvature(model, call_mse, batch, top=top)
    names = [n for n, p in model.named_parameters() if p.ndim >= 2]
    assert list(probe.layers) == names
    for name in names:
        layer = probe.layers[name]
        sigma, h = reference(model, mse, batch, name, top)
        p = dict(model.named_parameters())[name]
        assert layer.shape == (p.shape[0], p.numel() // p.shape[0]) and layer.param_shape == tuple(p.shape)
        assert layer.top == len(sigma) == min(top, *layer.shape) and layer.clipped == (top > min(layer.shape))
        assert rel(layer.sigma, sigma) < 1e-10, name
        assert rel(layer.h, h) < 1e-8, name
        grad = torch.autograd.grad(call_mse(model, batch), p)[0].detach().numpy()
        assert layer.frob_sq == pytest.approx(float(np.sum(grad**2)), rel=1e-12)
        assert np.any(layer.h != 0), name  # a curved loss: the check has teeth
    assert probe.loss == pytest.approx(call_mse(model, batch).item(), rel=1e-14)
    assert probe.dtype == "float64" and probe.top == top


class Planted(torch.nn.Module):
    """One matrix parameter and a quadratic loss whose curvature along u v^T is known in closed form."""

    def __init__(self, m: int, n: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(m, n, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["AWB", "diagonal"])
def test_planted_quadratics_give_the_closed_form_curvature(kind: str) -> None:
    m, n = 7, 5
    model = Planted(m, n, 4)
    rng = np.random.default_rng(5)
    a, b, c = rng.standard_normal((6, m)), rng.standard_normal((n, 9)), rng.uniform(0.1, 3.0, (m, n))
    w = model.w.detach().numpy()
    if kind == "AWB":  # L = 0.5 ||A W B||_F^2: G = A^T A W B B^T, h(u v^T) = ||A u||^2 ||B^T v||^2

        def loss(mod, _):
            return 0.5 * (torch.from_numpy(a) @ mod.w @ torch.from_numpy(b)).pow(2).sum()

        grad = a.T @ a @ w @ b @ b.T
        curv = lambda u, v: float(np.sum((a @ u) ** 2) * np.sum((b.T @ v) ** 2))  # noqa: E731
    else:  # L = 0.5 sum c_ij W_ij^2: G = C o W, h(u v^T) = sum c_ij u_i^2 v_j^2

        def loss(mod, _):
            return 0.5 * (torch.from_numpy(c) * mod.w**2).sum()

        grad = c * w
        curv = lambda u, v: float((u**2) @ c @ (v**2))  # noqa: E731
    u, s, vh = np.linalg.svd(grad)
    probe = curvature(model, loss, None, top=4)
    layer = probe.layers["w"]
    assert rel(layer.sigma, s[:4]) < 1e-12
    assert rel(layer.h, np.array([curv(u[:, i], vh[i]) for i in range(4)])) < 1e-12
    fit = fit_spectral(layer.sigma, layer.h, top=4, shape=(m, n))
    for f in FIT_FIELDS:  # the fit fields are fit_spectral's
        want, got = float(getattr(fit, f)), getattr(layer, f)
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-12), f
    assert layer.bic == fit.bic and layer.notes == fit.notes and layer.pr_bound_n == min(m, n)
    assert layer.spectral_fit.gamma == fit.gamma


def test_float32_model_is_probed_to_float32_accuracy() -> None:
    model, batch = mlp()
    model32 = model.float()
    batch32 = (batch[0].float(), batch[1].float())
    probe = curvature(model32, call_mse, batch32, top=5, layers="0.weight")
    sigma, h = reference(mlp()[0], mse, mlp()[1], "0.weight", 5)
    assert probe.dtype == "float32" and list(probe.layers) == ["0.weight"]
    assert rel(probe.layers["0.weight"].sigma, sigma) < 1e-6  # measured 5e-8
    assert rel(probe.layers["0.weight"].h, h) < 1e-5  # measured 1.4e-7


def test_the_model_is_left_exactly_as_found() -> None:
    torch.manual_seed(6)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 10),
        torch.nn.BatchNorm1d(10),
        torch.nn.Dropout(0.3),
        torch.nn.Tanh(),
        torch.nn.Linear(10, 3),
    ).double()
    model.train()
    model[4].eval()  # a mixed state must survive too
    x, y = torch.randn(20, 6).double(), torch.randn(20, 3).double()
    model[0].weight.grad = torch.full_like(model[0].weight, 0.5)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    with torch.no_grad():  # the probe builds its own graph
        probe = curvature(model, call_mse, (x, y), top=3, layers=["*.weight"])
    assert set(probe.layers) == {"0.weight", "4.weight"}
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]) and p.grad is grads[n], n
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 0.5))
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_to_dict_is_strict_json_and_round_trips() -> None:
    model, batch = cnn()
    probe = curvature(model, call_mse, batch, top=2)
    d = probe.to_dict()
    text = json.dumps(d, allow_nan=False, sort_keys=True)
    back = CurvatureProbe.from_dict(json.loads(text))
    assert back.to_dict() == d
    layer = back.layers["0.weight"]
    assert layer.shape == (3, 18) and layer.param_shape == (3, 2, 3, 3)
    np.testing.assert_array_equal(layer.sigma, probe.layers["0.weight"].sigma)
    with pytest.raises(UsageError, match="not a curvature probe"):
        CurvatureProbe.from_dict({"probe": "other"})


class OnlyVectors(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b = torch.nn.Parameter(torch.ones(4))


@pytest.mark.parametrize(
    ("model", "loss", "kwargs", "error", "words"),
    [
        (mlp, call_mse, {"top": 0}, UsageError, "top must be a positive integer"),
        (mlp, call_mse, {"layers": ["0.weight", "nope*"]}, UsageError, "layers pattern 'nope*' matches no"),
        (mlp, call_mse, {"layers": "*.bias"}, UsageError, "matches no trainable parameter with ndim >= 2"),
        (OnlyVectors, lambda m, b: m.b.sum(), {}, UsageError, "2 or more dimensions; the model has only 1-D"),
        (mlp, lambda m, b: call_mse(m, b) * math.nan, {}, InputError, "the loss at this batch is nan"),
        (mlp, lambda m, b: m(b[0]), {}, UsageError, "must return a scalar tensor"),
    ],
)
def test_usage_errors_are_one_clear_line(model, loss, kwargs, error, words: str) -> None:
    made = model()
    mod, batch = made if isinstance(made, tuple) else (made, None)
    with pytest.raises(error, match=words.replace("*", r"\*").replace("(", r"\(")) as info:
        curvature(mod, loss, batch, **kwargs)
    assert "\n" not in str(info.value)


def test_probe_module_imports_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; from gradmanifold import layerspec, probe as p; "
        "assert p.fit_spectral is layerspec.fit_spectral; print(p.two_layer.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stdout.strip() == "two_layer", out.stderr


# ---------------------------------------------------------------- two-rank-one split
def spiked(n: int, d: int, h: int, nu: float, seed: int) -> tuple[np.ndarray, ...]:
    """Spiked data X = X_B + n^nu z q^T, a random first layer, a +-1/sqrt(h) second layer, a teacher."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(d)
    q /= np.linalg.norm(q)
    x = rng.standard_normal((n, d)) + n**nu * np.outer(rng.standard_normal(n), q)
    w = rng.standard_normal((h, d)) / math.sqrt(d)
    a = rng.choice([-1.0, 1.0], h) / math.sqrt(h)
    beta = rng.standard_normal(d)
    return w, a, x, np.tanh(x @ beta / np.linalg.norm(beta)), q


def torch_grad(w, a, x, y, act: str) -> np.ndarray:
    wt = torch.tensor(w, requires_grad=True)
    f = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "linear": lambda t: t}[act]
    loss = 0.5 * ((f(torch.from_numpy(x) @ wt.T) @ torch.from_numpy(a) - torch.from_numpy(y)) ** 2).mean()
    loss.backward()
    return wt.grad.numpy()


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "linear"])
def test_two_layer_split_is_exact_and_g_is_the_autograd_gradient(act: str) -> None:
    w, a, x, y, q = spiked(96, 20, 12, 0.4, 7)
    t = two_layer(w, a, x, y, act=act, q=3 * q)
    np.testing.assert_allclose(t.G, torch_grad(w, a, x, y, act), rtol=0, atol=1e-13 * np.abs(t.G).max())
    assert np.abs(t.S1 + t.S2 + t.E - t.G).max() <= 1e-12 * np.abs(t.G).max()
    for s in (t.S1, t.S2):  # rank one
        sv = np.linalg.svd(s, compute_uv=False)
        assert sv[1] <= 1e-13 * sv[0]
    assert np.abs(t.E @ q).max() <= 1e-13 * np.abs(t.G).max()  # E lives off the spike direction
    np.testing.assert_allclose(t.q, q, atol=1e-15)
    assert t.g_op == pytest.approx(np.linalg.norm(t.G, 2), rel=1e-12)
    assert t.s1_op == pytest.approx(np.linalg.norm(t.S1, 2), rel=1e-12)
    assert t.s2_op == pytest.approx(np.linalg.norm(t.S2, 2), rel=1e-12)
    sv = np.linalg.svd(t.G, compute_uv=False)
    assert sv[2] <= t.e_op * (1 + 1e-12) + 1e-14 * t.g_op  # Weyl: S1 + S2 has rank 2
    assert t.top2_bound <= t.top2_energy
    r = t.residual
    same = two_layer(w, a, x, residual=r, act=act, q=q)
    np.testing.assert_array_equal(same.G, t.G)


def test_two_rank_one_terms_dominate_more_as_the_spike_grows() -> None:
    """Ground truth of the spiked model (arXiv 2510.01303): ||E||_op / ||G||_op falls as nu grows."""
    ratios = []
    for nu in (0.0, 0.25, 0.5, 0.75, 1.0):
        runs = []
        for seed in range(3):
            w, a, x, y, q = spiked(256, 64, 32, nu, seed)
            t = two_layer(w, a, x, y, q=q)
            if seed == 0:  # G is the gradient of the MSE loss of this network
                np.testing.assert_allclose(t.G, torch_grad(w, a, x, y, "relu"), rtol=0, atol=1e-13 * t.g_op)
            runs.append(t.e_ratio)
            if nu >= 0.5 and seed == 0:  # a large spike is found by the SVD of X
                est = two_layer(w, a, x, y)
                assert est.q_source == "estimated" and abs(est.q @ q) > 0.99
        ratios.append(float(np.mean(runs)))
    assert all(b < a for a, b in itertools.pairwise(ratios)), ratios
    assert ratios[-1] < 0.01 and ratios[2] < 0.1, ratios


def test_two_layer_usage_errors() -> None:
    w, a, x, y, _ = spiked(20, 6, 4, 0.5, 0)
    with pytest.raises(UsageError, match="exactly one of y"):
        two_layer(w, a, x)
    with pytest.raises(UsageError, match="exactly one of y"):
        two_layer(w, a, x, y, residual=y)
    with pytest.raises(UsageError, match=r"need W \[h, d\]"):
        two_layer(w.T, a, x, y)
    with pytest.raises(UsageError, match="q must be a nonzero"):
        two_layer(w, a, x, y, q=np.zeros(6))
    with pytest.raises(UsageError, match="unknown activation 'gelu'"):
        two_layer(w, a, x, y, act="gelu")
