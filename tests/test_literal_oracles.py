"""Self-checks of the paper-form oracles in :mod:`fastmtl.reference.literal`.

The oracles are the yardstick of the Gram-space methods, so they are checked here against closed
forms, optimality certificates of their sub-problems, independent solvers (quadprog in weight
space, SLSQP with an analytic gradient) and TorchJD's aggregators where those are installed.
"""

from __future__ import annotations

import math

import pytest
import torch

from fastmtl.reference import literal as L

from _families import FAMILIES, make_jacobian

np = pytest.importorskip("numpy")

D = 97


def rel(a: torch.Tensor, b: torch.Tensor, J: torch.Tensor) -> float:
    """``‖a − b‖ / max(‖b‖, 1e-3 · rms row norm of J)``."""
    rms = J.pow(2).sum(1).mean().sqrt()
    return float((a - b).norm() / torch.clamp(b.norm(), min=float(1e-3 * rms)))


def rand_J(K: int, Dim: int = D, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(K, Dim, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# PCGrad
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_pcgrad_two_tasks_closed_form(seed):
    J = rand_J(2, seed=seed)
    if seed % 2 == 0:                    # force a conflict half of the time
        J[1] = -0.7 * J[0] + 0.5 * J[1]
    g1, g2 = J[0], J[1]
    g11, g22, g12 = g1 @ g1, g2 @ g2, g1 @ g2
    if g12 < 0:
        expected = (1 - g12 / g11) * g1 + (1 - g12 / g22) * g2
    else:
        expected = g1 + g2
    orders = torch.tensor([[1], [0]])
    d = L.pcgrad_literal(J, orders, eps=0.0)
    assert rel(d, expected, J) < 1e-12
    assert rel(L.pcgrad_literal(J, orders, eps=0.0, reduction="mean"), expected / 2, J) < 1e-12


def test_pcgrad_projection_uses_original_gradients_and_order():
    # Three tasks in the plane; p_0 is projected first against g_1, then against the ORIGINAL g_2.
    g0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g1 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    J = torch.stack([g0, g1, g2])

    def project(p, others):
        for g in others:
            s = p @ g
            if s < 0:
                p = p - s / (g @ g) * g
        return p

    for order0 in ([1, 2], [2, 1]):
        orders = torch.tensor([order0, [0, 2], [0, 1]])
        expected = project(g0, [J[j] for j in order0]) + project(g1, [g0, g2]) + project(g2, [g0, g1])
        d = L.pcgrad_literal(J, orders, eps=0.0)
        assert torch.allclose(d, expected, rtol=0, atol=1e-14)
    d12 = L.pcgrad_literal(J, torch.tensor([[1, 2], [0, 2], [0, 1]]), eps=0.0)
    d21 = L.pcgrad_literal(J, torch.tensor([[2, 1], [0, 2], [0, 1]]), eps=0.0)
    assert not torch.allclose(d12, d21)          # PCGrad is order dependent


def test_pcgrad_zero_gradient_and_single_task():
    J = rand_J(3)
    J[1] = 0
    d = L.pcgrad_literal(J, torch.tensor([[1, 2], [0, 2], [0, 1]]))
    assert torch.isfinite(d).all()
    J1 = rand_J(1)
    assert torch.equal(L.pcgrad_literal(J1, torch.zeros(1, 0, dtype=torch.long)), J1[0])
    with pytest.raises(ValueError):
        L.pcgrad_literal(J, torch.tensor([[0, 2], [0, 2], [0, 1]]))


def test_pcgrad_no_conflict_is_sum():
    J = rand_J(4).abs()                                    # all pairwise dot products > 0
    orders = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    assert torch.allclose(L.pcgrad_literal(J, orders), J.sum(0), rtol=0, atol=1e-13)


# ------------------------------------------------------------------------------------------------
# weighted PCGrad
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_wpcgrad_two_tasks(seed):
    J = rand_J(2, seed=seed)
    J[1] = -0.6 * J[0] + 0.4 * J[1]
    g1, g2 = J[0], J[1]
    for order, (a, b) in (([0, 1], (g1, g2)), ([1, 0], (g2, g1))):
        s = a @ b
        expected = a + (b - s / (a @ a) * a if s < 0 else b)
        for mode in ("modified", "original"):
            d = L.wpcgrad_literal(J, torch.tensor(order), project_against=mode, eps=0.0)
            assert rel(d, expected, J) < 1e-12


def test_wpcgrad_highest_priority_intact_and_modes():
    # First task intact, later ones deconflicted only against higher-priority tasks.
    J = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-0.5, -2.0, 0.3]], dtype=torch.float64)
    order = torch.tensor([0, 1, 2])

    def proj(x, v):
        s = x @ v
        return x - s / (v @ v) * v if s < 0 else x

    p0 = J[0]
    p1 = proj(J[1], p0)
    p2_mod = proj(proj(J[2], p0), p1)
    p2_org = proj(proj(J[2], J[0]), J[1])
    d_mod = L.wpcgrad_literal(J, order, project_against="modified", eps=0.0)
    d_org = L.wpcgrad_literal(J, order, project_against="original", eps=0.0)
    assert torch.allclose(d_mod, p0 + p1 + p2_mod, atol=1e-14, rtol=0)
    assert torch.allclose(d_org, p0 + p1 + p2_org, atol=1e-14, rtol=0)
    assert not torch.allclose(d_mod, d_org)
    # no conflict at all: plain sum
    Jp = rand_J(4).abs()
    assert torch.allclose(L.wpcgrad_literal(Jp, torch.tensor([2, 0, 3, 1])), Jp.sum(0), atol=1e-13, rtol=0)


