"""Aligned-MTL — Senushkin et al., "Independent Component Alignment for Multi-Task Learning",
CVPR 2023."""

from __future__ import annotations

from .base import GramMethod
from .common import check_choice
from .registry import register_method
from ..solvers import aligned_mtl_weights


@register_method
class AlignedMTL(GramMethod):
    """Align the task gradients into an orthogonal, equal-norm system (Senushkin et al., CVPR 2023).

    Eigendecompose ``G = V Λ Vᵀ``, keep eigenpairs with ``λ > λ_max·K·eps`` (rank r, eps that of
    G's dtype), and form the balance matrix ``B = σ·V_r Λ_r^{-1/2} V_rᵀ`` with ``σ = sqrt(λ_min)``
    (``scale_mode="min"``, the official default), ``sqrt(median λ)`` ("median", the lower middle
    one, as ``torch.median``) or ``sqrt(mean λ)`` ("rmse"). The aligned gradients ``J' = B J`` are
    orthogonal with norm σ; ``d = 1ᵀ J'`` so ``λ = B·1`` (official and LibMTL scale; TorchJD's is
    K times smaller). Rank 0 returns ``λ = 1``. Stateless.

    The weights are :func:`fastmtl.solvers.aligned_mtl_weights`: one compiled call (fixed-sweep
    Jacobi and the formula above, on the host for CPU tensors, one kernel launch without host
    synchronisation on CUDA) where ``fastmtl._C`` has it, else the PyTorch reference
    :func:`fastmtl.solvers.eigen_weights.aligned_mtl_weights`, which runs the same sweeps and
    formula.
    """

    uses_generator = False

    name = "aligned_mtl"

    def __init__(self, scale_mode: str = "min"):
        check_choice("scale_mode", scale_mode, ("min", "median", "rmse"))
        self.scale_mode = scale_mode

    def weights(self, G, ctx):
        return aligned_mtl_weights(G, scale_mode=self.scale_mode)
