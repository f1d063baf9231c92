"""Nash-MTL, GradVac, ConFIG, DB-MTL, OL-AUX, GradNorm, GeMTL, UW, DWA, RLW and FAMO.

Each method is checked against its paper-form oracle of :mod:`fastmtl.reference.literal` (float64,
vector form, Python loops; stateful methods over several steps with the same random orders), plus
the properties each paper promises. Error measure as in ``test_methods_literal.py``:
``‖d − d*‖ / max(‖d*‖, 1e-3 · rms_i ‖g_i‖)``.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastmtl
from fastmtl.methods import (DBMTL, DWA, FAMO, OLAUX, RLW, UW, ConFIG, GeMTL, GradNorm, GradVac, NashMTL,
                             METHODS)
from fastmtl.methods import Context
from fastmtl.methods.ordering import random_task_orders
from fastmtl.reference import literal as L

from _families import FAMILIES, make_jacobian, split_params

NEW = ("nash_mtl", "gradvac", "config", "db_mtl", "olaux", "gradnorm", "gemtl", "uw", "dwa", "rlw", "famo")
DIM = {1: 65, 2: 97, 3: 129, 4: 131, 5: 67, 8: 193, 16: 257}
FULL_RANK = ("gauss", "conflict", "aligned", "scaled")



def ctx(losses, K):
    """The context of a loss-only call (no Gram): K tasks on the losses' device."""
    return Context(num_tasks=K, device=losses.device, losses=losses)

def err(d: torch.Tensor, ref: torch.Tensor, J: torch.Tensor) -> float:
    rms = J.pow(2).sum(1).mean().sqrt()
    floor = float(1e-3 * rms) if float(rms) > 0 else 1e-300
    return float((d - ref).norm() / max(float(ref.norm()), floor))


def losses_for(K: int, step: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + 17 * K + step)
    return 0.2 + 2.0 * torch.rand(K, generator=g, dtype=torch.float64)


def run(J, method, **kw):
    """``combine`` with ``return_info``; checks finiteness and ``d = Jᵀλ`` where λ is reported."""
    d, info = fastmtl.combine(J, method=method, return_info=True, **kw)
    assert torch.isfinite(d).all()
    if info.weights is not None:
        lam = info.weights
        assert lam.shape == (J.shape[0],) and torch.isfinite(lam).all()
        recon = J.T @ lam.to(J.dtype)
        scale = float(J.norm(dim=1).max() * lam.abs().max()) + 1e-300
        assert float((d - recon).abs().max()) <= 1e-12 * scale
    return d, info


def test_registered():
    classes = (NashMTL, GradVac, ConFIG, DBMTL, OLAUX, GradNorm, GeMTL, UW, DWA, RLW, FAMO)
    assert {name: METHODS[name] for name in NEW} == dict(zip(NEW, classes))
    assert fastmtl.methods.METHODS["nash-mtl".replace("-", "_")] is NashMTL
    assert isinstance(fastmtl.methods.make_method("DB-MTL", {}), DBMTL)


# ------------------------------------------------------------------------------------------------
# Nash-MTL
# ------------------------------------------------------------------------------------------------

def _live(J):
    sq = J.pow(2).sum(1)
    return sq > 1e-12 * sq.max()


