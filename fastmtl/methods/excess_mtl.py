"""ExcessMTL — He, Zhou, Zhao, Zhang, Hu, "Robust Multi-Task Learning with Excess Risks", ICML 2024."""

from __future__ import annotations

from typing import Optional

import torch

from ..collectives import all_reduce_sum
from .base import Direction, DirectionMethod
from .common import check_positive
from .registry import register_method
from .row_buffers import RowBuffers


@register_method
class ExcessMTL(RowBuffers, DirectionMethod):
    """Robust excess-risk task weights (He et al., ICML 2024).

    Each task's excess risk is estimated by a second-order Taylor term with an AdaGrad-style
    diagonal Hessian (the paper's Eq. 6–7): with ``S_k ← S_k + g_k ⊙ g_k`` accumulated over all
    calls,

        ``e_k = Σ_j g_kj² / √(S_kj + eps)``,

    and the weights take an exponentiated-gradient step (Eq. 9) on the excess risks relative to a
    baseline ``e⁰`` (the "scale processing" of Sec. 3.2):

        ``λ ← K · λ ⊙ exp(η e/e⁰) / Σ_k λ_k exp(η e_k/e⁰_k)``   (computed as ``K·softmax(log λ + η e/e⁰)``),

    ``d = Σ_k λ_k g_k``. This follows the official code (``yifei-he/ExcessMTL``, as in LibMTL): ``λ``
    starts at 1 (**Σλ = K**; TorchJD starts at ``1/K``), the first call's ``e`` is the baseline and
    no step is taken on that call. ``warmup_steps = n`` generalises it (the paper's Appendix C.1
    collects statistics for some epochs first): the first ``n`` calls keep ``λ = 1`` and ``e⁰`` is
    the mean of their ``e``; the default ``n = 1`` is the official behaviour. A task whose baseline
    is 0 (a zero gradient throughout the warm-up) gets ``e/e⁰ = 0`` instead of the code's division
    by zero.

    Defaults: ``robust_step_size η = 1e-2`` (LibMTL's configuration; TorchJD's default is 1.0),
    ``eps = 1e-7`` (official). Heads: ``"weighted"`` (the official loss is ``Σ λ_k ℓ_k``).

    State: ``S`` (a ``[K, numel]`` float32/float64 buffer per shared parameter, the one memory cost
    of the method: K extra values per parameter), ``λ``, the baseline and the warm-up sum, the
    step. No epoch rule (``S`` accumulates over the whole run, as in the code); :meth:`reset`
    clears everything. A non-finite gradient poisons ``S`` from then on (λ and the direction are
    NaN); reset or reload a checkpoint. Sharded (``combine(..., process_group=pg)``): each rank
    keeps ``S`` for its shard and the K excess risks are all-reduced (a sum over coordinates), so λ
    equals the unsharded method's; the state is rank-local (:mod:`fastmtl.methods.sharded_state`).
    """

    uses_generator = False

    name = "excess_mtl"
    stateful = True
    sharded_direction = True  # its own all-reduce of the K excess risks
    _state_attrs = ("_buffers", "_shapes", "_K", "_step", "_lambda", "_warm_sum", "_baseline")

    def __init__(self, robust_step_size: float = 1e-2, warmup_steps: int = 1, eps: float = 1e-7):
        self.robust_step_size = check_positive("robust_step_size", robust_step_size, allow_zero=False)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be an int ≥ 1 (1 = the official first-call baseline), "
                             f"got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.eps = check_positive("eps", eps)
        self.reset()

    def reset(self) -> None:
        """Clear ``S``, λ (back to 1), the baseline and the step counter."""
        self.reset_buffers()
        self._step = 0
        self._lambda: Optional[torch.Tensor] = None
        self._warm_sum: Optional[torch.Tensor] = None
        self._baseline: Optional[torch.Tensor] = None

    @property
    def lambd(self) -> Optional[torch.Tensor]:
        """λ of the last call (``None`` before the first)."""
        return self._lambda

    @property
    def baseline(self) -> Optional[torch.Tensor]:
        """The baseline excess risks ``e⁰`` (``None`` during the warm-up)."""
        return self._baseline

    def _excess_risks(self, tg) -> torch.Tensor:
        """``e_k = Σ_j g_kj²/√(S_kj + eps)`` after adding ``g ⊙ g`` to ``S`` (this rank's coordinates)."""
        K = tg.num_tasks
        e = torch.zeros(K, dtype=torch.float64, device=tg.device)
        for p in range(tg.num_params):
            if tg.shapes[p] is None:
                continue
            S = self.buffer(tg, p)
            # One temporary per parameter: r = g ⊙ g / √(S + eps), formed in place.
            if tg.matrix is not None:
                S.addcmul_(tg.matrix, tg.matrix)
                r = torch.add(S, self.eps).rsqrt_().mul_(tg.matrix).mul_(tg.matrix)
                e += r.sum(1).to(torch.float64)
                continue
            for k, t in enumerate(tg.flat_views(p)):
                if t is not None:
                    S[k].addcmul_(t, t)
                    r = torch.add(S[k], self.eps).rsqrt_().mul_(t).mul_(t)
                    e[k] += r.sum().to(torch.float64)
        return e

    def direction(self, engine, ctx):
        tg, pg = engine.tg, ctx.process_group
        self.check_buffers(tg, pg, "ExcessMTL")
        K = tg.num_tasks
        e = self._excess_risks(tg)
        if pg is not None:  # a sum over the coordinates: every rank adds its shard's part
            e = all_reduce_sum(e, pg, "all_reduce of ExcessMTL's excess risks")
        self._step += 1
        lam = (torch.ones(K, dtype=torch.float64, device=tg.device) if self._lambda is None
               else self._lambda.to(tg.device))
        if self._step <= self.warmup_steps:
            self._warm_sum = e.clone() if self._warm_sum is None else self._warm_sum + e
            if self._step == self.warmup_steps:
                self._baseline = self._warm_sum / self.warmup_steps
        else:
            base = self._baseline.to(tg.device)
            ratio = torch.where(base > 0, e / torch.where(base > 0, base, torch.ones_like(base)), torch.zeros_like(e))
            lam = K * torch.softmax(torch.log(lam) + self.robust_step_size * ratio, 0)
        self._lambda = lam
        lam = torch.where(torch.isfinite(e).all(), lam, torch.full_like(lam, float("nan")))
        return Direction(engine.weighted_sum(lam), weights=lam)
