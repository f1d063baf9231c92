"""``fastmtl.training.hooks_backward`` (``gram_mode="hooks"|"auto"``) against ``fastmtl.backward``.

Same model, batch and generator seed in float64: λ, the Gram and every parameter's ``.grad`` must
agree to rounding, for Gram methods (PCGrad's coefficient tracking included), loss weightings and
auxiliary-task methods, with both head conventions.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import fastmtl
from fastmtl.hooks import GramHooks
from fastmtl.training import hooks_backward

F64 = torch.float64
K = 4


def make(seed=0, conv=False):
    torch.manual_seed(seed)
    if conv:
        trunk = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 9, 8),
                              nn.Tanh()).to(F64)
    else:
        trunk = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh()).to(F64)
    heads = nn.ModuleList([nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 1)) for _ in range(K)]).to(F64)
    return trunk, heads


def data(conv=False):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(7, 2, 6, 6, generator=g, dtype=F64) if conv else torch.randn(7, 6, generator=g, dtype=F64)
    return x, torch.randn(7, K, generator=g, dtype=F64)


def losses_of(trunk, heads, x, y):
    h = trunk(x)
    return [((head(h).squeeze(-1) - y[:, k]) ** 2).mean() * (k + 1) for k, head in enumerate(heads)]


def run(mode, method, *, conv=False, seed=3, **kw):
    trunk, heads = make(conv=conv)
    x, y = data(conv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the LayerNorm fallback notice
        hooks = GramHooks(trunk) if mode != "materialize" else None
    L = losses_of(trunk, heads, x, y)
    gen = torch.Generator().manual_seed(seed)
    if mode == "materialize":
        info = fastmtl.backward(L, trunk.parameters(), method, head_params=heads, generator=gen, **kw)
    else:
        info = hooks_backward(L, hooks, method, gram_mode=mode, head_params=heads, generator=gen, **kw)
        assert hooks.records == []  # cleared
        hooks.remove()
    grads = [p.grad.clone() if p.grad is not None else None for p in [*trunk.parameters(), *heads.parameters()]]
    return info, grads


def close(a, b, tol=1e-10):
    scale = max(float(b.abs().max()), 1e-300)
    return float((a - b).abs().max()) <= tol * scale


METHODS = [("mean", {}), ("sum", {}), ("mgda", {}), ("upgrad", {}), ("dualproj", {}), ("cagrad", {"c": 0.4}),
           ("pcgrad", {}), ("wpcgrad", {}), ("imtl_g", {}), ("aligned_mtl", {}), ("nash_mtl", {}), ("config", {}),
           ("hydalearn", {"main_task": 0}), ("gradvac", {}), ("gcosim", {"main_task": 0}), ("uw", {}), ("rlw", {})]


@pytest.mark.parametrize("conv", [False, True], ids=["mlp", "conv"])
@pytest.mark.parametrize("method,kw", METHODS, ids=[m for m, _ in METHODS])
def test_same_lambda_gram_and_grads_as_materialized(method, kw, conv):
    ref, ref_grads = run("materialize", method, conv=conv, **kw)
    info, grads = run("hooks", method, conv=conv, **kw)
    assert close(info.weights, ref.weights), (info.weights, ref.weights)
    assert close(info.gram, ref.gram)
    assert info.backend == "autograd"
    for a, b in zip(grads, ref_grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert close(a, b)


def test_reference_gradient_of_hydalearn_from_hooks():
    trunk, heads = make()
    x, y = data()
    v = [torch.randn_like(p) for p in trunk.parameters()]
    out = []
    for mode in ("materialize", "hooks"):
        trunk, heads = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            hooks = GramHooks(trunk)
        L = losses_of(trunk, heads, x, y)
        if mode == "materialize":
            info = fastmtl.backward(L, trunk.parameters(), "hydalearn", main_task=1, reference_grad=v, head_params=heads)
        else:
            info = hooks_backward(L, hooks, "hydalearn", main_task=1, reference_grad=v, head_params=heads)
        out.append((info.weights, [p.grad.clone() for p in trunk.parameters()]))
    assert close(out[1][0], out[0][0])
    assert all(close(a, b) for a, b in zip(out[1][1], out[0][1]))


@pytest.mark.parametrize("convention", ["weighted", "sum"])
def test_head_convention_override_and_accumulation(convention):
    results = []
    for mode in ("materialize", "hooks"):
        trunk, heads = make()
        x, y = data()
        for p in [*trunk.parameters(), *heads.parameters()]:
            p.grad = torch.full_like(p, 0.25)  # .grad is accumulated into, as loss.backward() does
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            hooks = GramHooks(trunk)
        L = losses_of(trunk, heads, x, y)
        if mode == "materialize":
            fastmtl.backward(L, trunk.parameters(), "mgda", head_params=heads, head_weighting=convention)
        else:
            hooks_backward(L, hooks, "mgda", head_params=heads, head_weighting=convention)
        results.append([p.grad.clone() for p in [*trunk.parameters(), *heads.parameters()]])
    assert all(close(a, b) for a, b in zip(*results))


def test_loss_only_method_without_info_skips_the_gram_and_task_without_grad():
    trunk, heads = make()
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hooks = GramHooks(trunk)
    L = losses_of(trunk, heads, x, y)
    L[2] = L[2].detach()  # a task without grad
    assert hooks_backward(L, hooks, "mean", head_params=heads, return_info=False) is None
    got = [p.grad.clone() for p in trunk.parameters()]
    trunk2, heads2 = make()
    L2 = losses_of(trunk2, heads2, x, y)
    L2[2] = L2[2].detach()
    fastmtl.backward(L2, trunk2.parameters(), "mean", head_params=heads2)
    assert all(close(a, p.grad) for a, p in zip(got, trunk2.parameters()))


def test_retain_graph_allows_a_second_backward():
    trunk, heads = make()
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hooks = GramHooks(trunk)
    L = losses_of(trunk, heads, x, y)
    hooks_backward(L, hooks, "upgrad", head_params=heads, retain_graph=True)
    sum(L).backward()  # the graph is still there


@pytest.mark.parametrize("method", ["graddrop", "db_mtl", "slgrad"])
def test_methods_that_read_the_gradients_raise_in_hooks_mode_and_fall_back_in_auto(method):
    trunk, heads = make()
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hooks = GramHooks(trunk)
    L = losses_of(trunk, heads, x, y)
    # SLGrad is refused by every mode of fastmtl.backward (it weights (task, sample) pairs).
    why = "weights \\(task, sample\\) pairs" if method == "slgrad" else "reads the task gradients themselves"
    with pytest.raises(TypeError, match=why):
        hooks_backward(L, hooks, method, head_params=heads)
    assert all(p.grad is None for p in trunk.parameters())
    if method == "slgrad":
        return
    info = hooks_backward(L, hooks, method, gram_mode="auto", head_params=heads, generator=torch.Generator())
    assert info.backend != "autograd" and all(p.grad is not None for p in trunk.parameters())


def test_gradvac_per_parameter_raises():
    trunk, heads = make()
    x, y = data()
    hooks = GramHooks(trunk[:3])
    L = losses_of(trunk, heads, x, y)
    with pytest.raises(TypeError, match="gradvac"):
        hooks_backward(L, hooks, "gradvac", granularity="per_param")


def test_auto_chooses_by_the_cost_model():
    # Wide layers, few rows: hooks. A convolution with many positions and few channels: materialise.
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)).to(F64)
    hooks = GramHooks(wide)
    out = wide(torch.randn(4, 64, dtype=F64))
    info = hooks_backward([out[:, k].pow(2).mean() for k in range(3)], hooks, "upgrad", gram_mode="auto")
    assert info.backend == "autograd"
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten()).to(F64)
    hooks = GramHooks(conv)
    out = conv(torch.randn(4, 1, 16, 16, dtype=F64))
    info = hooks_backward([out[:, k::3].pow(2).mean() for k in range(3)], hooks, "upgrad", gram_mode="auto")
    assert info.backend != "autograd" and hooks.records == []


def test_plain_parameters_in_auto_and_materialize_modes():
    trunk, heads = make()
    x, y = data()
    L = losses_of(trunk, heads, x, y)
    info = hooks_backward(L, trunk.parameters(), "mgda", gram_mode="auto", head_params=heads)
    assert info.backend != "autograd"
    L = losses_of(trunk, heads, x, y)
    with pytest.raises(TypeError, match="GramHooks"):
        hooks_backward(L, list(trunk.parameters()), "mgda", gram_mode="hooks")


def test_module_stands_for_its_hooks():
    a, _ = run("hooks", "upgrad")
    trunk, heads = make()
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        GramHooks(trunk)
    info = hooks_backward(losses_of(trunk, heads, x, y), trunk, "upgrad", head_params=heads,
                          generator=torch.Generator().manual_seed(3))
    assert close(info.weights, a.weights)


def test_bad_input():
    trunk, heads = make()
    x, y = data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hooks = GramHooks(trunk)
    L = losses_of(trunk, heads, x, y)
    with pytest.raises(ValueError, match="gram_mode"):
        hooks_backward(L, hooks, "mean", gram_mode="ghost")
    with pytest.raises(ValueError, match="also a shared parameter"):
        hooks_backward(L, hooks, "mean", head_params=[trunk[0].weight])
    with pytest.raises(TypeError, match="reference gradient"):
        hooks_backward(L, hooks, "mgda", reference_grad=[None] * len(hooks.params))
    with pytest.raises(TypeError, match="no main task"):
        hooks_backward(L, hooks, "mgda", main_task=0)
    with pytest.raises(ValueError, match="unknown method"):
        hooks_backward(L, hooks, "pcgard")
    with pytest.raises(ValueError, match="no loss requires grad"):
        hooks_backward([l.detach() for l in L], hooks, "mean")
    assert all(p.grad is None for p in [*trunk.parameters(), *heads.parameters()])


class _NoVmap(torch.autograd.Function):
    """tanh whose backward reads a value on the host: the backward cannot be vmapped."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        one = float(g.sum()) * 0.0 + 1.0  # .item() under vmap raises
        return g * (one - y * y)


