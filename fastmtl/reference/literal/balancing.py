"""Closed-form and equilibrium balancings: IMTL-G, Aligned-MTL, ConFIG, Nash-MTL.

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import math

import torch

from .common import as64, combine_rows, task_rows, vdot

__all__ = ["imtl_g_literal", "aligned_mtl_literal", "config_literal", "nash_mtl_literal"]


def imtl_g_literal(J) -> torch.Tensor:
    """IMTL-G, Liu et al., "Towards Impartial Multi-task Learning" (ICLR 2021), closed form.

    Test oracle: ``d = Σ α_i g_i`` with ``Σ α = 1`` and equal projections ``⟨d, u_i⟩`` on every
    unit gradient ``u_i = g_i / ‖g_i‖``: with ``D = [g_0 − g_k]_{k≥1}`` and
    ``U = [u_0 − u_k]_{k≥1}`` (rows), ``α_{1:} = (g_0 Uᵀ)(D Uᵀ)⁻¹``, ``α_0 = 1 − Σ α_{1:}``.
    ``K = 1`` returns ``g_0``. Requires linearly independent, non-zero gradients (``D Uᵀ``
    invertible); a zero gradient raises ``ValueError``.
    """
    J = as64(J)
    K = J.shape[0]
    g = task_rows(J)
    if K == 1:
        return g[0].clone()
    norms = [math.sqrt(vdot(gi, gi)) for gi in g]
    if any(n == 0.0 for n in norms):
        raise ValueError("IMTL-G's closed form needs non-zero gradients")
    u = [g[i] / norms[i] for i in range(K)]
    Dm = torch.stack([g[0] - g[k] for k in range(1, K)])
    Um = torch.stack([u[0] - u[k] for k in range(1, K)])
    DU = torch.zeros(K - 1, K - 1, dtype=torch.float64)
    for a in range(K - 1):
        for b in range(K - 1):
            DU[a, b] = vdot(Dm[a], Um[b])
    gU = torch.tensor([vdot(g[0], Um[b]) for b in range(K - 1)], dtype=torch.float64)
    # row vector times inverse: α_{1:} DU = g0Uᵀ  ⇔  DUᵀ α_{1:}ᵀ = (g0Uᵀ)ᵀ
    alpha_rest = torch.linalg.solve(DU.T, gU)
    alpha = torch.cat([(1.0 - alpha_rest.sum()).reshape(1), alpha_rest])
    return combine_rows(J, alpha)


def aligned_mtl_literal(J, *, scale_mode: str = "min") -> torch.Tensor:
    """Aligned-MTL, Senushkin et al., "Independent Component Alignment for Multi-Task Learning"
    (CVPR 2023), Algorithm 1.

    Test oracle: eigendecomposition of ``G = J Jᵀ`` (obtained from the SVD ``J = U S Vᵀ``: the
    eigenvalues are ``s²`` with eigenvectors ``U``, i.e. the same decomposition without squaring
    the condition number), keeping the eigenpairs with ``λ > λ_max · K · eps_float64`` (rank r);
    balance matrix ``B = σ · V_r Λ_r^{-1/2} V_rᵀ`` with ``σ = sqrt(λ_min)`` (``"min"``),
    ``sqrt(median λ)`` (``"median"``, lower median as ``torch.median``) or ``sqrt(mean λ)``
    (``"rmse"``) over the kept eigenvalues; aligned gradients ``J' = B J``; ``d = Σ_i J'_i``
    (the official scale: TorchJD's aggregator is ``d / K``). Rank 0 gives ``d = Σ_i g_i``.
    """
    J = as64(J)
    K = J.shape[0]
    if scale_mode not in ("min", "median", "rmse"):
        raise ValueError(f"unknown scale_mode {scale_mode!r}")
    U, S, _ = torch.linalg.svd(J, full_matrices=False)
    lam = S * S                                   # eigenvalues of G, descending
    lam_max = float(lam.max()) if lam.numel() else 0.0
    tol = lam_max * K * torch.finfo(torch.float64).eps
    keep = [k for k in range(lam.numel()) if float(lam[k]) > tol]
    if not keep:
        return combine_rows(J, [1.0] * K)
    lam_r = lam[keep]
    V_r = U[:, keep]
    if scale_mode == "min":
        sigma2 = float(lam_r.min())
    elif scale_mode == "median":
        sigma2 = float(torch.median(lam_r))
    else:
        sigma2 = float(lam_r.mean())
    B = math.sqrt(sigma2) * (V_r @ torch.diag(lam_r.rsqrt()) @ V_r.T)
    aligned = [combine_rows(J, B[i]) for i in range(K)]          # rows of B J
    d = torch.zeros(J.shape[1], dtype=torch.float64)
    for row in aligned:
        d += row
    return d


def config_literal(J, pref=None) -> torch.Tensor:
    """ConFIG, Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks" (ICLR 2025), with the official ``EqualWeight`` / ``ProjectionLength`` models.

    Test oracle: unit vectors ``u_i = g_i/‖g_i‖`` (zero rows stay zero), ``x`` = the minimum-norm
    least-squares solution of ``U x = w`` (``w = 1`` or ``pref``) by ``torch.linalg.lstsq``
    (``gelsd``), ``x̂ = x/‖x‖``, ``d = (Σ_i ⟨g_i, x̂⟩) x̂``; ``d = 0`` when ``x = 0``.
    """
    J = as64(J)
    K, D = J.shape
    U = torch.zeros_like(J)
    for i in range(K):
        n = math.sqrt(vdot(J[i], J[i]))
        if n > 0:
            U[i] = J[i] / n
    w = torch.ones(K, dtype=torch.float64) if pref is None else torch.as_tensor(pref, dtype=torch.float64)
    x = torch.linalg.lstsq(U, w[:, None], driver="gelsd").solution[:, 0]
    xn = math.sqrt(vdot(x, x))
    if xn == 0.0:
        return torch.zeros(D, dtype=torch.float64)
    xhat = x / xn
    length = sum(vdot(J[i], xhat) for i in range(K))
    return length * xhat


def nash_mtl_literal(J, *, zero_tol: float = 1e-12):
    """Nash-MTL bargaining weights, Navon et al., "Multi-Task Learning as a Bargaining Game"
    (ICML 2022): ``α > 0`` with ``α_i ⟨g_i, Σ_j α_j g_j⟩ = 1`` for every task.

    Test oracle. Tasks with ``‖g_i‖² ≤ zero_tol · max_j ‖g_j‖²`` get ``α_i = 0`` and are left out.
    For the others, with unit vectors ``u_i = g_i/‖g_i‖``, ``β = ‖g‖∘α`` is the minimiser of the
    strictly convex ``½‖Σ β_i u_i‖² − Σ log β_i`` (its stationarity condition is the bargaining
    condition), solved as a convex program with cvxpy (Clarabel, on the vectors in ``R^D``) and
    refined by three Newton steps on ``β∘(Cβ) = 1`` in numpy. Returns ``α`` as a float64 ``[K]``
    tensor, or ``None`` when no solution exists (0 in the convex hull of the gradients: the convex
    program is unbounded).
    """
    import cvxpy as cp
    import numpy as np

    J = as64(J)
    K = J.shape[0]
    sq = [vdot(J[i], J[i]) for i in range(K)]
    top = max(sq)
    live = [i for i in range(K) if top > 0 and sq[i] > zero_tol * top]
    alpha = np.zeros(K)
    if not live:
        return torch.from_numpy(alpha)
    norms = np.array([math.sqrt(sq[i]) for i in live])
    U = np.stack([(J[i] / math.sqrt(sq[i])).numpy() for i in live])        # live unit gradients
    beta = cp.Variable(len(live))
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(U.T @ beta) - cp.sum(cp.log(beta))))
    try:
        problem.solve(solver=cp.CLARABEL)
    except cp.error.SolverError:
        return None
    if problem.status not in ("optimal", "optimal_inaccurate") or beta.value is None:
        return None
    b = np.asarray(beta.value, dtype=np.float64)
    C = U @ U.T
    if not np.all(np.isfinite(b)):
        return None
    for _ in range(3):                       # Newton on F(β) = β∘(Cβ) − 1
        Cb = C @ b
        F = b * Cb - 1.0
        Jac = np.diag(Cb) + b[:, None] * C
        try:
            b = b - np.linalg.solve(Jac, F)
        except np.linalg.LinAlgError:        # singular: the convex program had no true minimiser
            return None
    if not (np.all(np.isfinite(b)) and np.all(b > 0) and np.max(np.abs(b * (C @ b) - 1.0)) < 1e-8):
        return None
    alpha[live] = b / norms
    return torch.from_numpy(alpha)
