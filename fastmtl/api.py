"""``combine``: task gradients → one combined direction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from .gradients import (canonicalize, canonicalize_out, check_finite as _check_finite, losses_tensor)
from .methods import make_method
from .ops.primitives import assemble, gramian_of
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


def _check_num_tasks(m: Any, K: int) -> None:
    """A stateful method instance serves one number of tasks (its state is per task)."""
    seen = getattr(m, "_fastmtl_num_tasks", None) if m.stateful else None
    if seen is not None and seen != K:
        raise ValueError(f"this {type(m).__name__} instance saw {seen} tasks before, now {K}; a stateful method "
                         "keeps per-task state: create a new instance for a different number of tasks")


def _method_weights(m: Any, G: Optional[torch.Tensor], *, losses, generator, reference_dots, num_tasks: int,
                    check_finite: bool, device: Optional[torch.device] = None) -> torch.Tensor:
    """``m.weights(G, ...)`` under fastmtl's non-finite policy (docs/bad_input.md).

    λ of a method that reads G depends on every coordinate of every task, so a non-finite G (a NaN
    or Inf gradient, or a float32 Gram that overflowed) gives ``λ = NaN`` — the direction is NaN
    everywhere, never a silently wrong finite one. The method itself sees a zero Gram then, so no
    solver is handed NaN. ``check_finite=True`` raises instead, naming the tasks.
    """
    guard = G is not None and m.requires_gram
    if guard:
        finite = torch.isfinite(G).all()
        if reference_dots is not None:
            finite = finite & torch.isfinite(reference_dots).all()
        if check_finite and not bool(finite):
            rows = (~torch.isfinite(G)).any(1).cpu().tolist()
            bad = ", ".join(f"task {k}" for k, b in enumerate(rows) if b) or "the reference gradient"
            raise ValueError(f"the Gram matrix is not finite although the gradients are: dot products overflowed "
                             f"{G.dtype} (max {torch.finfo(G.dtype).max:.3g}) for {bad}; pass float64 gradients or "
                             "scale the losses down")
        zero = torch.zeros((), dtype=G.dtype, device=G.device)
        G = torch.where(finite, G, zero)
        if reference_dots is not None:
            reference_dots = torch.where(finite, reference_dots, zero.to(reference_dots.dtype))
    lam = m.weights(G, losses=losses, generator=generator, reference_dots=reference_dots, num_tasks=num_tasks,
                    device=device)
    if guard:
        lam = torch.where(finite, lam, torch.full_like(lam, float("nan")))
    if m.stateful:
        m._fastmtl_num_tasks = num_tasks
    return lam


def combine(grads: Any, method: Any = "mean", *, losses: Any = None,
            generator: Optional[torch.Generator] = None, backend: Optional[str] = None, out: Any = None,
            check_finite: bool = False, return_info: bool = False, process_group: Any = None,
            **hyperparameters: Any):
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
        check_finite: raise ``ValueError`` naming the tasks with NaN/Inf (synchronises). With
            ``process_group``, also checks that the ranks' calls agree and reports a rank's own
            failure on every rank (one more small collective, see :mod:`fastmtl.distributed`).
        return_info: also return a :class:`CombineInfo` with λ, the Gram and cosine matrices.
        process_group: a ``torch.distributed`` process group (or 1-D ``DeviceMesh``) over which the
            gradients are sharded (FSDP/ZeRO): ``grads`` is this rank's shard (possibly empty) of
            every task's gradient and the result is this rank's shard of the direction; one
            ``all_reduce`` of the K×K Gram gives every rank the same λ. A collective: see
            :mod:`fastmtl.distributed` (and :func:`fastmtl.distributed.ddp_combine` for DDP).

    Returns:
        The direction in the structure of one task's gradient (a ``[D]`` tensor, or a list with
        one tensor per parameter, ``None`` where no task has a gradient); with ``return_info``,
        ``(direction, info)``.

    Cost: one pass over the K·D gradient values for the Gram matrix (skipped by loss-only methods
    unless ``return_info``), a K×K solve on the device, and one pass for ``Σ λ_k g_k``.
    """
    sharded = process_group is not None  # then finiteness is checked collectively (fastmtl.distributed)
    try:
        tg = canonicalize(grads)
        m = make_method(method, hyperparameters)
        targets = None if out is None else canonicalize_out(out, tg)
        K = tg.num_tasks
        _check_num_tasks(m, K)
        if check_finite and not sharded:
            _check_finite(tg)
        loss_vec = losses_tensor(losses, K, tg.device)
    except Exception as exc:
        if sharded and check_finite:  # the other ranks raise at once instead of waiting for this one
            from ._dist_checks import report_failure
            report_failure(process_group, exc, None, "combine(..., process_group=...)")
        raise
    if loss_vec is not None and check_finite and not sharded and not bool(torch.isfinite(loss_vec).all()):
        raise ValueError("non-finite task losses: " + str(loss_vec.tolist()))

    if m.gram_free_direction:
        extra = {}
        if sharded:  # -- distributed: shard-local (elementwise) methods, or ones with their own collectives --
            from .distributed import check_shard_local
            check_shard_local(m, tg, process_group, loss_vec, check_finite)
            if getattr(m, "sharded_direction", False):
                extra = {"process_group": process_group}
        parts, lam, G = m.direction(tg, losses=loss_vec, generator=generator, out=targets, backend=backend, **extra)
        direction = assemble(tg, parts)
        if not return_info:
            return direction
        if G is None:
            G = gramian_of(tg, backend)
        if sharded:  # -- distributed: the global Gram for the info --
            from .distributed import all_reduce_gram
            G = all_reduce_gram(G, process_group)
        return direction, CombineInfo(weights=lam, gram=G, cosine=cosine_from_gram(G), method=m,
                                      backend=select("weighted_sum", tg, backend).name)

    G = None
    reference_dots = None
    if sharded:  # -- distributed: partial Grams + one all_reduce, see fastmtl/distributed.py --
        from .distributed import reduce_shards
        G, reference_dots, loss_vec, generator = reduce_shards(
            tg, m, process_group, losses=loss_vec, generator=generator, backend=backend,
            need_gram=m.requires_gram or return_info, check_finite=check_finite)
    elif m.requires_gram or return_info:
        if m.uses_reference and m.reference is not None:
            augmented = tg.with_extra_task(m.reference, "reference")
            G_aug = gramian_of(augmented, backend)
            G = G_aug[:K, :K]
            reference_dots = G_aug[K, :K]
        else:
            G = gramian_of(tg, backend)
    lam = _method_weights(m, G, losses=loss_vec, generator=generator, reference_dots=reference_dots, num_tasks=K,
                          check_finite=check_finite, device=tg.device)
    chosen = select("weighted_sum", tg, backend)
    direction = assemble(tg, chosen.implementations["weighted_sum"](tg, lam, targets))
    if not return_info:
        return direction
    info = CombineInfo(weights=lam, gram=G, cosine=None if G is None else cosine_from_gram(G), method=m,
                       backend=chosen.name)
    return direction, info
