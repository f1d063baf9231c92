"""The Gram-space methods of ``fastmtl.combine`` against their paper-form oracles.

Every method computes ``G = J Jᵀ → λ → d = Jᵀλ``; :mod:`fastmtl.reference.literal` transcribes each
paper's algorithm on the gradient vectors. Inputs are float64, on odd dimensions, for
K ∈ {1, 2, 3, 4, 8, 16} and the families of ``_families.py`` (random, conflicting, aligned,
rank-deficient, zero rows, row norms over four decades).

Error measure: ``‖d − d*‖ / max(‖d*‖, 1e-3 · rms_i ‖g_i‖)`` (the floor only matters where the
exact direction is ≈ 0, e.g. MGDA when 0 is in the convex hull). Tolerances: 1e-6 for closed-form
methods (PCGrad, weighted PCGrad, IMTL-G, Aligned-MTL, HydaLearn, mean/sum), 1e-5 for methods that
run a fixed-iteration K×K solver (CAGrad, MGDA, UPGrad, DualProj).

Random orders: ``combine`` draws PCGrad's orders with ``random_task_orders`` and weighted PCGrad's
priority order with ``plackett_luce_order`` from the generator it is given, so the oracles are fed
the orders drawn from an identically seeded twin generator. PCGrad's projections are continuous in
the sign test (the correction ``⟨p, g_j⟩/‖g_j‖²·g_j`` vanishes as the dot product does), so a sign
flip on a near-zero dot product moves ``d`` by a rounding-sized amount and needs no extra tolerance.
"""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl.methods.ordering import plackett_luce_order, random_task_orders
from fastmtl.reference import literal as L

from _families import FAMILIES, make_jacobian

np = pytest.importorskip("numpy")

KS = (1, 2, 3, 4, 8, 16)
DIM = {1: 65, 2: 97, 3: 129, 4: 131, 8: 193, 16: 257}
FULL_RANK = ("gauss", "conflict", "aligned", "scaled")      # J has full row rank, no zero row

TOL_CLOSED = 1e-6
TOL_SOLVER = 1e-5

slow = pytest.mark.slow


def err(d: torch.Tensor, ref: torch.Tensor, J: torch.Tensor) -> float:
    rms = J.pow(2).sum(1).mean().sqrt()
    floor = float(1e-3 * rms) if float(rms) > 0 else 1e-300
    return float((d - ref).norm() / max(float(ref.norm()), floor))


def run(J: torch.Tensor, method: str, *, generator=None, losses=None, **hp):
    """``combine`` with ``return_info``; checks ``d == Jᵀλ`` and finiteness on the way."""
    d, info = fastmtl.combine(J, method=method, generator=generator, losses=losses, return_info=True, **hp)
    assert d.shape == J.shape[1:] and d.dtype == J.dtype
    assert torch.isfinite(d).all(), f"{method}: non-finite direction"
    lam = info.weights
    assert lam.shape == (J.shape[0],) and torch.isfinite(lam).all()
    recon = J.T @ lam.to(J.dtype)
    scale = float(J.norm(dim=1).max() * lam.abs().max()) + 1e-300
    assert float((d - recon).abs().max()) <= 1e-12 * scale, f"{method}: d != Jᵀλ"
    G = J @ J.T
    assert torch.allclose(info.gram.to(torch.float64), G, rtol=1e-12, atol=1e-12 * float(G.abs().max()))
    n = J.norm(dim=1)
    live = n > 0
    if info.cosine is not None and bool(live.any()):
        cos = G[live][:, live] / (n[live, None] * n[None, live])
        assert torch.allclose(info.cosine.to(torch.float64)[live][:, live], cos, rtol=0, atol=1e-10)
    return d, info


def cases(ks=KS, families=FAMILIES, heavy_k=(), heavy_families=()):
    """(K, family) grid; combinations in ``heavy_k``/``heavy_families`` are marked slow."""
    out = []
    for K in ks:
        for fam in families:
            marks = [slow] if (K in heavy_k and (not heavy_families or fam in heavy_families)) else []
            out.append(pytest.param(K, fam, marks=marks, id=f"K{K}-{fam}"))
    return out


