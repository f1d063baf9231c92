"""IMTL-G — Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021 (gradient part)."""

from __future__ import annotations

import torch

from .base import GramMethod
from .common import symmetric64
from .registry import register_method
from ..solvers import symmetric_eigh


@register_method
class IMTLG(GramMethod):
    """Impartial gradient (Liu et al., ICLR 2021): equal projections on every unit gradient.

    Find ``d = Σ α_i g_i`` with ``Σ α_i = 1`` whose projection ``⟨d, g_i⟩/‖g_i‖`` is the same for
    every task. In Gram space (as TorchJD): ``v = G⁺ n`` with ``n_i = ‖g_i‖``, ``λ = v / Σ v``;
    the pseudo-inverse (eigen-decomposition, relative cut-off ``K·eps·λ_max``) handles
    rank-deficient G. ``λ = 0`` when ``|Σ v| ≤ 1e-12·Σ|v|`` (no such direction).

    The eigen-decomposition is :func:`fastmtl.solvers.symmetric_eigh` (fixed-sweep Jacobi, no host
    synchronisation on CUDA).
    """

    uses_generator = False

    name = "imtl_g"

    def weights(self, G, ctx):
        acc_eps = torch.finfo(G.dtype).eps
        G = symmetric64(G)
        K = G.shape[0]
        n = torch.sqrt(torch.diagonal(G).clamp_min(0))
        evals, evecs = symmetric_eigh(G)
        cutoff = evals.amax().clamp_min(0) * K * acc_eps
        inv = torch.where(evals > cutoff, 1.0 / torch.where(evals > cutoff, evals, torch.ones_like(evals)),
                          torch.zeros_like(evals))
        v = evecs @ (inv * (evecs.T @ n))
        total = v.sum()
        # |Σv| small relative to Σ|v| means no direction has equal projections (TorchJD compares
        # |Σv| with an absolute 1e-12, which wrongly returns 0 for gradients of norm ≳ 1e12).
        ok = total.abs() > 1e-12 * v.abs().sum()
        return torch.where(ok, v / torch.where(ok, total, torch.ones_like(total)), torch.zeros_like(v))
