"""GeMTL — generalized-mean aggregation of the task losses ("exploiting the generalized mean for
per-task loss aggregation in multi-task learning"; code released with a LibMTL fork, the paper itself
could not be located). **Reconstruction** of the ``p`` schedule."""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch

from .base import GramMethod
from .common import check_choice, check_positive
from .registry import register_method


@register_method
class GeMTL(GramMethod):
    """Gradient of the generalized (power) mean of the losses. Loss-only, no Gram pass.

    The total loss is ``M_p(ℓ) = ((1/K) Σ_i ℓ_i^p)^{1/p}`` (the geometric mean ``(Π ℓ_i)^{1/K}``
    when ``|p| < 0.1``, the switch of the released code), so ``d = Σ_i λ_i g_i`` with

        λ_i = ∂M_p/∂ℓ_i = (1/K) (ℓ_i / M_p)^{p−1}      (geometric mean: λ_i = M_0/(K ℓ_i))

    computed in log space (``log M_p = (logsumexp(p log ℓ) − log K)/p``), so that many tasks or
    extreme losses neither overflow nor underflow. ``p = 1`` is the mean (``λ = 1/K``), ``p → 0``
    the geometric mean (weights ∝ 1/ℓ, the direction of ``Σ log ℓ_i``), ``p < 0`` favours small
    losses, ``p > 1`` large ones. Scale: derivative of the mean, ``λ_i = 1/K`` when all losses are
    equal. Losses must be positive; they are clamped at ``eps = 1e-8``.

    ``p`` schedule (**reconstruction**): the released code re-initialises ``p = −0.5`` on every step
    before adding ``1/(batches per epoch × epochs)``, so it effectively trains with a constant
    ``p ≈ −0.5`` — the default here (``p_schedule="constant"``). The increment suggests an intended
    linear ramp over training; ``p_schedule="linear"`` with ``total_steps = T`` gives
    ``p(t) = p + (p_end − p)·min(t/T, 1)`` for the t-th call (from 0; ``p_end`` defaults to ``p + 1``,
    so −0.5 → 0.5 through the geometric-mean band). Which schedule the paper reports is unverified.
    ``p`` may also be a callable ``p(step, losses)`` returning a float or a 0-d tensor.

    State: the call counter (only read by schedules). The released code's "weights"
    ``ℓ/(K·Πℓ)`` are a logging quantity, not λ.
    """

    uses_generator = False

    name = "gemtl"
    requires_gram = False
    uses_losses = True
    stateful = True
    _state_attrs = ("_step",)

    def __init__(self, p: Union[float, Callable] = -0.5, p_schedule: str = "constant",
                 total_steps: Optional[int] = None, p_end: Optional[float] = None,
                 geometric_band: float = 0.1, eps: float = 1e-8):
        check_choice("p_schedule", p_schedule, ("constant", "linear"))
        if callable(p):
            if p_schedule != "constant":
                raise ValueError("p_schedule must be 'constant' when p is a callable")
        else:
            p = float(p)
            if not math.isfinite(p):
                raise ValueError(f"p must be finite, got {p}")
        if p_schedule == "linear":
            if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
                raise ValueError(f"total_steps must be an int ≥ 1 with p_schedule='linear', got {total_steps!r}")
            p_end = p + 1.0 if p_end is None else float(p_end)
            if not math.isfinite(p_end):
                raise ValueError(f"p_end must be finite, got {p_end}")
        self.p = p
        self.p_schedule = p_schedule
        self.total_steps = total_steps
        self.p_end = p_end
        self.geometric_band = check_positive("geometric_band", geometric_band)
        self.eps = check_positive("eps", eps, allow_zero=False)
        self._step = 0

    def reset(self) -> None:
        self._step = 0

    def current_p(self, losses: Optional[torch.Tensor] = None):
        """``p`` for the next call."""
        if callable(self.p):
            return self.p(self._step, losses)
        if self.p_schedule == "linear":
            return self.p + (self.p_end - self.p) * min(self._step / self.total_steps, 1.0)
        return self.p

    def weights(self, G, ctx):
        if ctx.losses is None:
            raise ValueError("gemtl needs the task losses: combine(..., losses=...)")
        device = ctx.device
        losses = ctx.losses.to(device=device, dtype=torch.float64)
        p = self.current_p(losses)
        self._step += 1
        return generalized_mean_weights(losses, p, band=self.geometric_band, eps=self.eps)


def generalized_mean_weights(losses: torch.Tensor, p, *, band: float = 0.1, eps: float = 1e-8) -> torch.Tensor:
    """``∂M_p/∂ℓ`` for positive losses, in log space (geometric mean inside ``|p| < band``)."""
    K = losses.shape[0]
    log_l = torch.log(losses.clamp_min(eps))
    p = torch.as_tensor(p, dtype=torch.float64, device=losses.device)
    geometric = p.abs() < band
    p_eff = torch.where(geometric, 0.0, p)
    safe_p = torch.where(geometric, 1.0, p_eff)
    log_m = torch.where(geometric, log_l.mean(),
                        (torch.logsumexp(safe_p * log_l, 0) - math.log(K)) / safe_p)
    return torch.exp((p_eff - 1.0) * (log_l - log_m) - math.log(K))
