"""`fastmtl.training`: backward (shared .grad, head conventions, unused parameters, batched vs
looped) and HydaLearn's exact look-ahead (gains, weights, bitwise restore)."""

import warnings

import pytest
import torch

import fastmtl
from fastmtl import training
from fastmtl.training import task_autograd
from fastmtl.methods import Context, HydaLearn
from fastmtl.training import backward, hydalearn_lookahead_weights, task_gradients

K = 3


class Net(torch.nn.Module):
    """Trunk + K heads; ``extra`` is a shared parameter only task 0 reaches, ``dead`` one no task reaches."""

    def __init__(self, seed=0, dtype=torch.float64):
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 6), torch.nn.Tanh())
        self.extra = torch.nn.Parameter(torch.randn(6))
        self.dead = torch.nn.Parameter(torch.randn(3))
        self.heads = torch.nn.ModuleList([torch.nn.Linear(6, 1) for _ in range(K)])
        self.to(dtype)

    def shared(self):
        return list(self.trunk.parameters()) + [self.extra, self.dead]

    def losses(self, x, y):
        h = self.trunk(x)
        out = []
        for k in range(K):
            hk = h * self.extra if k == 0 else h
            out.append(((self.heads[k](hk).squeeze(-1) - y[:, k]) ** 2).mean())
        return out


def data(seed=1, n=12):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(n, K, generator=g, dtype=torch.float64)


def zero(net):
    for p in net.parameters():
        p.grad = None


def manual_shared(net, x, y, method, **kw):
    grads = [torch.autograd.grad(l, net.shared(), retain_graph=True, allow_unused=True) for l in net.losses(x, y)]
    return fastmtl.combine(grads, method, generator=torch.Generator().manual_seed(0), return_info=True, **kw)


@pytest.mark.parametrize("method", ["mean", "sum", "pcgrad", "cagrad", "mgda", "hydalearn", "upgrad", "imtl_g"])
@pytest.mark.parametrize("batched", [False, True])
def test_backward_matches_manual(method, batched):
    net = Net()
    x, y = data()
    zero(net)
    info = backward(net.losses(x, y), net.shared(), method, head_params=net.heads, batched=batched,
                    generator=torch.Generator().manual_seed(0))
    d, ref = manual_shared(net, x, y, method)
    for p, dp in zip(net.shared(), d):
        if dp is None:
            assert p.grad is None  # `dead`: no task reaches it, .grad untouched
        else:
            torch.testing.assert_close(p.grad, dp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(info.weights, ref.weights, rtol=1e-10, atol=1e-12)

    # Heads: λ-weighted losses for weighting methods, plain task gradients for surgery methods.
    lam = info.weights if training.head_weighting(method) == "weighted" else torch.ones(K, dtype=torch.float64)
    losses = net.losses(x, y)
    expect = torch.autograd.grad(sum(lam[k] * losses[k] for k in range(K)), list(net.heads.parameters()))
    for p, e in zip(net.heads.parameters(), expect):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-12)


def test_head_conventions_by_family():
    for m in ["pcgrad", "cagrad", "upgrad", "dualproj", "wpcgrad"]:
        assert training.head_weighting(m) == "sum"
    for m in ["mean", "sum", "mgda", "imtl_g", "aligned_mtl", "hydalearn"]:
        assert training.head_weighting(m) == "weighted"


def test_head_weighting_override():
    net = Net()
    x, y = data()
    zero(net)
    backward(net.losses(x, y), net.shared(), "mean", head_params=net.heads, head_weighting="sum")
    losses = net.losses(x, y)
    expect = torch.autograd.grad(sum(losses), list(net.heads.parameters()))
    for p, e in zip(net.heads.parameters(), expect):
        torch.testing.assert_close(p.grad, e)


