"""Nash-MTL — Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, "Multi-Task Learning as a
Bargaining Game", ICML 2022 (arXiv 2202.01017)."""

from __future__ import annotations

from typing import Optional

import torch

from .base import GramMethod
from .common import check_positive, symmetric64
from .registry import register_method
from .common import check_num_tasks
from ..solvers import nash_weights


@register_method
class NashMTL(GramMethod):
    """Nash bargaining solution (Navon et al., ICML 2022), on the Gram matrix.

    ``α > 0`` with ``α_i (Gα)_i = 1`` for every task, ``d = Σ α_i g_i``; solved on the device by
    :func:`fastmtl.solvers.nash_weights` (scaled Newton, fixed iteration count), warm-started
    from the previous step's ``α`` kept in the instance (the official code warm-starts its convex
    programs the same way; the solution does not depend on the start).

    Scale (official): raw ``α``, then the shared-parameter gradient is clipped to global norm
    ``max_norm`` (default 1.0). Since ``‖d‖² = αᵀGα``, the clip is folded into the weights:
    ``λ = α · min(1, max_norm / sqrt(αᵀGα))``. ``max_norm = 0`` disables it (raw ``α``). At the
    solution ``αᵀGα`` equals the number of live tasks, so the default clip scales by ``1/sqrt(K)``.

    State: the last solved ``α`` (unclipped; initially ones, as in the official code) and a step
    counter. ``update_weights_every = n`` solves on every n-th call and reuses ``α`` in between
    (the clip is recomputed with the current ``G`` on every call).

    No solution: when 0 lies in the convex hull of the gradients (a Pareto-stationary point, e.g.
    two opposite gradients) no ``α`` satisfies the conditions. fastmtl then **keeps the previous
    α** (ones on the first call) — the official code's behaviour, whose conic solver fails there
    and leaves the previous iterate in place. The test is branch-free: a solve is accepted when
    ``max_i |α_i (Gα)_i − 1| ≤ fallback_tol`` over the live tasks (1e-3 by default, the official
    stopping tolerance); the Newton solver reaches ~1e-8 wherever a solution exists.
    Zero-norm gradients get ``α_i = 0``; an all-zero ``G`` gives ``λ = 0``.

    Args:
        update_weights_every: solve every n-th call (default 1).
        max_norm: global-norm clip of the direction (default 1.0; 0 disables).
        iterations: Newton iterations (default: 10 for K ≤ 8, 12 for K ≤ 16, 14 above).
        fallback_tol: residual above which a solve counts as "no solution".
    """

    uses_generator = False

    name = "nash_mtl"
    stateful = True
    _state_attrs = ("_alpha", "_step")

    def __init__(self, update_weights_every: int = 1, max_norm: float = 1.0,
                 iterations: Optional[int] = None, fallback_tol: float = 1e-3):
        if isinstance(update_weights_every, bool) or not isinstance(update_weights_every, int) \
                or update_weights_every < 1:
            raise ValueError(f"update_weights_every must be an int ≥ 1, got {update_weights_every!r}")
        if iterations is not None and (isinstance(iterations, bool) or not isinstance(iterations, int)
                                       or iterations < 1):
            raise ValueError(f"iterations must be None or an int ≥ 1, got {iterations!r}")
        self.update_weights_every = update_weights_every
        self.max_norm = check_positive("max_norm", max_norm)
        self.iterations = iterations
        self.fallback_tol = check_positive("fallback_tol", fallback_tol, allow_zero=False)
        self.reset()

    def reset(self) -> None:
        """Forget the previous ``α`` and the step counter."""
        self._alpha: Optional[torch.Tensor] = None
        self._step = 0

    @property
    def alpha(self) -> Optional[torch.Tensor]:
        """The last solved (unclipped) ``α``."""
        return self._alpha

    def weights(self, G, ctx):
        G = symmetric64(G)
        K = G.shape[0]
        check_num_tasks("NashMTL", None if self._alpha is None else self._alpha.shape[0], K)
        if self._alpha is None:
            prev = torch.ones(K, dtype=G.dtype, device=G.device)
            init = None
        else:
            prev = init = self._alpha.to(G.device)
        if self._step % self.update_weights_every == 0:
            alpha = nash_weights(G, iterations=self.iterations, init=init)
            diag = torch.diagonal(G)
            dead = diag <= 1e-12 * diag.amax()
            residual = (alpha * (G @ alpha) - 1.0).abs()
            ok = (dead | (residual <= self.fallback_tol)).all() & torch.isfinite(alpha).all()
            alpha = torch.where(ok, alpha, prev)
            self._alpha = alpha
        else:
            alpha = prev
        self._step += 1
        if self.max_norm == 0:
            return alpha.clone()
        norm = torch.sqrt((alpha @ (G @ alpha)).clamp_min(0.0))
        # max_norm / 0 = inf is clamped to 1: a zero direction is left as it is.
        return alpha * (self.max_norm / norm).clamp(max=1.0)
