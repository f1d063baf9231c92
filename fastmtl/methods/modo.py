"""MoDo — Chen, Fernando, Ying, Chen, "Three-Way Trade-Off in Multi-Objective Learning: Optimization,
Generalization and Conflict-Avoidance", NeurIPS 2023 (JMLR 2024)."""

from __future__ import annotations

from typing import Optional

import torch

from ..solvers.simplex_projection import project_simplex
from .base import GramMethod
from .common import check_num_tasks, check_positive
from .registry import register_method


@register_method
class MoDo(GramMethod):
    """Multi-objective gradient with double sampling (Chen et al., NeurIPS 2023).

    One projected-gradient step per call on the task weights, then the direction with the
    *updated* weights:

        ``λ ← Π_Δ(λ − γ (A λ + ρ λ))``,   ``d = Σ_k λ_k g_k``

    with ``Π_Δ`` the Euclidean projection onto the simplex (:func:`fastmtl.solvers.simplex_projection.project_simplex`).
    The paper's ``A = ∇F(x; z₁)ᵀ∇F(x; z₂) = J₁J₂ᵀ`` pairs the task gradients of **two independent
    minibatches** (double sampling: an unbiased estimate of ``JJᵀ``, the point of the method), and
    the direction is formed from a third one (``z₃``). So:

    * ``fastmtl.training.double_sampling_backward([losses₁, losses₂, losses₃], shared, modo)``
      is the method as published (the form of LibMTL's MoDo; with two loss sets the direction is
      the mean of both sets' combinations, see there);
    * ``combine(grads, method=modo)`` / ``fastmtl.backward`` is the single-sample form: ``A = G =
      JJᵀ`` of one set (a biased estimate of the same matrix). It is what the code runs when one
      batch is given for all three draws, and what ``process_group`` shards (``A`` all-reduced
      like any Gram).

    Defaults ``gamma = 0.1``, ``rho = 0.1`` (the authors' code, Trade-Off-MOL; LibMTL uses
    ``gamma = 1e-3``, TorchJD ``0.1``). The step acts on ``A`` as it is, so λ moves faster for
    larger gradients (not scale-invariant, as in the code). Scale: **Σλ = 1**, ``λ ≥ 0``.

    State: ``λ`` (float64 ``[K]``, uniform ``1/K`` before the first call). No epoch rule;
    :meth:`reset` returns to uniform. Heads: ``"sum"`` (plain per-task gradients, LibMTL's
    convention for gradient methods).
    """

    uses_generator = False

    name = "modo"
    stateful = True
    head_weighting = "sum"
    #: Reads a cross Gram ``J₁J₂ᵀ`` of two independent samples (fastmtl.training.double_sampling_backward).
    accepts_cross_gram = True
    _state_attrs = ("_lambda",)

    def __init__(self, gamma: float = 0.1, rho: float = 0.1):
        self.gamma = check_positive("gamma", gamma, allow_zero=False)
        self.rho = check_positive("rho", rho)
        self.reset()

    def reset(self) -> None:
        """Back to uniform weights."""
        self._lambda: Optional[torch.Tensor] = None

    @property
    def lambd(self) -> Optional[torch.Tensor]:
        """The current weights λ (``None`` before the first call)."""
        return self._lambda

    def weights(self, G, ctx):
        # G may be a cross Gram J₁J₂ᵀ (not symmetric): used as it is, never symmetrised.
        A = G.to(torch.float64)
        K = A.shape[0]
        check_num_tasks("MoDo", None if self._lambda is None else self._lambda.shape[0], K)
        lam = (torch.full((K,), 1.0 / K, dtype=torch.float64, device=A.device) if self._lambda is None
               else self._lambda.to(A.device))
        lam = project_simplex(lam - self.gamma * (A @ lam + self.rho * lam))
        self._lambda = lam
        return lam.clone()