def twin_generators(seed: int):
    return torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# mean / sum
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K,family", cases())
def test_mean_and_sum(K, family):
    J = make_jacobian(family, K, DIM[K], seed=1)
    ref = J[0].clone()
    for k in range(1, K):
        ref += J[k]
    assert err(run(J, "sum")[0], ref, J) < 1e-13
    assert err(run(J, "mean")[0], ref / K, J) < 1e-13


# ------------------------------------------------------------------------------------------------
# PCGrad
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("K,family", cases())
def test_pcgrad(K, family, seed):
    J = make_jacobian(family, K, DIM[K], seed=seed)
    g_ref, g_fast = twin_generators(100 + seed)
    orders = random_task_orders(K, generator=g_ref, device="cpu")
    d, _ = run(J, "pcgrad", generator=g_fast)
    ref = L.pcgrad_literal(J, orders, eps=1e-8, reduction="sum")
    assert err(d, ref, J) < TOL_CLOSED


@pytest.mark.parametrize("K,family", cases(ks=(2, 3, 8)))
def test_pcgrad_mean_and_fixed_order(K, family):
    J = make_jacobian(family, K, DIM[K], seed=2)
    g_ref, g_fast = twin_generators(7)
    orders = random_task_orders(K, generator=g_ref, device="cpu")
    d, _ = run(J, "pcgrad", generator=g_fast, reduction="mean")
    assert err(d, L.pcgrad_literal(J, orders, reduction="mean"), J) < TOL_CLOSED
    natural = torch.tensor([[j for j in range(K) if j != i] for i in range(K)], dtype=torch.long)
    d, _ = run(J, "pcgrad", shuffle=False)
    assert err(d, L.pcgrad_literal(J, natural), J) < TOL_CLOSED


def test_pcgrad_generator_drives_the_orders():
    J = make_jacobian("conflict", 8, DIM[8], seed=3)
    outs = {}
    for seed in range(6):
        d, _ = run(J, "pcgrad", generator=torch.Generator().manual_seed(seed))
        d2, _ = run(J, "pcgrad", generator=torch.Generator().manual_seed(seed))
        assert torch.equal(d, d2)
        outs[seed] = d
    assert any(not torch.allclose(outs[0], outs[s]) for s in range(1, 6))


# ------------------------------------------------------------------------------------------------
# weighted PCGrad (priority-ordered one-sided projection)
# ------------------------------------------------------------------------------------------------

def _priorities(K: int, kind: str):
    if kind == "uniform":
        return None, None, torch.ones(K, dtype=torch.float64)
    if kind == "given":
        p = torch.linspace(0.1, 1.0, K, dtype=torch.float64) ** 2
        return p, None, p
    losses = torch.linspace(2.0, 0.3, K, dtype=torch.float64)
    return None, losses, losses ** 2.0          # kind == "losses", gamma = 2


@pytest.mark.parametrize("kind", ["uniform", "given", "losses"])
@pytest.mark.parametrize("mode", ["modified", "original"])
@pytest.mark.parametrize("K,family", cases())
def test_wpcgrad(K, family, mode, kind):
    J = make_jacobian(family, K, DIM[K], seed=4)
    priorities, losses, p = _priorities(K, kind)
    g_ref, g_fast = twin_generators(11)
    order = plackett_luce_order(p, generator=g_ref)
    hp = {"project_against": mode}
    if priorities is not None:
        hp["priorities"] = priorities.tolist()
    if losses is not None:
        hp["gamma"] = 2.0
    d, _ = run(J, "wpcgrad", generator=g_fast, losses=losses, **hp)
    ref = L.wpcgrad_literal(J, order, project_against=mode, eps=1e-8)
    assert err(d, ref, J) < TOL_CLOSED


# ------------------------------------------------------------------------------------------------
# CAGrad
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K,family", cases(heavy_k=(16,)))
def test_cagrad(K, family):
    J = make_jacobian(family, K, DIM[K], seed=5)
    d, _ = run(J, "cagrad")
    assert err(d, L.cagrad_literal(J, 0.5, rescale=1, multiply_by_k=True), J) < TOL_SOLVER


