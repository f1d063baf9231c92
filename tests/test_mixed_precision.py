"""``fastmtl.backward`` under ``torch.autocast`` with a ``torch.amp.GradScaler`` (CPU here).

The scaled run must leave what ``loss.backward()`` on a scaled loss leaves: ``s·d`` in ``.grad``,
so that ``scaler.step`` unscales it to the unscaled run's direction, and a step whose task
gradients overflowed is skipped by the scaler, which then lowers the scale.
"""

from __future__ import annotations

import copy

import pytest
import torch

import fastmtl

K = 3


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
        self.heads = torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(K))

    def losses(self, x, ys):
        z = self.trunk(x)
        return [(h(z).squeeze(-1) - y).pow(2).mean() for h, y in zip(self.heads, ys)]


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, generator=g)
    ys = [torch.randn(32, generator=g) * (k + 1) for k in range(K)]
    return x, ys


@pytest.mark.parametrize("method", ["mgda", "upgrad", "nash_mtl", "famo", "pcgrad", "graddrop", "db_mtl"])
def test_scaled_step_equals_the_unscaled_one(method):
    torch.manual_seed(0)
    net = Net()
    twin = copy.deepcopy(net)
    x, ys = _data()
    gen = torch.Generator().manual_seed(1)
    info = fastmtl.backward(net.losses(x, ys), net.trunk, method, head_params=net.heads, generator=gen)

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    opt = torch.optim.SGD(twin.parameters(), lr=0.0)
    gen = torch.Generator().manual_seed(1)
    info_s = fastmtl.backward(twin.losses(x, ys), twin.trunk, method, head_params=twin.heads, generator=gen,
                              grad_scaler=scaler)
    scaled = [p.grad.clone() for p in twin.parameters()]
    scaler.unscale_(opt)
    for p, q, s in zip(net.parameters(), twin.parameters(), scaled):
        torch.testing.assert_close(s, q.grad * 2.0 ** 12, rtol=1e-5, atol=0)  # .grad held s·d
        torch.testing.assert_close(q.grad, p.grad, rtol=2e-5, atol=1e-7)
    if info.weights is not None:
        torch.testing.assert_close(info_s.weights, info.weights, rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(info_s.gram, info.gram, rtol=1e-5, atol=1e-9)  # the unscaled Gram


def test_overflowing_step_is_skipped_and_the_scale_lowered():
    torch.manual_seed(0)
    net = Net()
    x, ys = _data()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    losses = net.losses(x, ys)
    losses[1] = losses[1] * float("inf")  # task 1's gradient overflows
    fastmtl.backward(losses, net.trunk, "mgda", head_params=net.heads, grad_scaler=scaler)
    scaler.step(opt)
    scaler.update()
    for p, b in zip(net.parameters(), before):
        assert torch.equal(p.detach(), b)  # skipped
    assert scaler.get_scale() < 2.0 ** 12


def test_bfloat16_autocast_trains():
    torch.manual_seed(0)
    net = Net()
    x, ys = _data()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = net.losses(x, ys)
        if first is None:
            first = sum(float(l) for l in losses)
        fastmtl.backward(losses, net.trunk, "upgrad", head_params=net.heads, grad_scaler=scaler)
        scaler.step(opt)
        scaler.update()
    assert sum(float(l) for l in net.losses(x, ys)) < 0.8 * first
