"""Fake (look-ahead) steps: move the parameters, look, and put everything back bitwise.

:class:`FakeStep` snapshots the parameters' values and ``.grad``, the optimizer's state and
param-group settings, and (optionally) module buffers such as BatchNorm statistics, and restores
them on demand and on exit. Restoring writes *in place* (the same tensors, the same storage), so a
fused or capturable optimizer, or a CUDA graph holding these tensors, keeps working afterwards.
HydaLearn's look-ahead uses the same optimizer snapshot and restore
(:func:`fastmtl.training.hydalearn_lookahead_weights`).
"""

from __future__ import annotations

import copy
from typing import Iterable, List, Optional, Sequence

import torch

__all__ = ["FakeStep", "snapshot_optimizer", "restore_optimizer"]


def snapshot_optimizer(optimizer: torch.optim.Optimizer):
    """A deep copy of ``optimizer``'s per-parameter state and param-group settings (not the params)."""
    state = {}
    for p, s in optimizer.state.items():
        state[p] = {k: (v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)) for k, v in s.items()}
    groups = [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return state, groups


def restore_optimizer(optimizer: torch.optim.Optimizer, snap) -> None:
    """Put :func:`snapshot_optimizer`'s copy back: state tensors copied in place where they still
    match (keeping their identity), keys added during the fake step removed."""
    state, groups = snap
    for p in list(optimizer.state.keys()):
        if p not in state:
            del optimizer.state[p]
    for p, saved in state.items():
        live = optimizer.state[p]
        for k in list(live.keys()):
            if k not in saved:
                del live[k]
        for k, v in saved.items():
            cur = live.get(k)
            if isinstance(v, torch.Tensor) and isinstance(cur, torch.Tensor) and cur.shape == v.shape \
                    and cur.dtype == v.dtype and cur.device == v.device:
                cur.copy_(v)
            else:
                live[k] = v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
    for g, saved in zip(optimizer.param_groups, groups):
        for k in list(g.keys()):
            if k != "params" and k not in saved:
                del g[k]
        g.update(copy.deepcopy(saved))


class FakeStep:
    """Snapshot of ``params`` (values and ``.grad``), ``optimizer`` and ``buffers``; a context manager
    that restores all of them on exit (also after an exception).

    Parameters the optimizer holds besides ``params`` are snapshotted too, and their ``.grad`` is
    hidden (``None``, which every torch optimizer skips) while the snapshot is live, so that an
    ``optimizer.step()`` taken inside moves ``params`` only.
    """

    def __init__(self, params: Sequence[torch.Tensor], optimizer: Optional[torch.optim.Optimizer] = None,
                 buffers: Iterable[torch.Tensor] = ()):
        self.params: List[torch.Tensor] = list(params)
        self.optimizer = optimizer
        ids = {id(p) for p in self.params}
        others = [] if optimizer is None else list({id(p): p for g in optimizer.param_groups for p in g["params"]
                                                   if id(p) not in ids}.values())
        self.others = others
        self.all_params = self.params + others
        self.buffers = [b for b in buffers if b is not None]
        with torch.no_grad():
            self._values = [p.detach().clone() for p in self.all_params]
            self._grads = [None if p.grad is None else p.grad.detach().clone() for p in self.all_params]
            self._buffers = [b.detach().clone() for b in self.buffers]
        self._opt = snapshot_optimizer(optimizer) if optimizer is not None else None
        for p in others:
            p.grad = None

    @property
    def values(self) -> List[torch.Tensor]:
        """The snapshot of ``params``' values (do not modify)."""
        return self._values[:len(self.params)]

    def restore_parameters(self) -> None:
        """Parameter values (all the optimizer's), buffers and optimizer state back to the snapshot;
        ``.grad`` is left as it is."""
        with torch.no_grad():
            for p, v in zip(self.all_params, self._values):
                p.copy_(v)
            for b, v in zip(self.buffers, self._buffers):
                b.copy_(v)
        if self._opt is not None:
            restore_optimizer(self.optimizer, self._opt)

    def restore(self) -> None:
        """Everything back to the snapshot, ``.grad`` included (in place where it still exists)."""
        self.restore_parameters()
        for p, g in zip(self.all_params, self._grads):
            if g is None:
                p.grad = None
            elif p.grad is None or p.grad.shape != g.shape or p.grad.dtype != g.dtype:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)

    def __enter__(self) -> "FakeStep":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