@pytest.mark.parametrize("c,rescale,mult", [(0.2, 0, False), (0.4, 2, True), (0.9, 1, False), (0.0, 1, True)])
@pytest.mark.parametrize("K,family", cases(ks=(2, 3, 8), families=("gauss", "conflict", "scaled", "lowrank")))
def test_cagrad_hyperparameters(K, family, c, rescale, mult):
    J = make_jacobian(family, K, DIM[K], seed=6)
    d, _ = run(J, "cagrad", c=c, rescale=rescale, multiply_by_k=mult)
    assert err(d, L.cagrad_literal(J, c, rescale=rescale, multiply_by_k=mult), J) < TOL_SOLVER


# ------------------------------------------------------------------------------------------------
# MGDA
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K,family", cases(heavy_k=(16,)))
def test_mgda(K, family):
    J = make_jacobian(family, K, DIM[K], seed=7)
    d, _ = run(J, "mgda")
    assert err(d, L.mgda_literal(J), J) < TOL_SOLVER


# With "l2"/"loss+" the weights act on the raw gradients, so d is only unique when the optimal w
# is: rank-deficient J (0 possibly inside the hull of the normalised points) is left out.
@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
@pytest.mark.parametrize("K,family", cases(ks=(2, 3, 4, 8), families=("gauss", "conflict", "aligned", "scaled")))
def test_mgda_normalizations(K, family, normalization):
    J = make_jacobian(family, K, DIM[K], seed=8)
    losses = torch.linspace(0.5, 3.0, K, dtype=torch.float64)
    d, _ = run(J, "mgda", normalization=normalization, losses=losses)
    ref = L.mgda_literal(J, normalization=normalization, losses=losses)
    assert err(d, ref, J) < TOL_SOLVER


# ------------------------------------------------------------------------------------------------
# IMTL-G
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K,family", cases(families=FULL_RANK))
def test_imtl_g(K, family):
    J = make_jacobian(family, K, DIM[K], seed=9)
    d, info = run(J, "imtl_g")
    assert err(d, L.imtl_g_literal(J), J) < TOL_CLOSED
    assert abs(float(info.weights.sum()) - 1) < 1e-9


@pytest.mark.parametrize("K,family", cases(ks=(2, 3, 4, 8, 16), families=("lowrank", "zero")))
def test_imtl_g_singular_matches_torchjd(K, family):
    # The closed form needs an invertible D·Uᵀ; on singular inputs compare with TorchJD's
    # pseudo-inverse form (v = G⁺·‖g‖, λ = v / Σv).
    agg = pytest.importorskip("torchjd.aggregation")
    J = make_jacobian(family, K, DIM[K], seed=9)
    d, _ = run(J, "imtl_g")
    ref = agg.IMTLG()(J)
    assert torch.isfinite(ref).all()
    assert err(d, ref, J) < 1e-6


# ------------------------------------------------------------------------------------------------
# UPGrad / DualProj
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
@pytest.mark.parametrize("K,family", cases(families=FULL_RANK, heavy_k=(16,)))
def test_dual_cone_methods_unregularised(K, family, method):
    # reg_eps = 0: the exact projection (TorchJD's 1e-4 ridge changes d by ~1e-4 relative).
    J = make_jacobian(family, K, DIM[K], seed=10)
    d, _ = run(J, method, reg_eps=0.0)
    ref = (L.upgrad_literal if method == "upgrad" else L.dualproj_literal)(J)
    assert err(d, ref, J) < TOL_SOLVER


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
@pytest.mark.parametrize("K,family", cases(ks=(2, 3, 4, 8), families=FULL_RANK))
def test_dual_cone_methods_with_preference(K, family, method):
    J = make_jacobian(family, K, DIM[K], seed=11)
    pref = torch.linspace(0.5, 1.5, K, dtype=torch.float64)
    d, _ = run(J, method, pref=pref.tolist(), reg_eps=0.0)
    ref = (L.upgrad_literal if method == "upgrad" else L.dualproj_literal)(J, pref)
    assert err(d, ref, J) < TOL_SOLVER