@pytest.mark.parametrize("K", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("family", FAMILIES)
def test_nash_matches_convex_oracle(K, family):
    J = make_jacobian(family, K, DIM[K], seed=1)
    d, info = run(J, "nash_mtl", max_norm=0.0)
    alpha = info.weights
    ref = L.nash_mtl_literal(J)
    if ref is None:     # no bargaining solution (0 in the hull): the previous α — ones — is kept
        assert torch.equal(alpha, torch.ones(K, dtype=torch.float64))
        return
    live = _live(J)
    assert torch.all(alpha[~live] == 0)
    if bool(live.any()):
        res = alpha * (J @ (J.T @ alpha)) - 1
        assert float(res[live].abs().max()) < 1e-7
        assert float(((alpha - ref).abs() / ref.abs().clamp_min(1e-300))[live].max()) < 1e-6


@pytest.mark.parametrize("K,family", [(3, "gauss"), (4, "scaled"), (8, "conflict")])
def test_nash_clip_is_folded_into_the_weights(K, family):
    J = make_jacobian(family, K, DIM[K], seed=2)
    _, raw = run(J, "nash_mtl", max_norm=0.0)
    alpha = raw.weights
    norm = float((J.T @ alpha).norm())
    assert abs(norm ** 2 - K) < 1e-6 * K         # αᵀGα = K at the solution
    d, info = run(J, "nash_mtl")                  # default max_norm = 1
    assert abs(float(d.norm()) - 1.0) < 1e-9
    torch.testing.assert_close(info.weights, alpha / norm, rtol=1e-12, atol=0)
    _, big = run(J, "nash_mtl", max_norm=10.0)    # no clip needed
    torch.testing.assert_close(big.weights, alpha, rtol=1e-12, atol=0)


def test_nash_update_every_and_fallback():
    K = 3
    Js = [make_jacobian("gauss", K, 97, seed=s) for s in range(4)]
    m = NashMTL(update_weights_every=2, max_norm=0.0)
    lams = [run(J, m)[1].weights.clone() for J in Js]
    fresh = [run(J, "nash_mtl", max_norm=0.0)[1].weights for J in Js]
    torch.testing.assert_close(lams[0], fresh[0], rtol=1e-9, atol=0)   # solved
    torch.testing.assert_close(lams[1], lams[0], rtol=0, atol=0)       # reused
    torch.testing.assert_close(lams[2], fresh[2], rtol=1e-9, atol=0)   # solved (warm start)
    torch.testing.assert_close(lams[3], lams[2], rtol=0, atol=0)
    # Pareto-stationary input: no solution, the previous α is kept (and stays the state).
    m = NashMTL(max_norm=0.0)
    a1 = run(Js[0], m)[1].weights.clone()
    g = Js[1][0]
    opposite = torch.stack([g, -2.0 * g, Js[1][1] - Js[1][1]])
    a2 = run(opposite, m)[1].weights
    assert torch.equal(a2, a1)
    a3 = run(Js[2], m)[1].weights
    torch.testing.assert_close(a3, fresh[2], rtol=1e-9, atol=0)


def test_nash_all_zero_and_k1():
    d, info = run(torch.zeros(3, 20, dtype=torch.float64), "nash_mtl")
    assert torch.equal(d, torch.zeros(20, dtype=torch.float64))
    g = make_jacobian("gauss", 1, 65, seed=3)
    d, _ = run(g, "nash_mtl", max_norm=0.0)      # α = 1/‖g‖: d = g/‖g‖
    torch.testing.assert_close(d, g[0] / g[0].norm(), rtol=1e-12, atol=1e-14)


def test_nash_matches_torchjd_when_available():
    try:
        from torchjd.aggregation import NashMTL as TJNash
        agg = TJNash(n_tasks=3, max_norm=0.0)
    except ImportError as exc:
        pytest.skip(f"TorchJD's NashMTL cannot run here: {exc}")
    J = make_jacobian("gauss", 3, 97, seed=4)
    d, _ = run(J, "nash_mtl", max_norm=0.0)
    ref = agg(J)
    assert err(d, ref, J) < 1e-3                  # the official CCP stops at a 1e-3 residual


# ------------------------------------------------------------------------------------------------
# GradVac
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.5, 0.01])
@pytest.mark.parametrize("K", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradvac_matches_literal_over_steps(K, family, beta):
    # Collinear gradients (lowrank with K ≤ 3 has rank 1) have |φ| = 1, where √(1−φ²) turns
    # rounding errors of 1e-16 into 1e-8, and an opposite pair cancels p_i to rounding noise whose
    # similarities (hence the next targets) are arbitrary: there only one step's direction is compared.
    collinear = family == "lowrank" and K <= 3
    tol = 1e-4 if collinear else 1e-9
    g_ref, g_fast = torch.Generator().manual_seed(K), torch.Generator().manual_seed(K)
    m = GradVac(beta=beta)
    T = torch.zeros(K, K, dtype=torch.float64)
    for step in range(1 if collinear else 4):
        J = make_jacobian(family, K, DIM[K], seed=10 + step)
        orders = random_task_orders(K, generator=g_ref, device="cpu")
        d, _ = run(J, m, generator=g_fast)
        ref, T = L.gradvac_literal(J, orders, T, beta=beta)
        assert err(d, ref, J) < tol
        if not collinear:
            torch.testing.assert_close(m.targets, T, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_gradvac_per_param_matches_literal(K):
    sizes = [(3, 5), (7,), (2, 2, 3), (1,)]
    bounds, start = [], 0
    for s in sizes:
        n = math.prod(s)
        bounds.append((start, start + n))
        start += n
    D = start
    g_ref, g_fast = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    m = GradVac(granularity="per_param")
    T = torch.zeros(len(sizes), K, K, dtype=torch.float64)
    for step in range(3):
        J = make_jacobian("conflict", K, D, seed=20 + step)
        J[K - 1, bounds[1][0]:bounds[1][1]] = 0                  # task K-1 does not touch parameter 1
        grads = split_params(J, sizes, drop={(K - 1, 1)})
        orders = random_task_orders(K, generator=g_ref, device="cpu")
        out = [torch.empty(s, dtype=torch.float64) for s in sizes]
        d, info = fastmtl.combine(grads, method=m, generator=g_fast, out=out, return_info=True)
        assert info.weights is None and d is not None
        torch.testing.assert_close(info.gram.to(torch.float64), J @ J.T, rtol=1e-12, atol=1e-12)
        flat = torch.cat([t.reshape(-1) for t in d])
        ref, T = L.gradvac_literal(J, orders, T, blocks=bounds)
        assert err(flat, ref, J) < 1e-9
        assert all(a is b for a, b in zip(d, out))
        # The one-element block has |φ| = 1: its targets agree to ~√eps (see above).
        torch.testing.assert_close(m.targets, T, rtol=1e-9, atol=1e-5)
    with pytest.raises(ValueError, match="blocks"):
        fastmtl.combine(split_params(J, sizes[:3]), method=m)
    with pytest.raises(ValueError, match="tasks"):
        fastmtl.combine(split_params(J[:2] if K > 2 else J[:1], sizes), method=m)


def test_gradvac_per_param_untouched_parameter_keeps_its_targets():
    K, sizes = 3, [(4, 3), (5,), (6,)]
    bounds = [(0, 12), (12, 17), (17, 23)]
    g_ref, g_fast = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    m = GradVac(granularity="per_param")
    T = torch.zeros(3, K, K, dtype=torch.float64)
    J = make_jacobian("gauss", K, 23, seed=24)
    fastmtl.combine(split_params(J, sizes), method=m, generator=g_fast)
    _, T = L.gradvac_literal(J, random_task_orders(K, generator=g_ref), T, blocks=bounds)
    before = m.targets[1].clone()
    J2 = make_jacobian("conflict", K, 23, seed=25)
    J2[:, 12:17] = 0
    d = fastmtl.combine(split_params(J2, sizes, drop={(k, 1) for k in range(K)}), method=m, generator=g_fast)
    assert d[1] is None
    ref, T02 = L.gradvac_literal(J2[:, [*range(12), *range(17, 23)]], random_task_orders(K, generator=g_ref),
                                 T[[0, 2]], blocks=[(0, 12), (12, 18)])
    assert err(torch.cat([d[0].reshape(-1), d[2]]), ref, J2) < 1e-9
    torch.testing.assert_close(m.targets[[0, 2]], T02, rtol=1e-9, atol=1e-12)
    assert torch.equal(m.targets[1], before)


def test_gradvac_per_param_on_a_matrix_is_whole():
    J = make_jacobian("conflict", 4, 131, seed=5)
    a = fastmtl.combine(J, method="gradvac", generator=torch.Generator().manual_seed(1))
    b = fastmtl.combine(J, method="gradvac", granularity="per_param", generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_gradvac_targets_drive_the_correction():
    # With targets already above the current similarity, an orthogonal pair is pulled together.
    m = GradVac(beta=0.5)
    J = torch.eye(2, 8, dtype=torch.float64)
    m._phi = torch.full((1, 2, 2), 0.5, dtype=torch.float64)
    d, info = run(J, m, generator=torch.Generator().manual_seed(0))
    assert bool((info.weights > 1).all())
    assert torch.allclose(m.targets, torch.tensor([[0.5, 0.25], [0.25, 0.5]], dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# ConFIG
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("family", FAMILIES)
def test_config_matches_lstsq(K, family):
    J = make_jacobian(family, K, DIM[K], seed=6)
    d, _ = run(J, "config")
    assert err(d, L.config_literal(J), J) < 1e-7
    pref = torch.linspace(0.5, 2.0, K, dtype=torch.float64)
    d, _ = run(J, "config", pref=pref.tolist())
    assert err(d, L.config_literal(J, pref), J) < 1e-7


@pytest.mark.parametrize("K", [2, 3, 8])
@pytest.mark.parametrize("family", FULL_RANK)
def test_config_equal_cosines_and_torchjd(K, family):
    J = make_jacobian(family, K, DIM[K], seed=7)
    d, _ = run(J, "config")
    cos = (J @ d) / (J.norm(dim=1) * d.norm())
    assert float(cos.max() - cos.min()) < 1e-8
    assert float(cos.min()) > 0
    agg = pytest.importorskip("torchjd.aggregation")
    assert err(d, agg.ConFIG()(J), J) < 1e-7


def test_config_zero_rows():
    J = make_jacobian("gauss", 4, 97, seed=8)
    J[1] = 0
    d, info = run(J, "config")
    assert float(info.weights[1]) == 0.0
    cos = (J[[0, 2, 3]] @ d) / (J[[0, 2, 3]].norm(dim=1) * d.norm())
    assert float(cos.max() - cos.min()) < 1e-9
    d, _ = run(torch.zeros(3, 10, dtype=torch.float64), "config")
    assert torch.equal(d, torch.zeros(10, dtype=torch.float64))


def test_config_float32_gram():
    J = make_jacobian("lowrank", 6, 301, seed=9)
    d32 = fastmtl.combine(J.float(), method="config")
    assert err(d32.double(), L.config_literal(J), J) < 1e-4


# ------------------------------------------------------------------------------------------------
# DB-MTL
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.0, 0.5])
@pytest.mark.parametrize("K", [1, 2, 3, 8])
@pytest.mark.parametrize("family", FAMILIES)
def test_db_mtl_matches_literal(K, family, sigma):
    Js = [make_jacobian(family, K, DIM[K], seed=30 + t) for t in range(4)]
    ls = [losses_for(K, t) for t in range(4)]
    m = DBMTL(sigma=sigma)
    refs = L.db_mtl_literal(Js, ls, sigma=sigma)
    for J, l, ref in zip(Js, ls, refs):
        d, info = run(J, m, losses=l)
        assert info.weights is None
        assert err(d, ref, J) < 1e-12


def test_db_mtl_per_param_layout_and_state_checks():
    K, sizes = 3, [(4, 3), (5,), (2, 2)]
    D = sum(math.prod(s) for s in sizes)
    Js = [make_jacobian("gauss", K, D, seed=40 + t) for t in range(3)]
    for J in Js:
        J[2, 12:17] = 0
    ls = [losses_for(K, t) for t in range(3)]
    refs = L.db_mtl_literal(Js, ls)
    m = DBMTL()
    for J, l, ref in zip(Js, ls, refs):
        out = [torch.full(s, float("nan"), dtype=torch.float64) for s in sizes]
        d = fastmtl.combine(split_params(J, sizes, drop={(2, 1)}), method=m, losses=l, out=out)
        assert all(a is b for a, b in zip(d, out))
        assert err(torch.cat([t.reshape(-1) for t in d]), ref, J) < 1e-12
    assert m.alpha.shape == (K,) and float(m.alpha.min()) >= 1.0 - 1e-6
    with pytest.raises(ValueError, match="3 tasks"):
        fastmtl.combine(split_params(Js[0][:2], sizes), method=m, losses=ls[0][:2])
    with pytest.raises(ValueError, match="shape"):
        fastmtl.combine(split_params(Js[0], sizes[:2] + [(4,)]), method=m, losses=ls[0])
    with pytest.raises(ValueError, match="parameters"):
        fastmtl.combine(split_params(Js[0], sizes[:2]), method=m, losses=ls[0])
    with pytest.raises(ValueError, match="losses"):
        fastmtl.combine(Js[0], method="db_mtl")


def test_db_mtl_float32_buffers():
    J = make_jacobian("gauss", 3, 97, seed=41)
    l = losses_for(3)
    ref = L.db_mtl_literal([J, J], [l, l])
    m = DBMTL()
    for r in ref:
        d = fastmtl.combine(J.float(), method=m, losses=l)
        assert d.dtype == torch.float32 and err(d.double(), r, J) < 1e-5
    assert m._buffers[0].dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# OL-AUX
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hp", [
    {},
    {"main_task": 1, "horizon": 3, "lr": 0.5, "model_lr": 0.1},
    {"horizon": 1, "lr": 1.0, "model_lr": 1.0, "nonnegative": True},
    {"horizon": 2, "lr": 0.05, "optimizer": "adam", "init_weight": 0.5},
])
@pytest.mark.parametrize("K,family", [(2, "gauss"), (3, "conflict"), (5, "scaled"), (4, "zero")])
def test_olaux_matches_literal_over_steps(K, family, hp):
    Js = [make_jacobian(family, K, DIM[K], seed=50 + t) for t in range(12)]
    refs = L.olaux_literal(Js, **hp)
    m = OLAUX(**hp)
    for J, ref in zip(Js, refs):
        d, _ = run(J, m)
        assert err(d, ref, J) < 1e-10


def test_olaux_weights_frozen_between_updates_and_clipped():
    K = 3
    Js = [make_jacobian("aligned", K, 97, seed=60 + t) for t in range(7)]
    m = OLAUX(horizon=3, lr=1.0, model_lr=1.0, max_change=0.1)
    lams = [run(J, m)[1].weights.clone() for J in Js]
    assert torch.equal(lams[0], lams[1]) and torch.equal(lams[1], lams[2])
    assert torch.equal(lams[3], lams[4]) and torch.equal(lams[4], lams[5])
    torch.testing.assert_close(lams[3], torch.tensor([1.0, 1.1, 1.1], dtype=torch.float64))  # aligned: +0.1 clip
    assert float(lams[3][0]) == 1.0
    with pytest.raises(ValueError, match="main_task"):
        fastmtl.combine(Js[0], method="olaux", main_task=3)


# ------------------------------------------------------------------------------------------------
# GradNorm
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant,optimizer,lr", [("paper", "sgd", 0.01), ("paper", "sgd", 0.3),
                                                  ("paper", "adam", 0.05), ("libmtl", "adam", 0.05),
                                                  ("libmtl", "sgd", 0.5)])
