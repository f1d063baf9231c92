"""DB-MTL — Lin, Ye, Xu, Shi, Zhang, Kwok, "Dual-Balancing for Multi-Task Learning" (arXiv 2308.12029)."""

from __future__ import annotations

from typing import List, Optional

import torch

from ..gradients import accumulate_dtype
from ..collectives import all_reduce_sum
from .base import Direction, DirectionMethod
from .common import check_num_tasks, check_positive
from . import sharded_state
from .registry import register_method


@register_method
class DBMTL(DirectionMethod):
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
        self._buffers: Optional[List[Optional[torch.Tensor]]] = None
        self._shapes: Optional[list] = None
        self._K: Optional[int] = None
        self._step = 0
        self.alpha: Optional[torch.Tensor] = None

    def _after_load(self) -> None:
        # The device check in _check_state compares against the buffers' (loaded) device.
        held = [b for b in (self._buffers or []) if b is not None]
        if held:
            self._device = held[0].device
        elif self._shapes is not None:
            self._shapes, self._buffers, self._K = None, None, None  # nothing buffered yet

    def _has_unsharded_state(self) -> bool:
        return self._shapes is not None and getattr(self, "_shard", None) is None

    def state_dict(self, process_group=None) -> dict:
        """As :meth:`Method.state_dict`; under a process group (after sharded calls, or with
        ``process_group`` given, e.g. for a fresh instance's ``dcp.load`` template) this rank's
        shard in the layout of :mod:`fastmtl.methods.sharded_state`."""
        return sharded_state.state_dict(self, process_group) or super().state_dict()

    def load_state_dict(self, state: dict, strict: bool = True, process_group=None):
        """As :meth:`Method.load_state_dict`; a sharded state dict needs the same rank and world
        size (``process_group`` for an instance that has not run sharded yet)."""
        if sharded_state.is_sharded(state):
            return sharded_state.load(self, state, process_group, strict)
        return super().load_state_dict(state, strict)

    def _check_state(self, tg) -> None:
        K = tg.num_tasks
        check_num_tasks("DBMTL", self._K, K)
        if self._shapes is None:
            self._K = K
            self._shapes = list(tg.shapes)
            self._buffers = [None] * tg.num_params
            self._device = tg.device
            return
        if len(self._shapes) != tg.num_params:
            raise ValueError(f"this DBMTL instance buffers {len(self._shapes)} parameters but was called with "
                             f"{tg.num_params}; create a new instance for other parameters")
        for p, (old, new) in enumerate(zip(self._shapes, tg.shapes)):
            if old is not None and new is not None and old != new:
                raise ValueError(f"parameter {p}: shape {tuple(new)} differs from the buffered {tuple(old)}")
            if old is None:
                self._shapes[p] = new
        if tg.device != self._device:
            raise ValueError(f"this DBMTL instance buffers on {self._device}, gradients are on {tg.device}")

    def direction(self, engine, ctx):
        tg, out, losses, process_group = engine.tg, engine.targets, ctx.losses, ctx.process_group
        if losses is None:
            raise ValueError("db_mtl needs the task losses: combine(..., losses=...)")
        if process_group is not None:  # the losses are rank-averaged already (every rank scales alike)
            sharded_state.record(self, process_group)
        self._check_state(tg)
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
            M = self._buffers[p]
            if M is None:
                M = self._buffers[p] = torch.zeros(K, tg.numels[p], dtype=acc, device=tg.device)
            else:
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
        a = alpha.to(acc)
        parts = []
        for p in range(tg.num_params):
            target = None if out is None else out[p]
            if tg.shapes[p] is None:
                parts.append(target)
                continue
            d = (a @ self._buffers[p]).view(tg.shapes[p])
            if target is None:
                parts.append(d.to(tg.dtype))
            else:
                target.copy_(d)
                parts.append(target)
        return Direction(parts)