# ------------------------------------------------------------------------------------------------
# CAGrad
# ------------------------------------------------------------------------------------------------

def _cagrad_primal(J, c):
    """CAGrad's direction before rescaling and ×K: the maximiser of min_i ⟨g_i, d⟩ in the ball."""
    return L.cagrad_literal(J, c, rescale=0, multiply_by_k=False)


@pytest.mark.parametrize("family", ["gauss", "conflict", "scaled", "lowrank"])
@pytest.mark.parametrize("K", [2, 3, 5, 8])
@pytest.mark.parametrize("c", [0.2, 0.5, 0.9])
def test_cagrad_maximises_worst_improvement_in_ball(family, K, c):
    J = make_jacobian(family, K, D, seed=3)
    g0 = J.mean(0)
    R = c * g0.norm()
    d = _cagrad_primal(J, c)
    assert abs(float((d - g0).norm() - R)) <= 1e-10 * float(R) + 1e-300   # on the sphere
    best = float((J @ d).min())
    # strong duality: min_i ⟨g_i, d⟩ equals the dual objective at w*
    w, _ = L.cagrad_weights(L.gram_literal(J).numpy(), c)
    gw = J.T @ torch.from_numpy(w)
    F = float(gw @ g0 + R * gw.norm())
    scale = float(J.norm(dim=1).max() * g0.norm())
    assert abs(best - F) <= 1e-9 * scale
    # no random feasible point does better
    gen = torch.Generator().manual_seed(K * 7 + int(c * 10))
    dirs = torch.randn(4000, D, generator=gen, dtype=torch.float64)
    dirs = torch.cat([dirs, torch.randn(2000, K, generator=gen, dtype=torch.float64) @ J])
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    radii = torch.rand(dirs.shape[0], 1, generator=gen, dtype=torch.float64) ** 0.1
    pts = g0 + R * radii * dirs
    assert float((pts @ J.T).min(1).values.max()) <= best + 1e-10 * scale
    # nor does any small perturbation of d kept in the ball
    tangent = torch.randn(500, D, generator=gen, dtype=torch.float64)
    pert = d + 1e-3 * float(R) * tangent / tangent.norm(dim=1, keepdim=True)
    off = pert - g0
    pert = g0 + off * torch.clamp(R / off.norm(dim=1, keepdim=True), max=1.0)
    assert float((pert @ J.T).min(1).values.max()) <= best + 1e-10 * scale