@pytest.mark.parametrize("K,family", [(2, "gauss"), (3, "conflict"), (4, "scaled"), (5, "zero")])
def test_gradnorm_matches_literal_over_steps(K, family, variant, optimizer, lr):
    Js = [make_jacobian(family, K, DIM[K], seed=70 + t) for t in range(6)]
    ls = [losses_for(K, t) for t in range(6)]
    hp = dict(variant=variant, optimizer=optimizer, lr=lr, alpha=1.5)
    refs = L.gradnorm_literal(Js, ls, **hp)
    m = GradNorm(initial_loss="first", **hp)
    for J, l, ref in zip(Js, ls, refs):
        d, info = run(J, m, losses=l)
        assert err(d, ref, J) < 1e-9
        assert abs(float(info.weights.sum()) - K) < 1e-9        # Σλ = K
    assert abs(float(m.task_weights.sum()) - K) < 1e-9


def test_gradnorm_libmtl_epoch_warmup():
    K = 3
    Js = [make_jacobian("gauss", K, 97, seed=80 + t) for t in range(6)]
    ls = [losses_for(K, t) for t in range(6)]
    m = GradNorm(variant="libmtl", lr=0.05)
    for J, l in zip(Js[:3], ls[:3]):            # epoch 0: plain sum, losses averaged
        assert torch.equal(run(J, m, losses=l)[1].weights, torch.ones(K, dtype=torch.float64))
    m.end_epoch()
    l0 = sum(ls[:3]) / 3
    refs = L.gradnorm_literal(Js[3:], ls[3:], variant="libmtl", optimizer="adam", lr=0.05, initial_losses=l0)
    for J, l, ref in zip(Js[3:], ls[3:], refs):
        assert err(run(J, m, losses=l)[0], ref, J) < 1e-9


