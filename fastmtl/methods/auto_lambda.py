"""Auto-λ — Liu, Davison, Johns, "Auto-Lambda: Disentangling Dynamic Task Relationships", TMLR 2022
(arXiv 2202.03091)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..gradients import losses_tensor
from .base import GramMethod
from .common import AdamState, check_num_tasks, check_positive
from .registry import register_method


@register_method
class AutoLambda(GramMethod):
    """Auto-λ's task weights (Liu et al., TMLR 2022). Loss-only, no Gram pass; learned by a bilevel step.

    The weights are meta-parameters ``w`` (init ``init = 0.1`` each) used as they are,
    ``λ = w`` (no normalisation, signs free, as in the official code ``lorenmt/auto-lambda``), and
    learned so that one training step with them lowers the primary tasks' loss on other data:

        ``min_w Σ_{i∈P} ℓ_i^val(θ − α ∇_θ Σ_k w_k ℓ_k^train(θ))``.

    The meta-gradient comes from :func:`fastmtl.training.auto_lambda_step` (a virtual step, the
    validation gradient there, a finite-difference Hessian-vector product; parameters and
    optimizer state restored bitwise), which then calls :meth:`meta_step`: one Adam step on ``w``
    (``torch.optim.Adam``'s rule, ``lr = 1e-4``, the official ``--autol_lr``). Between meta steps
    ``combine`` / ``fastmtl.backward`` just apply the current ``w`` (heads ``"weighted"``: the
    official training loss is ``Σ w_k ℓ_k``).

    ``primary_tasks``: the task indices whose validation loss is minimised (default all: the
    multi-task setting; a subset: auxiliary learning).

    State: ``w`` (float64 ``[K]``) and the Adam moments. No epoch rule; :meth:`reset` returns to
    ``init``. ``w`` is created by the constructor when ``num_tasks`` is given, otherwise on the
    first call.
    """

    uses_generator = False

    name = "auto_lambda"
    requires_gram = False
    stateful = True
    _state_attrs = ("_w", "_adam")

    def __init__(self, num_tasks: Optional[int] = None, init: float = 0.1, lr: float = 1e-4,
                 primary_tasks: Optional[Sequence[int]] = None, betas=(0.9, 0.999), eps: float = 1e-8,
                 device=None):
        if num_tasks is not None and (isinstance(num_tasks, bool) or not isinstance(num_tasks, int)
                                      or num_tasks < 1):
            raise ValueError(f"num_tasks must be None or an int ≥ 1, got {num_tasks!r}")
        self.init = float(init)
        if self.init != self.init or abs(self.init) == float("inf"):
            raise ValueError(f"init must be finite, got {init}")
        self.lr = check_positive("lr", lr, allow_zero=False)
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {tuple(betas)}")
        self.betas = (b1, b2)
        self.eps = check_positive("eps", eps, allow_zero=False)
        self.primary_tasks: Optional[tuple] = None
        if primary_tasks is not None:
            idx = tuple(primary_tasks)
            if not idx or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in idx):
                raise ValueError(f"primary_tasks must be a non-empty sequence of task indices ≥ 0, got {primary_tasks!r}")
            if len(set(idx)) != len(idx):
                raise ValueError(f"primary_tasks lists a task twice: {primary_tasks!r}")
            if num_tasks is not None and max(idx) >= num_tasks:
                raise ValueError(f"primary_tasks {list(idx)} is out of range for K={num_tasks} tasks")
            self.primary_tasks = idx
        self.reset()
        if num_tasks is not None:
            self.ensure_weights(num_tasks, device)

    def reset(self) -> None:
        """Back to ``w = init`` (created at the next call) and fresh Adam moments."""
        self._w: Optional[torch.Tensor] = None
        self._adam = AdamState(self.lr, betas=self.betas, eps=self.eps)

    def ensure_weights(self, num_tasks: int, device=None) -> torch.Tensor:
        """The meta-weights ``w``, created (``init`` each) for ``num_tasks`` tasks if they do not exist yet."""
        check_num_tasks("AutoLambda", None if self._w is None else self._w.shape[0], num_tasks)
        if self.primary_tasks is not None and max(self.primary_tasks) >= num_tasks:
            raise ValueError(f"primary_tasks {list(self.primary_tasks)} is out of range for K={num_tasks} tasks")
        if self._w is None:
            self._w = torch.full((num_tasks,), self.init, dtype=torch.float64, device=device)
        return self._w

    @property
    def meta_weights(self) -> Optional[torch.Tensor]:
        """``w`` (``None`` before it is created)."""
        return self._w

    def primary_mask(self, num_tasks: int, device=None) -> torch.Tensor:
        """1 for the primary tasks, 0 for the others (float64 ``[K]``)."""
        mask = torch.zeros(num_tasks, dtype=torch.float64, device=device)
        if self.primary_tasks is None:
            return mask.fill_(1.0)
        mask[list(self.primary_tasks)] = 1.0
        return mask

    def meta_step(self, grad) -> None:
        """One Adam step on ``w`` along the meta-gradient ``grad`` (K numbers, ``∂ℓ^val/∂w``)."""
        if self._w is None:
            raise RuntimeError("AutoLambda.meta_step() before the meta-weights exist: pass num_tasks= or call "
                               "combine()/auto_lambda_step() first")
        # No finiteness check (it would synchronise every step): a NaN meta-gradient (a NaN loss)
        # makes w NaN, which shows in λ and in the direction; reset() or reload a checkpoint.
        g = losses_tensor(grad, self._w.shape[0], self._w.device)
        self._w = self._adam.step(self._w, g)

    def weights(self, G, ctx):
        w = self.ensure_weights(ctx.num_tasks, ctx.device)
        return w.to(ctx.device).clone()
