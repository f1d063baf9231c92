"""``combine``: task gradients → one combined direction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from ._inputs import (canonicalize, canonicalize_out, check_finite as _check_finite, losses_tensor)
from .methods import make_method
from .ops.primitives import assemble, gramian_of, weighted_sum_of
from .ops.registry import select


@dataclass
class CombineInfo:
    """What ``combine(..., return_info=True)`` reports alongside the direction.

    Attributes:
        weights: λ, shape ``[K]`` (float64): the direction is ``Σ_k λ_k g_k``; ``None`` for
            methods whose direction is not one combination of the task gradients (GradDrop).
        gram: ``G = J Jᵀ`` as accumulated (float32, or float64 for float64 gradients).
        cosine: ``G_ij / (‖g_i‖‖g_j‖)``, 0 where a norm is 0.
        method: the method instance used (holds its state for stateful methods).
        backend: name of the backend that ran the weighted sum.
    """

    weights: torch.Tensor
    gram: Optional[torch.Tensor]
    cosine: Optional[torch.Tensor]
    method: Any
    backend: str


def cosine_from_gram(G: torch.Tensor) -> torch.Tensor:
    n = torch.sqrt(torch.diagonal(G).clamp_min(0))
    denom = n[:, None] * n[None, :]
    return torch.where(denom > 0, G / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(G))


def combine(grads: Any, method: Any = "mean", *, losses: Any = None,
            generator: Optional[torch.Generator] = None, backend: Optional[str] = None, out: Any = None,
            check_finite: bool = False, return_info: bool = False, **hyperparameters: Any):
    """Combine K task gradients into one update direction.

    Args:
        grads: a ``[K, D]`` tensor, a sequence of K 1-D tensors, or a sequence of K sequences of
            per-parameter tensors (``None`` = the task does not touch that parameter). Read in
            place; never concatenated.
        method: a method name (see ``fastmtl.methods.METHODS``) built fresh with
            ``**hyperparameters``, or a :class:`fastmtl.methods.Method` instance (keep instances of
            stateful methods across steps).
        losses: the K current task losses; accepted by every method, read by those that use them.
        generator: ``torch.Generator`` for methods with random choices (PCGrad orders, ...).
        backend: force a backend (``"reference"``, ``"triton"``, ``"cuda"``); default automatic.
        out: write the direction into these buffers (e.g. the parameters' ``.grad``), same
            structure as the output.
        check_finite: raise ``ValueError`` naming the tasks with NaN/Inf (synchronises).
        return_info: also return a :class:`CombineInfo` with λ, the Gram and cosine matrices.

    Returns:
        The direction in the structure of one task's gradient (a ``[D]`` tensor, or a list with
        one tensor per parameter, ``None`` where no task has a gradient); with ``return_info``,
        ``(direction, info)``.

    Cost: one pass over the K·D gradient values for the Gram matrix (skipped by loss-only methods
    unless ``return_info``), a K×K solve on the device, and one pass for ``Σ λ_k g_k``.
    """
    tg = canonicalize(grads)
    m = make_method(method, hyperparameters)
    targets = None if out is None else canonicalize_out(out, tg)
    if check_finite:
        _check_finite(tg)
    K = tg.num_tasks
    loss_vec = losses_tensor(losses, K, tg.device)
    if loss_vec is not None and check_finite and not bool(torch.isfinite(loss_vec).all()):
        raise ValueError("non-finite task losses: " + str(loss_vec.tolist()))

    if m.gram_free_direction:
        parts, lam, G = m.direction(tg, losses=loss_vec, generator=generator, out=targets, backend=backend)
        direction = assemble(tg, parts)
        if not return_info:
            return direction
        if G is None:
            G = gramian_of(tg, backend)
        return direction, CombineInfo(weights=lam, gram=G, cosine=cosine_from_gram(G), method=m,
                                      backend=select("weighted_sum", tg, backend).name)

    G = None
    reference_dots = None
    if m.requires_gram or return_info:
        if m.uses_reference and m.reference is not None:
            augmented = tg.with_extra_task(m.reference, "reference")
            G_aug = gramian_of(augmented, backend)
            G = G_aug[:K, :K]
            reference_dots = G_aug[K, :K]
        else:
            G = gramian_of(tg, backend)
    lam = m.weights(G, losses=loss_vec, generator=generator, reference_dots=reference_dots, num_tasks=K)
    chosen = select("weighted_sum", tg, backend)
    direction = assemble(tg, chosen.implementations["weighted_sum"](tg, lam, targets))
    if not return_info:
        return direction
    info = CombineInfo(weights=lam, gram=G, cosine=None if G is None else cosine_from_gram(G), method=m,
                       backend=chosen.name)
    return direction, info