def test_gradnorm_last_shared_layer_block():
    K, sizes = 3, [(6, 5), (5,), (4, 3)]
    D = sum(math.prod(s) for s in sizes)
    Js = [make_jacobian("scaled", K, D, seed=90 + t) for t in range(5)]
    ls = [losses_for(K, t) for t in range(5)]
    refs = L.gradnorm_literal(Js, ls, lr=0.1, columns=(35, D))      # norms on parameter 2 only
    m = GradNorm(lr=0.1, param_indices=[2])
    for J, l, ref in zip(Js, ls, refs):
        d, info = fastmtl.combine(split_params(J, sizes), method=m, losses=l, return_info=True)
        assert err(torch.cat([t.reshape(-1) for t in d]), ref, J) < 1e-9
        assert info.weights.shape == (K,)
        torch.testing.assert_close(info.gram.to(torch.float64), J @ J.T)     # info still holds the full Gram
    with pytest.raises(ValueError, match="param_indices"):
        fastmtl.combine(split_params(Js[0], sizes), method=GradNorm(param_indices=[3]), losses=ls[0])
    with pytest.raises(ValueError, match="param_indices"):
        GradNorm(param_indices=[1, 1])


# ------------------------------------------------------------------------------------------------
# GeMTL
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [-2.0, -0.5, 0.05, -0.09, 0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("K", [1, 2, 5, 16])
def test_gemtl_matches_autograd_of_the_mean(K, p):
    l = losses_for(K, 3)
    J = make_jacobian("gauss", K, DIM.get(K, 97), seed=11)
    d, info = run(J, "gemtl", p=p, losses=l)
    lam = L.gemtl_literal(l, p)
    torch.testing.assert_close(info.weights, lam, rtol=1e-12, atol=0)
    torch.testing.assert_close(d, J.T @ lam, rtol=1e-11, atol=1e-13)


def test_gemtl_property_matches_autograd():
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")

    @hyp.settings(max_examples=60, deadline=None)
    @hyp.given(p=st.floats(-4.0, 4.0), losses=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=12))
    def check(p, losses):
        l = torch.tensor(losses, dtype=torch.float64)
        lam = GeMTL(p=p).weights(None, ctx(l, len(losses)))
        torch.testing.assert_close(lam, L.gemtl_literal(l, p), rtol=1e-9, atol=0)

    check()


