"""Stateful methods over several steps, as their official codes run them: MoDo, SDMGrad, MoCo,
ExcessMTL, CR-MOGM, STCH.

Each oracle takes the per-step inputs (gradient matrices, losses) of a whole run and returns one
result per step, carrying the state in plain Python lists and scalars the way the reference code
carries it. See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import math

import torch

from .common import as64, combine_rows, gram_literal, min_norm_weights, vdot

__all__ = ["project_simplex_literal", "modo_literal", "sdmgrad_literal", "moco_literal", "excess_mtl_literal",
           "cr_mogm_literal", "stch_literal"]


def project_simplex_literal(y) -> list:
    """Euclidean projection onto the simplex, the loop of MoDo's / MoCo's official code
    (``_projection2simplex``: the first ``i`` with ``(Σ_{j≤i} u_j − 1)/i > u_{i+1}`` sets the
    threshold, else ``(Σ y − 1)/m``)."""
    y = [float(v) for v in y]
    m = len(y)
    u = sorted(y, reverse=True)
    tmpsum = 0.0
    tmax_f = (sum(y) - 1.0) / m
    for i in range(m - 1):
        tmpsum += u[i]
        tmax = (tmpsum - 1.0) / (i + 1.0)
        if tmax > u[i + 1]:
            tmax_f = tmax
            break
    return [max(v - tmax_f, 0.0) for v in y]


def _euclidean_proj_simplex_numpy(v):
    """SDMGrad's official / LibMTL projection (``euclidean_proj_simplex``, numpy, radius 1)."""
    import numpy as np

    v = np.asarray(v, dtype=np.float64)
    n = v.shape[0]
    if v.sum() == 1.0 and np.all(v >= 0):
        return v
    u = np.sort(v)[::-1]
    cssv = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, n + 1) > (cssv - 1.0))[0][-1]
    theta = float(cssv[rho] - 1.0) / (rho + 1)
    return (v - theta).clip(min=0)


def _cross(J1: torch.Tensor, J2: torch.Tensor) -> torch.Tensor:
    K = J1.shape[0]
    A = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in range(K):
            A[i, j] = vdot(J1[i], J2[j])
    return A


def _triple(step):
    """``(J₁, J₂, J_d)`` of one step: a single matrix stands for all three draws."""
    if isinstance(step, (tuple, list)):
        J1, J2, Jd = step
        return as64(J1), as64(J2), as64(Jd)
    J = as64(step)
    return J, J, J


def modo_literal(steps, *, gamma: float = 0.1, rho: float = 0.1) -> list:
    """MoDo, Chen et al. (NeurIPS 2023), the authors' / LibMTL's update, over several steps.

    Each step is ``(J₁, J₂, J_d)`` (two independent samples' task gradients and the matrix the
    direction is formed from) or one matrix ``J`` for all three. With ``λ`` uniform at the start:
    ``λ ← Π_Δ(λ − γ (J₁(J₂ᵀλ) + ρλ))`` (``Π_Δ`` = the code's ``_projection2simplex``), ``d = J_dᵀλ``.
    Returns the list of ``(d, λ)``.
    """
    out = []
    lam = None
    for step in steps:
        J1, J2, Jd = _triple(step)
        K = J1.shape[0]
        if lam is None:
            lam = [1.0 / K] * K
        v = combine_rows(J2, lam)                                  # J₂ᵀλ
        step_dir = [vdot(J1[i], v) + rho * lam[i] for i in range(K)]  # J₁(J₂ᵀλ) + ρλ
        lam = project_simplex_literal([lam[i] - gamma * step_dir[i] for i in range(K)])
        out.append((combine_rows(Jd, lam), torch.tensor(lam, dtype=torch.float64)))
    return out


