"""`fastmtl.combine`: structures, info, method selection, hyper-parameter validation."""

import pytest
import torch

import fastmtl
from fastmtl.methods import METHODS, Context, PCGrad, WeightedPCGrad
from _families import make_jacobian, split_params

GRAM_METHODS = ["pcgrad", "cagrad", "mgda", "imtl_g", "upgrad", "dualproj", "aligned_mtl", "hydalearn", "wpcgrad"]
ALL_METHODS = ["mean", "sum"] + GRAM_METHODS


def test_every_listed_method_is_registered():
    assert set(ALL_METHODS) <= set(METHODS)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_direction_is_weighted_sum_and_info(method):
    J = make_jacobian("conflict", 5, 40, seed=2)
    losses = torch.rand(5, dtype=torch.float64) + 0.5
    d, info = fastmtl.combine(J, method=method, losses=losses, generator=torch.Generator().manual_seed(0),
                              return_info=True)
    assert d.shape == (40,) and d.dtype == J.dtype
    torch.testing.assert_close(d, J.T @ info.weights.to(J.dtype))
    torch.testing.assert_close(info.gram, J @ J.T)
    n = J.norm(dim=1)
    torch.testing.assert_close(info.cosine, (J @ J.T) / (n[:, None] * n[None, :]))
    assert torch.isfinite(info.weights).all()


@pytest.mark.parametrize("method", ALL_METHODS)
def test_losses_accepted_by_every_method(method):
    J = make_jacobian("gauss", 3, 16, seed=1)
    fastmtl.combine(J, method=method, losses=[1.0, 2.0, 3.0], generator=torch.Generator().manual_seed(0))
    fastmtl.combine(J, method=method, losses=torch.tensor([1.0, 2.0, 3.0]),
                    generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_layouts_agree(method):
    sizes = [(3, 4), (5,), (1,), (7, 2)]
    D = 12 + 5 + 1 + 14
    J = make_jacobian("conflict", 4, D, seed=5)
    kw = dict(losses=torch.tensor([1.0, 0.5, 2.0, 1.5]))
    ref = fastmtl.combine(J, method=method, generator=torch.Generator().manual_seed(3), **kw)
    vec = fastmtl.combine(list(J), method=method, generator=torch.Generator().manual_seed(3), **kw)
    par = fastmtl.combine(split_params(J, sizes), method=method, generator=torch.Generator().manual_seed(3), **kw)
    torch.testing.assert_close(vec, ref)
    assert [t.shape for t in par] == [torch.Size(s) for s in sizes]
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in par]), ref)


def test_out_into_grad_and_return_identity():
    model = torch.nn.Linear(3, 2)
    grads = [[torch.randn(2, 3), torch.randn(2)] for _ in range(3)]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    bufs = [model.weight.grad, model.bias.grad]
    d = fastmtl.combine(grads, method="upgrad", out=bufs)
    assert d[0] is bufs[0] and d[1] is bufs[1]
    expected = fastmtl.combine(grads, method="upgrad")
    torch.testing.assert_close(model.weight.grad, expected[0])


def test_method_instance_and_hyperparameters():
    J = make_jacobian("conflict", 3, 20, seed=0)
    m = PCGrad(shuffle=False)
    d1 = fastmtl.combine(J, method=m)
    d2 = fastmtl.combine(J, method="pcgrad", shuffle=False)
    torch.testing.assert_close(d1, d2)
    with pytest.raises(TypeError, match="instance"):
        fastmtl.combine(J, method=m, shuffle=True)
    with pytest.raises(TypeError, match="bad hyper-parameters for method 'cagrad'"):
        fastmtl.combine(J, method="cagrad", alpha=0.3)


def test_unknown_method_suggests():
    with pytest.raises(ValueError, match="did you mean 'pcgrad'"):
        fastmtl.combine(torch.randn(2, 3), method="pcgard")
    with pytest.raises(ValueError, match="did you mean 'upgrad'"):
        fastmtl.combine(torch.randn(2, 3), method="UPGRAD_")


@pytest.mark.parametrize("method, hp, words", [
    ("cagrad", {"c": -0.1}, "c must be"),
    ("cagrad", {"rescale": 3}, "rescale"),
    ("cagrad", {"c": float("inf")}, "c must be finite"),
    ("pcgrad", {"reduction": "max"}, "reduction"),
    ("mgda", {"normalization": "l1"}, "normalization"),
    ("wpcgrad", {"gamma": -1.0}, "gamma"),
    ("wpcgrad", {"priorities": [1.0, -1.0]}, "priorities"),
    ("upgrad", {"pref": [1.0, float("nan")]}, "pref"),
    ("hydalearn", {"normalize": "max"}, "normalize"),
    ("aligned_mtl", {"scale_mode": "max"}, "scale_mode"),
])
def test_bad_hyperparameters(method, hp, words):
    with pytest.raises(ValueError, match=words):
        fastmtl.combine(torch.randn(2, 3), method=method, **hp)


def test_hydalearn_main_task_out_of_range():
    with pytest.raises(ValueError, match="main_task=3 is out of range for K=2"):
        fastmtl.combine(torch.randn(2, 3), method="hydalearn", main_task=3)


