"""IMTL-G — Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (gradient part)."""

from __future__ import annotations

from .base import GramMethod
from .registry import register_method
from ..solvers import imtl_g_weights


@register_method
class IMTLG(GramMethod):
    """Impartial gradient (Liu et al., ICLR 2021): equal projections on every unit gradient.

    Find ``d = Σ α_i g_i`` with ``Σ α_i = 1`` whose projection ``⟨d, g_i⟩/‖g_i‖`` is the same for
    every task. In Gram space (as TorchJD): ``v = G⁺ n`` with ``n_i = ‖g_i‖``, ``λ = v / Σ v``;
    the pseudo-inverse (eigen-decomposition, relative cut-off ``K·eps·λ_max``, eps that of G's
    dtype) handles rank-deficient G. ``λ = 0`` when ``|Σ v| ≤ 1e-12·Σ|v|`` (no such direction).
    Scale: ``Σ λ = 1`` (TorchJD's convention). Stateless.

    The weights are :func:`fastmtl.solvers.imtl_g_weights`: one compiled call (fixed-sweep Jacobi
    and the formula above, on the host for CPU tensors, one kernel launch without host
    synchronisation on CUDA) where ``fastmtl._C`` has it, else the PyTorch reference
    :func:`fastmtl.solvers.eigen_weights.imtl_g_weights`, which runs the same sweeps and formula.
    """

    uses_generator = False

    name = "imtl_g"

    def weights(self, G, ctx):
        return imtl_g_weights(G)