def _torchjd_dual_cone_weights(J: torch.Tensor, method: str, reg_eps=1e-4, norm_eps=1e-4) -> torch.Tensor:
    """TorchJD's UPGrad / DualProj direction with its default ridge.

    Uses TorchJD's aggregators when their QP front-end (qpsolvers) is installed; otherwise the same
    weight-space problem solved the way TorchJD's ``QuadprogProjector`` does: ``Ĝ = G / tr(G)``
    (0 when ``tr(G) < norm_eps``) ``+ reg_eps·I``, ``w(u) = argmin vᵀĜv s.t. v ≥ u`` with quadprog.
    """
    try:
        import qpsolvers  # noqa: F401
        from torchjd.aggregation import DualProj, UPGrad
        return (UPGrad() if method == "upgrad" else DualProj())(J)
    except ImportError:
        pass
    quadprog = pytest.importorskip("quadprog")
    K = J.shape[0]
    G = (J @ J.T).numpy()
    tr = np.trace(G)
    Gh = np.zeros_like(G) if tr < norm_eps else G / tr
    Gh = Gh + reg_eps * np.eye(K)
    targets = np.eye(K) / K if method == "upgrad" else np.full((1, K), 1.0 / K)
    lam = np.zeros(K)
    for u in targets:
        lam += quadprog.solve_qp(Gh, np.zeros(K), np.eye(K), u, 0)[0]
    return J.T @ torch.from_numpy(lam)


@pytest.mark.parametrize("method", ["upgrad", "dualproj"])
@pytest.mark.parametrize("K,family", cases(ks=(1, 2, 3, 4, 8, 16)))
def test_dual_cone_methods_default_match_torchjd(K, family, method):
    J = make_jacobian(family, K, DIM[K], seed=12)
    d, _ = run(J, method)
    assert err(d, _torchjd_dual_cone_weights(J, method), J) < TOL_SOLVER


# ------------------------------------------------------------------------------------------------
# Aligned-MTL
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("K,family", cases())
def test_aligned_mtl(K, family, scale_mode):
    J = make_jacobian(family, K, DIM[K], seed=13)
    d, _ = run(J, "aligned_mtl", scale_mode=scale_mode)
    assert err(d, L.aligned_mtl_literal(J, scale_mode=scale_mode), J) < TOL_CLOSED


# ------------------------------------------------------------------------------------------------
# HydaLearn (first order)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["default", "main", "zero", "reference", "reference-main", "task-last"])
@pytest.mark.parametrize("K,family", cases())
def test_hydalearn(K, family, variant):
    J = make_jacobian(family, K, DIM[K], seed=14)
    hp = {}
    if variant == "main":
        hp["normalize"] = "main"
    elif variant == "zero":
        hp["fallback"] = "zero"
    elif variant.startswith("reference"):
        g = torch.Generator().manual_seed(K)
        hp["reference"] = J[0] * 0.5 + torch.randn(J.shape[1], generator=g, dtype=torch.float64)
        if variant == "reference-main":
            hp["normalize"] = "main"
    elif variant == "task-last":
        hp["main_task"] = K - 1
    d, _ = run(J, "hydalearn", **hp)
    assert err(d, L.hydalearn_literal(J, **hp), J) < TOL_CLOSED


# ------------------------------------------------------------------------------------------------
# Edge cases, every method
# ------------------------------------------------------------------------------------------------

ALL = ("mean", "sum", "pcgrad", "wpcgrad", "cagrad", "mgda", "imtl_g", "upgrad", "dualproj",
       "aligned_mtl", "hydalearn")

# Direction for K = 1 as a multiple of g: every method returns the gradient itself, except CAGrad,
# whose official formula gives g0 + c·g0 = (1 + c)·g, divided by 1 + c² (rescale=1) and ×K = 1.
K1_SCALE = {m: 1.0 for m in ALL}
K1_SCALE["cagrad"] = 1.5 / 1.25

