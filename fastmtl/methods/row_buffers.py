"""Per-parameter ``K × numel`` state buffers for DirectionMethods that keep one value per task and
coordinate across calls (DB-MTL's gradient EMA, MoCo's tracked gradients, ExcessMTL's squared-gradient sums).

The buffers have the layout of the task gradients: one ``[K, numel]`` tensor per parameter
(float32, float64 for float64 gradients), created on the first call that reaches the parameter,
never concatenated. Under ``combine(..., process_group=pg)`` each rank holds the buffers of its own
shard, so the state is rank-local and checkpoints in the layout of
:mod:`fastmtl.methods.sharded_state` (the same as DB-MTL's: ``torch.distributed.checkpoint``,
same world size only).

A class using them subclasses :class:`RowBuffers` *before* its method base class and lists
``"_buffers"``, ``"_shapes"`` and ``"_K"`` among its ``_state_attrs``.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from ..gradients import TaskGradients, accumulate_dtype
from . import sharded_state
from .common import check_num_tasks


class RowBuffers:
    """Mixin: lazily created ``[K, numel]`` buffers per parameter, checked against every call."""

    def reset_buffers(self) -> None:
        """Drop the buffers (they are recreated, zero, at the next call)."""
        self._buffers: Optional[List[Optional[torch.Tensor]]] = None
        self._shapes: Optional[list] = None
        self._K: Optional[int] = None

    def _after_load(self) -> None:
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

    def check_buffers(self, tg: TaskGradients, process_group, label: str) -> None:
        """Validate ``tg`` against the buffered layout (fixing it at the first call)."""
        if process_group is not None:
            sharded_state.record(self, process_group)
        check_num_tasks(label, self._K, tg.num_tasks)
        if self._shapes is None:
            self._K = tg.num_tasks
            self._shapes = list(tg.shapes)
            self._buffers = [None] * tg.num_params
            self._device = tg.device
            return
        if len(self._shapes) != tg.num_params:
            raise ValueError(f"this {label} instance buffers {len(self._shapes)} parameters but was called with "
                             f"{tg.num_params}; create a new instance for other parameters")
        for p, (old, new) in enumerate(zip(self._shapes, tg.shapes)):
            if old is not None and new is not None and old != new:
                raise ValueError(f"parameter {p}: shape {tuple(new)} differs from the buffered {tuple(old)}")
            if old is None:
                self._shapes[p] = new
        if tg.device != self._device:
            raise ValueError(f"this {label} instance buffers on {self._device}, gradients are on {tg.device}")

    def buffer(self, tg: TaskGradients, p: int) -> torch.Tensor:
        """Parameter ``p``'s ``[K, numel]`` buffer, created zero at its first use."""
        B = self._buffers[p]
        if B is None:
            B = self._buffers[p] = torch.zeros(tg.num_tasks, tg.numels[p], dtype=accumulate_dtype(tg.dtype),
                                               device=tg.device)
        return B

    def combine_rows(self, tg: TaskGradients, coeff: torch.Tensor, out) -> list:
        """``Σ_k coeff[k]·B_p[k]`` per parameter (the buffers' rows combined, not the gradients),
        written into ``out[p]`` when given; ``None`` (or ``out[p]``) where no task has a gradient."""
        parts = []
        for p in range(tg.num_params):
            target = None if out is None else out[p]
            if tg.shapes[p] is None:
                parts.append(target)
                continue
            d = (coeff @ self._buffers[p]).view(tg.shapes[p])
            if target is None:
                parts.append(d.to(tg.dtype))
            else:
                target.copy_(d)
                parts.append(target)
        return parts
