"""MoDo, SDMGrad, CR-MOGM, MoCo, ExcessMTL, STCH and Auto-λ over several steps against their literal
oracles (fastmtl/reference/literal/stateful.py), their options, resets and errors.

The one-call checks every method passes are in tests/test_method_catalogue.py; the training
helpers (double sampling, Auto-λ's meta step) in tests/test_training_stateful.py.
"""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl.methods import (STCH, AutoLambda, CRMOGM, ExcessMTL, MoCo, MoDo, NashMTL, PCGrad, SDMGrad,
                             make_method)
from fastmtl.methods.base import Context
from fastmtl.reference import literal as L
from fastmtl.solvers.simplex_projection import project_simplex

from _families import make_jacobian, split_params

STEPS = 6


def _steps(K, D=23, family="conflict", seed=0):
    return [make_jacobian(family, K, D, seed=seed + 7 * t) for t in range(STEPS)]


def _losses(K, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [0.5 + torch.rand(K, generator=g, dtype=torch.float64) for _ in range(STEPS)]


def _run(m, Js, losses=None, **kw):
    out = []
    for t, J in enumerate(Js):
        d, info = fastmtl.combine(J, m, losses=None if losses is None else losses[t], return_info=True, **kw)
        out.append((d, info.weights))
    return out


def _close(a, b, tol=1e-10):
    torch.testing.assert_close(a.to(torch.float64), b.to(torch.float64), rtol=tol, atol=tol * float(b.abs().max() + 1))


# ----------------------------------------------------------------------------------------------
# The simplex projection.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [1, 2, 3, 7])
def test_projection_matches_the_official_loop(K):
    g = torch.Generator().manual_seed(K)
    for scale in (1e-3, 1.0, 10.0, 1e6):
        v = scale * torch.randn(50, K, generator=g, dtype=torch.float64)
        v[0] = 0.25  # ties
        got = project_simplex(v)
        for row, out in zip(v, got):
            torch.testing.assert_close(out, torch.tensor(L.project_simplex_literal(row), dtype=torch.float64),
                                       rtol=1e-12, atol=1e-12 * scale)
        assert torch.allclose(got.sum(-1), torch.ones(50, dtype=torch.float64)) and bool((got >= 0).all())


def test_projection_of_huge_steps_lands_on_a_vertex_and_nan_propagates():
    v = torch.tensor([-1e59, -2e59, -3e59], dtype=torch.float64)
    assert torch.equal(project_simplex(v), torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.isnan(project_simplex(torch.tensor([0.2, float("nan"), 0.1]))).all()


# ----------------------------------------------------------------------------------------------
# Several steps against the oracles.
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("hp", [{}, {"gamma": 0.5, "rho": 0.0}])
def test_modo_steps_match_the_oracle(K, hp):
    Js = _steps(K)
    got = _run(MoDo(**hp), Js)
    for (d, lam), (d_ref, lam_ref) in zip(got, L.modo_literal(Js, **hp)):
        _close(lam, lam_ref)
        _close(d, d_ref)


def test_modo_and_sdmgrad_take_a_cross_gram_as_it_is():
    K = 3
    triples = [tuple(make_jacobian("gauss", K, 17, seed=3 * t + i) for i in range(3)) for t in range(STEPS)]
    for m, oracle in ((MoDo(), L.modo_literal), (SDMGrad(), L.sdmgrad_literal)):
        for (J1, J2, _), (_, lam_ref) in zip(triples, oracle(triples)):
            lam = m.weights(J1 @ J2.T, Context(num_tasks=K, device=torch.device("cpu")))
            _close(lam, lam_ref, 1e-9)


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("hp", [{}, {"lambda_": 0.0, "n_iter": 5, "lr": 1.0, "momentum": 0.0},
                                {"lambda_": 1.0, "pref_vector": [3.0, 1.0, 1.0, 1.0, 2.0]}])
def test_sdmgrad_steps_match_the_oracle(K, hp):
    if "pref_vector" in hp:
        hp = dict(hp, pref_vector=hp["pref_vector"][:K])
    Js = _steps(K, family="scaled")
    got = _run(SDMGrad(**hp), Js)
    for (d, lam), (d_ref, lam_ref) in zip(got, L.sdmgrad_literal(Js, **hp)):
        _close(lam, lam_ref, 1e-9)
        _close(d, d_ref, 1e-9)


def test_sdmgrad_eps_zero_is_scale_free_and_zero_gram_keeps_w():
    J = make_jacobian("conflict", 3, 20, seed=1)
    a = fastmtl.combine(J, "sdmgrad", eps=0.0, return_info=True)[1].weights
    b = fastmtl.combine(J * 1e-12, "sdmgrad", eps=0.0, return_info=True)[1].weights
    _close(a, b, 1e-9)
    m = SDMGrad(eps=0.0)
    lam = fastmtl.combine(torch.zeros(3, 5, dtype=torch.float64), m, return_info=True)[1].weights
    assert torch.allclose(lam, torch.full((3,), 1 / 3, dtype=torch.float64)) and torch.isfinite(m.inner_weights).all()


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.9, 1.0])
def test_cr_mogm_steps_match_the_oracle(K, alpha):
    Js = _steps(K)
    got = _run(CRMOGM(alpha=alpha), Js)
    for (d, lam), (d_ref, lam_ref) in zip(got, L.cr_mogm_literal(Js, alpha=alpha)):
        _close(lam, lam_ref, 1e-6)
        _close(d, d_ref, 1e-6)


