"""Weighted PCGrad — Bohn, Freeman, Tercan, Meisen, "Task Weighting through Gradient Projection for
Multitask Learning", ICONIP 2024 (arXiv 2409.01793). **Reconstruction** (no code was released)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import GramMethod
from .common import check_choice, check_positive, symmetric64
from .registry import register_method
from .ordering import plackett_luce_order


@register_method
class WeightedPCGrad(GramMethod):
    """Gradient projection with task-priority projection probabilities (reconstructed).

    The paper turns task priorities into a probability distribution ``p`` over tasks that decides
    which gradients are projected when tasks conflict; with no conflict nothing changes. Its
    Algorithm 2 and its prose disagree on whether a sampled gradient may be revisited, so fastmtl
    implements this reading and labels it a reconstruction:

    1. draw a priority order ``π`` without replacement with probabilities ∝ ``p``
       (Plackett–Luce, from ``generator``);
    2. ``p̂_{π_1} = g_{π_1}`` stays intact; each next ``g_{π_r}`` is projected, when conflicting,
       against every higher-priority ``p̂_{π_s}`` (``s < r``, in order);
    3. ``d = Σ_r p̂_{π_r}``.

    With two tasks this is exactly "with probability ``p_i`` task ``i`` is kept and the other is
    projected", and uniform ``p`` is the uniform-projection baseline. ``project_against="modified"``
    (default) projects against the already-deconflicted higher-priority vectors (after its last
    projection a vector does not conflict with that one; an earlier projection target can conflict
    again, as in PCGrad); ``"original"`` projects against the original gradients as PCGrad.

    Priorities: ``priorities`` if given (static task weights); else dynamic ``p_i ∝ ℓ_i^γ`` from
    the losses: the previous epoch's average losses when :meth:`end_epoch` has been called on a
    kept instance (the paper's rule, weaker tasks protected more), else the current ``losses``;
    else uniform. Gram form: ``p̂_r = Σ_k C_rk g_k`` so every dot product is ``C_r G C_sᵀ``.
    """

    name = "wpcgrad"
    head_weighting = "sum"  # as PCGrad: heads get their own task's gradient
    uses_losses = True
    stateful = True
    _state_attrs = ("_epoch_sum", "_epoch_count", "_previous_epoch")

    def __init__(self, priorities: Optional[Sequence[float]] = None, gamma: float = 1.0,
                 project_against: str = "modified", eps: float = 1e-8):
        check_choice("project_against", project_against, ("modified", "original"))
        self.gamma = check_positive("gamma", gamma)
        self.project_against = project_against
        self.eps = check_positive("eps", eps)
        if priorities is not None:
            pr = torch.as_tensor(priorities, dtype=torch.float64).reshape(-1)
            if bool((pr < 0).any()) or not bool(torch.isfinite(pr).all()) or not bool((pr > 0).any()):
                raise ValueError("priorities must be finite, non-negative and not all zero")
            self.priorities = pr
        else:
            self.priorities = None
        self._epoch_sum = None
        self._epoch_count = 0
        self._previous_epoch = None

    def end_epoch(self) -> None:
        """Make this epoch's average losses the priorities of the next epoch."""
        if self._epoch_count:
            self._previous_epoch = self._epoch_sum / self._epoch_count
        self._epoch_sum, self._epoch_count = None, 0

    def task_priorities(self, K: int, losses: Optional[torch.Tensor], device) -> torch.Tensor:
        if self.priorities is not None:
            if self.priorities.shape[0] != K:
                raise ValueError(f"priorities has {self.priorities.shape[0]} entries for K={K} tasks")
            return self.priorities.to(device)
        source = self._previous_epoch if self._previous_epoch is not None else losses
        if source is None:
            return torch.ones(K, dtype=torch.float64, device=device)
        if source.shape[0] != K:
            raise ValueError(f"this WeightedPCGrad instance saw {source.shape[0]} tasks before, now {K}")
        # Clamp: a zero or negative loss must not make the distribution undefined.
        return source.to(device).clamp_min(1e-12) ** self.gamma

    def weights(self, G, ctx):
        G = symmetric64(G)
        K = G.shape[0]
        priorities = self.task_priorities(K, ctx.losses, G.device)  # validates K before any state changes
        if ctx.losses is not None:
            self._epoch_sum = ctx.losses.detach() if self._epoch_sum is None else self._epoch_sum + ctx.losses.detach()
            self._epoch_count += 1
        order = plackett_luce_order(priorities, generator=ctx.generator)
        lam_in_order = priority_projection(G[order][:, order], self.project_against, self.eps)
        lam = torch.empty_like(lam_in_order)
        lam[order] = lam_in_order
        return lam


def priority_projection(G: torch.Tensor, project_against: str, eps: float) -> torch.Tensor:
    """λ of the one-sided projection in priority order, for ``G`` already permuted to that order."""
    K = G.shape[0]
    eye = torch.eye(K, dtype=G.dtype, device=G.device)
    zero = torch.diagonal(G).amax() * 1e-30 + 1e-300
    coeffs = []
    for r in range(K):
        x = eye[r]
        for s in range(r):
            target = coeffs[s] if project_against == "modified" else eye[s]
            Gt = G @ target
            dot = x @ Gt
            norm2 = target @ Gt
            coef = torch.where((dot < 0) & (norm2 > zero), dot / (norm2 + eps), torch.zeros_like(dot))
            x = x - coef * target
        coeffs.append(x)
    return torch.stack(coeffs).sum(0)
