"""Representation gradients (``rep_grad``, MGDA-UB) for every Gram method.

The oracle is written out literally: per task, ``∂ℓ_k/∂z`` by its own ``torch.autograd.grad``
call, flattened to ``[K, B·F]``; the method's paper-form algorithm (fastmtl.reference.literal) on
those vectors gives the z-space direction ``d_z``; the trunk gradient is
``torch.autograd.grad(z, θ, d_z)``. Loss weightings must also equal ``fastmtl.backward`` (exact),
and bad input must raise before any ``.grad`` is written.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastmtl
from fastmtl.methods.ordering import random_task_orders
from fastmtl.reference import literal as L
from fastmtl.training.representation import representation_backward

F64 = torch.float64
K = 3


def make(seed=0):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Softplus()).to(F64)
    heads = nn.ModuleList([nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1)) for _ in range(K)]).to(F64)
    return trunk, heads


def batch():
    g = torch.Generator().manual_seed(11)
    return torch.randn(6, 5, generator=g, dtype=F64), torch.randn(6, K, generator=g, dtype=F64)


def task_losses(heads, z, y):
    return [((h(z).squeeze(-1) - y[:, k]) ** 2).mean() * (1 + k) for k, h in enumerate(heads)]


def literal_trunk_grads(method, seed=3):
    """The z-space direction of the method's literal algorithm, pulled back through the trunk."""
    trunk, heads = make()
    x, y = batch()
    z = trunk(x)
    losses = task_losses(heads, z, y)
    R = torch.stack([torch.autograd.grad(l, z, retain_graph=True)[0].reshape(-1) for l in losses])
    if method == "mgda":
        d = L.mgda_literal(R)
    elif method == "upgrad":
        d = L.upgrad_literal(R)
    elif method == "cagrad":
        d = L.cagrad_literal(R, c=0.4)
    elif method == "imtl_g":
        d = L.imtl_g_literal(R)
    elif method == "pcgrad":
        orders = random_task_orders(K, generator=torch.Generator().manual_seed(seed), device=R.device)
        d = L.pcgrad_literal(R, orders)
    elif method == "mean":
        d = R.mean(0)
    else:
        raise KeyError(method)
    return torch.autograd.grad(z, list(trunk.parameters()), grad_outputs=d.reshape(z.shape)), d


def run(method, seed=3, **kw):
    trunk, heads = make()
    x, y = batch()
    z = trunk(x)
    info = representation_backward(task_losses(heads, z, y), z, method, shared_params=trunk.parameters(),
                                   head_params=heads, generator=torch.Generator().manual_seed(seed), **kw)
    return info, trunk, heads


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


# UPGrad without TorchJD's ridge: the literal oracle projects exactly.
@pytest.mark.parametrize("method,kw", [("mgda", {}), ("upgrad", {"reg_eps": 0.0}), ("cagrad", {"c": 0.4}), ("imtl_g", {}),
                                       ("pcgrad", {}), ("mean", {})])
def test_direction_matches_the_literal_algorithm_on_representation_gradients(method, kw):
    expected, _ = literal_trunk_grads(method)
    info, trunk, _ = run(method, **kw)
    for p, e in zip(trunk.parameters(), expected):
        assert rel(p.grad, e) < 1e-10, (method, rel(p.grad, e))
    assert info.gram.shape == (K, K) and info.backend == "representation"


def test_loss_weighting_is_exact():
    info, trunk, heads = run("mean")
    t2, h2 = make()
    x, y = batch()
    fastmtl.backward(task_losses(h2, t2(x), y), t2.parameters(), "mean", head_params=h2)
    for a, b in zip([*trunk.parameters(), *heads.parameters()], [*t2.parameters(), *h2.parameters()]):
        assert rel(a.grad, b.grad) < 1e-12


def test_gram_methods_differ_from_the_parameter_space_method():
    """MGDA-UB is an approximation: the z-space λ is not the parameter-space λ (this network)."""
    info, _, _ = run("mgda")
    t2, h2 = make()
    x, y = batch()
    ref = fastmtl.backward(task_losses(h2, t2(x), y), t2.parameters(), "mgda", head_params=h2)
    assert (info.weights - ref.weights).abs().max() > 1e-3


@pytest.mark.parametrize("convention", ["weighted", "sum"])
def test_heads_follow_the_convention(convention):
    info, trunk, heads = run("mgda", head_weighting=convention)
    h2 = make()[1]
    x, y = batch()
    z = make()[0](x).detach()
    losses = task_losses(h2, z, y)
    lam = info.weights if convention == "weighted" else torch.ones(K, dtype=F64)
    torch.autograd.backward(losses, grad_tensors=list(lam.unbind()))
    for a, b in zip(heads.parameters(), h2.parameters()):
        assert rel(a.grad, b.grad) < 1e-12