def test_gemtl_limits_schedule_and_extremes():
    K = 6
    l = losses_for(K, 4)
    mean = fastmtl.methods.GeMTL(p=1.0).weights(None, ctx(l, K))
    torch.testing.assert_close(mean, torch.full((K,), 1 / K, dtype=torch.float64), rtol=1e-14, atol=0)
    geo = torch.exp(torch.log(l).mean()) / (K * l)
    near0 = GeMTL(p=1e-7, geometric_band=0.0).weights(None, ctx(l, K))
    torch.testing.assert_close(near0, geo, rtol=1e-6, atol=0)
    band = GeMTL(p=0.05).weights(None, ctx(l, K))
    torch.testing.assert_close(band, geo, rtol=1e-13, atol=0)
    # Linear ramp −0.5 → 0.5 over 4 steps, then constant.
    m = GeMTL(p=-0.5, p_schedule="linear", total_steps=4)
    ps = []
    for _ in range(6):
        ps.append(m.current_p())
        m.weights(None, ctx(l, K))
    assert ps == [-0.5, -0.25, 0.0, 0.25, 0.5, 0.5]
    seen = []
    cb = GeMTL(p=lambda step, losses: seen.append(step) or torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(cb.weights(None, ctx(l, K)), L.gemtl_literal(l, 2.0))
    cb.weights(None, ctx(l, K))
    assert seen == [0, 1]
    # Log space: 64 tasks over 60 decades, and non-positive losses (clamped at eps), stay finite.
    wide = torch.logspace(-30, 30, 64, dtype=torch.float64)
    for p in (-0.5, 0.0, 3.0):
        lam = GeMTL(p=p).weights(None, ctx(wide, 64))
        assert torch.isfinite(lam).all() and bool((lam > 0).all())
    lam = GeMTL().weights(None, ctx(torch.tensor([0.0, -1.0, 1.0], dtype=torch.float64), 3))
    assert torch.isfinite(lam).all()
    with pytest.raises(ValueError, match="total_steps"):
        GeMTL(p_schedule="linear")
    with pytest.raises(ValueError, match="losses"):
        fastmtl.combine(torch.randn(2, 3), method="gemtl")


# ------------------------------------------------------------------------------------------------
# Uncertainty weighting, DWA, RLW
# ------------------------------------------------------------------------------------------------

def test_uw_weights_loss_term_and_closed_form_update():
    K = 3
    l = losses_for(K)
    m = UW(num_tasks=K, init=0.3)
    J = make_jacobian("gauss", K, 97, seed=12)
    _, info = run(J, m, losses=l)
    torch.testing.assert_close(info.weights, 0.5 * torch.exp(torch.full((K,), -0.3, dtype=torch.float64)))
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.loss_term(l).backward()
    torch.testing.assert_close(m.s.grad, 0.5 - 0.5 * torch.exp(-m.s.detach()) * l)
    opt.step()
    # Built-in closed-form SGD converges to the fixed point s = log ℓ.
    m = UW(lr=1.0)
    for _ in range(200):
        fastmtl.combine(J, method=m, losses=l)
    torch.testing.assert_close(m.s.detach(), torch.log(l), rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="3 tasks"):
        fastmtl.combine(J[:2], method=m, losses=l[:2])


def test_dwa_epochs_and_window():
    K = 3
    J = make_jacobian("gauss", K, 97, seed=13)
    m = DWA()
    epochs = [[losses_for(K, 10 * e + i) for i in range(3)] for e in range(4)]
    avgs = []
    for e, batch in enumerate(epochs):
        for l in batch:
            lam = run(J, m, losses=l)[1].weights
            if e < 2:
                assert torch.equal(lam, torch.ones(K, dtype=torch.float64))
            else:
                r = avgs[e - 1] / avgs[e - 2]
                ref = K * torch.exp(r / 2) / torch.exp(r / 2).sum()
                torch.testing.assert_close(lam, ref, rtol=1e-12, atol=0)
                assert abs(float(lam.sum()) - K) < 1e-12
        avgs.append(sum(batch) / len(batch))
        m.end_epoch()
    # nash-mtl's sliding-window form.
    W = 2
    m = DWA(window=W)
    costs = torch.ones(2 * W, K, dtype=torch.float64)
    current = torch.ones(K, dtype=torch.float64)
    for it in range(8):
        l = losses_for(K, 50 + it)
        costs = torch.cat([costs[1:], l[None]])
        if it > W:
            r = costs[W:].mean(0) / costs[:W].mean(0)
            current = K * torch.softmax(r / 2, 0)
        torch.testing.assert_close(run(J, m, losses=l)[1].weights, current, rtol=1e-12, atol=0)


def test_rlw_simplex_and_generator():
    K = 5
    J = make_jacobian("gauss", K, 67, seed=14)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):
        lam = run(J, "rlw", generator=g1)[1].weights
        ref = torch.softmax(torch.randn(K, generator=g2, dtype=torch.float64), 0)
        torch.testing.assert_close(lam, ref, rtol=0, atol=0)
        assert abs(float(lam.sum()) - 1) < 1e-14 and bool((lam > 0).all())


