"""CAGrad — Liu, Liu, Jin, Stone, Liu, "Conflict-Averse Gradient Descent for Multi-task Learning",
NeurIPS 2021 (arXiv 2110.14048)."""

from __future__ import annotations

from .base import GramMethod
from .common import check_choice, check_positive, symmetric64
from .registry import register_method
from ..solvers import cagrad_simplex_weights


@register_method
class CAGrad(GramMethod):
    """Conflict-averse gradient (Liu et al., NeurIPS 2021), on the Gram matrix.

    With ``g_0 = (1/K)Σ g_i`` the direction maximises the worst task improvement
    ``min_i ⟨g_i, d⟩`` within ``‖d − g_0‖ ≤ c‖g_0‖``. Its dual over the simplex,
    ``w* = argmin_{w∈Δ} ⟨g_w, g_0⟩ + c‖g_0‖·‖g_w‖``, is solved on the device (exact support
    enumeration for K ≤ 10, an interior-point method above), and
    ``d = g_0 + c‖g_0‖/‖g_w*‖ · g_w*``, i.e. ``λ = 1/K + c‖g_0‖/‖g_w*‖ · w*``.

    Scale (official NYUv2 code): ``rescale=1`` divides by ``1+c²``, ``rescale=2`` by ``1+c``,
    ``rescale=0`` not at all; ``multiply_by_k=True`` multiplies by K to match a summed loss
    (LibMTL omits it: pass ``multiply_by_k=False``). If ``g_w* ≈ 0`` (0 in the convex hull with no
    strong conflict) the dual does not fix a direction and ``d = g_0`` is used.

    Args:
        c: radius of the trust region relative to ``‖g_0‖`` (paper default 0.5; 0.4 in its NYUv2 runs).
    """

    uses_generator = False

    name = "cagrad"
    head_weighting = "sum"  # the official code: heads get their own task's gradient

    def __init__(self, c: float = 0.5, rescale: int = 1, multiply_by_k: bool = True):
        self.c = check_positive("c", c)
        check_choice("rescale", rescale, (0, 1, 2))
        self.rescale = rescale
        self.multiply_by_k = bool(multiply_by_k)

    def weights(self, G, ctx):
        G = symmetric64(G)
        K = G.shape[0]
        _, lam = cagrad_simplex_weights(G, self.c)
        if self.rescale == 1:
            lam = lam / (1.0 + self.c ** 2)
        elif self.rescale == 2:
            lam = lam / (1.0 + self.c)
        return lam * K if self.multiply_by_k else lam
