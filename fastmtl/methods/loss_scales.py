"""Learnable per-task loss scales ``s`` (an ``nn.Parameter``): UW's log-variances, IMTL-L's scales.

The methods that hold them share the mechanics: ``s`` is created by the constructor when
``num_tasks`` is given (so it can be handed to an optimizer before the first call), else at the
first call; :meth:`parameters` gives it to the optimizer; :meth:`loss_term` is the objective to
back-propagate to train it (each method's own formula, :meth:`scale_objective`); with ``lr=`` the
method takes a built-in SGD step on it instead. ``s`` is the method's checkpointed state.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..gradients import losses_tensor
from .common import check_num_tasks, check_positive


class LearnableLossScales:
    """Mixin for a method with a learnable ``s ∈ R^K`` (float64 ``nn.Parameter``)."""

    def init_scales(self, num_tasks: Optional[int], init: float, lr: Optional[float], device) -> None:
        if num_tasks is not None and (isinstance(num_tasks, bool) or not isinstance(num_tasks, int)
                                      or num_tasks < 1):
            raise ValueError(f"num_tasks must be None or an int ≥ 1, got {num_tasks!r}")
        self.init = float(init)
        if self.init != self.init or abs(self.init) == float("inf"):
            raise ValueError(f"init must be finite, got {init}")
        self.lr = None if lr is None else check_positive("lr", lr, allow_zero=False)
        self.s: Optional[torch.nn.Parameter] = None
        if num_tasks is not None:
            self._make(num_tasks, device)

    def _make(self, K: int, device) -> None:
        self.s = torch.nn.Parameter(torch.full((K,), self.init, dtype=torch.float64, device=device))

    def parameters(self) -> List[torch.nn.Parameter]:
        """``[s]`` for the optimizer (empty before ``s`` exists)."""
        return [] if self.s is None else [self.s]

    def scales_for(self, K: int, device) -> torch.Tensor:
        """``s`` (detached, float64 on ``device``) for a call with K tasks; created at the first call."""
        if self.s is None:
            self._make(K, device)
        check_num_tasks(type(self).__name__, self.s.shape[0], K)
        return self.s.detach().to(device=device, dtype=torch.float64)

    def step_scales(self, grad: torch.Tensor) -> None:
        """The built-in SGD step ``s ← s − lr·grad`` (``lr=`` given)."""
        with torch.no_grad():
            self.s.sub_((self.lr * grad).to(device=self.s.device, dtype=self.s.dtype))

    def loss_term(self, losses) -> torch.Tensor:
        """The objective whose gradient trains ``s`` (:meth:`scale_objective` of the losses)."""
        if self.s is None:
            raise RuntimeError(f"{type(self).__name__}.s does not exist yet: pass num_tasks= or call combine() first")
        l = losses_tensor(losses, self.s.shape[0], self.s.device).to(self.s.dtype)
        return self.scale_objective(self.s, l)

    def scale_objective(self, s: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