def test_backward_accumulates_like_loss_backward():
    net = Net()
    x, y = data()
    zero(net)
    sum(net.losses(x, y)).backward()  # pre-existing gradients everywhere
    before = {id(p): p.grad.clone() for p in net.parameters() if p.grad is not None}
    buffers = {id(p): p.grad for p in net.parameters() if p.grad is not None}
    backward(net.losses(x, y), net.shared(), "mgda", head_params=net.heads)
    d, info = manual_shared(net, x, y, "mgda")
    for p, dp in zip(net.shared(), d):
        if dp is None:
            assert p.grad is None
            continue
        torch.testing.assert_close(p.grad, before[id(p)] + dp)
        assert p.grad is buffers[id(p)]  # updated in place
    losses = net.losses(x, y)
    expect = torch.autograd.grad(sum(info.weights[k] * losses[k] for k in range(K)), list(net.heads.parameters()))
    for p, e in zip(net.heads.parameters(), expect):
        torch.testing.assert_close(p.grad, before[id(p)] + e)


def test_unused_parameters_and_task_without_shared_params():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    unused = torch.nn.Parameter(torch.randn(2, dtype=torch.float64))
    head = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    for batched in (False, True, None):
        for p in (a, b, unused, head):
            p.grad = None
        l0 = (a * b).sum()                # reaches a and b
        l1 = (a ** 2).sum()               # reaches a only
        l2 = (head ** 2).sum()            # no shared parameter at all
        info = backward([l0, l1, l2], [a, b, unused], "pcgrad", head_params=[head], batched=batched,
                        generator=torch.Generator().manual_seed(0))
        assert unused.grad is None
        g0 = [b.detach(), a.detach()]
        g1 = [2 * a.detach(), torch.zeros(4, dtype=torch.float64)]
        J = torch.stack([torch.cat(g0), torch.cat(g1), torch.zeros(8, dtype=torch.float64)])
        ref = fastmtl.combine(J, "pcgrad", generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(torch.cat([a.grad, b.grad]), ref)
        torch.testing.assert_close(head.grad, 2 * head.detach())  # PCGrad: plain task gradient
        assert info.weights.shape == (3,)


@pytest.mark.parametrize("method", ["mean", "pcgrad", "cagrad"])
def test_batched_and_looped_task_gradients_agree(method):
    net = Net(dtype=torch.float32)
    x, y = data()
    x, y = x.float(), y.float()
    looped = task_gradients(net.losses(x, y), net.shared(), batched=False)
    batched = task_gradients(net.losses(x, y), net.shared(), batched=True)
    for k in range(K):
        for gl, gb in zip(looped[k], batched[k]):
            if gl is None:
                # the batched call gives zeros for a task that misses a parameter another task reaches
                assert gb is None or not gb.any()
            else:
                torch.testing.assert_close(gl, gb, rtol=1e-6, atol=1e-7)
    dl = fastmtl.combine(looped, method, generator=torch.Generator().manual_seed(0))
    db = fastmtl.combine(batched, method, generator=torch.Generator().manual_seed(0))
    for a, b in zip(dl, db):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_batched_failure_falls_back_to_loop(monkeypatch):
    net = Net()
    x, y = data()

    def boom(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(task_autograd, "_batched_grads", boom)
    monkeypatch.setattr(task_autograd, "_BATCHED_FAILED", set())
    with pytest.warns(RuntimeWarning, match="batched task-gradient call failed"):
        auto = task_gradients(net.losses(x, y), net.shared())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task_gradients(net.losses(x, y), net.shared())  # remembered: no second failure or warning
    looped = task_gradients(net.losses(x, y), net.shared(), batched=False)
    for ra, rl in zip(auto, looped):
        for a, b in zip(ra, rl):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="no batching rule"):
        task_gradients(net.losses(x, y), net.shared(), batched=True)


def test_reference_grad_and_main_task_forwarding():
    net = Net()
    x, y = data()
    xv, yv = data(seed=7)
    v = torch.autograd.grad(net.losses(xv, yv)[1], net.shared(), allow_unused=True)
    zero(net)
    info = backward(net.losses(x, y), net.shared(), "hydalearn", main_task=1, reference_grad=v)
    grads = [torch.autograd.grad(l, net.shared(), retain_graph=True, allow_unused=True) for l in net.losses(x, y)]
    ref_v = [None if all(g[p] is None for g in grads) else v[p] for p in range(len(v))]
    d, ref = fastmtl.combine(grads, "hydalearn", main_task=1, reference=ref_v, return_info=True)
    torch.testing.assert_close(info.weights, ref.weights)
    for p, dp in zip(net.shared(), d):
        if dp is not None:
            torch.testing.assert_close(p.grad, dp)
    # A kept instance: the reference is used for this call only, and main_task must agree.
    m = HydaLearn(main_task=1)
    zero(net)
    info2 = backward(net.losses(x, y), net.shared(), m, main_task=1, reference_grad=v)
    torch.testing.assert_close(info2.weights, ref.weights)
    assert m.reference is None
    with pytest.raises(ValueError, match="main_task"):
        backward(net.losses(x, y), net.shared(), m, main_task=0)


def test_backward_argument_errors():
    net = Net()
    x, y = data()
    with pytest.raises(TypeError, match="no main task"):
        backward(net.losses(x, y), net.shared(), "mean", main_task=0)
    with pytest.raises(TypeError, match="slgrad_step"):
        backward(net.losses(x, y), net.shared(), "slgrad")
    with pytest.raises(TypeError, match="reference"):
        backward(net.losses(x, y), net.shared(), "pcgrad", reference_grad=[None] * 6)
    with pytest.raises(ValueError, match="also a shared"):
        backward(net.losses(x, y), net.shared(), "mean", head_params=[net.extra])
    with pytest.raises(ValueError, match="unknown method"):
        backward(net.losses(x, y), net.shared(), "pcgrd")


def test_return_info_false_skips_info():
    net = Net()
    x, y = data()
    zero(net)
    assert backward(net.losses(x, y), net.shared(), "mean", head_params=net.heads, return_info=False) is None
    d, _ = manual_shared(net, x, y, "mean")
    for p, dp in zip(net.shared(), d):
        if dp is not None:
            torch.testing.assert_close(p.grad, dp)


# ---------------------------------------------------------------------------------------------------
# HydaLearn exact look-ahead


def _state_copy(opt):
    return {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in opt.state.items()}


@pytest.mark.parametrize("opt_name", ["adam", "sgd_momentum"])
def test_lookahead_restores_parameters_grads_and_optimizer_bitwise(opt_name):
    net = Net()
    x, y = data()
    outsider = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))  # in the optimizer, not looked ahead
    params = list(net.parameters())
    opt = (torch.optim.Adam(params + [outsider], lr=1e-2) if opt_name == "adam"
           else torch.optim.SGD(params + [outsider], lr=1e-2, momentum=0.9))
    for _ in range(2):  # real steps so that there is optimizer state to protect
        opt.zero_grad()
        (sum(net.losses(x, y)) + (outsider ** 2).sum()).backward()
        opt.step()
    opt.zero_grad()
    (sum(net.losses(x, y)) + (outsider ** 2).sum()).backward()  # leave some .grad around too
    outsider_before, outsider_grad = outsider.detach().clone(), outsider.grad.clone()
    p_before = [p.detach().clone() for p in params]
    g_before = [None if p.grad is None else p.grad.clone() for p in params]
    s_before = _state_copy(opt)
    ids_before = {id(p): {k: id(v) for k, v in s.items()} for p, s in opt.state.items()}
    groups_before = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]

    grads = task_gradients(net.losses(x, y), params)
    res = hydalearn_lookahead_weights(params, opt, grads, lambda: net.losses(x, y)[0], lr=0.05)

    for p, b in zip(params, p_before):
        assert torch.equal(p, b)
    for p, g in zip(params, g_before):
        assert (p.grad is None) == (g is None)
        if g is not None:
            assert torch.equal(p.grad, g)
    assert _state_keys(opt) == set(s_before)
    for p, s in opt.state.items():
        for k, v in s.items():
            if torch.is_tensor(v):
                assert torch.equal(v, s_before[id(p)][k])
                assert id(v) == ids_before[id(p)][k]  # restored in place
            else:
                assert v == s_before[id(p)][k]
    assert [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups] == groups_before
    assert torch.equal(outsider, outsider_before) and torch.equal(outsider.grad, outsider_grad)
    assert torch.isfinite(res.gains).all()
    # The look-ahead really moved the parameters: some metric changed.
    assert (res.metrics != res.base_metric).any()


