"""PCGrad — Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020 (arXiv 2001.06782)."""

from __future__ import annotations

from ..solvers import project_conflicts
from .base import GramMethod
from .common import check_choice, check_positive
from .registry import register_method
from .ordering import random_task_orders


@register_method
class PCGrad(GramMethod):
    """Project conflicting gradients (Yu et al., NeurIPS 2020, Algorithm 1), in Gram space.

    Paper form: for each task ``i``, ``p_i = g_i``; for every other task ``j`` in a random order
    (independent per ``i``), if ``⟨p_i, g_j⟩ < 0`` then ``p_i ← p_i − ⟨p_i, g_j⟩/‖g_j‖² · g_j``
    (projection onto the normal plane of the *original* ``g_j``); ``d = Σ_i p_i``.

    Gram form (exact): ``p_i = Σ_k C_ik g_k`` with ``C = I`` initially, so
    ``⟨p_i, g_j⟩ = (C G)_ij`` and each projection subtracts ``s/(G_jj + eps)`` from ``C_ij``.
    The K rows are independent, so all K projections of one round run as one batched step:
    K−1 rounds of O(K²) work on the device (:func:`fastmtl.solvers.project_conflicts`: compiled
    in ``fastmtl._C`` where available, else the PyTorch reference). ``λ = Σ_i C_i`` (column sums).

    Scale: ``reduction="sum"`` (paper and official code) or ``"mean"`` (``λ/K``).
    Zero-norm ``g_j`` (``G_jj ≤ zero_eps``) is never projected against.

    Args:
        shuffle: random per-task order drawn from ``generator`` (paper); ``False`` visits tasks
            in index order (the official TensorFlow code, whose shuffle has no effect).
        reduction: ``"sum"`` or ``"mean"``.
        eps: added to ``‖g_j‖²`` in the projection denominator.
    """

    name = "pcgrad"
    head_weighting = "sum"  # the official code: heads get their own task's gradient

    def __init__(self, shuffle: bool = True, reduction: str = "sum", eps: float = 1e-8):
        check_choice("reduction", reduction, ("sum", "mean"))
        self.shuffle = bool(shuffle)
        self.uses_generator = self.shuffle  # a fixed order draws nothing
        self.reduction = reduction
        self.eps = check_positive("eps", eps)

    def weights(self, G, ctx):
        K = G.shape[0]
        orders = random_task_orders(K, generator=ctx.generator, device=G.device, shuffle=self.shuffle)
        C = project_conflicts(G, orders, eps=self.eps)  # symmetrises G in float64
        lam = C.sum(0)
        return lam / K if self.reduction == "mean" else lam

