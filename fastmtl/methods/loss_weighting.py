"""Loss-based weightings that need no Gram matrix: uncertainty weighting (Kendall et al., CVPR 2018),
dynamic weight average (Liu et al., CVPR 2019) and random loss weighting (Lin et al., TMLR 2022)."""

from __future__ import annotations

from typing import List, Optional

import torch

from .base import GramMethod
from .common import check_num_tasks, check_positive
from .loss_scales import LearnableLossScales
from .registry import register_method


@register_method
class UW(LearnableLossScales, GramMethod):
    """Uncertainty weighting (Kendall, Gal, Cipolla, CVPR 2018). Loss-only, no Gram pass.

    Learned log-variances ``s_i = log σ_i²``; the loss ``Σ_i ½ e^{−s_i} ℓ_i + ½ s_i`` gives the task
    gradients the weights ``λ_i = ½ e^{−s_i}`` and ``s`` the gradient ``½ − ½ e^{−s_i} ℓ_i`` (fixed
    point ``s_i = log ℓ_i``). ``λ`` is returned detached; ``s`` is trained in one of two ways:

    * ``s`` is an ``nn.Parameter`` (:attr:`s`, also :meth:`parameters`) that you add to your
      optimizer, and each step you back-propagate :meth:`loss_term` ``(losses)`` =
      ``Σ_i ½ e^{−s_i} ℓ_i.detach() + ½ s_i`` along with the model loss: its gradient with respect
      to ``s`` is exactly the paper's, and it adds nothing to the model's gradients (the default;
      ``lr=None``);
    * with ``lr`` set, each call takes the closed-form SGD step
      ``s ← s − lr(½ − ½ e^{−s} ℓ)`` itself, after computing λ (the optimizer never sees ``s``).

    ``s`` is created by the constructor when ``num_tasks`` is given (so that it can be handed to an
    optimizer up front, and so that no parameter is created inside a ``torch.compile`` region),
    otherwise on the first call. Init ``init = 0`` (nash-mtl; LibMTL uses −0.5).
    Scale: ``λ = ½`` per task at init (the regression form; the paper's classification form would be
    ``e^{−s}``, i.e. twice as large).
    """

    uses_generator = False

    name = "uw"
    requires_gram = False
    uses_losses = True
    stateful = True
    _state_attrs = ("s",)

    def __init__(self, num_tasks: Optional[int] = None, init: float = 0.0, lr: Optional[float] = None,
                 device=None):
        self.init_scales(num_tasks, init, lr, device)

    def scale_objective(self, s: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """``Σ ½ e^{−s_i} ℓ_i.detach() + ½ s_i``: back-propagate :meth:`loss_term` to train ``s``."""
        return (0.5 * torch.exp(-s) * losses + 0.5 * s).sum()

    def weights(self, G, ctx):
        device = ctx.device
        lam = 0.5 * torch.exp(-self.scales_for(ctx.num_tasks, device))
        if self.lr is not None:
            if ctx.losses is None:
                raise ValueError("uw with lr= updates s from the task losses: combine(..., losses=...)")
            self.step_scales(0.5 - lam * ctx.losses.to(device=device, dtype=torch.float64))
        return lam


@register_method
class DWA(GramMethod):
    """Dynamic weight average (Liu, Johns, Davison, CVPR 2019 "MTAN"). Loss-only, no Gram pass.

    ``r_i = L̄_i(e−1) / L̄_i(e−2)`` with ``L̄`` the epoch-averaged training losses (averaged over the
    calls of an epoch; close an epoch with :meth:`end_epoch`), ``λ_i = K exp(r_i/T) / Σ_j exp(r_j/T)``,
    ``T = 2``, and ``λ = 1`` during the first two epochs. **Σλ = K.**

    ``window = n`` gives the nash-mtl variant instead: the last ``2n`` calls' losses in a sliding
    window (initialised to ones), ``r = mean(last n) / mean(previous n)``, weights recomputed once
    more than ``n`` calls have been seen (``λ = 1`` before); no :meth:`end_epoch` needed. (nash-mtl
    then averages the weighted losses, i.e. scales by ``1/K``; fastmtl keeps ``Σλ = K``.)

    State: the current epoch's loss sum and count and the last two epoch averages (or the window).
    A zero average loss is clamped at 1e-12 in the ratio.
    """

    uses_generator = False

    name = "dwa"
    requires_gram = False
    uses_losses = True
    stateful = True
    _state_attrs = ("_epoch_sum", "_epoch_count", "_history", "_costs", "_calls", "_current", "_K")

    def __init__(self, temperature: float = 2.0, window: Optional[int] = None):
        self.temperature = check_positive("temperature", temperature, allow_zero=False)
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ValueError(f"window must be None or an int ≥ 1, got {window!r}")
        self.window = window
        self.reset()

    def reset(self) -> None:
        self._epoch_sum: Optional[torch.Tensor] = None
        self._epoch_count = 0
        self._history: List[torch.Tensor] = []
        self._costs: Optional[torch.Tensor] = None
        self._calls = 0
        self._current: Optional[torch.Tensor] = None
        self._K: Optional[int] = None

    def end_epoch(self) -> None:
        """Close the epoch: its average losses drive the next epoch's weights."""
        if self._epoch_count:
            self._history = (self._history + [self._epoch_sum / self._epoch_count])[-2:]
        self._epoch_sum, self._epoch_count = None, 0

    def _softmax_weights(self, r: torch.Tensor) -> torch.Tensor:
        return r.shape[0] * torch.softmax(r / self.temperature, 0)

    def weights(self, G, ctx):
        if ctx.losses is None:
            raise ValueError("dwa needs the task losses: combine(..., losses=...)")
        K, device = ctx.num_tasks, ctx.device
        check_num_tasks("DWA", self._K, K)
        self._K = K
        losses = ctx.losses.to(device=device, dtype=torch.float64)
        if self.window is not None:
            n = self.window
            if self._costs is None:
                self._costs = torch.ones(2 * n, K, dtype=torch.float64, device=device)
                self._current = torch.ones(K, dtype=torch.float64, device=device)
            self._costs = torch.cat([self._costs[1:], losses[None]], 0)
            if self._calls > n:
                r = self._costs[n:].mean(0) / self._costs[:n].mean(0).clamp_min(1e-12)
                self._current = self._softmax_weights(r)
            self._calls += 1
            return self._current.clone()
        self._epoch_sum = losses.clone() if self._epoch_sum is None else self._epoch_sum + losses
        self._epoch_count += 1
        if len(self._history) < 2:
            return torch.ones(K, dtype=torch.float64, device=device)
        prev2, prev1 = (h.to(device) for h in self._history)
        return self._softmax_weights(prev1 / prev2.clamp_min(1e-12))


@register_method
class RLW(GramMethod):
    """Random loss weighting (Lin et al., TMLR 2022): ``λ = softmax(z)``, ``z ~ N(0, I_K)`` per call.

    ``z`` is drawn from ``generator`` on the generator's own device and moved to the tasks' device
    (a seeded CPU generator gives the same weights everywhere). **Σλ = 1.** Loss-only, no Gram pass,
    no state.
    """

    name = "rlw"
    requires_gram = False

    def weights(self, G, ctx):
        K, device = ctx.num_tasks, ctx.device
        gen_device = ctx.generator.device if ctx.generator is not None else device
        z = torch.randn(K, generator=ctx.generator, device=gen_device, dtype=torch.float64).to(device)
        return torch.softmax(z, 0)
