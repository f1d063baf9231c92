"""Accuracy and robustness of the on-device K×K solvers against float64 host references.

References live in this file: exact support enumeration in numpy (MGDA, CAGrad; objectives are
evaluated on J itself), quadprog (UPGrad / DualProj, the solver TorchJD uses) and a long damped
Newton run (Nash-MTL). Error measure for a coefficient vector λ against a reference λ*:

    e = ‖Jᵀλ − Jᵀλ*‖ / max(‖Jᵀλ*‖, 1e-3·rms_i‖g_i‖)

The floor only matters where d* ≈ 0 (MGDA on Pareto-stationary inputs).
"""

from __future__ import annotations

import functools
import itertools
import os

import numpy as np
import pytest
import torch

from fastmtl.solvers import cagrad_simplex_weights, min_norm_simplex, nash_weights, project_dual_cone
from fastmtl.solvers.cagrad import _cagrad_ipm, _problem
from fastmtl.solvers.min_norm import _min_norm_ipm, _ridged_gram

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FAMILIES = ("gauss", "scaled", "conflict", "aligned", "lowrank", "nearcol", "dup", "zero", "pareto")
KS = (1, 2, 3, 4, 8, 16)
TOL = 1e-5
# `nearcol` (rank K/2 + 1e-7 noise, cond(G) ≈ 1e14) has an inherent float64 floor of 1e-6…3e-5 for
# any method that only sees G, the exact enumeration included; it is checked against 3× that floor.
TOL_NEARCOL = 1e-4


# --------------------------------------------------------------------------------------------------
# Input families
# --------------------------------------------------------------------------------------------------

