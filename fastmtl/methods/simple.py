"""Equal weighting: the baselines every paper compares against."""

from __future__ import annotations

import torch

from .base import GramMethod
from .registry import register_method


@register_method
class Mean(GramMethod):
    """Uniform weighting ``λ_k = 1/K``: gradient of the mean loss. No Gram matrix is computed."""

    uses_generator = False

    name = "mean"
    requires_gram = False

    def weights(self, G, ctx):
        K, device = ctx.num_tasks, ctx.device
        return torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)


@register_method
class Sum(GramMethod):
    """Unit weighting ``λ_k = 1``: gradient of the summed loss. No Gram matrix is computed."""

    uses_generator = False

    name = "sum"
    requires_gram = False

    def weights(self, G, ctx):
        K, device = ctx.num_tasks, ctx.device
        return torch.ones(K, dtype=torch.float64, device=device)

