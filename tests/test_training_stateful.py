"""Training helpers of the stateful methods: ``double_sampling_backward`` (MoDo, SDMGrad) and
``auto_lambda_step`` (Auto-λ), each training a tiny float64 model a few steps beside a literal
transcription of the official code (fastmtl/reference/literal), plus the bitwise restoration of
the fake steps and the helpers' errors."""

from __future__ import annotations

import copy

import pytest
import torch

import fastmtl
from fastmtl.methods import AutoLambda, MoDo, SDMGrad
from fastmtl.reference import literal as L
from fastmtl.training import FakeStep, auto_lambda_step, double_sampling_backward

K, B, IN, HID = 3, 6, 4, 5


class Net(torch.nn.Module):
    def __init__(self, norm: bool = False):
        super().__init__()
        torch.manual_seed(0)
        layers = [torch.nn.Linear(IN, HID)] + ([torch.nn.BatchNorm1d(HID)] if norm else []) + [torch.nn.Tanh()]
        self.trunk = torch.nn.Sequential(*layers).double()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(HID, 1) for _ in range(K)).double()

    def losses(self, batch):
        x, y = batch
        h = self.trunk(x)
        return [((head(h)[:, 0] - y[:, k]) ** 2).mean() for k, head in enumerate(self.heads)]


def batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, IN, generator=g, dtype=torch.float64)
    y = torch.randn(B, K, generator=g, dtype=torch.float64)
    y[:, 2] = -y[:, 0] + 0.1 * y[:, 2]  # a conflicting task
    return x, y


def flat_task_grads(net, losses):
    """The K × D trunk Jacobian, by K plain autograd calls (the literal side)."""
    rows = []
    for l in losses:
        g = torch.autograd.grad(l, list(net.trunk.parameters()), retain_graph=True)
        rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


def assign_flat(params, flat):
    start = 0
    for p in params:
        n = p.numel()
        p.grad = flat[start:start + n].view_as(p).clone()
        start += n


# ----------------------------------------------------------------------------------------------
# Double sampling.
# ----------------------------------------------------------------------------------------------

CASES = [("modo", 3, {}), ("modo", 2, {"gamma": 0.5}), ("sdmgrad", 3, {}), ("sdmgrad", 2, {"lambda_": 1.0})]


