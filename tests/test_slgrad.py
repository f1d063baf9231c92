"""SLGrad: the weight rule, the `combine` form on per-sample gradients, and `slgrad_step`'s
forward-mode dot products against K·B per-sample backward passes."""

import pytest
import torch

import fastmtl
from fastmtl.methods import SLGrad
from fastmtl.training import slgrad_step

K, B = 3, 5


def test_sample_opposing_validation_gradient_gets_zero_weight():
    v = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    J = torch.tensor([[2.0, 1.0, 0.0],     # aligned with v: a = 2
                      [-1.0, 5.0, 0.0],    # opposes v: a = -1 → weight 0
                      [0.5, 0.0, 3.0],     # a = 0.5
                      [0.0, 1.0, 1.0]],    # orthogonal: a = 0 → weight 0
                     dtype=torch.float64)
    d, info = fastmtl.combine(J, method="slgrad", reference=v, num_samples=2, scale="convex", return_info=True)
    W = info.weights
    torch.testing.assert_close(W, torch.tensor([2.0, 0.0, 0.5, 0.0], dtype=torch.float64) / 2.5)
    torch.testing.assert_close(d, J.T @ W)
    assert float(W.sum()) == pytest.approx(1.0)
    # paper_code: the authors' extra 1/B on the weighted loss.
    d2, info2 = fastmtl.combine(J, method="slgrad", reference=v, num_samples=2, return_info=True)
    torch.testing.assert_close(info2.weights, W / 2)
    torch.testing.assert_close(d2, d / 2)
    # An increasing metric flips the sign: now only the opposing sample is kept.
    _, info3 = fastmtl.combine(J, method="slgrad", reference=v, num_samples=2, scale="convex",
                               higher_is_better=True, return_info=True)
    torch.testing.assert_close(info3.weights, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))


def test_all_non_positive_dots_give_zero_weights_and_zero_update():
    v = torch.tensor([1.0, 0.0], dtype=torch.float64)
    J = torch.tensor([[-1.0, 2.0], [0.0, 1.0], [-3.0, 0.0]], dtype=torch.float64)
    d, info = fastmtl.combine(J, method="slgrad", val_grad=v, return_info=True)
    assert not info.weights.any() and not d.any()
    assert torch.isfinite(info.weights).all()


@pytest.mark.parametrize("seed", range(5))
def test_weights_sum_to_one_or_zero(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(K * B, generator=g, dtype=torch.float64) - (1.5 if seed == 4 else 0.0) * 10
    W = SLGrad(num_samples=B, scale="convex").coefficients(a)
    assert (W >= 0).all()
    total = float(W.sum())
    assert total == pytest.approx(1.0) or total == 0.0
    assert (W[a <= 0] == 0).all()


def test_combine_per_parameter_rows_with_missing_entries():
    g = torch.Generator().manual_seed(0)
    N = K * B
    p0 = torch.randn(N, 4, 3, generator=g)
    p1 = torch.randn(N, 7, generator=g)
    rows = [[p0[n], None if n % 4 == 1 else p1[n]] for n in range(N)]
    v = [torch.randn(4, 3, generator=g), torch.randn(7, generator=g)]
    d, info = fastmtl.combine(rows, method="slgrad", reference=v, num_samples=B, return_info=True)
    flat = torch.stack([torch.cat([r[0].reshape(-1), (torch.zeros(7) if r[1] is None else r[1])]) for r in rows])
    vflat = torch.cat([v[0].reshape(-1), v[1]])
    a = flat.double() @ vflat.double()
    W = a.clamp_min(0) / a.clamp_min(0).sum() / B
    torch.testing.assert_close(info.weights, W, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.cat([d[0].reshape(-1), d[1]]), (W.float() @ flat), rtol=1e-5, atol=1e-6)


def test_slgrad_needs_a_reference_and_whole_tasks():
    J = torch.randn(6, 4)
    with pytest.raises(ValueError, match="validation gradient"):
        fastmtl.combine(J, method="slgrad")
    with pytest.raises(ValueError, match="whole number"):
        fastmtl.combine(J, method="slgrad", reference=torch.randn(4), num_samples=4)
    with pytest.raises(ValueError, match="scale"):
        SLGrad(scale="sum")


# ---------------------------------------------------------------------------------------------------
# slgrad_step: one JVP instead of K·B backward passes


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6), torch.nn.Tanh())
        self.heads = torch.nn.ModuleList([torch.nn.Linear(6, 1) for _ in range(K)])
        self.double()

    def per_sample(self, h, y):
        return torch.stack([(self.heads[k](h).squeeze(-1) - y[:, k]) ** 2 for k in range(K)])  # [K, B]


