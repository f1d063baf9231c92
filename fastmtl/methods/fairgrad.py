"""FairGrad — Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024 (arXiv 2402.15638)."""

from __future__ import annotations

from typing import Optional

import torch

from .base import GramMethod
from .common import check_positive, symmetric64
from .registry import register_method
from ..solvers.alpha_fair import alpha_fair_weights


@register_method
class FairGrad(GramMethod):
    """α-fair allocation of the update among the tasks (Ban & Ji, ICML 2024).

    FairGrad maximises the α-fair utility ``Σ_i U_α(g_iᵀd)`` of the tasks' first-order progress
    (``U_α(y) = y^{1−α}/(1−α)``, ``log y`` for ``α = 1``) over a ball; with ``d = Σ_i w_i g_i``
    its optimality condition is ``G w = w^{-1/α}``, ``w > 0`` (Eq. 4). ``α = 0`` is linear
    scalarisation (uniform weights, TorchJD's convention), ``α = 1`` proportional fairness
    (Nash-MTL's bargaining condition ``w_i (Gw)_i = 1``), ``α → ∞`` max-min fairness. Solved on
    the device with fixed iterations by :func:`fastmtl.solvers.alpha_fair.alpha_fair_weights`
    (Newton on the concave dual in ``y = Jd``, started from the min-norm point; no scipy, no
    host synchronisation). The official code and TorchJD call ``scipy.optimize.least_squares``
    on the host instead, with its default tolerances.

    Scale (official training step): ``d = K·Σ w_i g_i`` ("to match the sum loss"), then the
    shared gradient is clipped to global norm ``max_norm``; since ``‖Σ w_i g_i‖² = wᵀGw`` the clip
    is folded into the weights: ``λ = K·w·min(1, max_norm/(K·sqrt(wᵀGw)))``. TorchJD's
    ``FairGrad(alpha)`` returns the raw ``w``: ``multiply_by_k=False, max_norm=0``.

    Args:
        alpha: the fairness parameter α ≥ 0 (default 1.0, the official class default; the
            official QM9 runs use 2.0).
        max_norm: global-norm clip of the direction (default 1.0, official; 0 disables).
        multiply_by_k: the official ×K (default ``True``).
        iterations: Newton iterations (default: 24 for K ≤ 8, 28 for K ≤ 32, 32 above).

    Zero-norm tasks get ``w_i = 0`` (the equation has no root for them; they contribute nothing).
    When 0 is in the convex hull of the gradients (a Pareto-stationary input, e.g. two opposite
    gradients) no root exists and no direction improves every task: ``λ = 0``. ``w`` scales as
    ``c^{-2α/(α+1)}`` when every gradient is multiplied by ``c``. No state.
    """

    uses_generator = False
    head_weighting = "sum"  # the official trainer back-propagates every task loss into the heads

    name = "fairgrad"

    def __init__(self, alpha: float = 1.0, max_norm: float = 1.0, multiply_by_k: bool = True,
                 iterations: Optional[int] = None):
        self.alpha = check_positive("alpha", alpha)
        self.max_norm = check_positive("max_norm", max_norm)
        self.multiply_by_k = bool(multiply_by_k)
        if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)
                                       or iterations < 1):
            raise ValueError(f"iterations must be None or an int ≥ 1, got {iterations!r}")
        self.iterations = iterations

    def weights(self, G, ctx):
        G = symmetric64(G)
        K = G.shape[0]
        if self.alpha == 0.0:
            w = torch.full((K,), 1.0 / K, dtype=G.dtype, device=G.device)
        else:
            w = alpha_fair_weights(G, self.alpha, iterations=self.iterations)
        if self.multiply_by_k:
            w = K * w
        if self.max_norm == 0.0:
            return w
        norm = torch.sqrt((w @ (G @ w)).clamp_min(0.0))
        # max_norm / 0 = inf is clamped to 1: a zero direction is left as it is.
        return w * (self.max_norm / norm).clamp(max=1.0)