def test_hydalearn_reference_gradient_uses_augmented_gram():
    J = make_jacobian("gauss", 4, 30, seed=9)
    v = torch.randn(30, dtype=torch.float64)
    d, info = fastmtl.combine(J, method="hydalearn", reference=v, return_info=True)
    delta = (J @ v).clamp_min(0)
    if delta.sum() > 0:
        torch.testing.assert_close(info.weights, delta / delta.sum())
    torch.testing.assert_close(info.gram, J @ J.T)
    # Per-parameter layout with a per-parameter reference.
    sizes = [(10,), (20,)]
    params = split_params(J, sizes)
    ref = [v[:10].clone(), v[10:].clone()]
    d2 = fastmtl.combine(params, method="hydalearn", reference=ref)
    torch.testing.assert_close(torch.cat(d2), d)
    with pytest.raises(ValueError, match="reference"):
        fastmtl.combine(J, method="hydalearn", reference=torch.randn(29, dtype=torch.float64))


def test_hydalearn_harmful_auxiliary_gets_zero_weight():
    main = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    helpful = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    harmful = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    _, info = fastmtl.combine(torch.stack([main, helpful, harmful]), method="hydalearn", return_info=True)
    torch.testing.assert_close(info.weights, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    _, info = fastmtl.combine(torch.stack([main, helpful, harmful]), method="hydalearn", normalize="main",
                              return_info=True)
    torch.testing.assert_close(info.weights, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    # No positive gain at all (zero main gradient): the fallback trains the main task alone.
    J = torch.stack([torch.zeros(3, dtype=torch.float64), helpful, harmful])
    _, info = fastmtl.combine(J, method="hydalearn", return_info=True)
    torch.testing.assert_close(info.weights, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    _, info = fastmtl.combine(J, method="hydalearn", fallback="zero", return_info=True)
    assert (info.weights == 0).all()


def test_wpcgrad_dynamic_priorities_from_previous_epoch():
    J = make_jacobian("conflict", 3, 12, seed=4)
    m = WeightedPCGrad(gamma=2.0)
    losses = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(m.task_priorities(3, losses, "cpu"), losses ** 2)
    fastmtl.combine(J, method=m, losses=losses)
    fastmtl.combine(J, method=m, losses=losses * 3)
    m.end_epoch()
    torch.testing.assert_close(m.task_priorities(3, None, "cpu"), (losses * 2) ** 2)
    with pytest.raises(ValueError, match="saw 3 tasks before, now 2"):
        fastmtl.combine(J[:2], method=m)


def test_wpcgrad_two_tasks_keeps_the_sampled_task():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    J = torch.stack([g1, g2])
    keep1 = g1 + (g2 - (g2 @ g1) / (g1 @ g1) * g1)
    keep2 = g2 + (g1 - (g1 @ g2) / (g2 @ g2) * g2)
    gen = torch.Generator().manual_seed(0)
    hits = 0
    n = 400
    for _ in range(n):
        d = fastmtl.combine(J, method="wpcgrad", priorities=[0.8, 0.2], generator=gen)
        if torch.allclose(d, keep1, atol=1e-6):
            hits += 1
        else:
            torch.testing.assert_close(d, keep2, atol=1e-6, rtol=0)
    assert 0.72 * n < hits < 0.88 * n  # P(task 1 first) = 0.8


def test_generator_reproducibility():
    J = make_jacobian("conflict", 6, 30, seed=7)
    a = fastmtl.combine(J, method="pcgrad", generator=torch.Generator().manual_seed(11))
    b = fastmtl.combine(J, method="pcgrad", generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_inputs(method, dtype):
    J = make_jacobian("conflict", 4, 300, seed=8)
    d64 = fastmtl.combine(J, method=method, generator=torch.Generator().manual_seed(1), losses=[1.0, 2, 3, 4])
    d = fastmtl.combine(J.to(dtype), method=method, generator=torch.Generator().manual_seed(1), losses=[1.0, 2, 3, 4])
    assert d.dtype == dtype and torch.isfinite(d).all()
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    assert (d.double() - d64).norm() <= tol * max(d64.norm().item(), J.norm(dim=1).mean().item())


@pytest.mark.parametrize("method", ["mean", "sum", "rlw", "gemtl", "dwa", "famo", "uw"])
def test_loss_only_weights_are_built_on_the_gradients_device(method):
    # No Gram is formed for these methods; λ must still live where the gradients are.
    J = torch.randn(3, 4, device="meta")
    m = fastmtl.methods.make_method(method, {})
    losses = None if method in ("mean", "sum", "rlw", "uw") else torch.ones(3, device="meta")
    lam = m.weights(None, Context(num_tasks=3, device=J.device, losses=losses))
    assert lam.device.type == "meta" and lam.shape == (3,)


@pytest.mark.parametrize("method", ALL_METHODS + ["nash_mtl", "config", "olaux", "gradnorm", "gemtl", "uw", "dwa",
                                                  "famo", "rlw", "gradvac"])
def test_uses_generator_flag_is_honest(method):
    # Sharded combine shares rank 0's generator only for methods that declare they draw; a method
    # that says it does not must give the same λ whatever the generator.
    J = make_jacobian("conflict", 4, 30, seed=3)
    losses = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    m = fastmtl.methods.make_method(method, {})
    if m.uses_generator:
        pytest.skip("declares that it draws random numbers")
    _, a = fastmtl.combine(J, method=method, losses=losses, generator=torch.Generator().manual_seed(1),
                           return_info=True)
    _, b = fastmtl.combine(J, method=method, losses=losses, generator=torch.Generator().manual_seed(2),
                           return_info=True)
    torch.testing.assert_close(a.weights, b.weights, rtol=0, atol=0)


def test_weights_with_the_earlier_keyword_arguments_still_work_and_warn():
    G = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    m = fastmtl.methods.make_method("mgda", {})
    new = m.weights(G, Context(num_tasks=2, device=G.device))
    with pytest.warns(DeprecationWarning, match="pass a fastmtl.methods.Context"):
        old = m.weights(G, losses=None, generator=None)
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        m.weights(G, loses=None)