def batch(seed, n=B):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, K, generator=g, dtype=torch.float64)


def per_sample_reference(net, x, y, v):
    """K·B separate backward passes: the authors' algorithm, as the oracle."""
    shared = list(net.trunk.parameters())
    a = torch.zeros(K, B, dtype=torch.float64)
    grads = {}
    for t in range(K):
        for e in range(B):
            l = net.per_sample(net.trunk(x), y)[t, e]
            g = torch.autograd.grad(l, list(net.parameters()), allow_unused=True)
            grads[(t, e)] = g
            a[t, e] = sum((gi * vi).sum() for gi, vi in zip(g[:len(shared)], v))
    return a, grads


@pytest.mark.parametrize("scale", ["paper_code", "convex"])
@pytest.mark.parametrize("as_module", [False, True])
def test_slgrad_step_matches_per_sample_backward_passes(scale, as_module):
    net = Net()
    x, y = batch(1)
    xv, yv = batch(2, n=7)
    shared = list(net.trunk.parameters())
    names = [n for n, _ in net.trunk.named_parameters()]

    def val_loss():
        return net.per_sample(net.trunk(xv), yv)[0].mean()

    v = torch.autograd.grad(val_loss(), shared)
    a_ref, grads = per_sample_reference(net, x, y, v)

    for p in net.parameters():
        p.grad = None
    if as_module:
        model_fn, inputs = net.trunk, (x,)
    else:
        def model_fn(tensors):
            return torch.func.functional_call(net.trunk, dict(zip(names, tensors)), (x,))
        inputs = ()
    info = slgrad_step(model_fn, lambda h: net.per_sample(h, y), val_loss, shared, inputs=inputs, scale=scale)

    torch.testing.assert_close(info.dots, a_ref, rtol=1e-10, atol=1e-12)       # JVP dots == per-sample dots
    W = a_ref.clamp_min(0) / a_ref.clamp_min(0).sum()
    torch.testing.assert_close(info.weights, W, rtol=1e-10, atol=1e-12)
    c = W / B if scale == "paper_code" else W
    for i, p in enumerate(net.parameters()):
        expect = sum(c[t, e] * (grads[(t, e)][i] if grads[(t, e)][i] is not None else 0)
                     for t in range(K) for e in range(B))
        torch.testing.assert_close(p.grad, expect, rtol=1e-10, atol=1e-12)


def test_slgrad_step_agrees_with_combine_on_per_sample_gradients():
    net = Net()
    x, y = batch(3)
    shared = list(net.trunk.parameters())
    v = [torch.randn_like(p) for p in shared]
    _, grads = per_sample_reference(net, x, y, v)
    rows = [list(grads[(t, e)][:len(shared)]) for t in range(K) for e in range(B)]
    d = fastmtl.combine(rows, method="slgrad", reference=v, num_samples=B)
    for p in net.parameters():
        p.grad = None
    slgrad_step(net.trunk, lambda h: net.per_sample(h, y), None, shared, inputs=(x,), val_grad=v)
    for p, dp in zip(shared, d):
        torch.testing.assert_close(p.grad, dp, rtol=1e-10, atol=1e-12)


def test_slgrad_step_zero_weights_when_everything_opposes():
    net = Net()
    x, y = batch(4)
    shared = list(net.trunk.parameters())
    for p in net.parameters():
        p.grad = None
    info0 = slgrad_step(net.trunk, lambda h: net.per_sample(h, y), None, shared, inputs=(x,),
                        val_grad=[torch.zeros_like(p) for p in shared])
    assert not info0.weights.any()
    assert all(not p.grad.any() for p in net.parameters() if p.grad is not None)