@pytest.mark.parametrize("family", ["gauss", "conflict", "aligned"])
@pytest.mark.parametrize("K", [2, 3, 6])
def test_cagrad_matches_tight_slsqp(family, K):
    scipy_opt = pytest.importorskip("scipy.optimize")
    J = make_jacobian(family, K, D, seed=5)
    G = (J @ J.T).numpy()
    c = 0.5
    u = np.full(K, 1.0 / K)
    a = G @ u
    r = c * math.sqrt(u @ G @ u)

    def F(w):
        return w @ a + r * math.sqrt(max(w @ G @ w, 1e-300))

    def dF(w):
        return a + r * (G @ w) / math.sqrt(max(w @ G @ w, 1e-300))

    res = scipy_opt.minimize(F, u, jac=dF, method="SLSQP", bounds=[(0, 1)] * K,
                             constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1,
                                           "jac": lambda w: np.ones_like(w)}],
                             options={"ftol": 1e-15, "maxiter": 1000})
    w = torch.from_numpy(res.x)
    gw = J.T @ w
    g0 = J.mean(0)
    d_slsqp = (g0 + c * g0.norm() / gw.norm() * gw) / (1 + c * c) * K
    d = L.cagrad_literal(J, c)
    assert rel(d, d_slsqp, J) < 1e-5
    # the oracle is never worse than SLSQP on the dual objective
    w_or, F_or = L.cagrad_weights(G, c)
    assert F_or * (np.trace(G) / K) <= F(res.x) + 1e-12 * abs(F(res.x))


def test_cagrad_scales_and_edge_cases():
    J = rand_J(4)
    c = 0.5
    base = L.cagrad_literal(J, c, rescale=0, multiply_by_k=False)
    assert torch.allclose(L.cagrad_literal(J, c, rescale=1, multiply_by_k=False), base / (1 + c * c))
    assert torch.allclose(L.cagrad_literal(J, c, rescale=2, multiply_by_k=False), base / (1 + c))
    assert torch.allclose(L.cagrad_literal(J, c), 4 * base / (1 + c * c))
    # c = 0: the mean gradient
    assert torch.allclose(L.cagrad_literal(J, 0.0, multiply_by_k=False), J.mean(0))
    # K = 1: g + c·g, rescaled
    J1 = rand_J(1)
    assert torch.allclose(L.cagrad_literal(J1, c), (1 + c) / (1 + c * c) * J1[0])
    # exactly opposite gradients: g0 = 0 → d = 0
    J2 = torch.stack([J[0], -J[0]])
    assert L.cagrad_literal(J2, c).abs().max() == 0
    # a zero gradient without strong conflict: degenerate, d = g0 (×K/(1+c²))
    Jz = J.abs()
    Jz[2] = 0
    assert torch.allclose(L.cagrad_literal(Jz, c), 4 * Jz.mean(0) / (1 + c * c), atol=1e-12)
    # all gradients equal: d = (1 + c) g, rescaled, ×K
    Je = J[0].repeat(3, 1)
    assert torch.allclose(L.cagrad_literal(Je, c), 3 * (1 + c) / (1 + c * c) * J[0], atol=1e-12)


# ------------------------------------------------------------------------------------------------
# MGDA
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("K", [2, 3, 5, 8, 12])
def test_mgda_min_norm_certificate(family, K):
    J = make_jacobian(family, K, D, seed=2)
    d = L.mgda_literal(J)
    rms2 = float(J.pow(2).sum(1).mean())
    # d is the min-norm point of the hull iff ⟨g_i − d, d⟩ ≥ 0 for every i (equality where active)
    slack = (J @ d) - d @ d
    assert float(slack.min()) >= -1e-9 * rms2
    # and d is in the hull: d = Jᵀw with w on the simplex (checked through the oracle's weights)
    w = L.min_norm_weights(L.gram_literal(J).numpy())
    assert w.min() >= 0 and abs(w.sum() - 1) < 1e-12
    assert rel(J.T @ torch.from_numpy(w), d, J) < 1e-6


