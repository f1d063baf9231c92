"""GradNorm — Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient Normalization for Adaptive
Loss Balancing in Deep Multitask Networks", ICML 2018 (arXiv 1711.02257)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import GramMethod
from .common import check_choice, check_positive, symmetric64
from .registry import register_method
from .common import AdamState, check_num_tasks

_TINY = 1e-12


@register_method
class GradNorm(GramMethod):
    """Gradient normalisation (Chen et al., ICML 2018): balance the task gradient norms.

    With weights ``w`` (the direction is ``λ = w(t)``, the weights *before* this step's update),
    ``n_i = ‖∇_W ℓ_i‖`` measured on the parameters ``W``, ``G_i = |w_i| n_i``, ``Ḡ = mean_i G_i``,
    the inverse training rates ``L̃_i = ℓ_i/ℓ_i(0)`` and ``r_i = L̃_i / mean_j L̃_j``:

        L_grad = Σ_i | G_i − Ḡ r_i^α |          (the targets Ḡ r_i^α are constants)

    so ``∂L_grad/∂w_i = n_i sign(w_i) sign(G_i − Ḡ r_i^α)`` in closed form (no autograd).

    Variants:

    * ``variant="paper"`` (default): ``w`` init 1, a gradient step on ``w`` (``optimizer="sgd"``
      with ``lr`` 0.01 by default, or ``"adam"``), then renormalisation ``w ← K w / Σ w`` (**Σλ = K**).
      If a too-large ``lr`` makes ``Σ w ≤ 0`` the weights are reset to 1 instead. ``ℓ(0)`` are the
      losses of the first call (``initial_loss="first"``).
    * ``variant="libmtl"``: ``w = K·softmax(s)`` with logits ``s`` (init 0) — positive, Σλ = K,
      no renormalisation — trained by Adam (``lr = 1e-4``, LibMTL's default optimizer) with the
      chain rule through the softmax; ``ℓ(0)`` is the average loss of the first epoch
      (``initial_loss="epoch"``), which trains with ``λ = 1`` until :meth:`end_epoch` is called.

    ``alpha`` (asymmetry) default 1.5 (LibMTL; the paper's NYUv2 value). ``ℓ(0)`` is clamped at
    1e-12 and the loss ratios fall back to 1 when all losses are 0.

    Norms: by default from the diagonal of the full Gram matrix (all shared parameters, as LibMTL).
    ``param_indices`` selects the parameters ``W`` (the paper's last shared layer; indices into the
    per-parameter gradient list): then only those parameters are read for a block Gram
    (:attr:`gram_params`), and the direction ``Σ_k w_k g_k`` over all parameters is the only full
    pass — the full Gram is formed only for ``return_info``.

    State: ``w`` or ``s``, ``ℓ(0)`` (and the first-epoch loss sums), optimizer moments.
    """

    uses_generator = False

    name = "gradnorm"
    uses_losses = True
    stateful = True
    _state_attrs = ("_param", "_l0", "_epoch_sum", "_epoch_count", "_adam", "_K")

    def __init__(self, alpha: float = 1.5, lr: Optional[float] = None, variant: str = "paper",
                 optimizer: Optional[str] = None, initial_loss: Optional[str] = None,
                 param_indices: Optional[Sequence[int]] = None, weight_decay: float = 0.0):
        check_choice("variant", variant, ("paper", "libmtl"))
        if optimizer is None:
            optimizer = "sgd" if variant == "paper" else "adam"
        check_choice("optimizer", optimizer, ("sgd", "adam"))
        if initial_loss is None:
            initial_loss = "first" if variant == "paper" else "epoch"
        check_choice("initial_loss", initial_loss, ("first", "epoch"))
        if lr is None:
            lr = 0.01 if variant == "paper" else 1e-4
        self.alpha = check_positive("alpha", alpha)
        self.lr = check_positive("lr", lr)
        self.variant = variant
        self.optimizer = optimizer
        self.initial_loss = initial_loss
        self.weight_decay = check_positive("weight_decay", weight_decay)
        if param_indices is not None:
            idx = list(param_indices)
            if not idx or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in idx) \
                    or len(set(idx)) != len(idx):
                raise ValueError(f"param_indices must be a non-empty list of distinct non-negative ints, "
                                 f"got {param_indices!r}")
            param_indices = idx
        self.param_indices = param_indices
        self.reset()

    @property
    def gram_params(self):
        """``param_indices``: the norms come from the Gram of those parameters only."""
        return self.param_indices

    def reset(self) -> None:
        """Weights to 1, forget ``ℓ(0)``, the epoch sums and the optimizer state."""
        self._param: Optional[torch.Tensor] = None  # w (paper) or logits s (libmtl)
        self._l0: Optional[torch.Tensor] = None
        self._epoch_sum: Optional[torch.Tensor] = None
        self._epoch_count = 0
        self._adam = AdamState(self.lr, weight_decay=self.weight_decay)
        self._K: Optional[int] = None

    def end_epoch(self) -> None:
        """With ``initial_loss="epoch"``: the first call ends the warm-up epoch and fixes ``ℓ(0)``."""
        if self.initial_loss == "epoch" and self._l0 is None and self._epoch_count:
            self._l0 = self._epoch_sum / self._epoch_count
        self._epoch_sum, self._epoch_count = None, 0

    @property
    def task_weights(self) -> Optional[torch.Tensor]:
        """The current weights ``w`` (before the next update)."""
        if self._param is None:
            return None
        return self._current(self._param)

    def _current(self, param: torch.Tensor) -> torch.Tensor:
        if self.variant == "paper":
            return param
        return param.shape[0] * torch.softmax(param, 0)

    def _step(self, norms2: torch.Tensor, losses: Optional[torch.Tensor]) -> torch.Tensor:
        if losses is None:
            raise ValueError("gradnorm needs the task losses: combine(..., losses=...)")
        K = norms2.shape[0]
        device = norms2.device
        check_num_tasks("GradNorm", self._K, K)
        self._K = K
        losses = losses.to(device=device, dtype=torch.float64)
        if self._param is None:
            init = 1.0 if self.variant == "paper" else 0.0
            self._param = torch.full((K,), init, dtype=torch.float64, device=device)
        if self._l0 is None and self.initial_loss == "epoch":
            self._epoch_sum = losses.clone() if self._epoch_sum is None else self._epoch_sum + losses
            self._epoch_count += 1
            return torch.ones(K, dtype=torch.float64, device=device)
        if self._l0 is None:
            self._l0 = losses.clone()
        param = self._param.to(device)
        w = self._current(param)
        n = torch.sqrt(norms2.to(torch.float64).clamp_min(0.0))
        Gw = w.abs() * n
        ratio = losses / self._l0.to(device).clamp_min(_TINY)
        mean = ratio.mean()
        r = torch.where(mean > 0, ratio / torch.where(mean > 0, mean, 1.0), 1.0)
        target = Gw.mean() * r ** self.alpha
        u = n * torch.sign(w) * torch.sign(Gw - target)  # ∂L_grad/∂w
        if self.variant == "paper":
            grad = u
        else:  # chain rule through w = K·softmax(s)
            grad = w * u - w / K * (w * u).sum()
        if self.optimizer == "sgd":
            new = param - self.lr * (grad + self.weight_decay * param)
        else:
            new = self._adam.step(param, grad)
        if self.variant == "paper":
            total = new.sum()
            new = torch.where(total > 0, K * new / torch.where(total > 0, total, 1.0), 1.0)
        self._param = new
        return w.clone()

    def weights(self, G, ctx):
        return self._step(torch.diagonal(symmetric64(G)), ctx.losses)