# Edge cases compare with the exact projections: without TorchJD's ridge (see above).
EXACT = {m: {} for m in ALL}
EXACT["upgrad"] = EXACT["dualproj"] = {"reg_eps": 0.0}


@pytest.mark.parametrize("method", ALL)
def test_single_task_returns_the_gradient(method):
    J = make_jacobian("gauss", 1, 65, seed=15)
    d, _ = run(J, method, generator=torch.Generator().manual_seed(0))
    assert err(d, K1_SCALE[method] * J[0], J) < 1e-9


def _oracle(method: str, J: torch.Tensor, seed: int) -> torch.Tensor:
    K = J.shape[0]
    g = torch.Generator().manual_seed(seed)
    if method == "mean":
        return J.mean(0)
    if method == "sum":
        return J.sum(0)
    if method == "pcgrad":
        return L.pcgrad_literal(J, random_task_orders(K, generator=g, device="cpu"))
    if method == "wpcgrad":
        return L.wpcgrad_literal(J, plackett_luce_order(torch.ones(K, dtype=torch.float64), generator=g))
    if method == "cagrad":
        return L.cagrad_literal(J)
    if method == "mgda":
        return L.mgda_literal(J)
    if method == "imtl_g":
        return L.imtl_g_literal(J)
    if method == "upgrad":
        return L.upgrad_literal(J)
    if method == "dualproj":
        return L.dualproj_literal(J)
    if method == "aligned_mtl":
        return L.aligned_mtl_literal(J)
    return L.hydalearn_literal(J)


@pytest.mark.parametrize("method", [m for m in ALL if m != "imtl_g"])
def test_two_opposite_gradients(method):
    g = make_jacobian("gauss", 1, 97, seed=16)[0]
    J = torch.stack([g, -2.0 * g])
    d, _ = run(J, method, generator=torch.Generator().manual_seed(3), **EXACT[method])
    ref = _oracle(method, J, 3)
    assert err(d, ref, J) < TOL_SOLVER
    if method in ("mgda", "upgrad", "dualproj"):
        assert float(d.norm()) <= 1e-6 * float(g.norm())        # Pareto-stationary: no common descent


def test_two_opposite_gradients_imtl_g():
    # D·Uᵀ is singular (u_0 − u_1 = 2u_0, g_0 − g_1 = 3g_0 … but any α with Σα = 1 equalises the
    # projections only up to sign): the method must stay finite.
    g = make_jacobian("gauss", 1, 97, seed=16)[0]
    d, _ = run(torch.stack([g, -2.0 * g]), "imtl_g")
    assert torch.isfinite(d).all()


@pytest.mark.parametrize("K", [2, 3, 8])
@pytest.mark.parametrize("method", [m for m in ALL if m != "imtl_g"])
def test_all_gradients_equal(method, K):
    g = make_jacobian("gauss", 1, 97, seed=17)[0]
    J = g.repeat(K, 1)
    d, _ = run(J, method, generator=torch.Generator().manual_seed(5), **EXACT[method])
    assert err(d, _oracle(method, J, 5), J) < TOL_SOLVER


@pytest.mark.parametrize("K", [2, 3, 8])
def test_all_gradients_equal_imtl_g(K):
    # Every α with Σα = 1 satisfies IMTL-G's conditions and gives d = g.
    g = make_jacobian("gauss", 1, 97, seed=17)[0]
    d, _ = run(g.repeat(K, 1), "imtl_g")
    assert err(d, g, g[None]) < 1e-6


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("method", ALL)
def test_zero_gradient_no_nan(method, K):
    J = make_jacobian("conflict", K, 97, seed=18)
    J[K - 1] = 0
    d, _ = run(J, method, generator=torch.Generator().manual_seed(6), **EXACT[method])  # run() checks finiteness
    if method != "imtl_g":
        assert err(d, _oracle(method, J, 6), J) < TOL_SOLVER


@pytest.mark.parametrize("method", ALL)
def test_all_zero_gradients(method):
    J = torch.zeros(4, 33, dtype=torch.float64)
    d, _ = run(J, method, generator=torch.Generator().manual_seed(0))
    assert torch.equal(d, torch.zeros(33, dtype=torch.float64))
