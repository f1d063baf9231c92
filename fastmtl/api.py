"""``combine``: task gradients → one combined direction."""

from __future__ import annotations

from typing import Any, Optional

import torch

from . import distributed
from .collectives import report_failure
from .pipeline import LOCAL, CombineInfo, assemble, cosine_from_gram, prepare, run

__all__ = ["combine", "CombineInfo", "cosine_from_gram"]


def combine(grads: Any, method: Any = "mean", *, losses: Any = None, reference: Any = None,
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
        reference: a reference gradient for the methods that read one (HydaLearn's main-task
            gradient ``v``, e.g. from a validation batch; SLGrad's validation gradient), in the
            structure of one task's gradient. HydaLearn takes ``⟨v, g_k⟩`` from one more row in
            the Gram pass.
        generator: ``torch.Generator`` for methods with random choices (PCGrad orders, ...).
        backend: force a backend (``"reference"``, ``"triton"``, ``"cuda"``, ``"cpu"``); default
            automatic.
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
    sharded = process_group is not None
    try:
        call = prepare(grads, method, hyperparameters, losses=losses, reference=reference, out=out,
                       generator=generator, backend=backend, check_finite=check_finite, local_checks=not sharded)
    except Exception as exc:
        if sharded and check_finite:  # the other ranks raise at once instead of waiting for this one
            report_failure(process_group, exc, None, "combine(..., process_group=...)")
        raise
    source = distributed.ShardedGram(process_group) if sharded else LOCAL
    outcome = run(call, source, need_info=return_info)
    direction = assemble(call.tg, outcome.parts)
    return (direction, outcome.info()) if return_info else direction
