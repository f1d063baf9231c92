"""MGDA — Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018."""

from __future__ import annotations

import torch

from .base import GramMethod
from .common import check_choice, symmetric64
from .registry import register_method
from ..solvers import min_norm_simplex

_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@register_method
class MGDA(GramMethod):
    """Minimum-norm point of the convex hull of the task gradients (Sener & Koltun, NeurIPS 2018).

    ``w* = argmin_{w∈Δ} wᵀ G̃ w`` with ``G̃ = Γ⁻¹ G Γ⁻¹`` the Gram of the normalised gradients
    ``g_i/γ_i``, ``γ_i ∈ {1 ("none"), ‖g_i‖ ("l2"), ℓ_i ("loss"), ℓ_i‖g_i‖ ("loss+")}``, solved on the
    device by a fixed-iteration interior-point method (exact support enumeration for K ≤ 8).
    As in the official training code, ``w*`` multiplies the *unnormalised* gradients:
    ``d = Σ w*_i g_i``, ``Σλ = 1``. A zero ``γ_i`` is replaced by 1 (that task's row is zero anyway).
    """

    uses_generator = False

    name = "mgda"
    uses_losses = True

    def __init__(self, normalization: str = "none"):
        check_choice("normalization", normalization, _NORMALIZATIONS)
        self.normalization = normalization

    def weights(self, G, ctx):
        G = symmetric64(G)
        if self.normalization != "none":
            if self.normalization.startswith("loss") and ctx.losses is None:
                raise ValueError(f"MGDA normalization={self.normalization!r} needs the task losses")
            gamma = torch.ones(G.shape[0], dtype=G.dtype, device=G.device)
            if self.normalization in ("l2", "loss+"):
                gamma = gamma * torch.sqrt(torch.diagonal(G).clamp_min(0))
            if self.normalization in ("loss", "loss+"):
                gamma = gamma * ctx.losses.to(G)
            gamma = torch.where(gamma.abs() > 1e-300, gamma, torch.ones_like(gamma))
            G = G / (gamma[:, None] * gamma[None, :])
        return min_norm_simplex(G)