def sdmgrad_literal(steps, *, lambda_: float = 0.3, n_iter: int = 20, lr: float = 10.0, momentum: float = 0.5,
                    eps: float = 1e-8, pref_vector=None) -> list:
    """SDMGrad, Xiao et al. (NeurIPS 2023), LibMTL's code with the official inner solver settings.

    Each step is ``(J_ξ, J_ξ', J_ζ)`` or one matrix for all three. ``GG = J_ξ J_ξ'ᵀ``, divided by
    ``mean_k √max(GG_kk, 0)² + eps``; ``w`` (uniform at the start, kept across steps) takes
    ``n_iter`` steps of a fresh ``torch.optim.SGD(lr, momentum)`` along ``GG w + λ GG w̃``, each
    followed by the numpy simplex projection; ``d = (J_ζᵀw + λ J_ζᵀw̃)/(1 + λ)``.
    Returns the list of ``(d, (w + λw̃)/(1 + λ))``.
    """
    out = []
    w = None
    for step in steps:
        J1, J2, Jz = _triple(step)
        K = J1.shape[0]
        pref = (torch.full((K,), 1.0 / K, dtype=torch.float64) if pref_vector is None
                else torch.as_tensor(pref_vector, dtype=torch.float64) / float(sum(pref_vector)))
        GG = _cross(J1, J2)
        diag = torch.where(torch.diag(GG) < 0, torch.zeros(K, dtype=torch.float64), torch.diag(GG))
        scale = torch.mean(torch.sqrt(diag))
        GG = GG / (scale ** 2 + eps)
        Gg = GG @ pref
        if w is None:
            w = torch.full((K,), 1.0 / K, dtype=torch.float64)
        w = w.clone().requires_grad_(True)
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum)
        for _ in range(n_iter):
            opt.zero_grad()
            w.grad = torch.mv(GG, w.detach()) + lambda_ * Gg
            opt.step()
            with torch.no_grad():
                w.copy_(torch.from_numpy(_euclidean_proj_simplex_numpy(w.detach().numpy())))
        w = w.detach()
        weights = (w + lambda_ * pref) / (1.0 + lambda_)
        g0 = combine_rows(Jz, pref)
        gw = combine_rows(Jz, w)
        out.append(((gw + lambda_ * g0) / (1.0 + lambda_), weights))
    return out


def moco_literal(J_steps, loss_steps=None, *, variant: str = "paper", beta=None, gamma=None, rho=None,
                 beta_sigma=None, gamma_sigma=None, normalization: str = "none") -> list:
    """MoCo, Fernando et al. (ICLR 2023), over several steps, on explicit tracking vectors.

    ``variant="paper"`` — the authors' code (Trade-Off-MOL ``MoCo.backward``): ``y ← y − β(y − g)``;
    ``ŷ = y / n`` (``moco_gn``: none, l2, loss, loss+); ``λ ← Π_Δ(λ − γ(ŷ(ŷᵀλ) + ρλ))``;
    ``d = ŷᵀλ``. ``variant="libmtl"`` — LibMTL's ``MoCo.backward``: ``g_k ← g_k/(‖g_k‖+1e-8)·ℓ_k``;
    ``y ← y − β/t^σβ (y − g)``; ``λ ← softmax(λ − γ/t^σγ (yyᵀ + ρI)λ)``; ``d = yᵀλ``. Defaults
    per variant as in :class:`fastmtl.methods.MoCo`. Returns the list of ``(d, λ)``.
    """
    defaults = {"paper": (0.1, 0.0, 0.1, 0.0, 0.1), "libmtl": (0.5, 0.5, 0.1, 0.5, 0.0)}[variant]
    beta, beta_sigma, gamma, gamma_sigma, rho = (d if v is None else v for v, d in
                                                 zip((beta, beta_sigma, gamma, gamma_sigma, rho), defaults))
    out = []
    y = lam = None
    for t, J in enumerate(J_steps, start=1):
        J = as64(J)
        K, D = J.shape
        ell = None if loss_steps is None else [float(v) for v in torch.as_tensor(loss_steps[t - 1]).reshape(-1)]
        g = [J[i].clone() for i in range(K)]
        if variant == "libmtl":
            g = [g[i] / (math.sqrt(vdot(g[i], g[i])) + 1e-8) * ell[i] for i in range(K)]
        if y is None:
            y = [torch.zeros(D, dtype=torch.float64) for _ in range(K)]
            lam = [1.0 / K] * K
        b = beta / t ** beta_sigma
        c = gamma / t ** gamma_sigma
        y = [y[i] - b * (y[i] - g[i]) for i in range(K)]
        if variant == "paper":
            norms = [math.sqrt(vdot(y[i], y[i])) for i in range(K)]
            n = {"none": [1.0] * K, "l2": norms, "loss": ell,
                 "loss+": None if ell is None else [ell[i] * norms[i] for i in range(K)]}[normalization]
            yn = [y[i] / n[i] for i in range(K)]
            v = sum(lam[i] * yn[i] for i in range(K))                   # ŷᵀλ
            lam = project_simplex_literal([lam[i] - c * (vdot(yn[i], v) + rho * lam[i]) for i in range(K)])
            d = sum(lam[i] * yn[i] for i in range(K))
        else:
            Y = torch.stack(y)
            M = Y @ Y.T + rho * torch.eye(K, dtype=torch.float64)
            lam = torch.softmax(torch.tensor(lam, dtype=torch.float64) - c * (M @ torch.tensor(lam, dtype=torch.float64)),
                                -1).tolist()
            d = Y.T @ torch.tensor(lam, dtype=torch.float64)
        out.append((d, torch.tensor(lam, dtype=torch.float64)))
    return out