# ------------------------------------------------------------------------------------------------
# FAMO
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma,min_losses", [(1e-3, None), (1e-5, [0.1, 0.0, 0.05, 0.0])])
def test_famo_matches_official_form(gamma, min_losses):
    K = 4
    pairs = [(losses_for(K, t), losses_for(K, t) * (0.9 + 0.05 * t)) for t in range(6)]
    refs = L.famo_literal(pairs, gamma=gamma, min_losses=min_losses)
    m = FAMO(gamma=gamma, min_losses=min_losses)
    J = make_jacobian("gauss", K, 131, seed=15)
    for (l, new), ref in zip(pairs, refs):
        d, info = run(J, m, losses=l)
        torch.testing.assert_close(info.weights, ref, rtol=1e-10, atol=0)
        assert abs(float(info.weights.sum()) - 1) < 1e-14
        m.update(new)
    assert float(m.logits.abs().max()) > 0
    with pytest.raises(RuntimeError, match="update"):
        FAMO().update(pairs[0][1])


# ------------------------------------------------------------------------------------------------
# Every new method: fresh defaults, K = 1, zero gradients, reuse with another K, bad parameters
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", NEW)
def test_fresh_default_state_and_k1(method):
    J = make_jacobian("gauss", 1, 65, seed=16)
    l = torch.tensor([0.7], dtype=torch.float64)
    d, info = run(J, method, losses=l, generator=torch.Generator().manual_seed(0))
    cos = float(d @ J[0]) / (float(d.norm()) * float(J[0].norm()))
    assert abs(cos - 1) < 1e-12


