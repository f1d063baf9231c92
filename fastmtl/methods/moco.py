"""MoCo — Fernando, Shen, Liu, Chaudhury, Murugesan, Chen, "Mitigating Gradient Bias in
Multi-objective Learning: A Provably Convergent Approach", ICLR 2023."""

from __future__ import annotations

from typing import Optional

import torch

from ..collectives import all_reduce_sum
from ..gradients import accumulate_dtype
from ..solvers.simplex_projection import project_simplex
from .base import Direction, DirectionMethod
from .common import check_choice, check_positive
from .registry import register_method
from .row_buffers import RowBuffers

_DEFAULTS = {  # beta, beta_sigma, gamma, gamma_sigma, rho
    "paper": (0.1, 0.0, 0.1, 0.0, 0.1),    # the authors' code (Trade-Off-MOL) defaults
    "libmtl": (0.5, 0.5, 0.1, 0.5, 0.0),   # LibMTL's configuration
}


@register_method
class MoCo(RowBuffers, DirectionMethod):
    """Multi-objective gradient correction (Fernando et al., ICLR 2023): tracked gradients and a
    projected-gradient λ.

    State: ``Y`` (one tracked gradient ``y_k`` per task, a ``[K, numel]`` buffer per parameter,
    zero at the start) and ``λ`` (uniform at the start). Each call, with step ``t = 1, 2, …``,
    ``β_t = β/t^{σ_β}`` and ``γ_t = γ/t^{σ_γ}``:

    * ``variant="paper"`` (Algorithm 1, the authors' code ``heshandevaka/Trade-Off-MOL``):
      ``y_k ← y_k − β_t (y_k − g_k)``; ``ŷ_k = y_k / n_k`` with ``n_k`` from ``normalization``
      (``"none"``: 1, ``"l2"``: ‖y_k‖, ``"loss"``: ℓ_k, ``"loss+"``: ℓ_k‖y_k‖, the code's
      ``moco_gn``); ``λ ← Π_Δ(λ − γ_t (ŶŶᵀ + ρI) λ)``; ``d = Σ_k λ_k ŷ_k``.
    * ``variant="libmtl"`` (LibMTL's MoCo, from the authors' shared code): the gradients are first
      rescaled, ``g_k ← ℓ_k g_k/(‖g_k‖ + 1e-8)``; ``y_k ← y_k − β_t (y_k − g_k)``;
      ``λ ← softmax(λ − γ_t (YYᵀ + ρI) λ)`` (a softmax instead of the simplex projection);
      ``d = Σ_k λ_k y_k``.

    The paper's projection of each ``y_k`` onto a ball of radius ``L_k`` (a bounded-gradient
    assumption of the analysis) is in neither code and is not applied. The direction combines the
    *tracked* vectors, not the current gradients, so ``info.weights`` is ``None``; the last λ is
    :attr:`lambd`. Only ``Y Yᵀ`` (K×K) enters the λ update: one Gram of the buffer per call. A
    task without a gradient for a parameter contributes zeros there; a parameter that no task
    reaches in a call gets a ``None`` direction (its tracked rows still decay), as in DB-MTL.

    Defaults: ``variant="paper"``: ``beta=0.1, gamma=0.1, rho=0.1``, no decay (the authors'
    configuration); ``variant="libmtl"``: ``beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5,
    rho=0`` (LibMTL's). Any of them can be given explicitly. Scale: ``λ`` on the simplex (Σλ = 1);
    the direction is a convex combination of the (normalised) tracked gradients. A zero tracked
    vector has ``n_k = 1`` under ``"l2"``/``"loss+"`` (the code divides by zero). The losses are
    read by ``variant="libmtl"`` and the ``"loss"``/``"loss+"`` normalisations.

    Heads: ``"sum"`` (plain per-task gradients, as LibMTL and the authors' code leave them). No
    epoch rule; :meth:`reset` clears ``Y``, ``λ`` and the step. Sharded
    (``combine(..., process_group=pg)``): each rank tracks its own shard of ``Y``; the K×K Gram of
    ``Y`` (and, for ``"libmtl"``, the K squared gradient norms) are all-reduced, so λ and the
    direction's shards equal the unsharded method's; the state is rank-local
    (:mod:`fastmtl.methods.sharded_state`).
    """

    uses_generator = False

    name = "moco"
    head_weighting = "sum"
    uses_losses = True
    stateful = True
    sharded_direction = True  # its own all-reduce of the K×K Gram of the tracked gradients
    _state_attrs = ("_buffers", "_shapes", "_K", "_step", "_lambda")

    def __init__(self, beta: Optional[float] = None, gamma: Optional[float] = None, rho: Optional[float] = None,
                 beta_sigma: Optional[float] = None, gamma_sigma: Optional[float] = None,
                 normalization: str = "none", variant: str = "paper"):
        check_choice("variant", variant, _DEFAULTS)
        check_choice("normalization", normalization, ("none", "l2", "loss", "loss+"))
        if variant == "libmtl" and normalization != "none":
            raise ValueError("normalization applies to variant='paper'; variant='libmtl' rescales the gradients "
                             "its own way (ℓ_k g_k/‖g_k‖)")
        d_beta, d_beta_sigma, d_gamma, d_gamma_sigma, d_rho = _DEFAULTS[variant]
        self.variant = variant
        self.normalization = normalization
        self.beta = check_positive("beta", d_beta if beta is None else beta, allow_zero=False)
        if self.beta > 1:
            raise ValueError(f"beta must be in (0, 1], got {self.beta}")
        self.gamma = check_positive("gamma", d_gamma if gamma is None else gamma, allow_zero=False)
        self.rho = check_positive("rho", d_rho if rho is None else rho)
        self.beta_sigma = check_positive("beta_sigma", d_beta_sigma if beta_sigma is None else beta_sigma)
        self.gamma_sigma = check_positive("gamma_sigma", d_gamma_sigma if gamma_sigma is None else gamma_sigma)
        self.reset()

    def reset(self) -> None:
        """Clear the tracked gradients, λ and the step counter."""
        self.reset_buffers()
        self._step = 0
        self._lambda: Optional[torch.Tensor] = None

    @property
    def lambd(self) -> Optional[torch.Tensor]:
        """λ of the last call (``None`` before the first)."""
        return self._lambda

    def _needs_losses(self) -> bool:
        return self.variant == "libmtl" or self.normalization in ("loss", "loss+")

    def _gradient_scale(self, tg, losses, process_group) -> torch.Tensor:
        """``ℓ_k/(‖g_k‖ + 1e-8)`` (LibMTL's rescaling), from the K squared norms over the whole vector."""
        sq = torch.zeros(tg.num_tasks, dtype=torch.float64, device=tg.device)
        for p in range(tg.num_params):
            if tg.matrix is not None:
                sq += tg.matrix.to(accumulate_dtype(tg.dtype)).pow(2).sum(1).to(torch.float64)
                continue
            for k, t in enumerate(tg.flat_views(p)):
                if t is not None:
                    sq[k] += t.to(accumulate_dtype(tg.dtype)).pow(2).sum().to(torch.float64)
        if process_group is not None:
            sq = all_reduce_sum(sq, process_group, "all_reduce of MoCo's gradient norms")
        return losses / (torch.sqrt(sq) + 1e-8)

    def direction(self, engine, ctx):
        tg, out, losses, pg = engine.tg, engine.targets, ctx.losses, ctx.process_group
        if losses is None and self._needs_losses():
            raise ValueError(f"moco with variant={self.variant!r}, normalization={self.normalization!r} needs the "
                             "task losses: combine(..., losses=...)")
        self.check_buffers(tg, pg, "MoCo")
        K, acc = tg.num_tasks, accumulate_dtype(tg.dtype)
        self._step += 1
        beta = self.beta / float(self._step) ** self.beta_sigma
        gamma = self.gamma / float(self._step) ** self.gamma_sigma
        scale = (self._gradient_scale(tg, losses.to(tg.device), pg) if self.variant == "libmtl"
                 else torch.ones(K, dtype=torch.float64, device=tg.device))
        coef = (beta * scale).to(acc)
        YY = torch.zeros(K, K, dtype=torch.float64, device=tg.device)
        for p in range(tg.num_params):
            if self._shapes[p] is None:
                continue
            Y = self.buffer(tg, p)
            Y.mul_(1.0 - beta)  # y ← y − β(y − g) = (1 − β) y + β g
            if tg.matrix is not None:
                Y.addcmul_(tg.matrix, coef[:, None])
            else:
                for k, t in enumerate(tg.flat_views(p)):
                    if t is not None:
                        Y[k].addcmul_(t, coef[k])
            YY += (Y @ Y.T).to(torch.float64)
        if pg is not None:  # the Gram of the tracked vectors over the whole vector
            YY = all_reduce_sum(YY, pg, "all_reduce of MoCo's tracked-gradient Gram")
        lam = (torch.full((K,), 1.0 / K, dtype=torch.float64, device=tg.device) if self._lambda is None
               else self._lambda.to(tg.device))
        eye = torch.eye(K, dtype=torch.float64, device=tg.device)
        if self.variant == "paper":
            n = self._norms(YY, losses)
            YYn = YY / (n[:, None] * n[None, :])
            lam = project_simplex(lam - gamma * ((YYn + self.rho * eye) @ lam))
            coeff = lam / n
        else:
            lam = torch.softmax(lam - gamma * ((YY + self.rho * eye) @ lam), 0)
            coeff = lam
        self._lambda = lam
        # A non-finite gradient poisons Y (and so every later call): the whole direction is NaN,
        # never a partly finite one (the projection can map an infinite entry to a finite λ).
        coeff = torch.where(torch.isfinite(YY).all(), coeff, torch.full_like(coeff, float("nan"))).to(acc)
        parts = self.combine_rows(tg, coeff, out)
        return Direction(parts)

    def _norms(self, YY: torch.Tensor, losses: Optional[torch.Tensor]) -> torch.Tensor:
        """``n_k`` of the ``normalization`` (1 where it would be 0)."""
        if self.normalization == "none":
            return torch.ones(YY.shape[0], dtype=torch.float64, device=YY.device)
        norms = torch.sqrt(torch.diagonal(YY).clamp_min(0.0))
        if self.normalization == "l2":
            n = norms
        else:
            ell = losses.to(device=YY.device, dtype=torch.float64)
            n = ell if self.normalization == "loss" else ell * norms
        return torch.where(n > 0, n, torch.ones_like(n))