def excess_mtl_literal(J_steps, *, robust_step_size: float = 1e-2, eps: float = 1e-7, warmup_steps: int = 1) -> list:
    """ExcessMTL, He et al. (ICML 2024), the official ``backward`` over several steps.

    ``loss_weight = 1``; per step, per task: ``grad_sum_i += g_i²``, ``w_i = g_i·(1/√(grad_sum_i +
    eps))·g_i``. The first ``warmup_steps`` steps (official: 1) only collect ``w`` (their mean is
    ``initial_w``); later steps: ``w ← w/initial_w``, ``loss_weight ← loss_weight·exp(η w)``,
    renormalised to sum K. ``d = Σ_i loss_weight_i g_i``. Returns the list of ``(d, loss_weight)``.
    """
    out = []
    grad_sum = weight = warm = initial = None
    for t, J in enumerate(J_steps, start=1):
        J = as64(J)
        K = J.shape[0]
        if grad_sum is None:
            grad_sum = [torch.zeros(J.shape[1], dtype=torch.float64) for _ in range(K)]
            weight = [1.0] * K
            warm = [0.0] * K
        w = []
        for i in range(K):
            grad_sum[i] = grad_sum[i] + J[i] ** 2
            h = torch.sqrt(grad_sum[i] + eps)
            w.append(float((J[i] * (1.0 / h)) @ J[i]))
        if t <= warmup_steps:
            warm = [warm[i] + w[i] for i in range(K)]
            if t == warmup_steps:
                initial = [v / warmup_steps for v in warm]
        else:
            w = [w[i] / initial[i] for i in range(K)]
            weight = [weight[i] * math.exp(w[i] * robust_step_size) for i in range(K)]
            total = sum(weight)
            weight = [v / total * K for v in weight]
        out.append((combine_rows(J, weight), torch.tensor(weight, dtype=torch.float64)))
    return out


def cr_mogm_literal(J_steps, *, alpha: float = 0.9, base_weights=None, initial_weights=None) -> list:
    """CR-MOGM, Zhou et al. (NeurIPS 2022), as TorchJD 0.18's ``CRMOGMWeighting``.

    ``λ_t = α λ_{t−1} + (1 − α) λ̂_t`` with ``λ̂_t = base_weights(J_t)`` (default: MGDA's exact
    min-norm weights) and ``λ_0 = initial_weights`` or ``λ̂_1``; ``d_t = Σ λ_t,i g_i``.
    Returns the list of ``(d, λ)``.
    """
    if base_weights is None:
        def base_weights(J):
            return [float(v) for v in min_norm_weights(gram_literal(J).numpy())]
    out = []
    lam = None if initial_weights is None else [float(v) for v in initial_weights]
    for J in J_steps:
        J = as64(J)
        hat = [float(v) for v in base_weights(J)]
        prev = hat if lam is None else lam
        lam = [alpha * prev[i] + (1.0 - alpha) * hat[i] for i in range(len(hat))]
        out.append((combine_rows(J, lam), torch.tensor(lam, dtype=torch.float64)))
    return out


def stch_literal(loss_steps, epochs, *, mu: float = 1.0, warmup_epoch: int = 4) -> list:
    """STCH, Lin et al. (ICML 2024), the official multi-task ``backward``: λ = ∂L/∂ℓ by autograd.

    ``epochs[t]`` is the (0-based) epoch of step ``t``. Epochs ``< warmup_epoch``:
    ``L = Σ log(ℓ + 1e-20)``; epoch ``== warmup_epoch``: the same, and the losses are averaged;
    later: ``nadir`` = that average (fixed at the first such step),
    ``L = μ log Σ exp((u − max u)/μ) · K`` with ``u = log(ℓ/nadir + 1e-20)``.
    Returns the list of λ (float64 ``[K]``).
    """
    out = []
    total, count, nadir = 0.0, 0, None
    for losses, epoch in zip(loss_steps, epochs):
        ell = torch.as_tensor(losses, dtype=torch.float64).detach().clone().reshape(-1).requires_grad_(True)
        K = ell.shape[0]
        if epoch < warmup_epoch:
            loss = torch.mul(torch.log(ell + 1e-20), torch.ones_like(ell)).sum()
        elif epoch == warmup_epoch:
            loss = torch.mul(torch.log(ell + 1e-20), torch.ones_like(ell)).sum()
            total = total + ell.detach()
            count += 1
        else:
            if nadir is None:
                nadir = total / count
            u = torch.log(ell / nadir + 1e-20)
            reg = u - torch.max(u.data).detach()
            loss = mu * torch.log(torch.sum(torch.exp(reg / mu))) * K
        (grad,) = torch.autograd.grad(loss, ell)
        out.append(grad.detach())
    return out
