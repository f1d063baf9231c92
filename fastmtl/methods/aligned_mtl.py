"""Aligned-MTL — Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
CVPR 2023."""

from __future__ import annotations

import torch

from .base import GramMethod
from .common import check_choice, symmetric64
from .registry import register_method
from ..solvers import symmetric_eigh


@register_method
class AlignedMTL(GramMethod):
    """Align the task gradients into an orthogonal, equal-norm system (Senushkin et al., CVPR 2023).

    Eigendecompose ``G = V Λ Vᵀ``, keep eigenpairs with ``λ > λ_max·K·eps`` (rank r), and form
    the balance matrix ``B = σ·V_r Λ_r^{-1/2} V_rᵀ`` with ``σ = sqrt(λ_min)`` (``scale_mode="min"``,
    the official default), ``sqrt(median λ)`` ("median") or ``sqrt(mean λ)`` ("rmse"). The aligned
    gradients ``J' = B J`` are orthogonal with norm σ; ``d = 1ᵀ J'`` so ``λ = B·1`` (official and
    LibMTL scale; TorchJD's is K times smaller). Rank 0 returns ``λ = 1``.

    The eigen-decomposition is :func:`fastmtl.solvers.symmetric_eigh` (fixed-sweep Jacobi, no host
    synchronisation on CUDA).
    """

    uses_generator = False

    name = "aligned_mtl"

    def __init__(self, scale_mode: str = "min"):
        check_choice("scale_mode", scale_mode, ("min", "median", "rmse"))
        self.scale_mode = scale_mode

    def weights(self, G, ctx):
        acc_eps = torch.finfo(G.dtype).eps
        G = symmetric64(G)
        K = G.shape[0]
        evals, evecs = symmetric_eigh(G)
        keep = evals > evals.amax().clamp_min(0) * K * acc_eps
        safe = torch.where(keep, evals, torch.ones_like(evals))
        inv_sqrt = torch.where(keep, safe.rsqrt(), torch.zeros_like(evals))
        rank = keep.sum()
        if self.scale_mode == "min":
            scale2 = torch.where(keep, evals, torch.full_like(evals, float("inf"))).amin()
        elif self.scale_mode == "rmse":
            scale2 = torch.where(keep, evals, torch.zeros_like(evals)).sum() / rank.clamp_min(1)
        else:
            # Median of the kept eigenvalues (ascending order, kept ones are the top `rank`).
            # torch.median takes the lower middle element, as the official code does.
            idx = (K - rank) + (rank - 1) // 2
            scale2 = evals.gather(0, idx.clamp(0, K - 1).reshape(1))[0]
        sigma = torch.sqrt(torch.where(rank > 0, scale2, torch.ones_like(scale2)))
        ones = torch.ones(K, dtype=G.dtype, device=G.device)
        lam = sigma * (evecs @ (inv_sqrt * (evecs.T @ ones)))
        return torch.where(rank > 0, lam, ones)