def test_several_representations():
    trunk, heads = make()
    x, y = batch()
    z = trunk(x)
    z1, z2 = z[:, :2], z[:, 2:]  # two views of the features: heads read both
    losses = [((h(torch.cat([z1, z2], 1)).squeeze(-1) - y[:, k]) ** 2).mean() for k, h in enumerate(heads)]
    info = representation_backward(losses, [z1, z2], "mgda", shared_params=trunk.parameters())
    t2, h2 = make()
    zz = t2(x)
    l2 = [((h(zz).squeeze(-1) - y[:, k]) ** 2).mean() for k, h in enumerate(h2)]
    R = torch.stack([torch.autograd.grad(l, zz, retain_graph=True)[0].reshape(-1) for l in l2])
    assert rel(info.gram.to(F64), R @ R.T) < 1e-12


# -- bad input: a clear error and .grad untouched ------------------------------------------------


def untouched(*modules):
    return all(p.grad is None for m in modules for p in m.parameters())


def test_representation_that_does_not_require_grad():
    trunk, heads = make()
    x, y = batch()
    z = trunk(x).detach()
    with pytest.raises(ValueError, match="does not require grad"):
        representation_backward(task_losses(heads, z, y), z, "mgda", shared_params=trunk.parameters(),
                                head_params=heads)
    assert untouched(trunk, heads)


def test_representation_not_on_the_path_of_a_loss():
    trunk, heads = make()
    x, y = batch()
    z = trunk(x)
    losses = task_losses(heads, z, y)
    losses[1] = heads[1](torch.ones(2, 4, dtype=F64)).sum()  # task 1 does not read z
    with pytest.raises(ValueError, match="loss 1 does not depend on the representation"):
        representation_backward(losses, z, "upgrad", shared_params=trunk.parameters(), head_params=heads)
    assert untouched(trunk, heads)


def test_loss_reaching_the_trunk_around_the_representation():
    trunk, heads = make()
    x, y = batch()
    h = trunk[1](trunk[0](x))
    z = trunk[3](trunk[2](h))
    losses = task_losses(heads, z, y)
    losses[2] = losses[2] + h.pow(2).mean()  # a skip connection around z
    with pytest.raises(ValueError, match="loss 2 reaches shared_params"):
        representation_backward(losses, z, "mgda", shared_params=trunk.parameters(), head_params=heads)
    assert untouched(trunk, heads)


@pytest.mark.parametrize("method", ["graddrop", "db_mtl", "slgrad"])
def test_methods_that_read_gradients_are_refused(method):
    trunk, heads = make()
    x, y = batch()
    z = trunk(x)
    # SLGrad is refused by every mode of fastmtl.backward (it weights (task, sample) pairs).
    why = "weights \\(task, sample\\) pairs" if method == "slgrad" else "reads the task gradients themselves"
    with pytest.raises(TypeError, match=why):
        representation_backward(task_losses(heads, z, y), z, method, shared_params=trunk.parameters())
    assert untouched(trunk, heads)


def test_other_bad_arguments():
    trunk, heads = make()
    x, y = batch()
    z = trunk(x)
    losses = task_losses(heads, z, y)
    with pytest.raises(TypeError, match="representation must be a tensor"):
        representation_backward(losses, None, "mgda", shared_params=trunk.parameters())
    with pytest.raises(ValueError, match="shared_params is empty"):
        representation_backward(losses, z, "mgda", shared_params=[])
    with pytest.raises(ValueError, match="also a shared parameter"):
        representation_backward(losses, z, "mgda", shared_params=trunk.parameters(), head_params=trunk)
    with pytest.raises(TypeError, match="reference gradient"):
        representation_backward(losses, z, "hydalearn", shared_params=trunk.parameters(),
                                reference=[torch.zeros(1)])
    with pytest.raises(TypeError, match="reference gradient"):
        representation_backward(losses, z, "hydalearn", shared_params=trunk.parameters(),
                                reference_grad=[torch.zeros(1)])
    assert untouched(trunk, heads)


def test_separate_heads_take_one_pass_each_and_a_common_head_one_batched_pass(monkeypatch):
    import fastmtl.training as training

    calls = []
    original = training.task_gradients

    def spy(*args, **kwargs):
        calls.append(kwargs.get("batched"))
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "task_gradients", spy)
    run("mgda")
    assert calls == [False]  # separate heads
    forced, _, _ = run("mgda", batched=True)
    assert calls == [False, True] and rel(forced.weights, run("mgda")[0].weights) < 1e-12
    calls.clear()
    trunk, _ = make()
    head = nn.Linear(4, K).to(F64)  # one head for all tasks
    x, y = batch()
    z = trunk(x)
    out = head(z)
    losses = [((out[:, k] - y[:, k]) ** 2).mean() for k in range(K)]
    info = representation_backward(losses, z, "mgda", shared_params=trunk.parameters(), head_params=head)
    assert calls == [None]  # a common head
    t2, _ = make()
    z2 = t2(x)
    R = torch.stack([torch.autograd.grad(((head(z2)[:, k] - y[:, k]) ** 2).mean(), z2)[0].reshape(-1)
                     for k in range(K)])
    assert rel(info.gram.to(F64), R @ R.T) < 1e-12