@pytest.mark.parametrize("K", [2, 3, 6])
def test_mgda_matches_quadprog_on_full_rank(K):
    quadprog = pytest.importorskip("quadprog")
    for seed in range(3):
        J = rand_J(K, seed=seed)
        J[1:] -= 0.8 * J[0]                                   # some conflict
        G = (J @ J.T).numpy()
        C = np.concatenate([np.ones((K, 1)), np.eye(K)], axis=1)
        b = np.concatenate([[1.0], np.zeros(K)])
        w = quadprog.solve_qp(G, np.zeros(K), C, b, 1)[0]
        assert rel(L.mgda_literal(J), J.T @ torch.from_numpy(w), J) < 1e-8


def test_mgda_two_tasks_and_normalisations():
    for seed in range(4):
        J = rand_J(2, seed=seed)
        J[1] = -0.5 * J[0] + J[1]
        G = J @ J.T
        gamma = float(torch.clamp((G[1, 1] - G[0, 1]) / (G[0, 0] + G[1, 1] - 2 * G[0, 1]), 0, 1))
        assert rel(L.mgda_literal(J), gamma * J[0] + (1 - gamma) * J[1], J) < 1e-10
    # opposite gradients: 0 is in the hull
    J = rand_J(1).repeat(2, 1)
    J[1] *= -3
    assert float(L.mgda_literal(J).norm()) < 1e-12
    # l2 normalisation: the weights come from unit gradients, applied to the raw gradients
    J = rand_J(3)
    J[0] *= 10
    Ju = J / J.norm(dim=1, keepdim=True)
    w = L.min_norm_weights(L.gram_literal(Ju).numpy())
    assert rel(L.mgda_literal(J, normalization="l2"), J.T @ torch.from_numpy(w), J) < 1e-12
    losses = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    w = L.min_norm_weights(L.gram_literal(J / losses[:, None]).numpy())
    assert rel(L.mgda_literal(J, normalization="loss", losses=losses), J.T @ torch.from_numpy(w), J) < 1e-12
    w = L.min_norm_weights(L.gram_literal(Ju / losses[:, None]).numpy())
    assert rel(L.mgda_literal(J, normalization="loss+", losses=losses), J.T @ torch.from_numpy(w), J) < 1e-12
    # equal norms: l2 = none
    assert rel(L.mgda_literal(Ju, normalization="l2"), L.mgda_literal(Ju), Ju) < 1e-12
    with pytest.raises(ValueError):
        L.mgda_literal(J, normalization="loss")


# ------------------------------------------------------------------------------------------------
# IMTL-G
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["gauss", "conflict", "scaled", "aligned"])
@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_imtl_g_equal_projections(family, K):
    J = make_jacobian(family, K, D, seed=4)
    d = L.imtl_g_literal(J)
    U = J / J.norm(dim=1, keepdim=True)
    proj = U @ d
    assert float((proj - proj.mean()).abs().max()) <= 1e-9 * float(proj.abs().max())
    alpha = torch.linalg.lstsq(J.T, d.unsqueeze(1)).solution[:, 0]
    assert abs(float(alpha.sum()) - 1) < 1e-8


@pytest.mark.parametrize("family", ["gauss", "conflict", "scaled"])
@pytest.mark.parametrize("K", [2, 4, 7])
def test_imtl_g_matches_torchjd(family, K):
    agg = pytest.importorskip("torchjd.aggregation")
    J = make_jacobian(family, K, D, seed=6)
    assert rel(L.imtl_g_literal(J), agg.IMTLG()(J), J) < 1e-8


def test_imtl_g_edge_cases():
    J1 = rand_J(1)
    assert torch.equal(L.imtl_g_literal(J1), J1[0])
    J = rand_J(3)
    J[1] = 0
    with pytest.raises(ValueError):
        L.imtl_g_literal(J)


# ------------------------------------------------------------------------------------------------
# UPGrad / DualProj
# ------------------------------------------------------------------------------------------------