def _state_keys(opt):
    return {id(p) for p in opt.state}


def test_lookahead_on_fresh_optimizer_leaves_no_state():
    net = Net()
    x, y = data()
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    grads = task_gradients(net.losses(x, y), params)
    hydalearn_lookahead_weights(params, opt, grads, lambda: net.losses(x, y)[0])
    assert len(opt.state) == 0
    assert all(p.grad is None for p in params)


def test_lookahead_gains_match_manual_sgd_and_hydalearn_rule():
    net = Net()
    x, y = data()
    xv, yv = data(seed=3)
    params = list(net.parameters())
    grads = task_gradients(net.losses(x, y), params)
    lr = 0.1

    def metric():
        return net.losses(xv, yv)[0]

    res = hydalearn_lookahead_weights(params, None, grads, metric, lr=lr)
    base = metric().detach()
    gains = []
    for k in range(K):
        with torch.no_grad():
            moved = [p - lr * g if g is not None else p.clone() for p, g in zip(params, grads[k])]
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, m in zip(params, moved):
                p.copy_(m)
        gains.append(-(metric().detach() - base))  # loss: lower is better
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
    gains = torch.stack(gains).to(torch.float64)
    torch.testing.assert_close(res.gains, gains)
    rule = HydaLearn(main_task=0).weights(torch.zeros(K, K, dtype=torch.float64),
                                          Context(num_tasks=K, device=gains.device, reference_dots=gains))
    torch.testing.assert_close(res.weights, rule)
    assert abs(float(res.weights.sum()) - 1.0) < 1e-12 or float(res.weights.sum()) == 0.0
    # An increasing metric flips the gains.
    res_up = hydalearn_lookahead_weights(params, None, grads, lambda: -metric(), lr=lr, higher_is_better=True)
    torch.testing.assert_close(res_up.gains, gains)


