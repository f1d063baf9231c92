"""IMTL-G's and Aligned-MTL's weights from the eigen-decomposition of G (pure-PyTorch reference).

Both methods need ``G = V Λ Vᵀ`` and a few K-vector operations on it. These functions are the
reference of the compiled solvers (``csrc/solvers/eigen_weights.h``), which run the same Jacobi
sweeps (:func:`fastmtl.solvers.jacobi.symmetric_eigh_reference`) and the same formulas in one call:
:mod:`fastmtl.solvers.dispatch` picks one or the other. Batched over leading dimensions, float64
on G's device, no host synchronisation, no data-dependent control flow.

Eigenvalues are kept where ``λ_j > max(λ_max, 0)·K·eps``, ``eps`` the machine epsilon of the dtype
G was computed in (a float32 Gram is exact only to about that, relative to its largest eigenvalue).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .interior_point import symmetric64
from .jacobi import symmetric_eigh_reference

__all__ = ["imtl_g_weights", "aligned_mtl_weights", "SCALE_MODES"]

#: Aligned-MTL's choices of the scale σ² among the kept eigenvalues.
SCALE_MODES = ("min", "median", "rmse")

Eigh = Callable[[Tensor], tuple]


def _matvec(A: Tensor, x: Tensor) -> Tensor:
    return (A @ x.unsqueeze(-1)).squeeze(-1)


def _decompose(G: Tensor, eps: Optional[float], sweeps: Optional[int], eigh: Optional[Eigh]):
    """``(sym(G) in float64, evals, evecs, cut-off [..., 1])``."""
    acc_eps = torch.finfo(G.dtype).eps if eps is None else float(eps)
    G = symmetric64(G)
    K = G.shape[-1]
    evals, evecs = symmetric_eigh_reference(G, sweeps=sweeps) if eigh is None else eigh(G)
    cutoff = evals.amax(-1, keepdim=True).clamp_min(0) * K * acc_eps
    return G, evals, evecs, cutoff


def imtl_g_weights(G: Tensor, *, eps: Optional[float] = None, sweeps: Optional[int] = None,
                   eigh: Optional[Eigh] = None) -> Tensor:
    """IMTL-G's weights: ``v = G⁺ n`` with ``n_i = sqrt(max(G_ii, 0))`` (the gradient norms), ``λ = v / Σv``.

    ``G⁺ = V diag(1/λ_j where kept, else 0) Vᵀ``. ``λ = 0`` where ``|Σv| ≤ 1e-12·Σ|v|`` (no direction
    has equal projections on every unit gradient; the test is relative, so it holds at any scale).

    Args:
        G: ``[..., K, K]`` Gram matrices, any float dtype; symmetrised in float64.
        eps: the cut-off's epsilon; default ``torch.finfo(G.dtype).eps``.
        sweeps: Jacobi sweeps; default :func:`fastmtl.solvers.jacobi.default_jacobi_sweeps` (K).
        eigh: (this reference function only) another eigen-solver of the same contract (ascending
            eigenvalues, eigenvectors in the columns), e.g. ``torch.linalg.eigh`` for a comparison;
            default the fixed-sweep Jacobi.

    Returns:
        λ ``[..., K]``, float64 on G's device.
    """
    G, evals, evecs, cutoff = _decompose(G, eps, sweeps, eigh)
    n = torch.sqrt(torch.diagonal(G, dim1=-2, dim2=-1).clamp_min(0))
    keep = evals > cutoff
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    v = _matvec(evecs, inv * _matvec(evecs.mT, n))
    total = v.sum(-1, keepdim=True)
    # |Σv| small relative to Σ|v| means no direction has equal projections (TorchJD compares
    # |Σv| with an absolute 1e-12, which wrongly returns 0 for gradients of norm ≳ 1e12).
    ok = total.abs() > 1e-12 * v.abs().sum(-1, keepdim=True)
    return torch.where(ok, v / torch.where(ok, total, torch.ones_like(total)), torch.zeros_like(v))


def aligned_mtl_weights(G: Tensor, *, scale_mode: str = "min", eps: Optional[float] = None,
                        sweeps: Optional[int] = None, eigh: Optional[Eigh] = None) -> Tensor:
    """Aligned-MTL's weights: ``λ = B·1`` with ``B = σ·V_r Λ_r^{-1/2} V_rᵀ`` over the r kept eigenpairs.

    ``σ = sqrt(λ_min)`` of the kept eigenvalues (``scale_mode="min"``), ``sqrt`` of their lower
    median (``"median"``: the ``⌊(r − 1)/2⌋``-th in ascending order, as ``torch.median``) or of
    their mean (``"rmse"``). Rank 0 (every eigenvalue cut) gives ``λ = 1``.

    Args:
        G: ``[..., K, K]`` Gram matrices, any float dtype; symmetrised in float64.
        scale_mode: one of :data:`SCALE_MODES`.
        eps, sweeps, eigh: as for :func:`imtl_g_weights`.

    Returns:
        λ ``[..., K]``, float64 on G's device.
    """
    if scale_mode not in SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {SCALE_MODES}, got {scale_mode!r}")
    G, evals, evecs, cutoff = _decompose(G, eps, sweeps, eigh)
    K = G.shape[-1]
    keep = evals > cutoff
    safe = torch.where(keep, evals, torch.ones_like(evals))
    inv_sqrt = torch.where(keep, safe.rsqrt(), torch.zeros_like(evals))
    rank = keep.sum(-1, keepdim=True)
    if scale_mode == "min":
        scale2 = torch.where(keep, evals, torch.full_like(evals, float("inf"))).amin(-1, keepdim=True)
    elif scale_mode == "rmse":
        scale2 = torch.where(keep, evals, torch.zeros_like(evals)).sum(-1, keepdim=True) / rank.clamp_min(1)
    else:
        # The kept eigenvalues are the top `rank` of the ascending order; torch.median takes the
        # lower middle element, as the official code does.
        idx = (K - rank) + (rank - 1) // 2
        scale2 = evals.gather(-1, idx.clamp(0, K - 1))
    sigma = torch.sqrt(torch.where(rank > 0, scale2, torch.ones_like(scale2)))
    ones = torch.ones_like(evals)
    lam = sigma * _matvec(evecs, inv_sqrt * _matvec(evecs.mT, ones))
    return torch.where(rank > 0, lam, ones)