@pytest.mark.parametrize("method", NEW)
def test_zero_gradients_no_nan(method):
    J = make_jacobian("conflict", 4, 97, seed=17)
    J[2] = 0
    l = losses_for(4)
    run(J, method, losses=l, generator=torch.Generator().manual_seed(0))
    d, _ = run(torch.zeros(4, 33, dtype=torch.float64), method, losses=l, generator=torch.Generator().manual_seed(0))
    if method not in ("db_mtl",):
        assert torch.equal(d, torch.zeros(33, dtype=torch.float64))
    else:
        assert float(d.abs().max()) == 0.0


@pytest.mark.parametrize("method", ["nash_mtl", "gradvac", "db_mtl", "olaux", "gradnorm", "uw", "dwa", "famo"])
def test_reuse_with_another_k_raises(method):
    m = METHODS[method]()
    J = make_jacobian("gauss", 3, 40, seed=18)
    fastmtl.combine(J, method=m, losses=losses_for(3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="tasks"):
        fastmtl.combine(J[:2], method=m, losses=losses_for(2), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", NEW)
def test_layouts_agree(method):
    K, sizes = 3, [(4, 5), (7,), (3, 3)]
    D = sum(math.prod(s) for s in sizes)
    J = make_jacobian("conflict", K, D, seed=19)
    l = losses_for(K)
    a = fastmtl.combine(J, method=method, losses=l, generator=torch.Generator().manual_seed(2))
    b = fastmtl.combine(split_params(J, sizes), method=method, losses=l, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in b]), a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", NEW)
def test_low_precision_inputs(method):
    J = make_jacobian("gauss", 3, 257, seed=20)
    l = losses_for(3)
    ref = fastmtl.combine(J, method=method, losses=l, generator=torch.Generator().manual_seed(4))
    for dtype in (torch.float32, torch.bfloat16):
        d = fastmtl.combine(J.to(dtype), method=method, losses=l, generator=torch.Generator().manual_seed(4))
        assert d.dtype == dtype and torch.isfinite(d).all()
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        assert err(d.double(), ref, J) < tol


@pytest.mark.parametrize("method,hp,words", [
    ("nash_mtl", {"update_weights_every": 0}, "update_weights_every"),
    ("nash_mtl", {"max_norm": -1.0}, "max_norm"),
    ("gradvac", {"beta": 1.5}, "beta"),
    ("gradvac", {"granularity": "layer"}, "granularity"),
    ("config", {"rcond": -1.0}, "rcond"),
    ("config", {"pref": [1.0, 2.0, 3.0]}, "pref"),
    ("db_mtl", {"beta": -0.1}, "beta"),
    ("db_mtl", {"sigma": -1.0}, "sigma"),
    ("olaux", {"horizon": 0}, "horizon"),
    ("olaux", {"lr": -1.0}, "lr"),
    ("olaux", {"optimizer": "rmsprop"}, "optimizer"),
    ("gradnorm", {"alpha": -1.0}, "alpha"),
    ("gradnorm", {"variant": "mine"}, "variant"),
    ("gradnorm", {"initial_loss": "last"}, "initial_loss"),
    ("gemtl", {"p": float("inf")}, "p must"),
    ("gemtl", {"p_schedule": "cosine"}, "p_schedule"),
    ("uw", {"lr": 0.0}, "lr"),
    ("dwa", {"temperature": 0.0}, "temperature"),
    ("dwa", {"window": 0}, "window"),
    ("famo", {"w_lr": 0.0}, "w_lr"),
    ("famo", {"gamma": -1.0}, "gamma"),
])
def test_bad_hyperparameters(method, hp, words):
    with pytest.raises(ValueError, match=words):
        fastmtl.combine(torch.randn(2, 3), method=method, losses=[1.0, 2.0], **hp)


@pytest.mark.parametrize("method", ["db_mtl", "gradnorm", "gemtl", "dwa", "famo"])
def test_methods_needing_losses_say_so(method):
    with pytest.raises(ValueError, match="losses"):
        fastmtl.combine(torch.randn(2, 3), method=method)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradvac", "config", "olaux"])
def test_methods_trace_fullgraph(method):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    hp = {"shuffle": False} if method == "gradvac" else {}     # fixed orders: eager and compiled agree
    eager_m, compiled_m = METHODS[method](**hp), METHODS[method](**hp)

    def step(m, J, losses):
        return fastmtl.combine(J, method=m, losses=losses, backend="reference")

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    for s in range(3):
        J = make_jacobian("gauss", 3, 64, seed=21 + s)
        l = losses_for(3, s)
        torch.testing.assert_close(compiled(compiled_m, J, l), step(eager_m, J, l), rtol=1e-9, atol=1e-12)
    assert counter.op_count > 0
