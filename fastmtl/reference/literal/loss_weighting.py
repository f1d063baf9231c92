"""Methods driven by the losses or by state across steps: DB-MTL, GradNorm, GeMTL, FAMO.

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import math

import torch

from .common import as64, combine_rows, vdot

__all__ = ["db_mtl_literal", "gradnorm_literal", "gemtl_literal", "famo_literal"]


def db_mtl_literal(J_steps, loss_steps, *, beta: float = 0.9, sigma: float = 0.0, eps: float = 1e-8) -> list:
    """DB-MTL, Lin et al., "Dual-Balancing for Multi-Task Learning" (arXiv 2308.12029), LibMTL form.

    Test oracle over several steps ``t = 1, 2, …`` (one ``[K, D]`` matrix and K losses per step):
    ``ĝ_i = g_i / (ℓ_i + eps)`` (gradient of ``log(ℓ_i + eps)``),
    ``M_i ← ĝ_i + (β / t^σ)(M_i − ĝ_i)`` (``M`` starts at 0),
    ``α_i = max_j ‖M_j‖ / (‖M_i‖ + eps)``, ``d_t = Σ_i α_i M_i``. Returns the list of ``d_t``.
    """
    out = []
    M = None
    for t, (J, losses) in enumerate(zip(J_steps, loss_steps), start=1):
        J = as64(J)
        K = J.shape[0]
        losses = [float(v) for v in torch.as_tensor(losses, dtype=torch.float64).reshape(-1)]
        if M is None:
            M = [torch.zeros(J.shape[1], dtype=torch.float64) for _ in range(K)]
        c = beta / (t ** sigma)
        for i in range(K):
            g_hat = J[i] / (losses[i] + eps)
            M[i] = g_hat + c * (M[i] - g_hat)
        norms = [math.sqrt(vdot(M[i], M[i])) for i in range(K)]
        top = max(norms)
        d = torch.zeros(J.shape[1], dtype=torch.float64)
        for i in range(K):
            d += (top / (norms[i] + eps)) * M[i]
        out.append(d)
    return out


def gradnorm_literal(J_steps, loss_steps, *, alpha: float = 1.5, lr: float = 0.01, variant: str = "paper",
                     optimizer: str = "sgd", columns=None, initial_losses=None) -> list:
    """GradNorm, Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks" (ICML 2018), with autograd on the GradNorm loss.

    Test oracle over several steps. Weights ``w`` (``variant="paper"``: a parameter, init 1;
    ``"libmtl"``: ``w = K·softmax(s)`` with logits ``s``, init 0). Per step, with ``W`` the
    columns ``columns = (start, end)`` (default all): ``G_i = ‖w_i g_i^W‖``, the target
    ``mean_j G_j · r_i^α`` with ``r_i = (ℓ_i/ℓ_i(0)) / mean_j(ℓ_j/ℓ_j(0))`` is *detached*,
    ``L_grad = Σ_i |G_i − target_i|`` is differentiated by autograd and one ``torch.optim`` step
    (SGD or Adam, ``lr``) is taken; the paper variant then renormalises ``w ← K w/Σw`` (or resets
    ``w = 1`` when ``Σw ≤ 0``, fastmtl's documented guard). The
    direction of the step is ``d_t = Σ_i w_i(t) g_i`` with the weights before the update.
    ``ℓ(0)`` is ``initial_losses`` or the first step's losses. Returns the list of ``d_t``.
    """
    out = []
    param = opt = l0 = None
    for J, losses in zip(J_steps, loss_steps):
        J = as64(J)
        K, D = J.shape
        s, e = (0, D) if columns is None else columns
        losses = torch.as_tensor(losses, dtype=torch.float64).reshape(-1).clone()
        if param is None:
            init = 1.0 if variant == "paper" else 0.0
            param = torch.nn.Parameter(torch.full((K,), init, dtype=torch.float64))
            opt = torch.optim.SGD([param], lr=lr) if optimizer == "sgd" else torch.optim.Adam([param], lr=lr)
            l0 = losses.clone() if initial_losses is None else torch.as_tensor(initial_losses, dtype=torch.float64)
        w = param if variant == "paper" else K * torch.softmax(param, 0)
        out.append(combine_rows(J, [float(v) for v in w.detach()]))
        Gw = torch.stack([torch.linalg.vector_norm(w[i] * J[i, s:e]) for i in range(K)])
        ratio = losses / l0
        r = ratio / ratio.mean()
        target = (Gw.mean() * r ** alpha).detach()
        L_grad = (Gw - target).abs().sum()
        opt.zero_grad()
        L_grad.backward()
        opt.step()
        if variant == "paper":
            with torch.no_grad():
                total = float(param.sum())
                if total > 0:
                    param.mul_(K / total)
                else:                        # fastmtl's guard: a non-positive sum resets to 1
                    param.fill_(1.0)
    return out


def gemtl_literal(losses, p: float, *, band: float = 0.1) -> torch.Tensor:
    """GeMTL: the weights ``λ = ∂M_p(ℓ)/∂ℓ`` of the generalized mean of positive losses.

    Test oracle: ``M_p = ((1/K) Σ ℓ_i^p)^{1/p}`` computed directly (not in log space), or the
    geometric mean ``(Π ℓ_i)^{1/K}`` when ``|p| < band``, differentiated by autograd in float64.
    Returns ``λ`` (float64 ``[K]``); the direction is ``Σ λ_i g_i``.
    """
    l = torch.as_tensor(losses, dtype=torch.float64).reshape(-1).clone().requires_grad_(True)
    K = l.shape[0]
    if abs(p) < band:
        M = torch.prod(l) ** (1.0 / K)
    else:
        M = (torch.sum(l ** p) / K) ** (1.0 / p)
    (grad,) = torch.autograd.grad(M, l)
    return grad.detach()


def famo_literal(loss_pairs, *, w_lr: float = 0.025, gamma: float = 1e-3, min_losses=None) -> list:
    """FAMO, Liu et al., "FAMO: Fast Adaptive Multitask Optimization" (NeurIPS 2023), in the form
    of the official code (float64).

    Test oracle over several steps; ``loss_pairs`` is a list of ``(losses, losses_after_step)``.
    Logits ``w`` (init 0) with ``torch.optim.Adam(lr=w_lr, weight_decay=gamma)``. Per step:
    ``z = softmax(w)``, ``D = ℓ − ℓ_min + 1e-8``, ``c = Σ z/D`` (detached); the weights are the
    autograd gradient of ``Σ_i z_i log D_i / c`` with respect to the losses. Then
    ``δ = log D(old) − log D(new)``, the logits gradient is the vector–Jacobian product of
    ``softmax`` with ``δ``, and one Adam step is taken. Returns the list of weight vectors.
    """
    out = []
    w = opt = None
    for losses, new_losses in loss_pairs:
        l = torch.as_tensor(losses, dtype=torch.float64).reshape(-1).clone().requires_grad_(True)
        K = l.shape[0]
        if w is None:
            w = torch.nn.Parameter(torch.zeros(K, dtype=torch.float64))
            opt = torch.optim.Adam([w], lr=w_lr, weight_decay=gamma)
        lmin = torch.zeros(K, dtype=torch.float64) if min_losses is None else torch.as_tensor(
            min_losses, dtype=torch.float64)
        z = torch.softmax(w, -1).detach()
        D = l - lmin + 1e-8
        c = (z / D).sum().detach()
        loss = (D.log() * z / c).sum()
        (lam,) = torch.autograd.grad(loss, l)
        out.append(lam.detach())
        new = torch.as_tensor(new_losses, dtype=torch.float64).reshape(-1)
        delta = (l.detach() - lmin + 1e-8).log() - (new - lmin + 1e-8).log()
        (g,) = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta)
        opt.zero_grad()
        w.grad = g
        opt.step()
    return out
