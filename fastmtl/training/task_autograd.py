"""The K task gradients of a parameter set: K autograd calls, or one batched (vmapped) call."""

from __future__ import annotations

import warnings
from typing import Any, List, Optional, Tuple

import torch

from ..gradients import loss_list, param_list

__all__ = ["task_gradients", "BATCHED_AUTO_MAX_ELEMENTS"]

#: ``batched=None`` uses the batched autograd call when K × (number of parameter values) is at most
#: this. Measured on CPU MLPs (docs/training_and_experiments.md): the batched call is 1.2–2.3×
#: faster for small models (K·D up to ~0.3M), even at ~3M, and 0.8–1.1× at 21M, where holding K
#: cotangents per activation at once costs more memory traffic than the K separate passes.
BATCHED_AUTO_MAX_ELEMENTS = 1 << 22

# Shared-parameter sets (by identity) for which the batched autograd call failed once: later calls
# use the K-call loop straight away instead of failing again.
_BATCHED_FAILED: set = set()


def _looped_grads(losses, params, keep_graph):
    K, P = len(losses), len(params)
    active = [k for k, l in enumerate(losses) if l.requires_grad]
    grads: List[Tuple] = [(None,) * P] * K
    for i, k in enumerate(active):
        last = i == len(active) - 1
        grads[k] = torch.autograd.grad(losses[k], params, retain_graph=keep_graph or not last, allow_unused=True)
    return grads


def _batched_grads(losses, params, keep_graph):
    K = len(losses)
    stacked = torch.stack(losses)
    eye = torch.eye(K, dtype=stacked.dtype, device=stacked.device)
    cols = torch.autograd.grad(stacked, params, grad_outputs=eye, is_grads_batched=True,
                               retain_graph=keep_graph, allow_unused=True)
    # cols[p] is [K, *shape]; rows are views, never copies.
    return [tuple(None if c is None else c[k] for c in cols) for k in range(K)]


def task_gradients(losses: Any, params: Any, *, batched: Optional[bool] = None,
                   retain_graph: bool = False) -> List[Tuple[Optional[torch.Tensor], ...]]:
    """The K task gradients ``∇_θ ℓ_k`` of ``params``, as K tuples of per-parameter tensors.

    ``None`` marks a parameter that task ``k`` does not reach (``allow_unused``); this is the
    ``[K][P]`` input form of :func:`fastmtl.combine`.

    Args:
        losses: K scalar losses (a sequence, or a ``[K]`` tensor).
        params: the parameters (a sequence, or a module).
        batched: ``True``: one ``torch.autograd.grad(..., is_grads_batched=True)`` call (the
            backward pass vmapped over the K one-hot output cotangents); ``False``: K calls with
            ``retain_graph``; ``None`` (default): batched when ``K × numel(params) ≤``
            :data:`BATCHED_AUTO_MAX_ELEMENTS` (4M), else the loop; a batched call that fails (an
            operation without a batching rule) falls back to the loop, with one warning, and the
            loop is used for this parameter set from then on. In the batched form a task that does
            not reach a parameter gets zeros, not ``None``, unless no task reaches it. Measured on
            CPU MLPs, batched is 1.2–2.3× faster for small models and slower for large ones (see
            ``docs/training_and_experiments.md``); it holds K cotangents per activation at once,
            so the loop needs less memory.
        retain_graph: keep the graph after the last call (for more backward passes on it).
    """
    losses = loss_list(losses)
    params = param_list(params, "params")
    if not params:
        raise ValueError("params is empty")
    if not any(l.requires_grad for l in losses):
        raise ValueError("no loss requires grad: nothing to differentiate")
    key = tuple(id(p) for p in params)
    if batched is None:
        size = len(losses) * sum(p.numel() for p in params)
        use_batched = key not in _BATCHED_FAILED and size <= BATCHED_AUTO_MAX_ELEMENTS
    else:
        use_batched = batched
    if len(losses) == 1 or not all(l.requires_grad for l in losses):
        use_batched = False
    if use_batched:
        try:
            return _batched_grads(losses, params, retain_graph)
        except (RuntimeError, NotImplementedError) as exc:
            if batched:
                raise
            _BATCHED_FAILED.add(key)
            warnings.warn(f"fastmtl: the batched task-gradient call failed ({str(exc).splitlines()[0][:200]}); "
                          "using K autograd calls for these parameters from now on", RuntimeWarning, stacklevel=2)
    return _looped_grads(losses, params, retain_graph)