def _weight_space_upgrad(J, targets):
    """Proposition 1 of the UPGrad paper, solved with quadprog in weight space (G must be PD)."""
    quadprog = pytest.importorskip("quadprog")
    G = (J @ J.T).numpy()
    K = G.shape[0]
    out = []
    for u in targets:
        v = quadprog.solve_qp(G, np.zeros(K), np.eye(K), np.asarray(u, dtype=np.float64), 0)[0]
        out.append(J.T @ torch.from_numpy(v))
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_upgrad_projections_are_projections(family, K):
    J = make_jacobian(family, K, D, seed=7)
    nrm = J.norm(dim=1)
    targets = [[1.0 if k == i else 0.0 for k in range(K)] for i in range(K)] + [[1.0 / K] * K]
    ys = L.project_dual_cone(J, targets)
    for t, y in zip(targets, ys):
        x = J.T @ torch.tensor(t, dtype=torch.float64)
        scale = float(x.norm()) + 1e-300
        assert float((J @ y / torch.clamp(nrm, min=1e-300)).min()) >= -1e-9 * scale   # in the cone
        # x − y lies in the polar cone: y − x = Jᵀμ, μ ≥ 0 (non-negative least squares)
        mu, resid = pytest.importorskip("scipy.optimize").nnls(J.T.numpy(), (y - x).numpy())
        assert resid <= 1e-7 * scale
        assert abs(float((x - y) @ y)) <= 1e-8 * scale * scale                            # ⟨x − y, y⟩ = 0
    d = L.upgrad_literal(J)
    assert float((J @ d).min()) >= -1e-9 * float(nrm.max() ** 2)
    assert rel(d, sum(ys[:K]) / K, J) < 1e-13
    assert rel(L.dualproj_literal(J), ys[K], J) < 1e-13


@pytest.mark.parametrize("family", ["gauss", "conflict", "scaled"])
@pytest.mark.parametrize("K", [2, 3, 6])
def test_upgrad_matches_weight_space_quadprog(family, K):
    J = make_jacobian(family, K, D, seed=8)
    targets = [[1.0 if k == i else 0.0 for k in range(K)] for i in range(K)]
    ref = _weight_space_upgrad(J, targets)
    assert rel(L.upgrad_literal(J), sum(ref) / K, J) < 1e-7
    ref_dp = _weight_space_upgrad(J, [[1.0 / K] * K])[0]
    assert rel(L.dualproj_literal(J), ref_dp, J) < 1e-7
    pref = torch.linspace(0.5, 2.0, K, dtype=torch.float64)
    assert rel(L.upgrad_literal(J, pref), sum(p * r for p, r in zip(pref, ref)), J) < 1e-7


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("K", [2, 3, 5])
def test_dual_cone_quadprog_agrees_with_enumeration(family, K):
    J = make_jacobian(family, K, D, seed=9)
    targets = [[1.0 if k == i else 0.0 for k in range(K)] for i in range(K)] + [[1.0 / K] * K]
    a = L.project_dual_cone(J, targets)
    b = L.project_dual_cone_enumerated(J, targets)
    for t, ya, yb in zip(targets, a, b):
        x = J.T @ torch.tensor(t, dtype=torch.float64)
        assert float((ya - yb).norm()) <= 1e-7 * float(x.norm()) + 1e-12 * float(J.norm())


def test_upgrad_edge_cases():
    g = rand_J(1)[0]
    J = torch.stack([g, -g])                       # the dual cone is g's orthogonal complement
    assert float(L.upgrad_literal(J).norm()) < 1e-12
    assert float(L.dualproj_literal(J).norm()) < 1e-12
    Jc = rand_J(3).abs()                           # no conflict: the mean
    assert torch.allclose(L.upgrad_literal(Jc), Jc.mean(0), atol=1e-13)
    assert torch.allclose(L.dualproj_literal(Jc), Jc.mean(0), atol=1e-13)
    J1 = rand_J(1)
    assert torch.allclose(L.upgrad_literal(J1), J1[0], atol=1e-14)


