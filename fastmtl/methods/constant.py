"""Constant weighting: fixed, user-given task weights (TorchJD's ``Constant``)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .base import GramMethod
from .registry import register_method


@register_method
class Constant(GramMethod):
    """Fixed weights on every call: ``λ = weights``, ``d = Σ_k weights_k g_k``. No Gram pass.

    The linear scalarisation ``Σ_k c_k ℓ_k`` with hand-chosen coefficients, as TorchJD's
    ``Constant(weights)``; same scale: the weights are used as given, never normalised.

    Args:
        weights: K finite numbers (a sequence or a 1-D tensor), any sign; every call must then
            have ``len(weights)`` tasks. Kept as :attr:`task_weights` (``weights`` is the method).
            ``None`` (default): weight 1 for every task, whatever K (the plain sum).

    No state. Heads get ``∇ Σ_k weights_k ℓ_k`` (the weighted loss) under :func:`fastmtl.backward`.
    """

    uses_generator = False

    name = "constant"
    requires_gram = False

    def __init__(self, weights: Optional[Sequence[float]] = None):
        if weights is None:
            self.task_weights = None
            self._cpu = None
            return
        # Validated in plain Python (no tensor reductions), so that building the method inside a
        # torch.compile region needs no data-dependent guard.
        if isinstance(weights, torch.Tensor):
            if weights.dim() != 1:
                raise ValueError(f"weights must be a non-empty 1-D sequence, got shape {tuple(weights.shape)}")
            weights = weights.detach().to("cpu", torch.float64).tolist()
        if isinstance(weights, (str, bytes, dict)) or not hasattr(weights, "__iter__"):
            raise TypeError(f"weights must be a sequence of numbers or a 1-D tensor, got {type(weights).__name__}")
        try:
            values = tuple(float(x) for x in weights)
        except (TypeError, ValueError):
            raise TypeError("weights must be a sequence of numbers or a 1-D tensor") from None
        if not values:
            raise ValueError("weights must be a non-empty 1-D sequence, got shape (0,)")
        if not all(math.isfinite(x) for x in values):
            raise ValueError("weights must be finite")
        self.task_weights = values
        self._cpu = torch.tensor(values, dtype=torch.float64)

    def weights(self, G, ctx):
        K, device = ctx.num_tasks, ctx.device
        if self.task_weights is None:
            return torch.ones(K, dtype=torch.float64, device=device)
        if len(self.task_weights) != K:
            raise ValueError(f"weights has {len(self.task_weights)} entries for K={K} tasks")
        return self._cpu.to(device, copy=True)  # K numbers host-to-device; nothing is read back