def test_lookahead_fallback_when_no_gain_is_positive():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=torch.float64))
    grads = [[torch.tensor([-1.0, 0.0], dtype=torch.float64)], [torch.tensor([0.0, -1.0], dtype=torch.float64)]]
    res = hydalearn_lookahead_weights([w], None, grads, lambda: (w ** 2).sum(), lr=0.1, main_task=0)
    assert (res.gains < 0).all()
    torch.testing.assert_close(res.weights, torch.tensor([1.0, 0.0], dtype=torch.float64))
    res0 = hydalearn_lookahead_weights([w], None, grads, lambda: (w ** 2).sum(), lr=0.1, fallback="zero")
    assert not res0.weights.any()


@pytest.mark.parametrize("name", sorted(set(fastmtl.METHODS) - {"slgrad"}))
@pytest.mark.parametrize("return_info", [True, False])
def test_every_registered_method_runs_through_backward(name, return_info):
    net = Net()
    x, y = data()
    zero(net)
    m1, m2 = fastmtl.methods.make_method(name, {}), fastmtl.methods.make_method(name, {})
    info = backward(net.losses(x, y), net.shared(), m1, head_params=net.heads, return_info=return_info,
                    generator=torch.Generator().manual_seed(0))
    assert (info is None) != return_info
    losses = net.losses(x, y)
    grads = [torch.autograd.grad(l, net.shared(), retain_graph=True, allow_unused=True) for l in losses]
    d, ref = fastmtl.combine(grads, m2, losses=torch.stack([l.detach() for l in losses]),
                             generator=torch.Generator().manual_seed(0), return_info=True)
    for p, dp in zip(net.shared(), d):
        if dp is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, dp, rtol=1e-10, atol=1e-12)
    if training.head_weighting(m1) == "weighted":
        lam = ref.weights
    else:
        lam = torch.ones(K, dtype=torch.float64)
    expect = torch.autograd.grad(sum(lam[k] * losses[k] for k in range(K)), list(net.heads.parameters()))
    for p, e in zip(net.heads.parameters(), expect):
        torch.testing.assert_close(p.grad, e, rtol=1e-10, atol=1e-12)
