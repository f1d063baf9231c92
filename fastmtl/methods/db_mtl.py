"""DB-MTL — Lin, Ye, Xu, Shi, Zhang, Kwok, "Dual-Balancing for Multi-Task Learning" (arXiv 2308.12029)."""

from __future__ import annotations

from typing import Optional

import torch

from ..gradients import accumulate_dtype
from ..collectives import all_reduce_sum
from .base import Direction, DirectionMethod
from .common import check_positive
from .registry import register_method
from .row_buffers import RowBuffers


@register_method
class DBMTL(RowBuffers, DirectionMethod):
    """Dual-balancing (Lin et al., 2023): log-loss scaling + EMA gradient-magnitude balancing.

    Loss-scale balancing: each task back-propagates ``log(ℓ_i + eps)``, i.e. its gradient is
    ``ĝ_i = g_i / (ℓ_i + eps)``. Gradient-magnitude balancing keeps an EMA buffer
    ``M ∈ R^{K×D}`` (init 0) with step ``t = 1, 2, …``:

        M ← ĝ + (β / t^σ)(M − ĝ),   α_i = max_j ‖M_j‖ / (‖M_i‖ + eps),   d = Σ_i α_i M_i

    (every task's buffer row scaled to the largest norm). Defaults ``β = 0.9``, ``σ = 0``,
    ``eps = 1e-8`` (the authors' LibMTL code). The direction is a combination of the *buffer* rows,
    not of the current gradients, so ``info.weights`` is ``None``; the last ``α`` is kept in
    :attr:`alpha` for logging.

    State: one ``[K, numel]`` buffer per shared parameter tensor (float32, float64 for float64
    gradients), created on the first call; the task gradients are read in place, never
    concatenated. Losses are clamped at 0 before ``+ eps`` (the method needs positive losses; a
    negative loss would flip its gradient). A task without a gradient for a parameter contributes
    zeros there; a parameter no task touches in a call gets a ``None`` direction (its buffer still
    decays).

    Needs the losses: ``combine(grads, method=instance, losses=losses)``.

    Sharded (``combine(..., process_group=pg)``, FSDP/ZeRO shards): each rank buffers its own
    shard; the losses are averaged over the ranks and the K squared buffer norms summed (two
    all-reduces of K float64 each), so ``α`` and the direction's shards equal the unsharded
    method's. The state is then rank-local: see :mod:`fastmtl.methods.sharded_state` for its
    checkpoint layout (``torch.distributed.checkpoint``, same world size only).
    """

    uses_generator = False

    name = "db_mtl"
    head_weighting = "sum"  # LibMTL's convention for gradient methods
    uses_losses = True
    stateful = True
    sharded_direction = True  # its own all-reduce of the buffer norms under a process group
    _state_attrs = ("_buffers", "_shapes", "_K", "_step", "alpha")

    def __init__(self, beta: float = 0.9, sigma: float = 0.0, eps: float = 1e-8):
        beta = check_positive("beta", beta)
        if beta > 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = beta
        self.sigma = check_positive("sigma", sigma)
        self.eps = check_positive("eps", eps, allow_zero=False)
        self.reset()

    def reset(self) -> None:
        """Clear the buffers and the step counter."""
        self.reset_buffers()
        self._step = 0
        self.alpha: Optional[torch.Tensor] = None

    def direction(self, engine, ctx):
        tg, out, losses, process_group = engine.tg, engine.targets, ctx.losses, ctx.process_group
        if losses is None:
            raise ValueError("db_mtl needs the task losses: combine(..., losses=...)")
        # Sharded: each rank buffers its shard; the losses are rank-averaged already.
        self.check_buffers(tg, process_group, "DBMTL")
        K = tg.num_tasks
        acc = accumulate_dtype(tg.dtype)
        self._step += 1
        c = self.beta / float(self._step) ** self.sigma
        # ĝ = g/(ℓ+eps) and M ← cM + (1−c)ĝ, with the two factors folded into one per task.
        scale = ((1.0 - c) / (losses.to(tg.device).clamp_min(0.0) + self.eps)).to(acc)
        norms2 = torch.zeros(K, dtype=torch.float64, device=tg.device)
        for p in range(tg.num_params):
            if self._shapes[p] is None:
                continue
            M = self.buffer(tg, p)
            M.mul_(c)
            if tg.matrix is not None:
                M.addcmul_(tg.matrix, scale[:, None])
            else:
                for k, t in enumerate(tg.flat_views(p)):
                    if t is not None:
                        M[k].addcmul_(t, scale[k])
            norms2 += torch.linalg.vector_norm(M, dim=1).to(torch.float64) ** 2
        if process_group is not None:  # the buffer rows' norms over the whole vector
            norms2 = all_reduce_sum(norms2, process_group, "all_reduce of DB-MTL's buffer norms")
        norms = torch.sqrt(norms2)
        alpha = norms.amax() / (norms + self.eps)
        self.alpha = alpha
        parts = self.combine_rows(tg, alpha.to(acc), out)
        return Direction(parts)