def test_cr_mogm_options_and_nested_base_state():
    Js = _steps(3)
    init = [0.2, 0.3, 0.5]
    got = _run(CRMOGM(alpha=0.7, initial_weights=init), Js)
    for (_, lam), (_, lam_ref) in zip(got, L.cr_mogm_literal(Js, alpha=0.7, initial_weights=init)):
        _close(lam, lam_ref, 1e-6)
    # A stateful base keeps its state inside; the base is smoothed like any other.
    m = CRMOGM(base="nash_mtl", base_options={"max_norm": 0.0}, alpha=0.5)
    ref = NashMTL(max_norm=0.0)
    prev = None
    for J in Js:
        lam = fastmtl.combine(J, m, return_info=True)[1].weights
        hat = fastmtl.combine(J, ref, return_info=True)[1].weights
        prev = hat if prev is None else 0.5 * prev + 0.5 * hat
        _close(lam, prev, 1e-12)
    sd = m.state_dict()
    assert {"lambda", "base.alpha", "base.step", "base.fastmtl_num_tasks"} <= set(sd)
    # Resume: a fresh instance loaded from the state continues bitwise.
    m2 = CRMOGM(base="nash_mtl", base_options={"max_norm": 0.0}, alpha=0.5)
    m2.load_state_dict(sd)
    assert torch.equal(fastmtl.combine(Js[0], m2), fastmtl.combine(Js[0], m))
    # The base's own conventions pass through (PCGrad draws, heads "sum").
    p = CRMOGM(base=PCGrad(), alpha=0.0)
    assert p.uses_generator and p.head_weighting == "sum" and p.requires_gram
    J = Js[1]
    d = fastmtl.combine(J, p, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(d, fastmtl.combine(J, "pcgrad", generator=torch.Generator().manual_seed(3)))
    m.reset()
    assert m.lambd is None and m.base.alpha is None
    m.alpha = 0.25
    assert m.alpha == 0.25


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("hp", [{}, {"normalization": "l2"}, {"normalization": "loss"}, {"normalization": "loss+"},
                                {"beta": 0.5, "beta_sigma": 0.5, "gamma": 1.0, "gamma_sigma": 0.5, "rho": 0.0},
                                {"variant": "libmtl"}, {"variant": "libmtl", "rho": 0.2}])
def test_moco_steps_match_the_oracle(K, hp):
    Js, losses = _steps(K), _losses(K)
    m = MoCo(**hp)
    got = _run(m, Js, losses)
    ref = L.moco_literal(Js, losses, **hp)
    for (d, lam), (d_ref, _) in zip(got, ref):
        assert lam is None  # the direction combines the tracked gradients
        _close(d, d_ref)
    _close(m.lambd, ref[-1][1])


def test_moco_per_parameter_layout_and_float32():
    K, sizes = 3, [(4, 5), (7,), (3, 2, 2)]
    Js, losses = _steps(K, D=39), _losses(K)
    for J in Js:
        J[1, 20:27] = 0
    flat = _run(MoCo(variant="libmtl"), Js, losses)
    m = MoCo(variant="libmtl")
    for t, J in enumerate(Js):
        d = fastmtl.combine(split_params(J, sizes, drop={(1, 1)}), m, losses=losses[t])
        _close(torch.cat([x.reshape(-1) for x in d]), flat[t][0])
    m32 = MoCo()
    for J, (d_ref, _) in zip(Js, L.moco_literal(Js)):
        d = fastmtl.combine(J.float(), m32)
        assert d.dtype == torch.float32 and m32._buffers[0].dtype == torch.float32
        _close(d, d_ref, 1e-5)


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("hp", [{}, {"robust_step_size": 1.0}, {"robust_step_size": 0.3, "warmup_steps": 3}])
def test_excess_mtl_steps_match_the_oracle(K, hp):
    Js = _steps(K, family="scaled")
    m = ExcessMTL(**hp)
    got = _run(m, Js)
    for (d, lam), (d_ref, lam_ref) in zip(got, L.excess_mtl_literal(Js, **hp)):
        _close(lam, lam_ref)
        _close(d, d_ref)
    assert abs(float(lam.sum()) - K) < 1e-12


def test_excess_mtl_zero_baseline_and_layouts():
    Js = _steps(3)
    Js[0] = Js[0].clone()
    Js[0][1] = 0  # task 1's baseline is 0: its ratio is 0, not 0/0
    m = ExcessMTL(robust_step_size=1.0)
    for J in Js:
        _, info = fastmtl.combine(J, m, return_info=True)
        assert torch.isfinite(info.weights).all()
    assert float(m.baseline[1]) == 0.0
    # Without task 1's excess risk the others' weights follow the oracle restricted to them.
    sizes = [(10,), (13,)]
    a, b = ExcessMTL(), ExcessMTL()
    for J in _steps(3):
        d1 = fastmtl.combine(J, a)
        d2 = fastmtl.combine(split_params(J, sizes), b)
        _close(torch.cat([x.reshape(-1) for x in d2]), d1)


def test_stch_epochs_match_the_oracle():
    K = 3
    losses = [0.2 + torch.rand(K, generator=torch.Generator().manual_seed(s), dtype=torch.float64) for s in range(14)]
    epochs = [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6]
    for hp in ({}, {"mu": 0.3, "warmup_epoch": 2}, {"warmup_epoch": 0}):
        m = STCH(**hp)
        expected = L.stch_literal(losses, [e for e in epochs], **hp)
        for t, ell in enumerate(losses):
            lam = fastmtl.combine(torch.eye(K, dtype=torch.float64), m, losses=ell, return_info=True)[1].weights
            _close(lam, expected[t], 1e-12)
            if t + 1 < len(epochs) and epochs[t + 1] != epochs[t]:
                m.end_epoch()
        assert m.nadir is not None and m.epoch == 6


def test_stch_given_nadir_and_reset():
    m = STCH(nadir=[1.0, 2.0], mu=0.5)
    ell = torch.tensor([0.5, 3.0], dtype=torch.float64)
    lam = m.weights(None, Context(num_tasks=2, device=torch.device("cpu"), losses=ell))
    u = torch.log(ell / torch.tensor([1.0, 2.0], dtype=torch.float64) + 1e-20)
    _close(lam, 2 * torch.softmax(u / 0.5, 0) / (ell + 1e-20 * torch.tensor([1.0, 2.0], dtype=torch.float64)), 1e-14)
    m.end_epoch()
    m.reset()
    assert m.epoch == 0 and torch.equal(m.nadir, torch.tensor([1.0, 2.0], dtype=torch.float64))
    s = STCH(warmup_epoch=0)
    s.end_epoch()  # the nadir epoch closed without a call
    with pytest.raises(RuntimeError, match="no call happened during warm-up epoch 0"):
        s.weights(None, Context(num_tasks=2, device=torch.device("cpu"), losses=ell))


def test_auto_lambda_weights_and_meta_step_are_adam():
    m = AutoLambda(num_tasks=3, init=0.2, lr=0.05)
    ref = torch.tensor([0.2] * 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([ref], lr=0.05)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        grad = torch.randn(3, generator=g, dtype=torch.float64)
        m.meta_step(grad)
        ref.grad = grad.clone()
        opt.step()
        _close(m.meta_weights, ref.detach(), 1e-14)
        J = make_jacobian("gauss", 3, 9)
        _close(fastmtl.combine(J, m), J.T @ ref.detach(), 1e-14)
    assert torch.equal(AutoLambda(primary_tasks=[2, 0]).primary_mask(3), torch.tensor([1.0, 0.0, 1.0],
                                                                                     dtype=torch.float64))
    m.reset()
    assert m.meta_weights is None


# ----------------------------------------------------------------------------------------------
# Resets, task counts, errors.
# ----------------------------------------------------------------------------------------------

NAMES = ["modo", "sdmgrad", "cr_mogm", "moco", "excess_mtl", "stch", "auto_lambda"]


@pytest.mark.parametrize("name", NAMES)
def test_reset_gives_a_fresh_instance_and_another_k_raises(name):
    Js, losses = _steps(3), _losses(3)
    m = make_method(name, {})
    first = _run(m, Js[:3], losses)
    with pytest.raises(ValueError, match="tasks"):
        fastmtl.combine(make_jacobian("gauss", 4, 23), m, losses=torch.ones(4))
    m.reset()
    again = _run(m, Js[:3], losses)
    for (a, _), (b, _) in zip(first, again):
        assert torch.equal(a, b)


BAD = [
    ("modo", {"gamma": 0.0}, ValueError, "gamma must be finite and > 0"),
    ("modo", {"rho": -1.0}, ValueError, "rho must be finite and ≥ 0"),
    ("sdmgrad", {"n_iter": 0}, ValueError, "n_iter must be an int ≥ 1"),
    ("sdmgrad", {"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\)"),
    ("sdmgrad", {"pref_vector": [1.0, -1.0]}, ValueError, "pref_vector must hold finite non-negative"),
    ("cr_mogm", {"alpha": 1.5}, ValueError, r"alpha must be in \[0, 1\]"),
    ("cr_mogm", {"base": "graddrop"}, TypeError, "computes a direction, not weights"),
    ("cr_mogm", {"base": PCGrad(), "base_options": {"shuffle": False}}, TypeError, "base_options were given"),
    ("cr_mogm", {"base": 3}, TypeError, "base must be a method name"),
    ("moco", {"variant": "other"}, ValueError, "variant must be one of"),
    ("moco", {"variant": "libmtl", "normalization": "l2"}, ValueError, "normalization applies to variant='paper'"),
    ("moco", {"beta": 2.0}, ValueError, r"beta must be in \(0, 1\]"),
    ("excess_mtl", {"warmup_steps": 0}, ValueError, "warmup_steps must be an int ≥ 1"),
    ("excess_mtl", {"robust_step_size": 0.0}, ValueError, "robust_step_size must be finite and > 0"),
    ("stch", {"mu": 0.0}, ValueError, "mu must be finite and > 0"),
    ("stch", {"nadir": [1.0, 0.0]}, ValueError, "nadir must hold finite positive numbers"),
    ("stch", {"warmup_epoch": -1}, ValueError, "warmup_epoch must be an int ≥ 0"),
    ("auto_lambda", {"primary_tasks": [0, 0]}, ValueError, "primary_tasks lists a task twice"),
    ("auto_lambda", {"num_tasks": 2, "primary_tasks": [2]}, ValueError, "out of range for K=2"),
]


@pytest.mark.parametrize("name, hp, exc, msg", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_hyperparameters_raise(name, hp, exc, msg):
    with pytest.raises(exc, match=msg):
        fastmtl.combine(make_jacobian("gauss", 2, 5), name, losses=[1.0, 2.0], **hp)


def test_missing_losses_and_mismatched_vectors_raise():
    J = make_jacobian("gauss", 3, 5)
    with pytest.raises(ValueError, match="stch needs the task losses"):
        fastmtl.combine(J, "stch")
    with pytest.raises(ValueError, match="moco with variant='libmtl'.*needs the task losses"):
        fastmtl.combine(J, "moco", variant="libmtl")
    with pytest.raises(ValueError, match="pref_vector has 2 entries for K=3"):
        fastmtl.combine(J, "sdmgrad", pref_vector=[1.0, 1.0])
    with pytest.raises(ValueError, match="initial_weights has 2 entries for K=3"):
        fastmtl.combine(J, "cr_mogm", initial_weights=[0.5, 0.5])
    with pytest.raises(ValueError, match="parameter 0: shape"):
        m = MoCo()
        fastmtl.combine([[torch.zeros(2, 2)]] * 2, m)
        fastmtl.combine([[torch.zeros(4)]] * 2, m)
    with pytest.raises(RuntimeError, match="meta_step"):
        AutoLambda().meta_step([1.0])
