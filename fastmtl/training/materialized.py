"""``fastmtl.backward`` with the K task gradients of the shared parameters materialised (the default
Gram mode): task gradients → one pipeline run → ``.grad``, then the heads."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ..pipeline import LOCAL, CombineInfo, ScaledGram, prepare, run
from .steps import backward_heads, check_heads, head_convention, resolve_method
from ..gradients import loss_list as as_loss_list, param_list
from .task_autograd import task_gradients

__all__ = ["materialized_backward"]


def _reference_for(reference_grad, shared, touched):
    if isinstance(reference_grad, torch.Tensor) or not isinstance(reference_grad, Sequence):
        raise TypeError("reference_grad must be a sequence with one tensor (or None) per shared parameter")
    if len(reference_grad) != len(shared):
        raise ValueError(f"reference_grad has {len(reference_grad)} entries but there are {len(shared)} shared "
                         "parameters")
    return [None if (r is None or not touched[p]) else r.detach() for p, r in enumerate(reference_grad)]


def materialized_backward(losses: Any, shared_params: Any, method: Any = "mean", *, main_task: Optional[int] = None,
                          reference_grad: Any = None, head_params: Any = None,
                          generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
                          batched: Optional[bool] = None, return_info: bool = True, head_weighting: str = "auto",
                          retain_graph: bool = False, grad_scaler: Any = None,
                          **hyperparameters: Any) -> Optional[CombineInfo]:
    """:func:`fastmtl.backward` with ``gram_mode="materialize"``; the arguments are its own."""
    loss_list = as_loss_list(losses)
    shared = param_list(shared_params, "shared_params")
    heads = param_list(head_params, "head_params")
    if not shared:
        raise ValueError("shared_params is empty")
    check_heads(shared, heads, head_weighting)
    # The method, configured before any gradient is computed so that bad arguments fail early.
    m = resolve_method(method, hyperparameters, main_task=main_task, reference_grad=reference_grad)

    need_heads = any(True for _ in heads)
    source, scale = LOCAL, None
    if grad_scaler is not None:  # mixed precision: gradients of s·ℓ_k, see the docstring
        scale = grad_scaler.scale(torch.ones((), dtype=torch.float32, device=loss_list[0].device))
        source = ScaledGram(LOCAL, scale)
        backprop = [grad_scaler.scale(l) for l in loss_list]
    else:
        backprop = loss_list
    grads = task_gradients(backprop, shared, batched=batched, retain_graph=retain_graph or need_heads)
    K, P = len(grads), len(shared)
    touched = [any(grads[k][p] is not None for k in range(K)) for p in range(P)]
    loss_vec = torch.stack([l.detach().to(torch.float64) for l in loss_list])
    reference = None if reference_grad is None else _reference_for(reference_grad, shared, touched)

    # Output buffers: a fresh buffer becomes .grad; an existing .grad gets the direction added.
    bufs = [torch.empty_like(p) if touched[p_i] else None for p_i, p in enumerate(shared)]
    call = prepare(grads, m, {}, losses=loss_vec, reference=reference, out=bufs, generator=generator,
                   backend=backend)
    if scale is not None and m.computes_direction:  # its own use of the gradients: give it them unscaled
        inverse = 1.0 / scale
        for row in grads:
            for g in row:
                if g is not None:
                    g.mul_(inverse.to(g.dtype))
        outcome = run(call, need_info=return_info)
        for buf in bufs:
            if buf is not None:
                buf.mul_(scale.to(buf.dtype))
    else:
        outcome = run(call, source, need_info=return_info)
    for p, buf in zip(shared, bufs):
        if buf is None:
            continue
        if p.grad is None:
            p.grad = buf
        else:
            p.grad.add_(buf)

    backward_heads(backprop, outcome.weights, heads, head_convention(m, head_weighting), retain_graph, m.name)
    return outcome.info() if return_info else None
