"""Gradient surgery by sequential projection: PCGrad, weighted PCGrad, GradVac — on the vectors.

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import math

import torch

from .common import as64, task_rows, vdot

__all__ = ["pcgrad_literal", "wpcgrad_literal", "gradvac_literal"]


def pcgrad_literal(J, orders, *, eps: float = 1e-8, reduction: str = "sum") -> torch.Tensor:
    """PCGrad, Algorithm 1 of Yu et al., "Gradient Surgery for Multi-Task Learning" (NeurIPS 2020).

    Test oracle. For every task ``i``: ``p_i = g_i``; then for each other task ``j`` in the order
    ``orders[i]`` (a ``[K, K-1]`` long tensor), if ``⟨p_i, g_j⟩ < 0`` project ``p_i`` onto the
    normal plane of the *original* ``g_j``:
    ``p_i ← p_i − ⟨p_i, g_j⟩ / (‖g_j‖² + eps) · g_j``. Zero gradients ``g_j`` are skipped.
    ``d = Σ_i p_i`` (``reduction="sum"``, the paper) or the mean (``"mean"``).
    """
    J = as64(J)
    K = J.shape[0]
    orders = torch.as_tensor(orders, dtype=torch.long).cpu()
    if tuple(orders.shape) != (K, K - 1):
        raise ValueError(f"orders must have shape ({K}, {K - 1}), got {tuple(orders.shape)}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    g = task_rows(J)
    sq = [vdot(g[j], g[j]) for j in range(K)]
    projected = []
    for i in range(K):
        p = g[i].clone()
        for j in orders[i].tolist():
            if j == i:
                raise ValueError(f"orders[{i}] must list the other tasks only")
            if sq[j] == 0.0:
                continue
            s = vdot(p, g[j])
            if s < 0.0:
                p = p - (s / (sq[j] + eps)) * g[j]
        projected.append(p)
    d = torch.zeros(J.shape[1], dtype=torch.float64)
    for p in projected:
        d += p
    return d / K if reduction == "mean" else d


def wpcgrad_literal(J, order, *, project_against: str = "modified", eps: float = 1e-8) -> torch.Tensor:
    """Weighted PCGrad (probabilistic projection), Bohn et al., "Task Weighting through Gradient
    Projection for Multitask Learning" (ICONIP 2024) — priority-ordered one-sided projection.

    Test oracle of fastmtl's *reconstruction* of the paper's Algorithm 2 (no reference code exists):
    ``order`` is a permutation (``[K]`` long tensor) of the tasks from the highest to the lowest
    sampled priority. The first task's gradient stays intact; every following gradient ``x = g_{π_r}``
    is projected, in order ``s = 1..r−1``, against the already processed higher-priority vectors
    ``p̂_{π_s}`` (``project_against="modified"``) or against the original ``g_{π_s}``
    (``"original"``) whenever ``⟨x, ·⟩ < 0``: ``x ← x − ⟨x, v⟩ / (‖v‖² + eps) · v``; vectors with
    ``‖v‖² == 0`` are skipped. ``d = Σ_r p̂_{π_r}``.
    """
    J = as64(J)
    K = J.shape[0]
    order = torch.as_tensor(order, dtype=torch.long).cpu().tolist()
    if sorted(order) != list(range(K)):
        raise ValueError(f"order must be a permutation of range({K}), got {order}")
    if project_against not in ("modified", "original"):
        raise ValueError(f"project_against must be 'modified' or 'original', got {project_against!r}")
    g = task_rows(J)
    processed = []  # p̂ of the tasks already visited, highest priority first
    for r, task in enumerate(order):
        x = g[task].clone()
        for s in range(r):
            v = processed[s] if project_against == "modified" else g[order[s]]
            vv = vdot(v, v)
            if vv == 0.0:
                continue
            dot = vdot(x, v)
            if dot < 0.0:
                x = x - (dot / (vv + eps)) * v
        processed.append(x)
    d = torch.zeros(J.shape[1], dtype=torch.float64)
    for p in processed:
        d += p
    return d


def gradvac_literal(J, orders, targets, *, beta: float = 0.5, eps: float = 1e-8, blocks=None):
    """GradVac, Wang et al., "Gradient Vaccine" (ICLR 2021), in LibMTL's form (one step).

    Test oracle. For every task ``i``: ``p_i = g_i``; for each other task ``j`` in ``orders[i]``
    and each parameter block ``k`` (``blocks``: a list of ``(start, end)`` column ranges; default
    one block, the whole vector), with ``φ = ⟨p_i, g_j⟩ / (‖p_i‖‖g_j‖ + eps)`` on block ``k`` and
    the target ``φ̂ = targets[k, i, j]``: if ``φ < φ̂`` (and ``g_j ≠ 0`` on the block),
    ``p_i += g_j · ‖p_i‖(φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_j‖√(1−φ̂²) + eps)`` on the block; then
    ``targets[k, i, j] ← (1−β)φ̂ + βφ``. ``d = Σ_i p_i``.

    ``targets`` is ``[K, K]`` (one block) or ``[B, K, K]``. Returns ``(d, new_targets)`` with the
    targets in the shape given.
    """
    J = as64(J)
    K, D = J.shape
    orders = torch.as_tensor(orders, dtype=torch.long).cpu()
    T = torch.as_tensor(targets, dtype=torch.float64).cpu().clone()
    squeeze = T.dim() == 2
    if squeeze:
        T = T[None]
    blocks = [(0, D)] if blocks is None else [(int(s), int(e)) for s, e in blocks]
    if T.shape[0] != len(blocks):
        raise ValueError("one target matrix per block is needed")
    g = task_rows(J)
    projected = []
    for i in range(K):
        p = g[i].clone()
        for j in orders[i].tolist():
            for k, (s, e) in enumerate(blocks):
                pi, gj = p[s:e], g[j][s:e]
                pn = math.sqrt(max(vdot(pi, pi), 0.0))
                gn = math.sqrt(vdot(gj, gj))
                den = pn * gn + eps
                phi = vdot(pi, gj) / den if den > 0 else 0.0
                tgt = float(T[k, i, j])
                if phi < tgt and gn > 0:
                    s_phi = math.sqrt(max(1.0 - phi * phi, 0.0))
                    s_tgt = math.sqrt(max(1.0 - tgt * tgt, 0.0))
                    w = pn * (tgt * s_phi - phi * s_tgt) / (gn * s_tgt + eps)
                    p[s:e] = pi + w * gj
                T[k, i, j] = (1.0 - beta) * tgt + beta * phi
        projected.append(p)
    d = torch.zeros(D, dtype=torch.float64)
    for p in projected:
        d += p
    return d, (T[0] if squeeze else T)