@pytest.mark.parametrize("name, n_sets, hp", CASES, ids=[f"{c[0]}-{c[1]}sets" for c in CASES])
def test_double_sampling_training_matches_the_literal_code(name, n_sets, hp):
    net = Net()
    lit = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    opt_l = torch.optim.SGD(lit.parameters(), lr=0.05)
    m = fastmtl.methods.make_method(name, dict(hp))
    oracle = L.modo_literal if name == "modo" else L.sdmgrad_literal
    history = []
    for step in range(4):
        batches = [batch(100 * step + s) for s in range(n_sets)]
        opt.zero_grad()
        info = double_sampling_backward([net.losses(b) for b in batches], net.trunk, m, head_params=net.heads)
        opt.step()
        # The literal step: explicit Jacobians, the oracle's λ over the whole history, plain SGD.
        opt_l.zero_grad()
        sets = [lit.losses(b) for b in batches]
        Js = [flat_task_grads(lit, s) for s in sets]
        Jd = Js[2] if n_sets == 3 else (Js[0] + Js[1]) / 2
        history.append((Js[0], Js[1], Jd))
        d, lam = oracle(history, **hp)[-1]
        torch.testing.assert_close(info.weights, lam, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(info.cross_gram, Js[0] @ Js[1].T, rtol=1e-12, atol=1e-12)
        assign_flat(list(lit.trunk.parameters()), d)
        head_loss = sum(sum(s) for s in sets) / n_sets  # heads: plain task gradients, mean over the sets
        torch.autograd.backward(head_loss, inputs=list(lit.heads.parameters()))
        opt_l.step()
        for a, b in zip(net.parameters(), lit.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_double_sampling_errors_and_accumulation():
    net = Net()
    sets = [net.losses(batch(s)) for s in range(3)]
    with pytest.raises(TypeError, match="does not take a cross Gram"):
        double_sampling_backward(sets, net.trunk, "mgda")
    with pytest.raises(ValueError, match="2 or 3 sequences"):
        double_sampling_backward(sets[:1], net.trunk, "modo")
    with pytest.raises(ValueError, match="loss set 1 has 2 losses, set 0 has 3"):
        double_sampling_backward([sets[0], sets[1][:2]], net.trunk, "modo")
    with pytest.raises(ValueError, match="head_params\\[0\\] is also a shared parameter"):
        double_sampling_backward(sets, net.trunk, "modo", head_params=[next(net.trunk.parameters())])
    # .grad accumulates, like loss.backward().
    for p in net.trunk.parameters():
        p.grad = torch.ones_like(p)
    info = double_sampling_backward([net.losses(batch(s)) for s in range(2)], net.trunk, MoDo())
    net2 = Net()
    double_sampling_backward([net2.losses(batch(s)) for s in range(2)], net2.trunk, MoDo())
    for a, b in zip(net.trunk.parameters(), net2.trunk.parameters()):
        torch.testing.assert_close(a.grad, b.grad + 1)
    assert info.method.lambd is not None


# ----------------------------------------------------------------------------------------------
# Auto-λ.
# ----------------------------------------------------------------------------------------------

def _train_closures(net, step):
    tb, vb = batch(1000 + step), batch(2000 + step)
    return (lambda: net.losses(tb)), (lambda: net.losses(vb)), tb


@pytest.mark.parametrize("optim, virtual_step, primary", [
    ("sgd", "optimizer", None), ("sgd", "sgd", [0]), ("adam", "sgd", None)])
def test_auto_lambda_training_matches_the_official_code(optim, virtual_step, primary):
    def make_opt(params):
        if optim == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
        return torch.optim.Adam(params, lr=0.01, weight_decay=1e-3)

    net = Net()
    lit = copy.deepcopy(net)
    opt, opt_l = make_opt(net.parameters()), make_opt(lit.parameters())
    m = AutoLambda(init=0.1, lr=0.05, primary_tasks=primary)  # a large meta lr: w moves visibly in 4 steps
    autol = L.AutoLambdaLiteral(lit, K, primary=primary, weight_init=0.1, meta_lr=0.05)
    for step in range(4):
        train_fn, val_fn, tb = _train_closures(net, step)
        info = auto_lambda_step(m, net, train_fn, val_fn, opt, virtual_step=virtual_step)
        opt.zero_grad()
        fastmtl.backward(net.losses(tb), net.trunk, m, head_params=net.heads)
        opt.step()

        vb = batch(2000 + step)
        autol.unrolled_backward(lambda model, tb=tb: model.losses(tb), lambda model, vb=vb: model.losses(vb),
                                opt_l.param_groups[0]["lr"], opt_l)
        opt_l.zero_grad()
        loss = sum(w * l for w, l in zip(autol.meta_weights, lit.losses(tb)))
        loss.backward()
        opt_l.step()

        torch.testing.assert_close(info.weights, autol.meta_weights.detach(), rtol=1e-9, atol=1e-12)
        for a, b in zip(net.parameters(), lit.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(info.weights, torch.full((K,), 0.1, dtype=torch.float64))


def test_auto_lambda_exact_hessian_is_the_limit_of_the_finite_difference():
    net = Net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    train_fn, val_fn, _ = _train_closures(net, 0)
    fd = auto_lambda_step(AutoLambda(), net, train_fn, val_fn, opt)
    exact = auto_lambda_step(AutoLambda(), net, train_fn, val_fn, opt, hessian="exact")
    torch.testing.assert_close(exact.meta_grad, fd.meta_grad, rtol=1e-4, atol=1e-10)
    assert float(exact.meta_grad.abs().max()) > 1e-6
    fine = auto_lambda_step(AutoLambda(), net, train_fn, val_fn, opt, fd_scale=1e-4)
    assert float((fine.meta_grad - exact.meta_grad).abs().max()) < float((fd.meta_grad - exact.meta_grad).abs().max())


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_auto_lambda_step_restores_everything_bitwise(optim):
    net = Net(norm=True)
    opt = (torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9) if optim == "sgd"
           else torch.optim.Adam(net.parameters(), lr=0.01))
    extra = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))  # held by the optimizer, not moved
    opt.add_param_group({"params": [extra]})
    for step in range(2):  # real steps, so that the optimizer has state
        opt.zero_grad()
        sum(net.losses(batch(step))).backward()
        extra.grad = torch.ones_like(extra)
        opt.step()
    before = copy.deepcopy({"model": net.state_dict(), "opt": opt.state_dict(),
                            "grads": [p.grad.clone() for p in net.parameters()], "extra": extra.grad.clone()})
    train_fn, val_fn, _ = _train_closures(net, 0)
    auto_lambda_step(AutoLambda(), net, train_fn, val_fn, opt)
    after = {"model": net.state_dict(), "opt": opt.state_dict(), "grads": [p.grad for p in net.parameters()],
             "extra": extra.grad}
    for k, v in before["model"].items():  # parameters and BatchNorm statistics
        assert torch.equal(after["model"][k], v), k
    for p_id, s in before["opt"]["state"].items():
        for key, v in s.items():
            assert torch.equal(torch.as_tensor(after["opt"]["state"][p_id][key]), torch.as_tensor(v)), (p_id, key)
    assert after["opt"]["param_groups"] == before["opt"]["param_groups"]
    assert all(torch.equal(a, b) for a, b in zip(after["grads"], before["grads"]))
    assert torch.equal(after["extra"], before["extra"])


