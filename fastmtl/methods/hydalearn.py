"""HydaLearn — Verboven, Chaudhary, Berrevoets, Ginis, Verbeke, "HydaLearn: Highly Dynamic Task
Weighting for Multi-task Learning with Auxiliary Tasks", Applied Intelligence 2023 (arXiv 2008.11643).
**Reconstruction**: no reference code exists; first-order gain rule."""

from __future__ import annotations

import torch

from .base import GramMethod
from .common import check_choice, check_main_task, symmetric64, warn_instance_reference
from .registry import register_method


@register_method
class HydaLearn(GramMethod):
    """Per-batch auxiliary-task weights proportional to their main-task gain (first-order form).

    The paper sets ``w_i / w_j = δ_i / δ_j`` where ``δ_k`` is the main-task gain of a fake update
    along task ``k``'s gradient. To first order ``δ_k ∝ ⟨v, g_k⟩`` with ``v`` the main-task
    gradient (the main row of G), or an external main-task reference gradient ``v`` (e.g. from a
    validation batch), given to the call, ``combine(..., reference=v)`` or
    ``fastmtl.backward(..., reference_grad=v)``, in the structure of one task's gradient; it adds
    one row to the Gram pass. (``HydaLearn(reference=v)`` is deprecated.) fastmtl's reconstructed rule, with ``δ⁺ = max(δ, 0)``:

    * ``normalize="sum"`` (default): ``λ = δ⁺ / Σ δ⁺`` (a convex combination);
    * ``normalize="main"``: ``λ_main = 1``, ``λ_k = δ⁺_k / δ_main``;
    * when no gain is positive (or ``δ_main ≤ 0`` under "main"): ``fallback="main"`` gives
      ``λ = e_main`` (train the main task alone), ``fallback="zero"`` a zero update (what the
      authors' follow-up code does).

    The normalisation and the negative-gain handling are choices of this library, documented
    because the paper's exact rule could not be verified. The look-ahead ("exact") mode is not a
    Gram-space method and lives in the training API.
    """

    uses_generator = False

    name = "hydalearn"
    uses_reference = True

    def __init__(self, main_task: int = 0, reference=None, normalize: str = "sum", fallback: str = "main"):
        check_choice("normalize", normalize, ("sum", "main"))
        check_choice("fallback", fallback, ("main", "zero"))
        if not isinstance(main_task, int) or isinstance(main_task, bool) or main_task < 0:
            raise ValueError(f"main_task must be a non-negative int, got {main_task!r}")
        self.main_task = main_task
        if reference is not None:
            warn_instance_reference("HydaLearn")
        self.reference = reference
        self.normalize = normalize
        self.fallback = fallback

    def weights(self, G, ctx):
        G = symmetric64(G)
        K = G.shape[0]
        m = check_main_task(self.main_task, K)
        delta = G[m] if ctx.reference_dots is None else ctx.reference_dots.to(G)
        pos = delta.clamp_min(0)
        fallback = torch.zeros(K, dtype=G.dtype, device=G.device)
        if self.fallback == "main":
            fallback[m] = 1.0
        if self.normalize == "sum":
            denom = pos.sum()
        else:
            denom = delta[m]
        ok = denom > 0
        return torch.where(ok, pos / torch.where(ok, denom, torch.ones_like(denom)), fallback)
