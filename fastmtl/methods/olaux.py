"""OL-AUX — Lin, Baweja, Kantor, Held, "Adaptive Auxiliary Task Weighting for Reinforcement
Learning", NeurIPS 2019."""

from __future__ import annotations

from typing import Optional

import torch

from .base import GramMethod
from .common import check_choice, check_main_task, check_positive, symmetric64
from .registry import register_method
from .common import AdamState, check_num_tasks


@register_method
class OLAUX(GramMethod):
    """Online auxiliary-task weighting (Lin et al., NeurIPS 2019, Algorithm 1), on the Gram matrix.

    Total loss ``ℓ_main + Σ_{k≠main} w_k ℓ_k``; the weights follow the gradient of the main loss
    ``N`` steps ahead with the Hessian terms dropped:
    ``∇_w ℓ_main(θ_{t+N}) ≈ −α Σ_{j<N} [⟨g_main, g_k⟩]_{t+j}``, so every ``N`` steps
    ``w ← w − β·(−α·acc)`` with ``acc_k`` the dot products ``G[main, k]`` accumulated over the
    ``N`` steps (each step's own minibatch and parameters).

    Per call: ``λ = (1 at main, w_k elsewhere)`` with the current — frozen — weights; then
    ``acc += G[main]``; on every ``N``-th call the weights are updated and ``acc`` cleared, so the
    new weights apply from the next call on. Only the main row of ``G`` is read.

    State: ``w`` (init ``init_weight = 1``), ``acc``, a call counter (and Adam moments with
    ``optimizer="adam"``, which some implementations use instead of SGD).

    Hyper-parameters (paper values unverified): ``horizon = N = 5`` (third-party code; the SLGrad
    repo uses 2), ``lr = β`` (weight learning rate) and ``model_lr = α`` (the model's learning
    rate; only the product ``αβ`` matters for SGD). Options: ``nonnegative=True`` clamps ``w ≥ 0``
    ("constrained weights"); ``max_change`` clips each update of ``w`` to ``±max_change`` (as RL
    implementations do). The gradient scale makes ``β`` very sensitive: ``αβ⟨g, g⟩`` can be
    anywhere from 1e-6 to 1e2.

    Scale: ``λ_main = 1``, auxiliary weights unnormalised.
    """

    uses_generator = False

    name = "olaux"
    stateful = True
    _state_attrs = ("_w", "_acc", "_count", "_adam")

    def __init__(self, main_task: int = 0, horizon: int = 5, lr: float = 0.1, model_lr: float = 0.01,
                 init_weight: float = 1.0, nonnegative: bool = False, max_change: Optional[float] = None,
                 optimizer: str = "sgd"):
        if isinstance(main_task, bool) or not isinstance(main_task, int) or main_task < 0:
            raise ValueError(f"main_task must be a non-negative int, got {main_task!r}")
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"horizon must be an int ≥ 1, got {horizon!r}")
        check_choice("optimizer", optimizer, ("sgd", "adam"))
        self.main_task = main_task
        self.horizon = horizon
        self.lr = check_positive("lr", lr)
        self.model_lr = check_positive("model_lr", model_lr)
        self.init_weight = float(init_weight)
        if self.init_weight != self.init_weight:
            raise ValueError("init_weight must not be NaN")
        self.nonnegative = bool(nonnegative)
        self.max_change = None if max_change is None else check_positive("max_change", max_change, allow_zero=False)
        self.optimizer = optimizer
        self.reset()

    def reset(self) -> None:
        """Weights back to ``init_weight``, accumulator and counter to 0."""
        self._w: Optional[torch.Tensor] = None
        self._acc: Optional[torch.Tensor] = None
        self._count = 0
        self._adam = AdamState(self.lr)

    @property
    def task_weights(self) -> Optional[torch.Tensor]:
        """The current weights (``1`` at the main task)."""
        return self._w

    def weights(self, G, ctx):
        G = symmetric64(G)
        K = G.shape[0]
        m = check_main_task(self.main_task, K)
        check_num_tasks("OLAUX", None if self._w is None else self._w.shape[0], K)
        aux = torch.ones(K, dtype=torch.bool, device=G.device)
        aux[m] = False
        if self._w is None:
            self._w = torch.full((K,), self.init_weight, dtype=torch.float64, device=G.device)
            self._w[m] = 1.0
            self._acc = torch.zeros(K, dtype=torch.float64, device=G.device)
        w, acc = self._w.to(G.device), self._acc.to(G.device)
        lam = w.clone()
        acc = acc + torch.where(aux, G[m], 0.0)
        self._count += 1
        if self._count == self.horizon:
            grad = -self.model_lr * acc
            if self.optimizer == "sgd":
                step = -self.lr * grad
            else:
                step = self._adam.step(w, grad) - w
            if self.max_change is not None:
                step = step.clamp(-self.max_change, self.max_change)
            w = w + torch.where(aux, step, 0.0)
            if self.nonnegative:
                w = torch.where(aux, w.clamp_min(0.0), w)
            acc = torch.zeros_like(acc)
            self._count = 0
        self._w, self._acc = w, acc
        return lam
