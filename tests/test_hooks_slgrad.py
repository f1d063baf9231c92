"""SLGrad with the per-(task, sample) dot products from module hooks
(``fastmtl.training.slgrad_backward``) against the forward-mode JVP path
(``fastmtl.training.slgrad_step``) and against per-sample gradients formed one by one."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fastmtl import training
from fastmtl.hooks import GramHooks
from fastmtl.training import slgrad_backward
from fastmtl.methods import SLGrad

F64 = torch.float64
K, B = 3, 5


def make(conv=False, norm=False):
    torch.manual_seed(0)
    if conv:
        trunk = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 16, 6), nn.ReLU())
    else:
        layers = [nn.Linear(4, 6), nn.Tanh()] + ([nn.LayerNorm(6)] if norm else []) + [nn.Linear(6, 6), nn.ReLU()]
        trunk = nn.Sequential(*layers)
    heads = nn.ModuleList([nn.Linear(6, 1) for _ in range(K)])
    return nn.ModuleDict({"trunk": trunk, "heads": heads}).to(F64)


def data(conv=False, n=B, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 4, 4, generator=g, dtype=F64) if conv else torch.randn(n, 4, generator=g, dtype=F64)
    return x, torch.randn(n, K, generator=g, dtype=F64)


def per_sample(model, h, y):
    return torch.stack([(head(h).squeeze(-1) - y[:, k]) ** 2 for k, head in enumerate(model["heads"])])


@pytest.mark.parametrize("case", ["mlp", "conv", "layernorm-fallback"])
@pytest.mark.parametrize("scale", ["paper_code", "convex"])
def test_same_weights_and_grads_as_the_jvp_step(case, scale):
    conv, norm = case == "conv", case == "layernorm-fallback"
    x, y = data(conv)
    xv, yv = data(conv, n=7, seed=2)
    results = []
    for path in ("jvp", "hooks"):
        model = make(conv, norm)
        trunk = model["trunk"]

        def val_loss(model=model, trunk=trunk):
            return per_sample(model, trunk(xv), yv)[0].mean()

        if path == "jvp":
            info = training.slgrad_step(trunk, lambda h, model=model: per_sample(model, h, y), val_loss, list(trunk.parameters()),
                                        inputs=(x,), method=SLGrad(scale=scale))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                hooks = GramHooks(trunk)
            info = slgrad_backward(per_sample(model, trunk(x), y), hooks, val_loss_fn=val_loss, scale=scale)
            assert hooks.records == []
        results.append((info, [p.grad.clone() for p in model.parameters()]))
    (a, ga), (b, gb) = results
    assert torch.allclose(a.dots, b.dots, rtol=0, atol=1e-12 * float(a.dots.abs().max()))
    assert torch.allclose(a.weights, b.weights, rtol=0, atol=1e-12)
    assert torch.allclose(a.loss, b.loss, rtol=1e-12)
    for p, q in zip(ga, gb):
        assert torch.allclose(p, q, rtol=0, atol=1e-12 * max(float(p.abs().max()), 1e-30))


def test_dots_equal_per_sample_gradients_one_by_one():
    model = make()
    trunk = model["trunk"]
    hooks = GramHooks(trunk)
    x, y = data()
    v = [torch.randn_like(p) for p in trunk.parameters()]
    Ls = per_sample(model, trunk(x), y)
    info = slgrad_backward(Ls, hooks, val_grad=v, scale="convex")
    vf = torch.cat([t.reshape(-1) for t in v])
    model2 = make()
    Ls2 = per_sample(model2, model2["trunk"](x), y)
    for k in range(K):
        for b in range(B):
            g = torch.autograd.grad(Ls2[k, b], list(model2["trunk"].parameters()), retain_graph=True)
            assert abs(float(torch.cat([t.reshape(-1) for t in g]) @ vf - info.dots[k, b])) < 1e-12


def test_bad_input():
    model = make()
    trunk = model["trunk"]
    hooks = GramHooks(trunk)
    x, y = data()
    Ls = per_sample(model, trunk(x), y)
    with pytest.raises(ValueError, match="val_loss_fn or val_grad"):
        slgrad_backward(Ls, hooks)
    with pytest.raises(TypeError, match="SLGrad instance"):
        slgrad_backward(Ls, hooks, val_grad=[None] * 4, method="slgrad")
    with pytest.raises(TypeError, match="GramHooks"):
        slgrad_backward(Ls, list(trunk.parameters()), val_grad=[None] * 4)
    assert all(p.grad is None for p in model.parameters())