# ------------------------------------------------------------------------------------------------
# Aligned-MTL
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("family", ["gauss", "conflict", "scaled", "aligned"])
@pytest.mark.parametrize("K", [1, 2, 3, 5, 8])
def test_aligned_mtl_matches_torchjd_times_k(scale_mode, family, K):
    agg = pytest.importorskip("torchjd.aggregation")
    J = make_jacobian(family, K, D, seed=10)
    ref = agg.AlignedMTL(scale_mode=scale_mode)(J) * K
    assert rel(L.aligned_mtl_literal(J, scale_mode=scale_mode), ref, J) < 1e-8


@pytest.mark.parametrize("family", ["gauss", "conflict", "lowrank", "zero"])
def test_aligned_mtl_balanced_rows(family):
    K = 6
    J = make_jacobian(family, K, D, seed=11)
    d = L.aligned_mtl_literal(J, scale_mode="min")
    # d = Σ rows of B J = σ · Σ_k (u_kᵀ1) v_k over the kept singular triplets
    U, S, Vh = torch.linalg.svd(J, full_matrices=False)
    r = int((S * S > (S[0] ** 2) * K * torch.finfo(torch.float64).eps).sum())
    expected = S[r - 1] * (Vh[:r].T @ (U[:, :r].T @ torch.ones(K, dtype=torch.float64)))
    assert rel(d, expected, J) < 1e-10
    assert torch.allclose(L.aligned_mtl_literal(torch.zeros(3, 5, dtype=torch.float64)),
                          torch.zeros(5, dtype=torch.float64))


# ------------------------------------------------------------------------------------------------
# HydaLearn
# ------------------------------------------------------------------------------------------------

def test_hydalearn_ratio_rule_and_fallbacks():
    g0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    g1 = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)       # δ = 2
    g2 = torch.tensor([-1.0, 5.0, 0.0], dtype=torch.float64)      # δ = −1 → dropped
    g3 = torch.tensor([0.5, 0.0, 3.0], dtype=torch.float64)       # δ = 0.5
    J = torch.stack([g0, g1, g2, g3])
    # δ⁺ = (1, 2, 0, 0.5) → w = δ⁺ / 3.5
    assert torch.allclose(L.hydalearn_literal(J), (g0 + 2 * g1 + 0.5 * g3) / 3.5)
    assert torch.allclose(L.hydalearn_literal(J, normalize="main"), g0 + 2 * g1 + 0.5 * g3)
    # external reference vector
    v = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)        # δ = (0, 1, 5, 0)
    assert torch.allclose(L.hydalearn_literal(J, reference=v), (g1 + 5 * g2) / 6)
    # δ_main = 0 with normalize="main": fallback
    assert torch.allclose(L.hydalearn_literal(J, reference=v, normalize="main"), g0)
    assert torch.equal(L.hydalearn_literal(J, reference=v, normalize="main", fallback="zero"),
                       torch.zeros(3, dtype=torch.float64))
    # all gains ≤ 0: δ = (−1, −3, −4, −0.5)
    neg = torch.tensor([-1.0, -1.0, 0.0], dtype=torch.float64)
    assert torch.equal(L.hydalearn_literal(J, reference=neg), g0)
    assert torch.equal(L.hydalearn_literal(J, reference=neg, fallback="zero"), torch.zeros(3, dtype=torch.float64))
    # another main task: δ = ⟨g_2, g_k⟩ = (−1, 3, 26, −0.5)
    assert torch.allclose(L.hydalearn_literal(J, main_task=2), (3 * g1 + 26 * g2) / 29)
    assert torch.allclose(L.hydalearn_literal(J, main_task=2, normalize="main"), 3 / 26 * g1 + g2)
    # zero main gradient: fallback
    Jz = J.clone()
    Jz[0] = 0
    assert torch.equal(L.hydalearn_literal(Jz), torch.zeros(3, dtype=torch.float64))   # e_main · 0
    with pytest.raises(ValueError):
        L.hydalearn_literal(J, main_task=4)