def make_J(family: str, K: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, K, FAMILIES.index(family)])
    D = int(rng.integers(50, 201))
    if family == "gauss":
        J = rng.standard_normal((K, D))
    elif family == "scaled":  # row norms over four decades
        J = rng.standard_normal((K, D)) * 10.0 ** rng.uniform(-2, 2, (K, 1))
    elif family == "conflict":  # a shared direction with random signs, plus noise
        v = rng.standard_normal(D)
        signs = rng.choice([-1.0, 1.0], size=(K, 1))
        J = signs * rng.uniform(0.5, 2.0, (K, 1)) * v + 0.3 * rng.standard_normal((K, D))
    elif family == "aligned":  # cosines ≈ 0.999+
        J = rng.standard_normal(D) + 0.03 * rng.standard_normal((K, D))
    elif family in ("lowrank", "nearcol"):  # exactly singular G / cond(G) ≈ 1e14
        r = max(1, K // 2)
        J = rng.standard_normal((K, r)) @ rng.standard_normal((r, D))
        if family == "nearcol":
            J = J + 1e-7 * rng.standard_normal((K, D))
    elif family == "dup":  # exact duplicates, positive multiples, negations
        m = max(1, (K + 1) // 2)
        base = rng.standard_normal((m, D))
        rows = list(base)
        for _ in range(m, K):
            rows.append(rng.choice([1.0, 2.5, -1.0]) * base[rng.integers(m)])
        J = np.stack(rows)
    elif family == "zero":  # one or two zero rows
        J = rng.standard_normal((K, D))
        J[rng.choice(K, size=min(K, 1 if K < 4 else 2), replace=False)] = 0.0
    elif family == "pareto":  # 0 in the convex hull
        J = rng.standard_normal((K, D))
        p = rng.uniform(0.2, 1.0, K)
        J[-1] = -(p[:-1] @ J[:-1]) / p[-1] if K > 1 else 0.0
    else:
        raise ValueError(family)
    return J


def gram(J: np.ndarray) -> np.ndarray:
    G = J @ J.T
    return 0.5 * (G + G.T)


def seeds_for(K: int) -> range:
    return range(3) if K <= 8 else range(1)  # the K = 16 references enumerate 65535 supports


def cases(K: int):
    return [(f, s, make_J(f, K, s)) for f in FAMILIES for s in seeds_for(K)]


def d_error(J: np.ndarray, lam: np.ndarray, lam_ref: np.ndarray) -> float:
    d, d_ref = J.T @ lam, J.T @ lam_ref
    rms = np.sqrt(np.mean(np.sum(J * J, axis=1)))
    den = max(np.linalg.norm(d_ref), 1e-3 * rms, 1e-300)
    return float(np.linalg.norm(d - d_ref) / den)


def tol_for(family: str) -> float:
    return TOL_NEARCOL if family == "nearcol" else TOL


def G_batch(cs) -> torch.Tensor:
    return torch.stack([torch.from_numpy(gram(J)) for _, _, J in cs])


def check_errors(name, K, cs, lam, ref_fn, worst):
    failures = []
    for (fam, seed, J), l in zip(cs, lam):
        ref = ref_fn(fam, seed, J)
        if ref is None:
            continue
        e = d_error(J, l, ref)
        worst[(name, K, fam == "nearcol")] = max(worst.get((name, K, fam == "nearcol"), 0.0), e)
        if not e <= tol_for(fam):
            failures.append((fam, seed, e))
    assert not failures, f"{name} K={K}: {failures}"


WORST: dict = {}  # (solver, K, is_nearcol) -> worst error seen; printed by the summary test


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _all_masks(K: int) -> np.ndarray:
    idx = np.arange(1, 2**K)
    return ((idx[:, None] >> np.arange(K)) & 1).astype(bool)


def _masks(J: np.ndarray) -> np.ndarray:
    """Every support, except those holding two identical gradients: their KKT system is exactly
    singular, and a support without the copy reaches the same points."""
    K = J.shape[0]
    S = _all_masks(K)
    keep = np.ones(len(S), bool)
    for i, j in itertools.combinations(range(K), 2):
        if np.array_equal(J[i], J[j]):
            keep &= ~(S[:, i] & S[:, j])
    return S[keep]


def _bordered(G: np.ndarray, S: np.ndarray) -> np.ndarray:
    """[[G_SS, 1_S], [1_Sᵀ, 0]] with identity rows outside S, for every support in S [P, K]."""
    P, K = S.shape
    A = np.zeros((P, K + 1, K + 1))
    A[:, :K, :K] = np.where(S[:, :, None] & S[:, None, :], G, 0.0)
    A[:, np.arange(K), np.arange(K)] += ~S
    A[:, :K, K] = S
    A[:, K, :K] = S
    return A


def _solve_supports(G: np.ndarray, S: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Solve the bordered system of every support (chunked to stay in cache)."""
    out = np.empty(B.shape)
    for s in range(0, S.shape[0], 2048):
        a, b = _bordered(G, S[s:s + 2048]), B[s:s + 2048]
        try:
            out[s:s + 2048] = np.linalg.solve(a, b)
        except np.linalg.LinAlgError:  # an exactly singular support (e.g. collinear duplicates)
            out[s:s + 2048] = np.linalg.pinv(a) @ b
    return out


def _feasible(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(W).all(1) & (W >= -1e-10).all(1) & (np.abs(W.sum(1) - 1.0) <= 1e-8)
    W = np.where(ok[:, None], np.clip(W, 0.0, None), 1.0)
    return W / W.sum(1, keepdims=True), ok


@functools.lru_cache(maxsize=None)
def ref_mgda(family: str, K: int, seed: int) -> np.ndarray:
    return mgda_exact(make_J(family, K, seed))


def mgda_exact(J: np.ndarray) -> np.ndarray:
    """Exact min-norm weights: every support's KKT point, objective ‖Jᵀw‖² evaluated on J."""
    K = J.shape[0]
    S = _masks(J)
    B = np.zeros((len(S), K + 1, 1))
    B[:, K, 0] = 1.0
    W, ok = _feasible(_solve_supports(gram(J), S, B)[:, :K, 0])
    W = W[ok]
    return W[np.argmin(np.sum((W @ J) ** 2, axis=1))]


@functools.lru_cache(maxsize=None)
def ref_cagrad(family: str, K: int, seed: int, c: float):
    """Exact CAGrad dual by support enumeration with F(w) = ⟨g_w, g_0⟩ + r‖g_w‖ evaluated on J.

    Returns (λ*, ‖g_w*‖ / rms‖g_i‖)."""
    J = make_J(family, K, seed)
    G = gram(J)
    u = np.full(K, 1.0 / K)
    g0 = J.T @ u
    r = c * np.linalg.norm(g0)
    a = G @ u
    S = _masks(J)
    B = np.zeros((len(S), K + 1, 2))
    B[:, K, 0] = 1.0
    B[:, :K, 1] = np.where(S, -a[None], 0.0)
    X = _solve_supports(G, S, B)
    w0, w1 = X[:, :K, 0], X[:, :K, 1]
    Gw0 = w0 @ G
    c0 = np.sum(Gw0 * w0, axis=1)
    c1 = 2 * np.sum(Gw0 * w1, axis=1)
    c2 = np.sum((w1 @ G) * w1, axis=1) - r * r
    cands = [w0]
    with np.errstate(all="ignore"):
        disc = c1 * c1 - 4 * c2 * c0
        real = disc >= 0
        for sgn in (1.0, -1.0):
            rho = np.where(real, (-c1 + sgn * np.sqrt(np.where(real, disc, 0.0))) / (2 * c2), np.nan)
            lin = np.where(c1 != 0, -c0 / c1, np.nan)  # c2 = 0: linear equation
            rho = np.where(c2 == 0, lin, rho)
            cands.append(w0 + rho[:, None] * w1)
    W, ok = _feasible(np.concatenate(cands))
    W = W[ok]
    GW = W @ J
    nrm = np.linalg.norm(GW, axis=1)
    i = int(np.argmin(GW @ g0 + r * nrm))
    rms = np.sqrt(np.mean(np.sum(J * J, axis=1)))
    ngw = nrm[i]
    lam = u + (r / ngw) * W[i] if ngw > 1e-12 * max(rms, 1e-300) else u
    return lam, ngw / max(rms, 1e-300)


def ref_dual_cone(G: np.ndarray, U: np.ndarray, norm_eps=1e-4, reg_eps=1e-4) -> np.ndarray:
    """TorchJD's QuadprogProjector: min vᵀQv s.t. v ≥ u with quadprog, for every row u of U."""
    quadprog = pytest.importorskip("quadprog")
    K = G.shape[0]
    tr = np.trace(G)
    Q = (np.zeros_like(G) if tr < norm_eps else G / tr) + reg_eps * np.eye(K)
    return np.stack([quadprog.solve_qp(Q, np.zeros(K), np.eye(K), u)[0] for u in U])


def ref_nash(G: np.ndarray, iters: int = 200):
    """Damped Newton with backtracking on h(β) = ½βᵀCβ − Σ log β; returns (α, converged)."""
    K = G.shape[0]
    d = np.diag(G).copy()
    live = d > 1e-12 * d.max()
    alpha = np.zeros(K)
    if not live.any():
        return alpha, True
    Gl = G[np.ix_(live, live)]
    n = np.sqrt(np.diag(Gl))
    C = Gl / np.outer(n, n)
    b = np.ones(live.sum())

    def h(b):
        return 0.5 * b @ C @ b - np.log(b).sum() if (b > 0).all() else np.inf

    with np.errstate(all="ignore"):
        for _ in range(iters):
            if np.max(np.abs(b * (C @ b) - 1.0)) <= 1e-13 or not np.isfinite(b).all():
                break
            grad = C @ b - 1.0 / b
            try:
                step = np.linalg.solve(C + np.diag(1.0 / b**2), grad)
            except np.linalg.LinAlgError:  # β diverging: no solution
                break
            t = 1.0
            while not h(b - t * step) <= h(b) - 0.25 * t * (grad @ step) and t > 1e-12:
                t *= 0.5
            b = b - t * step
    res = np.max(np.abs(b * (C @ b) - 1.0))
    alpha[live] = b / n
    return alpha, bool(res <= 1e-10)


# --------------------------------------------------------------------------------------------------
# MGDA
# --------------------------------------------------------------------------------------------------

def _simplex_ok(w: torch.Tensor):
    assert w.dtype == torch.float64
    assert torch.isfinite(w).all()
    assert (w >= 0).all()
    assert torch.allclose(w.sum(-1), torch.ones((), dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("K", KS)
def test_min_norm_accuracy(K):
    cs = cases(K)
    w = min_norm_simplex(G_batch(cs))
    _simplex_ok(w)
    check_errors("mgda", K, cs, w.numpy(), lambda f, s, J: ref_mgda(f, K, s), WORST)


@pytest.mark.parametrize("K", (3, 4, 8))
def test_min_norm_interior_point_small_k(K):
    # The public function enumerates supports for K ≤ 8; the interior-point path is checked too.
    cs = cases(K)
    w = _min_norm_ipm(_ridged_gram(G_batch(cs)), 30)
    _simplex_ok(w)
    check_errors("mgda-ipm", K, cs, w.numpy(), lambda f, s, J: ref_mgda(f, K, s), WORST)


def test_min_norm_float32_gram():
    cs = cases(4)
    G32 = torch.stack([torch.from_numpy(J).float() @ torch.from_numpy(J).float().T for _, _, J in cs])
    w = min_norm_simplex(G32)
    _simplex_ok(w)
    errs = [d_error(J, l, ref_mgda(f, 4, s)) for (f, s, J), l in zip(cs, w.numpy())
            if f in ("gauss", "scaled", "conflict", "aligned")]
    assert max(errs) < 1e-3


# --------------------------------------------------------------------------------------------------
# UPGrad / DualProj
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", KS)
def test_dual_cone_accuracy(K):
    cs = cases(K)
    G = G_batch(cs)
    eye = torch.eye(K, dtype=torch.float64)
    V = project_dual_cone(G, eye.expand(len(cs), K, K))                 # UPGrad, 16 iterations
    Vd = project_dual_cone(G, torch.full((1, K), 1.0 / K, dtype=torch.float64), iterations=12)
    assert V.shape == (len(cs), K, K) and Vd.shape == (len(cs), 1, K)
    assert torch.isfinite(V).all() and torch.isfinite(Vd).all()
    assert (V >= eye - 1e-12).all()
    lam_up = V.mean(-2).numpy()
    lam_dp = Vd[:, 0].numpy()

    def ref_up(f, s, J):
        return ref_dual_cone(gram(J), np.eye(K)).mean(0)

    def ref_dp(f, s, J):
        return ref_dual_cone(gram(J), np.full((1, K), 1.0 / K))[0]

    check_errors("upgrad", K, cs, lam_up, ref_up, WORST)
    check_errors("dualproj", K, cs, lam_dp, ref_dp, WORST)
    # Direct comparison of the weight vectors, too (Q has cond ≤ ~1e4, so v is well determined).
    for (f, s, J), v in zip(cs, V.numpy()):
        ref = ref_dual_cone(gram(J), np.eye(K))
        assert np.abs(v - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), (f, s)


@pytest.mark.parametrize("K", (2, 3, 4, 8, 16))
def test_upgrad_non_conflicting(K):
    cs = cases(K)
    G = G_batch(cs)
    eye = torch.eye(K, dtype=torch.float64)
    # TorchJD's ridged problem: the guarantee is on Q = Ĝ + reg_eps·I, i.e. Qλ ≥ 0.
    lam = project_dual_cone(G, eye).mean(-2)
    tr = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1, keepdim=True)
    Gh = torch.where(tr[..., None] >= 1e-4, G / tr[..., None], 0.0)
    Qlam = ((Gh + 1e-4 * eye) @ lam.unsqueeze(-1)).squeeze(-1)
    assert (Qlam >= -1e-9).all(), Qlam.min()
    # Without the ridge the projection is exactly onto {x : Jx ≥ 0}: (Gλ)_i ≥ 0 for every task.
    lam0 = project_dual_cone(G, eye, reg_eps=0.0, iterations=24).mean(-2)
    Glam = (G @ lam0.unsqueeze(-1)).squeeze(-1)
    assert torch.isfinite(lam0).all()
    assert (Glam >= -1e-9 * tr).all(), (Glam / tr).min()
    # ... and the tasks really were in conflict before the projection for some inputs.
    assert ((G.mean(-1) < -1e-6 * tr).any(-1)).any()


def test_dual_cone_scaling_and_tiny_gram():
    J = make_J("conflict", 4, 0)
    G = torch.from_numpy(gram(J))
    U = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    V = project_dual_cone(G, U)
    V2 = project_dual_cone(G, 1e6 * U)  # positively homogeneous in the targets
    assert torch.allclose(V2, 1e6 * V, rtol=1e-9, atol=0)
    # tr(G) < norm_eps: TorchJD replaces Ĝ by 0, so v = max(u, 0).
    Vt = project_dual_cone(G * 1e-9, U)
    assert torch.allclose(Vt, U.clamp(min=0), atol=1e-12, rtol=0)
    # Different trace scalings of G above norm_eps give the same answer.
    assert torch.allclose(project_dual_cone(G * 1e3, U), V, rtol=1e-9, atol=1e-12)


def test_dual_cone_matches_torchjd():
    quadprog = pytest.importorskip("quadprog")
    pytest.importorskip("torchjd")
    try:
        from torchjd._linalg import DualConeProjector, normalize, regularize
        from torchjd.aggregation import DualProjWeighting, UPGradWeighting
    except ImportError as exc:  # internal layout of another TorchJD version
        pytest.skip(f"TorchJD Gramian weightings not found: {exc}")

    class QuadprogDirect(DualConeProjector):
        """TorchJD's QuadprogProjector with quadprog called directly (no qpsolvers dependency)."""

        def __call__(self, U, G):
            Q = regularize(normalize(G, 1e-4), 1e-4).double().numpy()
            m = Q.shape[0]
            W = np.apply_along_axis(
                lambda u: quadprog.solve_qp(Q, np.zeros(m), np.eye(m), u)[0], -1, U.double().numpy())
            return torch.as_tensor(W, dtype=G.dtype)

    for fam, K, seed in [("gauss", 3, 0), ("conflict", 4, 1), ("scaled", 5, 2), ("dup", 6, 0),
                         ("lowrank", 8, 1), ("zero", 3, 2)]:
        G = torch.from_numpy(gram(make_J(fam, K, seed)))
        up = UPGradWeighting(projector=QuadprogDirect())(G)
        dp = DualProjWeighting(projector=QuadprogDirect())(G)
        eye = torch.eye(K, dtype=torch.float64)
        mine_up = (torch.full((K,), 1.0 / K, dtype=torch.float64) @ project_dual_cone(G, eye))
        mine_dp = project_dual_cone(G, torch.full((1, K), 1.0 / K, dtype=torch.float64))[0]
        J = make_J(fam, K, seed)
        assert d_error(J, mine_up.numpy(), up.numpy()) <= 1e-6, (fam, K)
        assert d_error(J, mine_dp.numpy(), dp.numpy()) <= 1e-6, (fam, K)


# --------------------------------------------------------------------------------------------------
# CAGrad
# --------------------------------------------------------------------------------------------------

def _cagrad_check(name, K, cs, c, w, lam):
    assert torch.isfinite(lam).all() and torch.isfinite(w).all()
    _simplex_ok(w)
    u = torch.full((K,), 1.0 / K, dtype=torch.float64)

    def ref(f, s, J):
        lam_ref, ngw = ref_cagrad(f, K, s, c)
        # ‖g_w*‖ → 0: the dual fixes no direction (d = g_0 by convention when it is exactly 0),
        # and the conditioning of d degrades as 1/‖g_w*‖; such inputs are checked separately.
        return lam_ref if ngw > 1e-6 else None

    check_errors(name, K, cs, lam.numpy(), ref, WORST)
    for (f, s, _), l in zip(cs, lam):
        if ref_cagrad(f, K, s, c)[1] <= 1e-12:  # exactly degenerate: λ = u
            assert torch.allclose(l, u, atol=1e-12, rtol=0), (f, s)


@pytest.mark.parametrize("K", KS)
def test_cagrad_accuracy(K):
    cs = cases(K)
    w, lam = cagrad_simplex_weights(G_batch(cs), 0.5)
    _cagrad_check("cagrad", K, cs, 0.5, w, lam)


@pytest.mark.parametrize("K,c", [(3, 0.2), (4, 0.5), (4, 0.9), (8, 2.0), (12, 0.5)])
def test_cagrad_interior_point_small_k(K, c):
    # The public function enumerates supports for K ≤ 10; the interior-point path is checked too.
    cs = cases(K)
    Gh, a, r = _problem(G_batch(cs), c)
    w = _cagrad_ipm(Gh, a, r, 60)
    s = torch.sqrt(torch.einsum("...i,...ij,...j->...", w, Gh, w))
    lam = torch.where((s > 1.5e-8)[:, None], 1.0 / K + (r / s)[:, None] * w, torch.full_like(w, 1.0 / K))
    _cagrad_check("cagrad-ipm", K, cs, c, w, lam)


def test_cagrad_scale_invariance_and_k1():
    J = make_J("conflict", 5, 0)
    G = torch.from_numpy(gram(J))
    w, lam = cagrad_simplex_weights(G, 0.5)
    w2, lam2 = cagrad_simplex_weights(G * 1e-12, 0.5)
    assert torch.allclose(lam, lam2, rtol=1e-9, atol=1e-12)
    w1, lam1 = cagrad_simplex_weights(torch.tensor([[4.0]]), 0.5)
    assert torch.allclose(w1, torch.ones(1, dtype=torch.float64))
    assert torch.allclose(lam1, torch.tensor([1.5], dtype=torch.float64))  # u + c·‖g_0‖/‖g_0‖


# --------------------------------------------------------------------------------------------------
# Nash-MTL
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", KS)
def test_nash_accuracy_and_residual(K):
    cs = cases(K)
    G = G_batch(cs)
    alpha = nash_weights(G)
    assert torch.isfinite(alpha).all() and (alpha >= 0).all()
    refs = [ref_nash(gram(J)) for _, _, J in cs]
    n_checked = 0
    for (f, s, J), a, (a_ref, conv) in zip(cs, alpha.numpy(), refs):
        Gn = gram(J)
        d = np.diag(Gn)
        live = d > 1e-12 * d.max()
        if not conv or not has_nash_solution(f, K, s):
            continue
        n_checked += 1
        assert np.all(a[~live] == 0.0), (f, s)
        res = np.abs(a * (Gn @ a) - 1.0)[live]
        assert res.max() <= 1e-6, (f, s, res.max())
        e = d_error(J, a, a_ref)
        WORST[("nash", K, f == "nearcol")] = max(WORST.get(("nash", K, f == "nearcol"), 0.0), e)
        assert e <= tol_for(f), (f, s, e)
    assert n_checked >= len(cs) // 2


@functools.lru_cache(maxsize=None)
def has_nash_solution(family: str, K: int, seed: int) -> bool:
    """A solution exists iff 0 is not in the convex hull of the live gradients; near that boundary
    (min-norm ≤ 1e-6·rms) the rounded G decides and β* is huge, so such inputs are skipped."""
    J = make_J(family, K, seed)
    live = np.sum(J * J, axis=1) > 0
    if not live.any():
        return False
    w = ref_mgda(family, K, seed) if live.all() else mgda_exact(J[live])
    rms = np.sqrt(np.mean(np.sum(J * J, axis=1)))
    return bool(np.linalg.norm(J[live].T @ w) > 1e-6 * rms)


def test_nash_warm_start_and_k1():
    J = make_J("gauss", 6, 0)
    G = torch.from_numpy(gram(J))
    a = nash_weights(G)
    assert torch.allclose(a * (G @ a), torch.ones(6, dtype=torch.float64), rtol=0, atol=1e-12)
    # A warm start is rescaled exactly along its ray, so a pure change of scale costs nothing.
    a_scaled = nash_weights(G, init=a * 1e3, iterations=1)
    assert torch.allclose(a_scaled, a, rtol=1e-12, atol=0)
    a_warm = nash_weights(G, init=a * torch.linspace(0.7, 1.3, 6, dtype=torch.float64), iterations=5)
    assert torch.allclose(a_warm, a, rtol=1e-10, atol=0)
    # Unusable entries (a task dead on the previous step, NaN, negative) restart from the default.
    a_bad = nash_weights(G, init=torch.tensor([0.0, -1.0, float("nan"), 1.0, 2.0, 3.0]))
    assert torch.allclose(a_bad, a, rtol=1e-10, atol=0)
    a_revived = nash_weights(G, init=torch.where(torch.arange(6) == 2, 0.0, a), iterations=6)
    assert torch.allclose(a_revived, a, rtol=1e-10, atol=0)
    a1 = nash_weights(torch.tensor([[4.0]]))
    assert torch.allclose(a1, torch.tensor([0.5], dtype=torch.float64))  # 1/sqrt(G_00)
    assert (nash_weights(torch.zeros(1, 1)) == 0).all()
    # αᵀGα = number of live tasks at the solution.
    assert torch.allclose(a @ G @ a, torch.tensor(6.0, dtype=torch.float64), rtol=1e-9)


# --------------------------------------------------------------------------------------------------
# Shared properties: batching, K = 1, zero G, no NaN, dtype/device, compile
# --------------------------------------------------------------------------------------------------

def _all_solvers(G):
    K = G.shape[-1]
    eye = torch.eye(K, dtype=torch.float64)
    return {
        "mgda": min_norm_simplex(G),
        "upgrad": project_dual_cone(G, eye),
        "dualproj": project_dual_cone(G, torch.full((1, K), 1.0 / K, dtype=torch.float64)),
        "cagrad": cagrad_simplex_weights(G, 0.5)[1],
        "nash": nash_weights(G),
    }


@pytest.mark.parametrize("K", (3, 12))
def test_batching_matches_single(K):
    cs = cases(K)[::2]
    G = G_batch(cs)
    batched = _all_solvers(G)

    def same(name, J, x, y):
        # Batched and single calls may round differently (different GEMM paths); where the optimal
        # weights are not unique (d* = 0 with a face of solutions) only d = Jᵀλ is determined.
        if name in ("upgrad", "dualproj"):
            return all(d_error(J, a, b) <= 1e-9 for a, b in zip(x.numpy(), y.numpy()))
        if name == "nash" and not ref_nash(gram(J))[1]:
            return bool(torch.isfinite(x).all() and torch.isfinite(y).all())  # no solution
        return d_error(J, x.numpy(), y.numpy()) <= 1e-7

    for i, (f, s, J) in enumerate(cs):
        for name, out in _all_solvers(G[i]).items():
            assert same(name, J, batched[name][i], out), (name, f, s)
    # Two leading batch dims.
    G2 = G[:4].reshape(2, 2, K, K)
    for name, out in _all_solvers(G2).items():
        out = out.reshape((4,) + out.shape[2:])
        for i in range(4):
            assert same(name, cs[i][2], out[i], batched[name][i]), (name, cs[i][:2])


def test_k1():
    for g in (4.0, 1e-20, 0.0):
        G = torch.tensor([[g]], dtype=torch.float64)
        out = _all_solvers(G)
        assert out["mgda"].tolist() == [1.0]
        assert out["upgrad"].tolist() == [[1.0]]
        assert torch.allclose(out["dualproj"], torch.ones(1, 1, dtype=torch.float64))
        assert torch.allclose(out["cagrad"], torch.tensor([1.5 if g > 0 else 1.0], dtype=torch.float64))
        expected = 1.0 / np.sqrt(g) if g > 0 else 0.0
        assert torch.allclose(out["nash"], torch.tensor([expected], dtype=torch.float64), rtol=1e-12)
    V = project_dual_cone(torch.tensor([[4.0]]), torch.tensor([[-2.0], [3.0]]))
    assert torch.allclose(V, torch.tensor([[0.0], [3.0]], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("K", (1, 2, 5, 9, 12, 16))
def test_zero_gram_is_finite(K):
    G = torch.zeros(K, K)
    out = _all_solvers(G)
    for name, v in out.items():
        assert torch.isfinite(v).all(), name
    _simplex_ok(out["mgda"])
    u = torch.full((K,), 1.0 / K, dtype=torch.float64)
    assert torch.allclose(out["cagrad"], u)
    assert torch.allclose(out["upgrad"], torch.eye(K, dtype=torch.float64), atol=1e-12)
    assert (out["nash"] == 0).all()


@pytest.mark.parametrize("K", (2, 4, 9, 16))
def test_no_nan_on_any_family(K):
    cs = [(f, s, make_J(f, K, s)) for f in FAMILIES for s in range(2)]
    G = G_batch(cs)
    for G_in in (G, G.float(), 1e-30 * G, 1e30 * G):
        for name, v in _all_solvers(G_in).items():
            assert v.dtype == torch.float64 and torch.isfinite(v).all(), name


def _run_compiled(fn, *args):
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    return compiled(*args), fn(*args)


def _compile_case(K=3):
    return torch.from_numpy(gram(make_J("conflict", K, 0)))


def _assert_same(a, b):
    for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.allclose(x, y, rtol=1e-10, atol=1e-12)


def test_compile_min_norm():
    G = _compile_case()
    _assert_same(*_run_compiled(min_norm_simplex, G))
    _assert_same(*_run_compiled(lambda g: _min_norm_ipm(_ridged_gram(g), 3), G))


def test_compile_dual_cone():
    G = _compile_case()
    _assert_same(*_run_compiled(lambda g: project_dual_cone(g, torch.eye(3), iterations=3), G))


def test_compile_cagrad():
    G = _compile_case()
    _assert_same(*_run_compiled(lambda g: cagrad_simplex_weights(g, 0.5), G))
    _assert_same(*_run_compiled(lambda g: _cagrad_ipm(*_problem(g, 0.5), 3), G))


def test_compile_nash():
    G = _compile_case()
    _assert_same(*_run_compiled(lambda g: nash_weights(g, iterations=3), G))


def test_zz_worst_errors(capsys):
    """Summary of the accuracy tests above; FASTMTL_SOLVER_REPORT=1 prints the table."""
    if not WORST:
        pytest.skip("no accuracy test ran")
    for (name, K, nearcol), e in WORST.items():
        assert e <= (TOL_NEARCOL if nearcol else TOL), (name, K, nearcol, e)
    if os.environ.get("FASTMTL_SOLVER_REPORT"):
        with capsys.disabled():
            print()
            for (name, K, nearcol), e in sorted(WORST.items()):
                print(f"  {name:12s} K={K:2d} {'nearcol' if nearcol else 'others '} worst e = {e:.1e}")