class _Trunk(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 8)

    def forward(self, x):
        return torch.tanh(self.b(_NoVmap.apply(self.a(x))))


def test_a_backward_that_cannot_be_vmapped_falls_back_to_K_passes_with_one_warning():
    torch.manual_seed(0)
    trunk = _Trunk().to(F64)
    heads = make()[1]
    x, y = data()
    hooks = GramHooks(trunk)
    with pytest.warns(RuntimeWarning, match="batched backward pass failed"):
        info = hooks_backward(losses_of(trunk, heads, x, y), hooks, "mgda", head_params=heads)
    got = [p.grad.clone() for p in trunk.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the next step goes straight to the loop
        hooks_backward(losses_of(trunk, heads, x, y), hooks, "mgda")
    for p in trunk.parameters():
        p.grad = None
    ref = fastmtl.backward(losses_of(trunk, heads, x, y), trunk.parameters(), "mgda", batched=False)
    assert close(info.weights, ref.weights)
    assert all(close(a, p.grad) for a, p in zip(got, trunk.parameters()))
    fresh = GramHooks(trunk)
    with pytest.raises(RuntimeError):  # batched=True insists
        hooks_backward(losses_of(trunk, heads, x, y), fresh, "mgda", batched=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # batched=False: K passes straight away, nothing to say
        loop = hooks_backward(losses_of(trunk, heads, x, y), fresh, "mgda", batched=False)
    assert close(loop.weights, ref.weights)


def test_non_finite_gram_gives_nan_weights_not_a_finite_direction():
    trunk, heads = make()
    x, y = data()
    x[0, 0] = float("nan")
    hooks = GramHooks(trunk[:3])
    info = hooks_backward(losses_of(trunk, heads, x, y), hooks, "upgrad")
    assert torch.isnan(info.weights).all()
