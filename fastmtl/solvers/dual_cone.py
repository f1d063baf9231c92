"""Projections onto the dual cone of the task gradients (UPGrad / DualProj), in weight space."""

from __future__ import annotations

import torch
from torch import Tensor

from .interior_point import matvec, mehrotra_qp, symmetric64

__all__ = ["project_dual_cone"]


def project_dual_cone(G: Tensor, targets: Tensor, *, iterations: int = 16, norm_eps: float = 1e-4,
                      reg_eps: float = 1e-4) -> Tensor:
    """Weights of the projections of ``Jᵀu`` onto the dual cone ``{x : Jx ≥ 0}`` (UPGrad, DualProj).

    For each target row ``u`` returns ``v = u + x`` with

        ``x = argmin_{x ≥ 0} (u + x)ᵀ Q (u + x)``,   ``Q = Ĝ + reg_eps·I``,

    ``Ĝ = G/tr(G)``, and ``Ĝ = 0`` when ``tr(G) < norm_eps`` (an absolute threshold: a problem with
    tiny gradients collapses to ``v = max(u, 0)``). This is exactly the problem TorchJD solves with
    quadprog (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024), i.e.
    ``min vᵀQv`` s.t. ``v ≥ u``; G is symmetrised first. UPGrad uses the targets ``e_i``
    (``λ = Σ_i p_i v(e_i)``), DualProj the single target ``p``.

    Args:
        G: Gram matrices ``[..., K, K]``, any float dtype and device.
        targets: ``[..., T, K]``, one target ``u`` per row; leading dims broadcast with G's.
        iterations: interior-point iterations.
        norm_eps, reg_eps: TorchJD's normalisation threshold and ridge.

    Returns:
        ``V`` of shape ``[..., T, K]``, float64 on G's device.

    Algorithm: the orthant QP ``min ½xᵀQx + (Qu)ᵀx, x ≥ 0`` by a Mehrotra primal-dual interior
    point (all targets as one batch) and a support polish. The ridge bounds cond(Q) by ≈ 1e4, so
    the iteration count barely depends on the input. Measured worst-case error against quadprog
    (``‖Jᵀ(λ − λ*)‖ / ‖Jᵀλ*‖`` on adversarial families including duplicated, zero, rank-deficient
    and Pareto-stationary gradients, float64): UPGrad (K targets) at the default 16 iterations
    ≤ 1e-12 for K ≤ 8, 3e-7 at K = 16 and 1e-6 at K = 32 (14 iterations: 7e-6 / 1e-5; 20
    iterations: ≤ 1e-11); DualProj (one target) ≤ 1e-12 for K ≤ 32 at 12 iterations except one
    near-collinear K = 3 input at 6e-6, which 16 iterations remove. Use 18 (UPGrad) / 14
    (DualProj) for K ≈ 64. Targets are rescaled to unit max-norm internally (the solution is
    positively homogeneous in ``u``), so the count does not depend on their size either.

    The ridge makes "non-conflicting" hold for Q, not G: ``Qv ≥ 0`` on the support, i.e.
    ``(Gv)_j ≥ −reg_eps·tr(G)·v_j``. ``reg_eps=0`` gives the exact projection (then Q must be
    positive definite, or at least the problem well posed, for the same accuracy).
    """
    Gs = symmetric64(G)
    K = Gs.shape[-1]
    tr = torch.diagonal(Gs, dim1=-2, dim2=-1).sum(-1)
    keep = (tr >= norm_eps).unsqueeze(-1).unsqueeze(-1)
    Gh = torch.where(keep, Gs / torch.where(keep, tr.unsqueeze(-1).unsqueeze(-1), 1.0), 0.0)
    Q = Gh + reg_eps * torch.eye(K, dtype=Gs.dtype, device=Gs.device)
    Qb = Q.unsqueeze(-3)                                             # [..., 1, K, K]

    u = targets.to(device=Gs.device, dtype=torch.float64)
    scale = u.abs().amax(-1, keepdim=True)
    scale = torch.where(scale > 0, scale, 1.0)
    un = u / scale
    x, _ = mehrotra_qp(Qb, matvec(Qb, un), simplex=False, iterations=iterations, polish=True)
    return u + x * scale
