"""``ddp_combine``: the exact combination for data-parallel replicas (DDP), over the sharded pipeline."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist

from ..collectives import check_agreement, collective, exchange_device, report_failure, resolve_group, signature
from ..gradients import TaskGradients, canonicalize, single_structure
from ..pipeline import Call, assemble, prepare, run
from .sharded import ShardedGram

_WHAT_DDP = "ddp_combine"


def shard_bounds(numel: int, world: int, rank: int) -> Tuple[int, int]:
    """``[lo, hi)`` of rank ``rank`` when ``numel`` coordinates are cut into ``world`` equal slices
    of ``ceil(numel / world)`` (the last ones shorter or empty), as :func:`ddp_combine` does."""
    step = -(-numel // world) if numel else 0
    lo = min(numel, rank * step)
    return lo, min(numel, lo + step)


def _flat_rows(tg: TaskGradients, extra: Optional[tuple]):
    """Per task (and the extra row), the list of flat pieces covering [0, D) in parameter order."""
    rows = list(tg.entries) + ([extra] if extra is not None else [])
    for row in rows:
        pieces = []
        for p, t in enumerate(row):
            n = tg.numels[p]
            if n == 0:
                continue
            if t is None:
                pieces.append(torch.zeros((), dtype=tg.dtype, device=tg.device).expand(n))
            else:
                pieces.append(t.reshape(-1))
        yield pieces


def _slice_input(tg: TaskGradients, extra: Optional[tuple], lo: int, hi: int):
    """Columns ``[lo, hi)`` of the concatenated gradients, as views: ``(grads, extra_slice)``."""
    if tg.layout in ("matrix", "vectors"):
        rows = [row[0][lo:hi] for row in tg.entries]
        grads = tg.matrix[:, lo:hi] if tg.matrix is not None else rows
        return grads, None if extra is None else extra[0][lo:hi]
    grads = [[] for _ in range(tg.num_tasks)]
    ext = []
    start = 0
    for p in range(tg.num_params):
        n = tg.numels[p]
        a, b = max(lo, start) - start, min(hi, start + n) - start
        start += n
        if n == 0 or a >= b:
            continue
        for k, row in enumerate(tg.entries):
            t = row[p]
            grads[k].append(None if t is None else t.reshape(-1)[a:b])
        if extra is not None:
            ext.append(None if extra[p] is None else extra[p].reshape(-1)[a:b])
    if not grads[0]:
        empty = torch.zeros(tg.num_tasks, 0, dtype=tg.dtype, device=tg.device)
        return empty, None if extra is None else torch.zeros(0, dtype=tg.dtype, device=tg.device)
    return grads, None if extra is None else ext


def _reduce_scatter(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    collective("reduce_scatter of the task gradients", group, fn, out, inp, group=group)


def _all_gather(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    collective("all_gather of the combined direction", group, fn, out, inp, group=group)


def ddp_combine(grads: Any, method: Any = "mean", *, process_group: Any = None, reduced: bool = False,
                losses: Any = None, reference: Any = None, generator: Optional[torch.Generator] = None,
                backend: Optional[str] = None, out: Any = None, check_finite: bool = False, return_info: bool = False,
                **hyperparameters: Any):
    """Exact ``combine`` for data-parallel replicas: the direction of the rank-averaged gradients.

    Every rank passes its *local* task gradients (all layouts of :func:`fastmtl.combine`, the whole
    model) and gets the full combined direction of ``(1/world)·Σ_ranks g_k`` — the same on every
    rank — without K all-reduces of D values:

    * ``reduced=False`` (default): one reduce-scatter of the K task gradients (a ``K×D`` send
      buffer; each rank receives the rank average of its ``ceil(D/world)`` columns), the sharded
      Gram algorithm on that slice, and one all-gather of the D-long direction. Traffic per rank
      ``(K+1)·(n−1)/n·D`` values (vs. ``2K·(n−1)/n·D`` for K all-reduces); each rank reads
      ``K·D/n`` gradient values.
    * ``reduced=True``: the gradients are already identical on every rank (e.g. DDP all-reduced
      each task's backward). Each rank computes the partial Gram of its 1/world column slice
      (views, no copy), one all_reduce of K×K gives λ, and the full direction is formed locally:
      no extra traffic, and the Gram pass reads ``K·D/n`` instead of ``K·D`` values.

    ``losses`` are this rank's local losses (averaged across ranks for the methods that read
    them); random choices follow rank 0's generator; HydaLearn's ``reference`` is a local
    gradient like the task gradients (reduce-scattered with them) or, with ``reduced=True``,
    identical on every rank. ``process_group`` defaults to the default (WORLD) group. A collective:
    every rank calls it with the same arguments. Returns what :func:`fastmtl.combine` returns.
    """

    group = resolve_group(process_group if process_group is not None else dist.group.WORLD)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    try:
        call = prepare(grads, method, hyperparameters, losses=losses, reference=reference, out=out,
                       generator=generator, backend=backend, check_finite=check_finite, local_checks=False)
        m, tg = call.method, call.tg
        if m.computes_direction or m.gram_params is not None:
            raise NotImplementedError(f"ddp_combine supports Gram-space methods over all parameters; {m.name!r} "
                                      "is not one (reduce-scatter the gradients and use combine(..., "
                                      "process_group=...))")
    except Exception as exc:
        if check_finite:  # every rank raises, instead of waiting for this one
            report_failure(group, exc, None, _WHAT_DDP)
        raise
    K = tg.num_tasks
    extra = call.reference if m.uses_reference else None
    if check_finite:  # replicas: D and every shape must agree; before the K-sized reduce-scatter
        sig = signature(tg, m, gram_side=K + (extra is not None), share_losses=call.losses is not None and m.uses_losses,
                        state_bytes=0, exact=True)
        check_agreement(group, sig, exchange_device(group, tg.device), _WHAT_DDP,
                        f"K = {K}, D = {tg.total_numel}, method {m.name!r}")
    D = tg.total_numel
    lo, hi = shard_bounds(D, world, rank)
    source = ShardedGram(group, checked=True)

    if reduced:
        shard_grads, shard_ref = _slice_input(tg, extra, lo, hi)
        shard = canonicalize(shard_grads)
        shard_ref = None if shard_ref is None else single_structure(shard_ref, shard, "reference")
        outcome = run(call, source, need_info=return_info, gram_inputs=(shard, shard_ref))
        direction = assemble(tg, outcome.parts)
    else:
        step = -(-D // world) if D else 0
        R = K + (extra is not None)
        send = torch.empty(world, R, step, dtype=tg.dtype, device=tg.device)
        row_buf = torch.empty(world * step, dtype=tg.dtype, device=tg.device)
        for r, pieces in enumerate(_flat_rows(tg, extra)):
            if pieces:
                torch.cat(pieces, out=row_buf[:D])
            row_buf[D:].zero_()
            send[:, r, :].copy_(row_buf.view(world, step))
        del row_buf
        recv = torch.empty(R, step, dtype=tg.dtype, device=tg.device)
        _reduce_scatter(recv, send.view(world * R, step), group)
        del send
        recv.div_(world)
        shard = canonicalize(recv[:K])
        shard_call = Call(shard, m, None, call.losses, None if extra is None else (recv[K],), call.generator,
                          call.backend, call.check_finite)
        outcome = run(shard_call, source, need_info=return_info)
        full = torch.empty(world * step, dtype=tg.dtype, device=tg.device)
        _all_gather(full, outcome.parts[0].contiguous(), group)
        direction = assemble(tg, _unflatten(full, tg, call.targets))

    return (direction, outcome.info()) if return_info else direction


def _unflatten(full: torch.Tensor, tg: TaskGradients, targets: Optional[tuple]) -> list:
    """The gathered flat direction as per-parameter views (or copied into the targets)."""
    parts = []
    start = 0
    for p, shape in enumerate(tg.shapes):
        target = None if targets is None else targets[p]
        if shape is None:
            parts.append(target)
            continue
        n = tg.numels[p]
        piece = full[start:start + n].view(shape)
        start += n
        if target is not None:
            target.copy_(piece)
            piece = target
        parts.append(piece)
    return parts
