"""UPGrad and DualProj — Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization"
(arXiv 2406.16232), as implemented by TorchJD."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import GramMethod
from .common import check_positive, symmetric64
from .registry import register_method
from ..solvers import project_dual_cone


def _preference(pref, K: int, device) -> torch.Tensor:
    if pref is None:
        return torch.full((K,), 1.0 / K, dtype=torch.float64, device=device)
    p = torch.as_tensor(pref, dtype=torch.float64).to(device).reshape(-1)
    if p.shape[0] != K:
        raise ValueError(f"pref has {p.shape[0]} entries for K={K} tasks")
    return p


class _DualCone(GramMethod):
    uses_generator = False
    head_weighting = "sum"  # TorchJD's mtl_backward: heads get their own task's gradient

    def __init__(self, pref: Optional[Sequence[float]] = None, reg_eps: float = 1e-4,
                 norm_eps: float = 1e-4, iterations: Optional[int] = None):
        if pref is not None:
            p = torch.as_tensor(pref, dtype=torch.float64)
            if bool((p < 0).any()) or not bool(torch.isfinite(p).all()):
                raise ValueError("pref must be finite and non-negative")
        self.pref = pref
        self.reg_eps = check_positive("reg_eps", reg_eps)
        self.norm_eps = check_positive("norm_eps", norm_eps)
        self.iterations = iterations


@register_method
class UPGrad(_DualCone):
    """Unconflicting projection of gradients (Quinton & Rey, 2024).

    Each ``g_i`` is projected onto the dual cone ``{x : Jx ≥ 0}`` and the projections are averaged
    with the preference ``pref`` (default ``1/K``): ``d`` never conflicts with any task. In weight
    space, for each ``i``: ``w⁽ⁱ⁾ = argmin_v vᵀ Q v`` s.t. ``v ≥ e_i``, with TorchJD's
    ``Q = G/tr(G) + reg_eps·I`` (``G/tr(G)`` replaced by 0 when ``tr(G) < norm_eps``);
    ``λ = Σ_i pref_i w⁽ⁱ⁾``. The K quadratic programs run as one batch through a fixed-iteration
    interior-point solver on the device (16 iterations; agrees with quadprog to ~1e-6 or better).
    """

    name = "upgrad"

    def weights(self, G, ctx):
        G = symmetric64(G)
        K = G.shape[0]
        targets = torch.eye(K, dtype=G.dtype, device=G.device)
        kwargs = {} if self.iterations is None else {"iterations": self.iterations}
        V = project_dual_cone(G, targets, reg_eps=self.reg_eps, norm_eps=self.norm_eps, **kwargs)
        return _preference(self.pref, K, G.device) @ V


@register_method
class DualProj(_DualCone):
    """Projection of the preference-weighted average gradient onto the dual cone (TorchJD).

    ``d`` is the projection of ``Σ pref_i g_i`` (default mean) onto ``{x : Jx ≥ 0}``: one quadratic
    program ``argmin_v vᵀQv`` s.t. ``v ≥ pref`` with the same ``Q`` as :class:`UPGrad`.
    """

    name = "dualproj"

    def weights(self, G, ctx):
        G = symmetric64(G)
        K = G.shape[0]
        target = _preference(self.pref, K, G.device)[None, :]
        kwargs = {} if self.iterations is None else {"iterations": self.iterations}
        return project_dual_cone(G, target, reg_eps=self.reg_eps, norm_eps=self.norm_eps, **kwargs)[0]
