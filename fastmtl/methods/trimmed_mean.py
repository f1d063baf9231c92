"""Coordinate-wise trimmed mean — Yin, Chen, Kannan, Bartlett, "Byzantine-Robust Distributed
Learning: Towards Optimal Statistical Rates", ICML 2018, as TorchJD 0.18 defines it."""

from __future__ import annotations

from typing import List, Optional

import torch

from ..gradients import accumulate_dtype
from .base import Direction, DirectionMethod
from .registry import register_method


@register_method
class TrimmedMean(DirectionMethod):
    """Per coordinate: drop the ``t`` largest and ``t`` smallest of the K task values, average the rest.

    ``d_c = (1/(K − 2t)) Σ_{i = t+1}^{K−t} g_(i),c`` with ``g_(1),c ≤ … ≤ g_(K),c`` the sorted values
    of coordinate ``c`` (TorchJD 0.18's ``TrimmedMean(trim_number)``; a parameter a task does not
    touch counts as zeros). Elementwise, so not Gram-reducible: a DirectionMethod, and shard-local
    under a process group (every coordinate is computed from its own K values). ``t = 0`` is the
    mean. Scale: a mean (``1/(K − 2t)``). ``info.weights`` is ``None``.

    Args:
        trim_number: t, the number of values dropped at each end of every coordinate (default 0).

    A call needs ``K ≥ 2t + 1`` task gradients (``ValueError`` otherwise).

    Evaluation: the K values of a coordinate are never gathered or sorted. Each task's tensor is
    streamed once through two elementwise tournaments of depth t: the running ``t`` largest
    values, whose evictions enter the running ``t`` smallest, whose evictions are added to the
    kept sum (a value evicted from both is below t others and above t others, so it is kept).
    Extra memory: ``2t + 1`` buffers of one parameter; nothing is subtracted, so a huge outlier
    never cancels the kept values. ``±Inf`` values are ordered like numbers and trimmed as
    extremes; a NaN makes its coordinate NaN (it has no order). No state.
    """

    uses_generator = False
    head_weighting = "sum"  # TorchJD's mtl_backward: heads get their own task's gradient
    shard_local = True  # elementwise: each rank trims its own shard

    name = "trimmed_mean"

    def __init__(self, trim_number: int = 0):
        if isinstance(trim_number, bool) or not isinstance(trim_number, int):
            raise TypeError(f"trim_number must be an int, got {type(trim_number).__name__}")
        if trim_number < 0:
            raise ValueError(f"trim_number must be ≥ 0, got {trim_number}")
        self.trim_number = trim_number

    @property
    def min_tasks(self) -> int:
        """The fewest task gradients this configuration accepts: ``2·trim_number + 1``."""
        return 2 * self.trim_number + 1

    def direction(self, engine, ctx):
        tg, out = engine.tg, engine.targets
        K, t = tg.num_tasks, self.trim_number
        if K < 2 * t + 1:
            raise ValueError(f"trimmed_mean with trim_number={t} needs at least 2·trim_number + 1 = {2 * t + 1} "
                             f"task gradients, got K={K}")
        acc = accumulate_dtype(tg.dtype)
        parts: List[Optional[torch.Tensor]] = []
        for p in range(tg.num_params):
            target = None if out is None else out[p]
            rows = tg.flat_views(p)
            if all(r is None for r in rows):
                parts.append(target)
                continue
            d = _trimmed_mean(rows, t, tg.numels[p], acc, tg.device).view(tg.shapes[p])
            if target is None:
                parts.append(d.to(tg.dtype))
            else:
                target.copy_(d)
                parts.append(target)
        return Direction(parts)


def _trimmed_mean(rows: list, t: int, numel: int, acc: torch.dtype, device) -> torch.Tensor:
    """The trimmed mean of the K flat tensors ``rows`` (``None`` = zeros) by two tournaments."""
    K = len(rows)
    zero = None
    kept = torch.zeros(numel, dtype=acc, device=device)
    top = [torch.full((numel,), -torch.inf, dtype=acc, device=device) for _ in range(t)]
    bottom = [torch.full((numel,), torch.inf, dtype=acc, device=device) for _ in range(t)]
    for k, row in enumerate(rows):
        if row is None:
            zero = torch.zeros(numel, dtype=acc, device=device) if zero is None else zero
            x = zero
        else:
            x = row.to(acc)
        # Insert into the t largest (descending); the value pushed out continues downwards.
        # While fewer than t values were seen the evicted value is a -inf placeholder.
        for j in range(t):
            hi = torch.maximum(top[j], x)
            x = torch.minimum(top[j], x)
            top[j] = hi
        if k < t:
            continue
        for j in range(t):
            lo = torch.minimum(bottom[j], x)
            x = torch.maximum(bottom[j], x)
            bottom[j] = lo
        if k < 2 * t:
            continue  # the value pushed out of a bottom set that is not full yet is a placeholder
        kept = kept + x
    return kept / (K - 2 * t)
