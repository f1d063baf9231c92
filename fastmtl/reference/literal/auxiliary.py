"""Auxiliary-task weightings from a main-task gradient: HydaLearn (first order), GCosSim, OL-AUX.

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import math

import torch

from .common import as64, combine_rows, task_rows, vdot

__all__ = ["hydalearn_literal", "gcosim_literal", "olaux_literal"]


def hydalearn_literal(J, *, main_task: int = 0, reference=None, normalize: str = "sum",
                      fallback: str = "main") -> torch.Tensor:
    """HydaLearn, Verboven et al., "HydaLearn: Highly Dynamic Task Weighting for Multi-task
    Learning with Auxiliary Tasks" (Applied Intelligence 2023), first-order gain rule.

    Test oracle of fastmtl's reconstruction: the main-task gain of task k is
    ``δ_k = ⟨v, g_k⟩`` with ``v = g_main`` (or the given ``reference`` vector). Weights follow
    the ratio rule ``w_i / w_j = δ_i / δ_j`` on the clipped gains ``δ⁺ = max(δ, 0)``:
    ``normalize="sum"``: ``w_k = δ⁺_k / Σ δ⁺``; ``normalize="main"``: ``w_main = 1``,
    ``w_k = δ⁺_k / δ_main`` (requires ``δ_main > 0``). When ``Σ δ⁺ == 0`` (or, for ``"main"``,
    ``δ_main ≤ 0``) the fallback applies: ``"main"`` → ``w = e_main``, ``"zero"`` → ``w = 0``.
    ``d = Σ_k w_k g_k``.
    """
    J = as64(J)
    K = J.shape[0]
    if not (isinstance(main_task, int) and 0 <= main_task < K):
        raise ValueError(f"main_task={main_task!r} is out of range for K={K}")
    if normalize not in ("sum", "main"):
        raise ValueError(f"normalize must be 'sum' or 'main', got {normalize!r}")
    if fallback not in ("main", "zero"):
        raise ValueError(f"fallback must be 'main' or 'zero', got {fallback!r}")
    g = task_rows(J)
    v = g[main_task] if reference is None else as64(torch.as_tensor(reference).reshape(1, -1))[0]
    if v.shape[0] != J.shape[1]:
        raise ValueError("reference must have D entries")
    delta = [vdot(v, g[k]) for k in range(K)]
    pos = [max(x, 0.0) for x in delta]
    total = sum(pos)
    w = [0.0] * K
    use_fallback = total == 0.0 or (normalize == "main" and not delta[main_task] > 0.0)
    if use_fallback:
        if fallback == "main":
            w[main_task] = 1.0
    elif normalize == "sum":
        for k in range(K):
            w[k] = pos[k] / total
    else:
        for k in range(K):
            w[k] = 1.0 if k == main_task else pos[k] / delta[main_task]
    return combine_rows(J, w)


def gcosim_literal(J, *, main_task: int = 0) -> torch.Tensor:
    """GCosSim, Du et al., "Adapting Auxiliary Losses Using Gradient Similarity" (arXiv 1812.02224),
    unweighted version, per auxiliary task (the rule of the SLGrad repository's ``Gcosim``).

    Test oracle: ``cos_k = ⟨g_main, g_k⟩ / (‖g_main‖ ‖g_k‖)`` by explicit dot products (0 when a
    norm is 0); ``d = g_main + Σ_{k ≠ main, cos_k ≥ 0} g_k``.
    """
    J = as64(J)
    K = J.shape[0]
    if not (isinstance(main_task, int) and 0 <= main_task < K):
        raise ValueError(f"main_task={main_task!r} is out of range for K={K}")
    g = task_rows(J)
    nm = math.sqrt(vdot(g[main_task], g[main_task]))
    w = [0.0] * K
    for k in range(K):
        if k == main_task:
            w[k] = 1.0
            continue
        nk = math.sqrt(vdot(g[k], g[k]))
        cos = vdot(g[main_task], g[k]) / (nm * nk) if nm > 0.0 and nk > 0.0 else 0.0
        w[k] = 1.0 if cos >= 0.0 else 0.0
    return combine_rows(J, w)


def olaux_literal(J_steps, *, main_task: int = 0, horizon: int = 5, lr: float = 0.1, model_lr: float = 0.01,
                  init_weight: float = 1.0, nonnegative: bool = False, optimizer: str = "sgd") -> list:
    """OL-AUX, Lin et al., "Adaptive Auxiliary Task Weighting for Reinforcement Learning"
    (NeurIPS 2019), Algorithm 1 with the first-order weight gradient.

    Test oracle over several steps: ``d_t = g_main + Σ_{k≠main} w_k g_k`` with the current weights;
    ``acc_k += ⟨g_main, g_k⟩``; every ``horizon`` steps the weight gradient ``−model_lr · acc`` is
    applied by ``torch.optim.SGD(lr)`` (or ``torch.optim.Adam(lr)``) to the auxiliary weights,
    ``acc`` is cleared, and with ``nonnegative`` the weights are clamped at 0. Returns the list of
    ``d_t``.
    """
    out = []
    w = acc = opt = None
    count = 0
    for J in J_steps:
        J = as64(J)
        K = J.shape[0]
        if w is None:
            w = torch.nn.Parameter(torch.full((K,), float(init_weight), dtype=torch.float64))
            acc = [0.0] * K
            opt = (torch.optim.SGD([w], lr=lr) if optimizer == "sgd" else torch.optim.Adam([w], lr=lr))
        coeffs = [1.0 if k == main_task else float(w.detach()[k]) for k in range(K)]
        out.append(combine_rows(J, coeffs))
        for k in range(K):
            if k != main_task:
                acc[k] += vdot(J[main_task], J[k])
        count += 1
        if count == horizon:
            grad = torch.tensor([0.0 if k == main_task else -model_lr * acc[k] for k in range(K)],
                                dtype=torch.float64)
            opt.zero_grad()
            w.grad = grad
            opt.step()
            with torch.no_grad():
                w[main_task] = 1.0
                if nonnegative:
                    w.clamp_(min=0.0)
            acc = [0.0] * K
            count = 0
    return out
