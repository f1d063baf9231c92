"""slgrad_step(lookahead=True): the released SLGrad code's look-ahead step and second step, against
a literal step-by-step transcription of ``SLGrad.train`` (K·B per-sample backward passes)."""

import copy

import pytest
import torch

from fastmtl.training import slgrad_step

K, B = 2, 5


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 6), torch.nn.Tanh())
        self.heads = torch.nn.ModuleList([torch.nn.Linear(6, 1) for _ in range(K)])
        self.double()

    def per_sample(self, h, y):
        return torch.stack([(self.heads[k](h).squeeze(-1) - y[:, k]) ** 2 for k in range(K)])  # [K, B]


def batch(seed, n=B):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, K, generator=g, dtype=torch.float64)


def make_opt(name, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return torch.optim.Adam(params, lr=0.01, betas=(0.9, 0.99))


def literal_train(net, opt, x, y, xv, yv, W):
    """``SLGrad.train`` of the authors' code, line by line (paper_code scale)."""
    shared = list(net.trunk.parameters())
    # 1. look-ahead: mdl.train with the current weights, never undone
    opt.zero_grad()
    (torch.stack([W[t] @ l for t, l in enumerate(net.per_sample(net.trunk(x), y))]).sum() / B).backward()
    opt.step()
    # 2. validation gradient of the main task, shared parameters only
    opt.zero_grad()
    net.per_sample(net.trunk(xv), yv)[0].mean().backward()
    v = [p.grad.clone() for p in shared]
    # 3. one backward pass per (task, sample)
    losses = net.per_sample(net.trunk(x), y)
    a = torch.zeros(K, B, dtype=torch.float64)
    for t in range(K):
        for e in range(B):
            opt.zero_grad()
            losses[t, e].backward(retain_graph=True)
            a[t, e] = sum((p.grad * vi).sum() for p, vi in zip(shared, v))
    Wn = a.clamp(min=0)
    if Wn.sum() != 0:
        Wn = Wn / Wn.sum()
    # 5. second step with the new weights
    opt.zero_grad()
    (torch.stack([Wn[t] @ l for t, l in enumerate(net.per_sample(net.trunk(x), y))]).sum() / B).backward()
    opt.step()
    return Wn


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_lookahead_matches_literal_code_and_takes_two_steps(opt_name):
    net = Net()
    ref = copy.deepcopy(net)
    opt = make_opt(opt_name, net.parameters())
    opt_ref = make_opt(opt_name, ref.parameters())
    steps = []
    opt.register_step_post_hook(lambda o, a, kw: steps.append(1))
    W = W_ref = torch.full((K, B), 1.0 / (K * B), dtype=torch.float64)
    for it in range(3):  # the weights of one call feed the next call's look-ahead
        x, y = batch(10 + it)
        xv, yv = batch(20 + it, n=7)
        n0 = len(steps)
        info = slgrad_step(net.trunk, lambda h, y=y: net.per_sample(h, y),
                           lambda xv=xv, yv=yv: net.per_sample(net.trunk(xv), yv)[0].mean(),
                           list(net.trunk.parameters()), inputs=(x,), lookahead=True, optimizer=opt,
                           prev_weights=None if it == 0 else W)
        assert len(steps) - n0 == 2
        W = info.weights
        W_ref = literal_train(ref, opt_ref, x, y, xv, yv, W_ref)
        torch.testing.assert_close(W, W_ref, rtol=1e-10, atol=1e-13)
        for p, q in zip(net.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    # The look-ahead really moved the model: one-update SLGrad from the same start ends elsewhere.
    one = Net()
    opt1 = make_opt(opt_name, one.parameters())
    x, y = batch(10)
    xv, yv = batch(20, n=7)
    opt1.zero_grad()
    slgrad_step(one.trunk, lambda h: one.per_sample(h, y), lambda: one.per_sample(one.trunk(xv), yv)[0].mean(),
                list(one.trunk.parameters()), inputs=(x,))
    opt1.step()
    ref2 = Net()
    literal_train(ref2, make_opt(opt_name, ref2.parameters()), x, y, xv, yv,
                  torch.full((K, B), 1.0 / (K * B), dtype=torch.float64))
    assert not all(torch.allclose(p, q) for p, q in zip(one.parameters(), ref2.parameters()))


def test_lookahead_bad_input():
    net = Net()
    x, y = batch(1)
    shared = list(net.trunk.parameters())
    opt = make_opt("sgd", net.parameters())
    args = (net.trunk, lambda h: net.per_sample(h, y), lambda: net.per_sample(net.trunk(x), y)[0].mean(), shared)
    with pytest.raises(ValueError, match="optimizer"):
        slgrad_step(*args, inputs=(x,), lookahead=True)
    with pytest.raises(ValueError, match="val_grad"):
        slgrad_step(*args, inputs=(x,), lookahead=True, optimizer=opt, val_grad=[torch.zeros_like(p) for p in shared])
    with pytest.raises(ValueError, match="lookahead"):
        slgrad_step(*args, inputs=(x,), optimizer=opt)
    with pytest.raises(ValueError, match="prev_weights"):
        slgrad_step(*args, inputs=(x,), lookahead=True, optimizer=opt, prev_weights=torch.ones(K, B - 1))
