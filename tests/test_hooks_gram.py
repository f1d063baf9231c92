"""Gram matrices from module hooks (``fastmtl.hooks``) against materialised task gradients.

Every case builds a small model, records one forward pass with :class:`GramHooks`, and compares
the hooks' K×K task Gram (both per-layer ways: ghost products and the layer's K gradients), the
per-(task, sample) Gramian and the dot products with a reference vector against the same
quantities formed from gradients that ``torch.autograd.grad`` materialises one loss at a time.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fastmtl.hooks import GramHooks, LayerShape, layer_cost, sample_dots, sample_gramian, step_cost, task_gramian

F64 = torch.float64
WAYS = ["ghost", "materialize", "auto"]


def flat_grads(loss, params):
    g = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(g, params)])


def task_gram_oracle(losses, params):
    J = torch.stack([flat_grads(l, params) if l.requires_grad else torch.zeros(sum(p.numel() for p in params),
                                                                               dtype=F64) for l in losses])
    return J @ J.T


def sample_rows_oracle(L, params):
    return torch.stack([flat_grads(L[k, b], params) for k in range(L.shape[0]) for b in range(L.shape[1])])


def quiet_hooks(*modules, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return GramHooks(*modules, **kw)


def per_sample(out, K):
    """[K, B] per-sample losses from a [B, ...] output: task k reads a different mix of the features."""
    B = out.shape[0]
    f = out.reshape(B, -1)
    w = torch.linspace(-1, 1, f.shape[1], dtype=f.dtype)
    return torch.stack([((f * w.roll(k)).sum(1) + 0.3 * k) ** 2 / f.shape[1] for k in range(K)])


def check(model, x, K, way, *, rtol=1e-10):
    torch.manual_seed(1)
    hooks = quiet_hooks(model, layer_gram=way)
    params = hooks.params
    L = per_sample(model(x), K)
    losses = L.mean(1)
    hg = task_gramian(losses, hooks)
    assert not hg.gram.requires_grad  # a statistic: no graph through the activations
    G = task_gram_oracle(losses, params)
    scale = G.abs().max()
    assert (hg.gram - G).abs().max() <= rtol * scale, (hg.gram, G)
    S = sample_gramian(L, hooks)
    R = sample_rows_oracle(L, params)
    assert (S - R @ R.T).abs().max() <= rtol * (R @ R.T).abs().max()
    v = [torch.randn_like(p) for p in params]
    d = sample_dots(L, hooks, v)
    expected = R @ torch.cat([t.reshape(-1) for t in v])
    assert (d.reshape(-1) - expected).abs().max() <= rtol * expected.abs().max()
    hooks.remove()
    return hg


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_mlp(way, bias):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7, bias=bias), nn.Tanh(), nn.Linear(7, 6, bias=bias), nn.ReLU()).to(F64)
    hg = check(model, torch.randn(4, 5, dtype=F64), 3, way)
    if way != "auto":
        assert set(hg.layers.values()) == {way}


@pytest.mark.parametrize("way", WAYS)
def test_linear_on_sequences(way):
    torch.manual_seed(0)  # [B, T, d]: the middle dimension adds rows per sample
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)).to(F64)
    check(model, torch.randn(3, 5, 4, dtype=F64), 2, way)


CONVS = {
    "stride-pad": dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1),
    "groups-dilation": dict(in_channels=4, out_channels=6, kernel_size=(3, 2), dilation=(2, 1), groups=2, padding=(2, 0)),
    "depthwise-nobias": dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, bias=False),
    "same": dict(in_channels=4, out_channels=3, kernel_size=(4, 3), padding="same", dilation=(1, 2)),
    "reflect": dict(in_channels=4, out_channels=3, kernel_size=3, padding=1, padding_mode="reflect"),
    "circular-stride": dict(in_channels=4, out_channels=5, kernel_size=3, padding=2, stride=(2, 1),
                            padding_mode="circular"),
}


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("conv", list(CONVS))
def test_conv2d(conv, way):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(**CONVS[conv]), nn.Tanh(), nn.Flatten()).to(F64)
    check(model, torch.randn(3, 4, 7, 6, dtype=F64), 3, way)


def test_conv_then_linear_and_unbatched_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 2, stride=2), nn.Flatten(0),
                          nn.Linear(2 * 3 * 3, 4)).to(F64)
    x = torch.randn(2, 6, 6, dtype=F64)  # unbatched [C, H, W]
    hooks = quiet_hooks(model)
    out = model(x)
    losses = torch.stack([(out * (k + 1)).sin().sum() for k in range(3)])
    assert (task_gramian(losses, hooks).gram - task_gram_oracle(losses, hooks.params)).abs().max() < 1e-10


@pytest.mark.parametrize("way", ["ghost", "materialize"])
def test_layer_called_twice_in_one_forward(way):
    torch.manual_seed(0)
    lin = nn.Linear(4, 4).to(F64)
    conv = nn.Conv2d(2, 2, 3, padding=1).to(F64)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.conv = lin, conv

        def forward(self, x, img):
            h = torch.tanh(self.lin(torch.tanh(self.lin(x))))  # same weight, two calls
            c = self.conv(torch.relu(self.conv(img)))
            return torch.cat([h, c.flatten(1)], 1)

    model = Twice()
    check_two = quiet_hooks(model, layer_gram=way)
    x, img = torch.randn(3, 4, dtype=F64), torch.randn(3, 2, 4, 4, dtype=F64)
    L = per_sample(model(x, img), 3)
    assert len(check_two.records) == 4
    G = task_gram_oracle(L.mean(1), check_two.params)
    assert (task_gramian(L.mean(1), check_two).gram - G).abs().max() < 1e-10 * G.abs().max()
    R = sample_rows_oracle(L, check_two.params)
    assert (sample_gramian(L, check_two) - R @ R.T).abs().max() < 1e-10 * (R @ R.T).abs().max()


def test_weight_tied_between_two_layers():
    torch.manual_seed(0)
    a, b = nn.Linear(5, 5).to(F64), nn.Linear(5, 5).to(F64)
    b.weight = a.weight  # tied weight, separate biases
    model = nn.Sequential(a, nn.Tanh(), b)
    hooks = quiet_hooks(model)
    assert len(hooks.params) == 3 and not hooks.fallback_params
    L = per_sample(model(torch.randn(4, 5, dtype=F64)), 2)
    G = task_gram_oracle(L.mean(1), hooks.params)
    assert (task_gramian(L.mean(1), hooks).gram - G).abs().max() < 1e-10 * G.abs().max()


def test_parameters_no_task_touches_and_tasks_without_grad():
    torch.manual_seed(0)
    used, unused, partial = nn.Linear(4, 6).to(F64), nn.Linear(4, 3).to(F64), nn.Linear(6, 2).to(F64)
    model = nn.ModuleDict({"used": used, "unused": unused, "partial": partial})
    hooks = quiet_hooks(model)
    x = torch.randn(5, 4, dtype=F64)
    h = torch.tanh(used(x))
    unused(x)  # recorded, off the losses' path
    p = partial(h)
    losses = [h.pow(2).mean(), (p.sum(1) * h[:, 0]).mean(), torch.tensor(0.7, dtype=F64)]  # task 2: no grad
    hg = task_gramian(losses, hooks)
    G = task_gram_oracle(losses, hooks.params)
    assert (hg.gram - G).abs().max() < 1e-10 * G.abs().max()
    assert torch.all(hg.gram[2] == 0) and torch.all(hg.gram[:, 2] == 0)
    assert "unused.weight" not in hg.layers and "partial.weight" in hg.layers


def test_fallback_parameters_warn_once_and_are_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 5)).to(F64)
    model.scale = nn.Parameter(torch.tensor(1.3, dtype=F64))  # a parameter of no layer: never called by hooks
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hooks = GramHooks(model)
    messages = [str(w.message) for w in caught if "materialised" in str(w.message)]
    assert len(messages) == 1 and "1.weight" in messages[0] and "scale" in messages[0]
    assert {id(p) for p in hooks.fallback_params} == {id(model[1].weight), id(model[1].bias), id(model.scale)}
    x = torch.randn(3, 4, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing more is said at Gram time
        L = per_sample(model(x) * model.scale, 3)
        G = task_gram_oracle(L.mean(1), hooks.params)
        assert (task_gramian(L.mean(1), hooks).gram - G).abs().max() < 1e-10 * G.abs().max()
        R = sample_rows_oracle(L, hooks.params)
        assert (sample_gramian(L, hooks) - R @ R.T).abs().max() < 1e-10 * (R @ R.T).abs().max()


def test_mixed_precision_autocast_bf16():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
    hooks = GramHooks(model)
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    losses = torch.stack([(out.float()[:, k::4] ** 2).mean() for k in range(4)])
    hg = task_gramian(losses, hooks)
    assert hg.gram.dtype == torch.float32
    G = task_gram_oracle(losses, hooks.params).to(torch.float32)  # the bf16 model's own fp32 gradients
    # The ghost products read the bf16 output gradients and the fp32 inputs, while autograd's weight
    # gradients multiply bf16 operands: the two differ by bf16 rounding (~2^-8 relative).
    assert (hg.gram - G).abs().max() <= 2e-2 * G.abs().max()


def test_float32_matches_float64_oracle():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, groups=1, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    hooks = GramHooks(model)
    x = torch.randn(4, 3, 4, 4)
    L = per_sample(model(x), 3)
    G32 = task_gramian(L.mean(1), hooks).gram
    model64 = model.to(F64)
    hooks.clear()
    L64 = per_sample(model64(x.to(F64)), 3)
    G64 = task_gram_oracle(L64.mean(1), list(model64.parameters()))
    assert (G32.double() - G64).abs().max() < 1e-5 * G64.abs().max()


# -- errors --------------------------------------------------------------------------------------


def test_use_outside_the_layer_forward_raises():
    torch.manual_seed(0)
    lin = nn.Linear(3, 3).to(F64)
    hooks = GramHooks(lin)
    x = torch.randn(2, 3, dtype=F64)
    loss = lin(x).sum() + (x @ lin.weight.T).sum()  # the second use bypasses the layer
    with pytest.raises(ValueError, match="weight is used outside a recorded forward call"):
        task_gramian([loss, loss * 2], hooks)
    hooks.clear()
    penalty = lin(x).sum() + 1e-3 * lin.weight.pow(2).sum()  # a penalty term: same problem
    with pytest.raises(ValueError, match="outside a recorded forward call"):
        task_gramian([penalty, penalty], hooks)


def test_input_modified_in_place_raises():
    lin = nn.Linear(3, 2).to(F64)
    hooks = GramHooks(lin)
    x = torch.randn(4, 3, dtype=F64)
    out = lin(x)
    x.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place"):
        task_gramian([out.sum(), out.pow(2).sum()], hooks)


def test_per_sample_refuses_batchnorm_in_training_mode():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(F64)
    hooks = quiet_hooks(model)
    L = per_sample(model(torch.randn(5, 3, dtype=F64)), 2)
    with pytest.raises(ValueError, match="BatchNorm"):
        sample_gramian(L, hooks)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one module"):
        GramHooks()
    with pytest.raises(TypeError, match="nn.Module"):
        GramHooks(torch.zeros(2))
    with pytest.raises(ValueError, match="layer_gram"):
        GramHooks(nn.Linear(2, 2), layer_gram="fast")
    with pytest.raises(ValueError, match="no parameter"):
        GramHooks(nn.ReLU())
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="GramHooks"):
        task_gramian([lin(torch.ones(1, 2)).sum()], lin)  # no hooks registered on it
    hooks = GramHooks(lin)
    out = lin(torch.ones(3, 2))
    with pytest.raises(ValueError, match="entries"):
        task_gramian([out.sum()], hooks, reference=[torch.zeros(2, 2)])
    with pytest.raises(ValueError, match=r"\[K, B\]"):
        sample_gramian(out.sum(1), hooks)


def test_no_grad_and_paused_forwards_record_nothing():
    lin = nn.Linear(2, 2)
    hooks = GramHooks(lin)
    with torch.no_grad():
        lin(torch.ones(1, 2))
    with hooks.paused():
        lin(torch.ones(1, 2))
    assert hooks.records == []
    lin(torch.ones(1, 2))
    assert len(hooks.records) == 1
    hooks.remove()
    lin(torch.ones(1, 2))
    assert hooks.records == []


# -- the cost model ------------------------------------------------------------------------------


def test_cost_model_picks_ghost_for_wide_layers_and_materialize_for_many_rows():
    wide = LayerShape("fc", groups=1, samples=64, rows_per_sample=1, d_in=1024, d_out=1024)
    assert layer_cost(wide, 8).choice == "ghost"
    conv = LayerShape("conv", groups=1, samples=64, rows_per_sample=32 * 32, d_in=3 * 9, d_out=16)
    assert layer_cost(conv, 8).choice == "materialize"
    mlp = step_cost([wide] * 4, 8)
    assert mlp.choice == "hooks" and mlp.hooks_elements * 4 < mlp.materialize_elements
    assert step_cost([conv], 8).choice == "materialize"


def test_auto_way_matches_the_cost_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 64, 64)).to(F64)
    hg = check(model, torch.randn(2, 1, 8, 8, dtype=F64), 2, "auto")
    assert hg.layers == {"0.weight": "materialize", "2.weight": "ghost"}


def test_forward_before_the_hooks_existed_raises_instead_of_a_zero_gram():
    lin = nn.Linear(3, 2).to(F64)
    out = lin(torch.randn(4, 3, dtype=F64))
    hooks = GramHooks(lin)
    with pytest.raises(ValueError, match="did not record"):
        task_gramian([out.sum(), out.pow(2).sum()], hooks)


def test_the_registry_does_not_keep_modules_alive():
    import gc
    import weakref

    lin = nn.Linear(2, 2)
    GramHooks(lin)
    ref = weakref.ref(lin)
    del lin
    gc.collect()
    assert ref() is None
