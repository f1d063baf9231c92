"""Minimum-norm point of a convex hull (MGDA) on the device."""

from __future__ import annotations

import torch
from torch import Tensor

from .interior_point import (mehrotra_qp, quad_form, subset_masks, support_kkt_matrix, symmetric64,
                             trace_normalized)

__all__ = ["min_norm_simplex"]

#: Largest K solved by exhaustive support enumeration (2^K − 1 bordered solves of size K + 1).
ENUMERATION_MAX_K = 8


def _ridged_gram(G: Tensor) -> Tensor:
    if G.is_floating_point():
        eps_G = torch.finfo(G.dtype).eps
    else:
        eps_G = torch.finfo(torch.float64).eps
    Gh, _ = trace_normalized(symmetric64(G))
    K = Gh.shape[-1]
    # A Gram rounded in low precision can be indefinite (≈ −1e-8·tr on exact duplicates), which
    # makes the QP non-convex. The ridge is relative to each diagonal entry, not to the trace: a
    # trace-relative ridge swamps tasks whose gradients are orders of magnitude smaller.
    d = torch.diagonal(Gh, dim1=-2, dim2=-1).clamp(min=0.0)
    return Gh + torch.diag_embed((K * eps_G) * d)


def _min_norm_enumerate(Gh: Tensor) -> Tensor:
    """Exact minimiser by enumerating every support ``S``: solve ``[Ĝ_SS 1; 1ᵀ 0][w; ν] = [0; 1]``.

    The answer is the feasible candidate of least ``wᵀĜw``. Since it is a minimum over feasible
    points, singular or ill-conditioned restricted systems are harmless: they either fail the
    feasibility test or lose the comparison. The K vertices (singleton supports) are always feasible.
    """
    K = Gh.shape[-1]
    S = subset_masks(K, Gh.device)                                   # [P, K]
    Gb = Gh.unsqueeze(-3)                                            # [..., 1, K, K]
    A = support_kkt_matrix(Gb, S, simplex=True)                      # [..., P, K+1, K+1]
    rhs = torch.zeros(A.shape[:-1], dtype=Gh.dtype, device=Gh.device)
    rhs[..., K] = 1.0
    sol, info = torch.linalg.solve_ex(A, rhs.unsqueeze(-1))
    w = sol[..., :K, 0]
    total = w.sum(-1)
    ok = ((info == 0) & torch.isfinite(w).all(-1) & (w >= -1e-12).all(-1)
          & ((total - 1.0).abs() <= 1e-6))
    w = torch.where(ok.unsqueeze(-1), w, 0.0).clamp(min=0.0)
    w = w / torch.where(ok, w.sum(-1), 1.0).unsqueeze(-1)
    f = torch.where(ok, quad_form(Gb, w), torch.inf)
    best = f.argmin(-1, keepdim=True)                                # [..., 1]
    return torch.gather(w, -2, best.unsqueeze(-1).expand(best.shape + (K,))).squeeze(-2)


def _min_norm_ipm(Gh: Tensor, iterations: int) -> Tensor:
    c = torch.zeros(Gh.shape[:-1], dtype=Gh.dtype, device=Gh.device)
    w, _ = mehrotra_qp(2.0 * Gh, c, simplex=True, iterations=iterations, polish=True)
    return w


def min_norm_simplex(G: Tensor, *, iterations: int = 30) -> Tensor:
    """Weights of the minimum-norm point of the convex hull of the task gradients (MGDA).

    Solves ``w* = argmin_{w ∈ Δ_K} wᵀGw`` (Sener & Koltun, NeurIPS 2018), so that
    ``d = Σ_i w*_i g_i`` is the min-norm element of ``conv{g_i}``.

    Args:
        G: Gram matrices ``[..., K, K]``, any float dtype, any device; batched over leading dims.
        iterations: interior-point iterations, used only for ``K > 8``.

    Returns:
        ``w*`` as ``[..., K]`` float64 on G's device, exactly on the simplex.

    The problem is solved on ``Ĝ = sym(G)/tr(G)`` (G itself if its trace is 0) plus a ridge
    ``K·eps_G·diag(Ĝ)`` with ``eps_G`` the machine epsilon of G's dtype (it only matters for a
    low-precision G, whose rounding can make it indefinite).

    * ``K ≤ 8``: exact support enumeration, all ``2^K − 1`` supports as one batched solve (no
      iterations); exact to the inherent floor of the problem.
    * ``K > 8``: Mehrotra primal-dual interior point on ``min ½wᵀ(2Ĝ)w`` over the simplex plus a
      support polish. Measured against exact solutions on adversarial families (duplicated and
      zero gradients, rank-deficient and Pareto-stationary inputs), with the error
      ``‖d − d*‖ / max(‖d*‖, 1e-3·rms‖g_i‖)``: worst 4e-6 at 20 iterations, 3e-8 at 25, 3e-10 at
      the default 30 (K = 4…16; for K = 32, ≤ 1e-6 from 25 iterations). Near-collinear inputs
      (cond(G) ≈ 1e14) stay at their own float64 floor of 1e-6…3e-5, the same as the exact
      enumeration. The slowest inputs are those with ``d* ≈ 0`` and a non-unique optimal face
      (duplicated or zero gradients), where the polish cannot settle on a single support.

    The enumeration holds ``B·(2^K − 1)`` bordered systems of size ``K + 1`` at once (about 0.2 MB
    per batch entry at K = 8).

    If several ``w`` give the same ``d`` (duplicated gradients, zero rows) any of them may be
    returned; ``d`` itself is what is determined. An all-zero G returns a vertex.
    """
    Gh = _ridged_gram(G)
    K = Gh.shape[-1]
    if K <= ENUMERATION_MAX_K:
        return _min_norm_enumerate(Gh)
    return _min_norm_ipm(Gh, iterations)
