"""fastmtl.integrations.libmtl: fastmtl methods as LibMTL weighting classes.

LibMTL's own Trainer cannot run here (see tests/_libmtl_standin.py); the weighting class is driven
through a stand-in that reproduces the interface LibMTL gives a weighting class, and compared with
LibMTL's formulas (equal weighting, UPGrad = TorchJD's, MGDA's two-task closed form, DWA).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import _libmtl_standin as L
from fastmtl.integrations.libmtl import LibMTLWeighting, weighting

TASKS = ["depth", "seg", "normal"]


def problem(seed=0, K=3, B=16, n_batches=4):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n_batches, B, 6, generator=g)
    W = torch.randn(K, 6, generator=g)
    sign = [1.0, -1.0, 1.0, -1.0][:K]
    batches = [(X[b], {t: sign[k] * torch.tanh(X[b] @ W[k]) for k, t in enumerate(TASKS[:K])})
               for b in range(n_batches)]

    def encoder_class():
        return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())

    decoders = nn.ModuleDict({t: nn.Linear(8, 1) for t in TASKS[:K]})
    return batches, encoder_class, decoders


def build(weighting_cls, seed=0, rep_grad=False, K=3):
    torch.manual_seed(seed)                              # decoders and encoder initialised alike
    batches, enc, dec = problem(seed, K)
    return L.build_model(weighting_cls, enc, dec, rep_grad=rep_grad), batches


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_sum_trains_exactly_like_libmtl_equal_weighting():
    ours, batches = build(weighting("sum"))
    ref, _ = build(L.EW)
    assert [p.shape for p in params(ours)] == [p.shape for p in params(ref)]
    w_ours, _ = L.train(ours, batches, epochs=2)
    w_ref, _ = L.train(ref, batches, epochs=2)
    np.testing.assert_array_equal(w_ours, w_ref)
    for a, b in zip(params(ours), params(ref)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def _task_grads(model, batch):
    x, y = batch
    preds = model(x)
    losses = [((preds[t].squeeze(-1) - y[t]) ** 2).mean() for t in model.task_name]
    shared = list(model.get_share_params())
    heads = [p for t in model.task_name for p in model.decoders[t].parameters()]
    J = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(l, shared, retain_graph=True)])
                     for l in losses])
    head_grads = torch.autograd.grad(sum(losses), heads)
    return J, head_grads, shared, heads


def test_upgrad_step_matches_libmtl_upgrad_formula():
    A = pytest.importorskip("torchjd.aggregation")    # LibMTL's UPGrad is TorchJD's formula
    model, batches = build(weighting("upgrad"))
    oracle = copy.deepcopy(model)
    J, head_grads, shared_o, heads_o = _task_grads(oracle, batches[0])
    lam = A.UPGradWeighting()((J @ J.T).double())

    x, y = batches[0]
    preds = model(x)
    losses = torch.zeros(3)
    for tn, t in enumerate(model.task_name):
        losses[tn] = ((preds[t].squeeze(-1) - y[t]) ** 2).mean()
    model.zero_grad(set_to_none=False)
    w = model.backward(losses)
    np.testing.assert_allclose(w, lam.numpy(), rtol=1e-5, atol=1e-7)
    d = torch.cat([p.grad.reshape(-1) for p in model.get_share_params()])
    torch.testing.assert_close(d, lam.float() @ J, rtol=1e-5, atol=1e-6)
    heads = [p for t in model.task_name for p in model.decoders[t].parameters()]
    for p, g in zip(heads, head_grads):                # UPGrad: plain per-task head gradients
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=1e-7)


def test_rep_grad_mgda_two_tasks_closed_form():
    model, batches = build(weighting("mgda"), rep_grad=True, K=2)
    oracle = copy.deepcopy(model)
    oracle.rep_grad = False
    x, y = batches[1]
    rep = oracle.encoder(x)
    losses_o = [((oracle.decoders[t](rep).squeeze(-1) - y[t]) ** 2).mean() for t in oracle.task_name]
    g1, g2 = (torch.autograd.grad(l, rep, retain_graph=True)[0].reshape(-1).double() for l in losses_o)
    # MGDA-UB with two tasks: λ₁ = clip(⟨g₂ − g₁, g₂⟩ / ‖g₁ − g₂‖², 0, 1), λ₂ = 1 − λ₁.
    lam1 = float(((g2 - g1) @ g2) / ((g1 - g2) @ (g1 - g2)))
    lam = torch.tensor([min(max(lam1, 0.0), 1.0), 1 - min(max(lam1, 0.0), 1.0)], dtype=torch.float64)
    d_rep = (lam[0] * g1 + lam[1] * g2).float().reshape(rep.shape)
    enc_expected = torch.autograd.grad(rep, list(oracle.encoder.parameters()), d_rep, retain_graph=True)
    heads_o = [p for t in oracle.task_name for p in oracle.decoders[t].parameters()]
    head_expected = torch.autograd.grad(sum(float(lam[k]) * l for k, l in enumerate(losses_o)), heads_o)

    preds = model(x)
    losses = torch.zeros(2)
    for tn, t in enumerate(model.task_name):
        losses[tn] = ((preds[t].squeeze(-1) - y[t]) ** 2).mean()
    model.zero_grad(set_to_none=False)
    w = model.backward(losses)
    np.testing.assert_allclose(w, lam.numpy(), rtol=1e-5, atol=1e-7)
    for p, g in zip(model.encoder.parameters(), enc_expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    heads = [p for t in model.task_name for p in model.decoders[t].parameters()]
    for p, g in zip(heads, head_expected):             # MGDA is a loss weighting: heads get Σ λ_k ℓ_k
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)


def test_rep_grad_mean_is_the_mean_loss_gradient():
    model, batches = build(weighting("mean"), rep_grad=True)
    ref, _ = build(weighting("mean"), rep_grad=False)
    L.train(model, batches, epochs=1)
    L.train(ref, batches, epochs=1)
    for a, b in zip(params(model), params(ref)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dwa_epochs_follow_the_trainer():
    model, batches = build(weighting("dwa"))
    w, seen = L.train(model, batches, epochs=4, lr=0.02)
    np.testing.assert_array_equal(w[:, :2], 1.0)      # λ = 1 in the first two epochs
    for e in (2, 3):
        r = seen[:, e - 1].mean(1) / seen[:, e - 2].mean(1)
        expected = 3 * np.exp(r / 2) / np.exp(r / 2).sum()
        for b in range(len(batches)):
            np.testing.assert_allclose(w[:, e, b], expected, rtol=1e-6)


def test_uw_log_variances_are_trained_by_the_trainer_optimizer():
    model, batches = build(weighting("uw"))
    s = model.fastmtl.s
    assert any(p is s for p in model.parameters())
    w, _ = L.train(model, batches, epochs=2, lr=0.1)
    np.testing.assert_allclose(w[:, 0, 0], 0.5)       # ½e^{−s} at s = 0
    assert float(s.detach().abs().min()) > 0
    # One more step by hand: λ = ½e^{−s}, and s gets the paper's gradient ½ − ½e^{−s}ℓ.
    x, y = batches[0]
    preds = model(x)
    losses = torch.stack([((preds[t].squeeze(-1) - y[t]) ** 2).mean() for t in model.task_name])
    model.zero_grad(set_to_none=False)
    lam = model.backward(losses)
    s0 = s.detach().clone()
    np.testing.assert_allclose(lam, (0.5 * torch.exp(-s0)).numpy(), rtol=1e-12)
    torch.testing.assert_close(s.grad, 0.5 - 0.5 * torch.exp(-s0) * losses.detach().double(), rtol=1e-6, atol=1e-9)


def test_famo_update_w_steps_the_logits():
    model, batches = build(weighting("famo"))
    w, _ = L.train(model, batches, epochs=1, famo_update=True)
    assert model.fastmtl.logits is not None and float(model.fastmtl.logits.abs().max()) > 0
    np.testing.assert_allclose(w.sum(0), 1.0, rtol=1e-6)


def test_random_methods_are_reproducible_with_a_generator():
    runs = []
    for _ in range(2):
        model, batches = build(weighting("pcgrad", generator=torch.Generator().manual_seed(3)))
        L.train(model, batches, epochs=1)
        runs.append(params(model))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_return_weights_false_and_head_override():
    model, batches = build(weighting("mgda", return_weights=False, head_weighting="sum"))
    w, _ = L.train(model, batches, epochs=1)
    assert not w.any()
    x, y = batches[0]
    preds = model(x)
    losses = torch.stack([((preds[t].squeeze(-1) - y[t]) ** 2).mean() for t in model.task_name])
    model.zero_grad(set_to_none=False)
    assert model.backward(losses) is None


def test_each_model_gets_its_own_method_instance():
    cls = weighting("nash_mtl")
    a, _ = build(cls)
    b, _ = build(cls)
    assert a.fastmtl is not b.fastmtl and cls.__name__ == "FastMTL_nash_mtl"


def test_bad_input():
    with pytest.raises(ValueError, match="unknown method"):
        weighting("upgard")
    with pytest.raises(TypeError, match="bad hyper-parameters"):
        weighting("cagrad", calpha=0.4)
    with pytest.raises(TypeError, match="slgrad_step"):
        weighting("slgrad")
    with pytest.raises(ValueError, match="head_weighting"):
        weighting("mean", head_weighting="plain")
    model, batches = build(weighting("cagrad", c=0.4))
    x, y = batches[0]
    preds = model(x)
    losses = torch.stack([((preds[t].squeeze(-1) - y[t]) ** 2).mean() for t in model.task_name])
    with pytest.raises(TypeError, match=r"weight_args \['calpha', 'rescale'\]"):
        model.backward(losses, calpha=0.4, rescale=1)
    with pytest.raises(ValueError, match="losses has 2 entries"):
        model.backward(losses[:2])
    model.rep_grad, model.rep = True, {"depth": None}
    with pytest.raises(NotImplementedError, match="one representation per task"):
        model.backward(losses)
    with pytest.raises(RuntimeError, match="init_param"):
        LibMTLWeighting().backward(losses)
