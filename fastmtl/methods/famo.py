"""FAMO — Liu, Feng, Stone, Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023."""

from __future__ import annotations

from typing import Optional

import torch

from ..gradients import losses_tensor
from .base import GramMethod
from .common import AdamState, check_num_tasks, check_positive
from .registry import register_method


@register_method
class FAMO(GramMethod):
    """Fast adaptive multitask optimization (Liu et al., NeurIPS 2023). Loss-only, no Gram pass.

    State: logits ``w ∈ R^K`` (init 0) trained by Adam (``w_lr = 0.025``, weight decay ``gamma``).
    With ``z = softmax(w)``, ``D_i = ℓ_i − ℓ_min,i + eps`` and ``c = Σ_i z_i/D_i``, the method
    back-propagates ``Σ_i z_i log D_i / c``, i.e. ``λ_i = (z_i/D_i)/c`` (**Σλ = 1**).

    After the optimizer step, call :meth:`update` with the losses recomputed on the *same* batch
    (one extra forward pass without grad): ``δ_i = log D_i(old) − log D_i(new)``, the logits
    gradient is ``J_softmax(w)ᵀ δ = z∘δ − z (zᵀδ)``, and one Adam step is taken on ``w``. Without
    :meth:`update` the weights stay at their current values (``combine(..., method="famo")``
    with a fresh instance gives ``λ ∝ 1/D``).

    Defaults: ``w_lr = 0.025``; ``gamma = 1e-3`` (the authors' run scripts for NYUv2/CelebA/QM9
    and LibMTL; the code default is 1e-5, Cityscapes uses 1e-2); ``ℓ_min = 0`` (set per-task
    minima with :meth:`set_min_losses`). Losses below ``ℓ_min`` are clamped to it (``D = eps``)
    instead of producing the log of a negative number.

    The official training loop clips the shared-parameter gradient before ``backward`` (a no-op);
    no clipping is applied here.
    """

    uses_generator = False

    name = "famo"
    requires_gram = False
    uses_losses = True
    stateful = True
    _state_attrs = ("_logits", "_adam", "_prev_losses", "_K", "_min_losses")

    def __init__(self, w_lr: float = 0.025, gamma: float = 1e-3, min_losses=None, eps: float = 1e-8):
        self.w_lr = check_positive("w_lr", w_lr, allow_zero=False)
        self.gamma = check_positive("gamma", gamma)
        self.eps = check_positive("eps", eps, allow_zero=False)
        self._min_losses = None
        if min_losses is not None:
            self.set_min_losses(min_losses)
        self.reset()

    def reset(self) -> None:
        """Forget the logits, the optimizer state and the stored losses."""
        self._logits: Optional[torch.Tensor] = None
        self._adam = AdamState(self.w_lr, weight_decay=self.gamma)
        self._prev_losses: Optional[torch.Tensor] = None
        self._K: Optional[int] = None

    def set_min_losses(self, min_losses) -> None:
        """Per-task lower bounds ``ℓ_min`` (default 0)."""
        t = torch.as_tensor(min_losses, dtype=torch.float64).detach().reshape(-1)
        if not bool(torch.isfinite(t).all()):
            raise ValueError("min_losses must be finite")
        self._min_losses = t

    @property
    def logits(self) -> Optional[torch.Tensor]:
        return self._logits

    def _D(self, losses: torch.Tensor) -> torch.Tensor:
        lmin = 0.0 if self._min_losses is None else self._min_losses.to(losses.device)
        return (losses - lmin).clamp_min(0.0) + self.eps

    def weights(self, G, ctx):
        if ctx.losses is None:
            raise ValueError("famo needs the task losses: combine(..., losses=...)")
        K, device = ctx.num_tasks, ctx.device
        check_num_tasks("FAMO", self._K, K)
        if self._min_losses is not None and self._min_losses.shape[0] != K:
            raise ValueError(f"min_losses has {self._min_losses.shape[0]} entries for K={K} tasks")
        losses = ctx.losses.to(device=device, dtype=torch.float64)
        if self._logits is None:
            self._logits = torch.zeros(K, dtype=torch.float64, device=device)
            self._K = K
        z = torch.softmax(self._logits.to(device), 0)
        q = z / self._D(losses)
        self._prev_losses = losses.clone()
        return q / q.sum()

    def update(self, new_losses) -> None:
        """One Adam step on the logits from the loss change on the same batch (after ``optimizer.step()``)."""
        if self._prev_losses is None:
            raise RuntimeError("FAMO.update() needs a previous call of combine()/weights() with the losses")
        new = losses_tensor(new_losses, self._K, self._prev_losses.device)
        delta = torch.log(self._D(self._prev_losses)) - torch.log(self._D(new))
        z = torch.softmax(self._logits, 0)
        grad = z * delta - z * (z * delta).sum()
        self._logits = self._adam.step(self._logits, grad)
