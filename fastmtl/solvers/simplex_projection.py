"""Euclidean projection onto the probability simplex, on the device, without host synchronisation.

``Π_Δ(v) = argmin_{w ≥ 0, Σw = 1} ‖w − v‖`` by the sort-and-threshold rule (Held, Wolfe & Crowder
1974; Duchi et al., ICML 2008): with ``u`` the entries of ``v`` sorted in decreasing order and
``c_j = Σ_{i≤j} u_i``, ``ρ = max{j : u_j − (c_j − 1)/j > 0}``, ``θ = (c_ρ − 1)/ρ`` and
``Π_Δ(v) = max(v − θ, 0)``. This is the rule of MoDo's, MoCo's and SDMGrad's official codes (their
loop "first j with ``(c_j − 1)/j > u_{j+1}``" finds the same ``θ``), written branch-free: one sort,
one cumulative sum, a count and a gather.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["project_simplex"]


def project_simplex(v: Tensor) -> Tensor:
    """``Π_Δ(v)`` over the last dimension (batched over the leading ones), in ``v``'s dtype.

    ``v`` is first shifted by its maximum (the projection is invariant under ``v + c·1``): the
    threshold is then formed from numbers of order one, so that a step of size 1e30 still lands
    exactly on a vertex instead of losing the ``−1`` of ``c_j − 1`` to rounding. NaN in ``v`` gives
    NaN everywhere.
    """
    v = v - v.amax(-1, keepdim=True)
    u = torch.sort(v, dim=-1, descending=True).values
    css = torch.cumsum(u, -1)
    j = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    # The condition holds on a prefix of j (always at j = 1), so ρ is its count.
    rho = (u - (css - 1.0) / j > 0).sum(-1, keepdim=True).clamp_min(1)
    theta = (torch.gather(css, -1, rho - 1) - 1.0) / rho.to(v.dtype)
    out = (v - theta).clamp_min(0.0)
    return torch.where(torch.isnan(v).any(-1, keepdim=True), torch.full_like(out, float("nan")), out)
