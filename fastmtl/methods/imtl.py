"""IMTL — Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, "Towards Impartial Multi-task Learning",
ICLR 2021: the hybrid method, IMTL-L's learnable loss scales with IMTL-G's gradient balance."""

from __future__ import annotations

from typing import Optional

import torch

from .base import Context, GramMethod
from .common import symmetric64
from .imtl_g import IMTLG
from .loss_scales import LearnableLossScales
from .registry import register_method


@register_method
class IMTL(LearnableLossScales, GramMethod):
    """IMTL (Liu et al., ICLR 2021): learnable loss scales (IMTL-L) plus impartial gradients (IMTL-G).

    IMTL-L replaces each loss by ``e^{s_t} ℓ_t − s_t`` with learnable scales ``s`` (the
    minimiser over ``s_t`` is ``e^{s_t} ℓ_t = 1``: every scaled loss is pushed to 1, whatever the
    task's loss scale). The shared parameters then receive IMTL-G's combination of the *scaled*
    task gradients ``e^{s_t} g_t``: ``α = IMTL-G(Ĝ)`` on ``Ĝ = diag(e^s) G diag(e^s)``
    (:class:`fastmtl.methods.IMTLG`: ``α ∝ Ĝ⁺‖ĝ‖``, ``Σα = 1``, equal projections of the
    direction on every unit gradient), so ``d = Σ α_t e^{s_t} g_t`` and **``λ = α ∘ e^{s}``**
    (``Σλ = 1`` while ``s = 0``; LibMTL's ``IMTL`` weighting, the paper's hybrid form).

    ``s`` is trained as :class:`fastmtl.methods.UW` trains its log-variances, in one of two ways:

    * ``s`` is an ``nn.Parameter`` (:attr:`s`, also :meth:`parameters`) that you add to your
      optimizer, and each step you back-propagate :meth:`loss_term` ``(losses)`` =
      ``Σ_t e^{s_t} ℓ_t.detach() − s_t`` along with the model loss: its gradient with respect to
      ``s`` is the paper's ``e^{s} ℓ − 1`` and it adds nothing to the model's gradients (the
      default, ``lr=None``; LibMTL puts ``s`` in the model's optimizer the same way);
    * with ``lr`` set, each call takes the SGD step ``s ← s − lr(e^{s} ℓ − 1)`` itself, after
      computing λ (needs ``losses``).

    ``s`` is created by the constructor when ``num_tasks`` is given (so that it can be handed to
    an optimizer up front), otherwise on the first call. Init ``init = 0`` (LibMTL's).

    Heads under :func:`fastmtl.backward` get their plain task gradients (``head_weighting =
    "sum"``); the paper and LibMTL give them the scaled ``e^{s_t} ∇ℓ_t``, the same while
    ``s = 0`` — pass ``head_weighting="weighted"`` to give them ``Σ λ_t ∇ℓ_t`` instead.
    State: ``s``. On CUDA the symmetric eigen-solver of IMTL-G synchronises once per call.
    """

    uses_generator = False
    head_weighting = "sum"

    name = "imtl"
    uses_losses = True
    stateful = True
    _state_attrs = ("s",)

    def __init__(self, num_tasks: Optional[int] = None, init: float = 0.0, lr: Optional[float] = None,
                 device=None):
        self._balance = IMTLG()
        self.init_scales(num_tasks, init, lr, device)

    def scale_objective(self, s: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """``Σ e^{s_t} ℓ_t.detach() − s_t``: back-propagate :meth:`loss_term` to train ``s``."""
        return (torch.exp(s) * losses - s).sum()

    def weights(self, G, ctx):
        K, device = G.shape[0], G.device
        if self.lr is not None and ctx.losses is None:
            raise ValueError("imtl with lr= updates s from the task losses: combine(..., losses=...)")
        scale = torch.exp(self.scales_for(K, device))
        G = symmetric64(G)
        alpha = self._balance.weights(G * (scale[:, None] * scale[None, :]),
                                      Context(num_tasks=K, device=device))
        lam = alpha * scale
        if self.lr is not None:
            self.step_scales(scale * ctx.losses.to(device=device, dtype=torch.float64) - 1.0)
        return lam
