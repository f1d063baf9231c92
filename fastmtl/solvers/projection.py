"""PCGrad's and GradVac's K − 1 rounds of pairwise corrections in Gram space (reference solvers).

Both methods track ``p_i = Σ_k C_ik g_k`` with ``C = I`` initially, so that ``⟨p_i, g_j⟩ = (C G)_ij``
and ``‖p_i‖² = C_i G C_iᵀ``; a correction of ``p_i`` along ``g_j`` changes ``C_ij`` only. Row ``i``
is touched only by task ``i``'s own corrections, so all K rows of a round run as one batched step.
The random orders are drawn by the caller (:func:`fastmtl.methods.ordering.random_task_orders`) and
passed in, so that the compiled solvers (``csrc/solvers/projection_rounds.h``) see the same orders.

G is ``[..., K, K]`` (symmetrised in float64 here), ``orders`` a ``[K, K − 1]`` integer tensor shared
by the batch. A zero-norm ``g_j`` (``G_jj ≤ amax(diag G)·1e-30 + 1e-300``: relative to the largest
squared norm so that scale does not matter, never below the smallest positive double) is never
corrected against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .interior_point import symmetric64


def check_inputs(G: Tensor, orders: Tensor, name: str) -> int:
    """K of ``G`` ``[..., K, K]``, after checking that ``orders`` is an integer ``[K, K − 1]`` tensor."""
    if G.dim() < 2 or G.shape[-1] != G.shape[-2]:
        raise ValueError(f"{name}: G must be [..., K, K], got shape {tuple(G.shape)}")
    K = G.shape[-1]
    if orders.shape != (K, K - 1):
        raise ValueError(f"{name}: orders must be [K, K - 1] = [{K}, {K - 1}], got {tuple(orders.shape)}")
    if orders.dtype.is_floating_point or orders.dtype.is_complex or orders.dtype == torch.bool:
        raise TypeError(f"{name}: orders must be an integer tensor, got {orders.dtype}")
    return K


def project_conflicts(G: Tensor, orders: Tensor, eps: float = 1e-8) -> Tensor:
    """PCGrad's coefficient matrix ``C`` ``[..., K, K]``: ``p_i = Σ_k C_ik g_k`` (Yu et al. 2020, Alg. 1).

    ``orders[i]`` lists the tasks that ``p_i`` is projected against, in order. Each visit computes
    ``s = ⟨p_i, g_j⟩ = (C G)_ij`` and, where ``s < 0`` and ``g_j`` is not zero, subtracts
    ``s/(G_jj + eps)`` from ``C_ij`` (projection onto the normal plane of the original ``g_j``).
    """
    K = check_inputs(G, orders, "project_conflicts")
    G = symmetric64(G)
    orders = orders.to(device=G.device, dtype=torch.long)
    rows = torch.arange(K, device=G.device)
    C = torch.eye(K, dtype=G.dtype, device=G.device).expand(G.shape).clone()
    diag = torch.diagonal(G, dim1=-2, dim2=-1)
    zero = diag.amax(-1, keepdim=True) * 1e-30 + 1e-300
    for t in range(K - 1):
        j = orders[:, t]
        s = (C * G[..., :, j].transpose(-1, -2)).sum(-1)  # s_i = <p_i, g_{j_i}>
        gjj = diag[..., j]
        coef = torch.where((s < 0) & (gjj > zero), s / (gjj + eps), torch.zeros_like(s))
        C[..., rows, j] = C[..., rows, j] - coef
    return C


def vaccine(G: Tensor, targets: Tensor, orders: Tensor, beta: float = 0.5, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """GradVac's rounds (Wang et al. 2021): ``(λ [..., K], new targets [..., K, K])``.

    ``targets`` are the EMA targets ``φ̂`` (``[K, K]``, or ``[..., K, K]`` as G). Each visit of task
    ``j`` by row ``i`` computes ``φ = ⟨p_i, g_j⟩ / (‖p_i‖‖g_j‖ + eps)`` and, where ``φ < φ̂_ij`` and
    ``g_j`` is not zero, adds ``‖p_i‖ (φ̂_ij √(1−φ²) − φ √(1−φ̂_ij²)) / (‖g_j‖ √(1−φ̂_ij²) + eps)``
    to ``C_ij``; then always ``φ̂_ij ← (1−β) φ̂_ij + β φ``. ``λ = Σ_i C_i`` (column sums).
    """
    K = check_inputs(G, orders, "vaccine")
    if targets.shape[-2:] != (K, K):
        raise ValueError(f"vaccine: targets must be [K, K] or [..., K, K] with K = {K}, got {tuple(targets.shape)}")
    shape = torch.broadcast_shapes(G.shape[:-2], targets.shape[:-2]) + (K, K)
    G = symmetric64(G).expand(shape)
    orders = orders.to(device=G.device, dtype=torch.long)
    rows = torch.arange(K, device=G.device)
    C = torch.eye(K, dtype=G.dtype, device=G.device).expand(shape).clone()
    phi = targets.to(device=G.device, dtype=torch.float64).expand(shape).clone()
    diag = torch.diagonal(G, dim1=-2, dim2=-1)
    zero = diag.amax(-1, keepdim=True) * 1e-30 + 1e-300
    for t in range(K - 1):
        j = orders[:, t]
        CG = C @ G
        dot = CG[..., rows, j]
        pn = torch.sqrt((CG * C).sum(-1).clamp_min(0.0))
        gjj = diag[..., j]
        gn = torch.sqrt(gjj.clamp_min(0.0))
        den = pn * gn + eps
        # |cos| ≤ 1 exactly; the clamp only removes Gram-form rounding when p_i has cancelled to ~0.
        cos = torch.where(den > 0, dot / torch.where(den > 0, den, 1.0), 0.0).clamp(-1.0, 1.0)
        target = phi[..., rows, j]
        s_cos = torch.sqrt((1.0 - cos * cos).clamp_min(0.0))
        s_tgt = torch.sqrt((1.0 - target * target).clamp_min(0.0))
        den_w = gn * s_tgt + eps
        w = pn * (target * s_cos - cos * s_tgt) / torch.where(den_w > 0, den_w, 1.0)
        add = (cos < target) & (gjj > zero) & (den_w > 0)
        C[..., rows, j] = C[..., rows, j] + torch.where(add, w, 0.0)
        phi[..., rows, j] = (1.0 - beta) * target + beta * cos
    return C.sum(-2), phi
