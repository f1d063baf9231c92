"""STCH — Lin, Zhang, Yang, Zhang, Yu, Zhang, "Smooth Tchebycheff Scalarization for Multi-Objective
Optimization", ICML 2024 (arXiv 2402.19078)."""

from __future__ import annotations

from typing import Optional

import torch

from .base import GramMethod
from .common import check_num_tasks, check_positive
from .registry import register_method


@register_method
class STCH(GramMethod):
    """Smooth Tchebycheff scalarisation (Lin et al., ICML 2024), loss-level. No Gram pass.

    The paper's scalarisation ``g_μ(x) = μ log Σ_i exp((f_i(x) − z_i)/μ)`` is applied, in its
    official multi-task code (``Xi-L/STCH``, also LibMTL), to log losses normalised by a *nadir*
    vector ``n`` (the average loss over one warm-up epoch) and multiplied by K:

        ``L = K μ log Σ_i exp(u_i/μ)``,  ``u_i = log(ℓ_i/n_i + ε)``

    whose gradient weights the task losses by

        ``λ_i = ∂L/∂ℓ_i = K · softmax(u/μ)_i / (ℓ_i + ε n_i)``.

    Epochs (close each with :meth:`end_epoch`; epochs count from 0, as the official trainer's):

    * epochs ``< warmup_epoch``: ``L = Σ_i log(ℓ_i + ε)``, i.e. ``λ_i = 1/(ℓ_i + ε)``;
    * epoch ``== warmup_epoch``: the same weights, and the losses are averaged into ``n``;
    * later epochs: the STCH weights above, with ``n`` fixed at the first call of the first of them.

    ``nadir=`` gives ``n`` up front and skips the warm-up (STCH weights from the first call).
    Defaults: ``mu = 1.0``, ``warmup_epoch = 4`` (LibMTL's configuration), ``eps = 1e-20`` (the
    official code's). Losses must be positive (they are logged): negative ones are clamped to 0.
    Scale: no fixed sum; ``λ_i > 0`` and ``Σ_i λ_i ℓ_i ≈ K`` for ``ℓ ≫ ε``, in both phases (the
    ``× K`` of the official loss, and the K log losses of the warm-up).

    State: the epoch counter, the running loss sum and count of the nadir epoch, and ``n``.
    :meth:`reset` starts over at epoch 0 (a ``nadir`` given to the constructor is kept).
    Needs the losses: ``combine(grads, method=instance, losses=losses)``.
    """

    uses_generator = False

    name = "stch"
    requires_gram = False
    uses_losses = True
    stateful = True
    _state_attrs = ("_epoch", "_loss_sum", "_loss_count", "_nadir", "_K")

    def __init__(self, mu: float = 1.0, warmup_epoch: int = 4, nadir=None, eps: float = 1e-20):
        self.mu = check_positive("mu", mu, allow_zero=False)
        if isinstance(warmup_epoch, bool) or not isinstance(warmup_epoch, int) or warmup_epoch < 0:
            raise ValueError(f"warmup_epoch must be an int ≥ 0, got {warmup_epoch!r}")
        self.warmup_epoch = warmup_epoch
        self.eps = check_positive("eps", eps)
        self.fixed_nadir: Optional[torch.Tensor] = None
        if nadir is not None:
            t = torch.as_tensor(nadir, dtype=torch.float64).detach().reshape(-1).cpu()
            if t.numel() == 0 or not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
                raise ValueError("nadir must hold finite positive numbers (one per task)")
            self.fixed_nadir = t
        self.reset()

    def reset(self) -> None:
        """Back to epoch 0: forget the loss averages and the nadir (a constructor ``nadir`` stays)."""
        self._epoch = 0
        self._loss_sum: Optional[torch.Tensor] = None
        self._loss_count = 0
        self._nadir: Optional[torch.Tensor] = None if self.fixed_nadir is None else self.fixed_nadir.clone()
        self._K: Optional[int] = None

    def end_epoch(self) -> None:
        """Close the epoch (the warm-up schedule counts epochs)."""
        self._epoch += 1

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def nadir(self) -> Optional[torch.Tensor]:
        """The nadir vector ``n`` (``None`` until the STCH phase starts)."""
        return self._nadir

    def weights(self, G, ctx):
        if ctx.losses is None:
            raise ValueError("stch needs the task losses: combine(..., losses=...)")
        K, device = ctx.num_tasks, ctx.device
        check_num_tasks("STCH", self._K, K)
        if self._nadir is not None and self._nadir.shape[0] != K:
            raise ValueError(f"nadir has {self._nadir.shape[0]} entries for K={K} tasks")
        self._K = K
        losses = ctx.losses.to(device=device, dtype=torch.float64).clamp_min(0.0)
        if self._nadir is None and self._epoch <= self.warmup_epoch:
            if self._epoch == self.warmup_epoch:
                self._loss_sum = losses.clone() if self._loss_sum is None else self._loss_sum + losses
                self._loss_count += 1
            return 1.0 / (losses + self.eps)
        if self._nadir is None:
            if self._loss_count == 0:
                raise RuntimeError("STCH reached its STCH phase without a loss average: no call happened during "
                                   f"warm-up epoch {self.warmup_epoch} (end_epoch() called too often?)")
            self._nadir = self._loss_sum / self._loss_count
        n = self._nadir.to(device)
        u = torch.log(losses / n + self.eps)
        return K * torch.softmax(u / self.mu, 0) / (losses + self.eps * n)