def test_fake_step_restores_in_place():
    p = torch.nn.Parameter(torch.arange(4.0))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(4)
    opt.step()
    buf = opt.state[p]["momentum_buffer"]
    ptr = p.data_ptr()
    with FakeStep([p], opt):
        p.grad = torch.full((4,), 5.0)
        opt.step()
        opt.param_groups[0]["lr"] = 3.0
    assert p.data_ptr() == ptr and opt.state[p]["momentum_buffer"] is buf
    assert torch.equal(buf, torch.ones(4)) and opt.param_groups[0]["lr"] == 0.1 and torch.equal(p.grad, torch.ones(4))


def test_auto_lambda_step_errors():
    net = Net()
    train_fn, val_fn, _ = _train_closures(net, 0)
    opt = torch.optim.SGD(net.trunk.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="trains an AutoLambda instance"):
        auto_lambda_step(SDMGrad(), net, train_fn, val_fn, opt)
    with pytest.raises(ValueError, match="pass the training optimizer or the learning rate"):
        auto_lambda_step(AutoLambda(), net, train_fn, val_fn)
    with pytest.raises(ValueError, match="are not in the optimizer"):
        auto_lambda_step(AutoLambda(), net, train_fn, val_fn, opt)
    with pytest.raises(ValueError, match="val_losses returned 2 losses, train_losses 3"):
        auto_lambda_step(AutoLambda(), net, train_fn, lambda: val_fn()[:2], lr=0.1)
    with pytest.raises(ValueError, match="hessian must be"):
        auto_lambda_step(AutoLambda(), net, train_fn, val_fn, lr=0.1, hessian="bfgs")
    before = [p.detach().clone() for p in net.parameters()]
    info = auto_lambda_step(AutoLambda(), net, train_fn, val_fn, lr=0.1)  # no optimizer: θ − α g
    assert info.alpha == 0.1 and all(torch.equal(a, b) for a, b in zip(net.parameters(), before))
