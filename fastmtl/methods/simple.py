"""Equal weighting: the baselines every paper compares against."""

from __future__ import annotations

import torch

from .base import Method


class Mean(Method):
    """Uniform weighting ``λ_k = 1/K``: gradient of the mean loss. No Gram matrix is computed."""

    uses_generator = False

    name = "mean"
    requires_gram = False

    def weights(self, G, *, losses=None, generator=None, reference_dots=None, num_tasks=None, device=None):
        K, device = _shape(G, num_tasks, losses, device)
        return torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)


class Sum(Method):
    """Unit weighting ``λ_k = 1``: gradient of the summed loss. No Gram matrix is computed."""

    uses_generator = False

    name = "sum"
    requires_gram = False

    def weights(self, G, *, losses=None, generator=None, reference_dots=None, num_tasks=None, device=None):
        K, device = _shape(G, num_tasks, losses, device)
        return torch.ones(K, dtype=torch.float64, device=device)


def _shape(G, num_tasks, losses, device=None):
    """``(K, device)`` for methods that may run without a Gram matrix."""
    if G is not None:
        return G.shape[0], G.device
    if num_tasks is None:
        raise ValueError("the number of tasks is unknown: pass G or num_tasks")
    if device is None:
        device = losses.device if losses is not None else torch.device("cpu")
    return num_tasks, torch.device(device)
