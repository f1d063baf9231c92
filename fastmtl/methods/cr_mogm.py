"""CR-MOGM — Zhou, Zhang, Jiang, Zhong, Gu, Zhu, "On the Convergence of Stochastic Multi-Objective
Gradient Manipulation and Beyond", NeurIPS 2022."""

from __future__ import annotations

from typing import Optional

import torch

from .base import DirectionMethod, GramMethod, Method
from .common import check_num_tasks
from .registry import make_method, register_method


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha must be a number in [0, 1], got {type(alpha).__name__}")
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha


@register_method
class CRMOGM(GramMethod):
    """Correlation-reduced multi-objective gradient manipulation (Zhou et al., NeurIPS 2022).

    Wraps a Gram-space method (the *base*, MGDA by default) and smooths the weights it returns
    with an exponential moving average across calls, which reduces the correlation between the
    stochastic weights and the stochastic gradients that biases MGDA-type updates:

        ``λ_t = α λ_{t−1} + (1 − α) λ̂_t``,   ``d = Σ_k λ_t,k g_k``

    with ``λ̂_t`` the base method's weights for this call and ``λ_0 = λ̂_1`` (the first call returns
    the base's weights whatever ``α``) or ``initial_weights``. This is TorchJD 0.18's
    ``CRMOGMWeighting``; ``α`` is a plain attribute, so the paper's schedule (Corollary 1: ``α_t``
    from 0 towards 1 as the learning rate decays, e.g. ``method.alpha = 1 − lr_t/lr_0``) is set
    between calls. ``α = 0`` returns the base's weights, ``α = 1`` freezes ``λ_0``.

    Defaults: ``base="mgda"`` (the paper's main instance, CR-MGDA), ``alpha=0.9`` (TorchJD).
    Scale: the base's (a convex combination of its weights: Σλ = 1 for MGDA). The base's own
    options come through ``base_options`` (``combine(J, "cr_mogm", base="cagrad",
    base_options={"c": 0.4})``) or by passing an instance (``base=CAGrad(c=0.4)``). Losses, the
    generator and a reference gradient reach the base unchanged; ``head_weighting`` is the base's.

    State: ``λ_{t−1}`` (float64 ``[K]``) and the base's own state (nested under ``"base."`` in
    :meth:`state_dict`). No epoch rule; :meth:`reset` clears both. Sharded (``process_group``):
    a Gram-space method, every rank smooths the same λ.
    """

    name = "cr_mogm"
    stateful = True
    _state_attrs = ("_lambda", "_base")

    def __init__(self, base="mgda", alpha: float = 0.9, initial_weights=None, base_options: Optional[dict] = None):
        if isinstance(base, Method):
            if base_options:
                raise TypeError("base_options were given with a base method instance; set them in its constructor")
            m = base
        elif isinstance(base, str) or (isinstance(base, type) and issubclass(base, Method)):
            if base_options is not None and not isinstance(base_options, dict):
                raise TypeError(f"base_options must be a dict, got {type(base_options).__name__}")
            m = make_method(base, dict(base_options or {}))
        else:
            raise TypeError(f"base must be a method name, class or instance, got {type(base).__name__}")
        if isinstance(m, DirectionMethod) or not isinstance(m, GramMethod):
            raise TypeError(f"CR-MOGM smooths the weights λ of a Gram-space method; {m.name or type(m).__name__!r} "
                            "computes a direction, not weights")
        if isinstance(m, CRMOGM):
            raise TypeError("the base of CR-MOGM cannot itself be CR-MOGM")
        self._base = m
        self.alpha = alpha
        self.initial_weights: Optional[torch.Tensor] = None
        if initial_weights is not None:
            t = torch.as_tensor(initial_weights, dtype=torch.float64).detach().reshape(-1).cpu()
            if t.numel() == 0 or not bool(torch.isfinite(t).all()):
                raise ValueError("initial_weights must be a non-empty vector of finite numbers")
            self.initial_weights = t
        # What the pipeline prepares follows the base (PCGrad draws, GradNorm reads losses, ...).
        self.requires_gram = m.requires_gram
        self.uses_losses = m.uses_losses
        self.uses_reference = m.uses_reference
        self.uses_generator = m.uses_generator
        self.head_weighting = m.head_weighting
        self.reset()

    @property
    def alpha(self) -> float:
        return self._alpha

    @alpha.setter
    def alpha(self, value) -> None:
        self._alpha = _check_alpha(value)

    @property
    def base(self) -> GramMethod:
        """The wrapped method (its state lives in it)."""
        return self._base

    @property
    def lambd(self) -> Optional[torch.Tensor]:
        """The smoothed weights of the last call (``None`` before the first)."""
        return self._lambda

    def reset(self) -> None:
        """Forget the smoothed weights, and reset the base when it has state."""
        self._lambda: Optional[torch.Tensor] = None
        if getattr(self._base, "stateful", False) and hasattr(self._base, "reset"):
            self._base.reset()

    def gram_block(self, tg):
        return self._base.gram_block(tg)

    def __repr__(self) -> str:
        return f"CRMOGM(base={self._base!r}, alpha={self._alpha!r})"

    def weights(self, G, ctx):
        K = ctx.num_tasks
        check_num_tasks("CRMOGM", None if self._lambda is None else self._lambda.shape[0], K)
        if self.initial_weights is not None and self.initial_weights.shape[0] != K:
            raise ValueError(f"initial_weights has {self.initial_weights.shape[0]} entries for K={K} tasks")
        self._base.check_num_tasks(K)
        lam_hat = self._base.weights(G if self._base.requires_gram else None, ctx).to(torch.float64)
        self._base.record_num_tasks(K)
        if self._lambda is not None:
            prev = self._lambda.to(lam_hat.device)
        elif self.initial_weights is not None:
            prev = self.initial_weights.to(lam_hat.device)
        else:
            prev = lam_hat
        lam = self._alpha * prev + (1.0 - self._alpha) * lam_hat
        self._lambda = lam
        return lam.clone()
