"""Sharded gradients: the partial Grams of every rank, all-reduced — the source :class:`ShardedGram`.

See :mod:`fastmtl.distributed` for what rides in the one ``all_reduce`` and how random choices
follow rank 0's generator.
"""

from __future__ import annotations

from typing import Any, List, Optional

import torch
import torch.distributed as dist

from ..collectives import check_agreement, collective, exchange_device, report_failure, resolve_group, signature
from ..gradients import TaskGradients, check_finite as check_gradients_finite
from ..pipeline import gram_of

_WHAT = "combine(..., process_group=...)"

# Generator states travel six bytes per float64 value (48-bit integers are exact in float64).
_BYTES_PER_VALUE = 6
_CPU_STATE_BYTES: List[int] = []


# --------------------------------------------------------------------------------------------
# Random choices: rank 0's generator decides.
# --------------------------------------------------------------------------------------------

def _cpu_state_bytes() -> int:
    if not _CPU_STATE_BYTES:
        _CPU_STATE_BYTES.append(int(torch.default_generator.get_state().numel()))
    return _CPU_STATE_BYTES[0]


def _default_generator(device: torch.device) -> torch.Generator:
    """The generator ``torch.rand(..., device=device)`` draws from when none is given."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[index]
    return torch.default_generator


def pack_generator_state(state: Optional[torch.Tensor], capacity: int) -> torch.Tensor:
    """``[n_bytes, v_0, v_1, ...]`` (float64): the bytes of ``state``, six per value; zeros if None."""
    values = torch.zeros(1 + capacity // _BYTES_PER_VALUE, dtype=torch.float64)
    if state is None:
        return values
    n = state.numel()
    padded = torch.zeros(capacity, dtype=torch.int64)
    padded[:n] = state.to(torch.int64)
    shifts = torch.arange(_BYTES_PER_VALUE, dtype=torch.int64) * 8
    values[0] = float(n)
    values[1:] = (padded.view(-1, _BYTES_PER_VALUE) << shifts).sum(1).to(torch.float64)
    return values


def unpack_generator_state(values: torch.Tensor) -> torch.Tensor:
    values = values.cpu()
    n = int(values[0].item())
    shifts = torch.arange(_BYTES_PER_VALUE, dtype=torch.int64) * 8
    words = values[1:].to(torch.int64)
    return ((words[:, None] >> shifts) & 255).reshape(-1)[:n].to(torch.uint8)


# --------------------------------------------------------------------------------------------
# The one all_reduce.
# --------------------------------------------------------------------------------------------

def _local_nonfinite(tg: TaskGradients, losses: Optional[torch.Tensor]) -> torch.Tensor:
    """``[K + 1]`` float64: 1 where this rank's shard of task k (last: the losses) has NaN/Inf."""
    flags = []
    false = torch.zeros((), dtype=torch.bool, device=tg.device)
    for row in tg.entries:
        oks = [torch.isfinite(t).all() for t in row if t is not None and t.numel()]
        flags.append(torch.stack(oks).all().logical_not() if oks else false)
    flags.append(false if losses is None else torch.isfinite(losses).all().logical_not().to(tg.device))
    return torch.stack(flags).to(torch.float64)


def _raise_nonfinite(counts: torch.Tensor, tg: TaskGradients, losses, world: int) -> None:
    counts = [int(c) for c in counts.cpu().tolist()]
    bad = [k for k, c in enumerate(counts[:-1]) if c]
    if bad:
        where = ", ".join(f"task {k} (on {counts[k]} of {world} ranks)" for k in bad)
        try:
            check_gradients_finite(tg)
            local = "this rank's shard is finite"
        except ValueError as exc:
            local = "this rank's shard: " + str(exc).split(" in the gradient of ", 1)[-1]
        raise ValueError(f"non-finite values (NaN or Inf) in the gradient of {where}; {local}")
    if counts[-1]:
        mine = "" if losses is None else f"; this rank's losses: {losses.tolist()}"
        raise ValueError(f"non-finite task losses on {counts[-1]} of {world} ranks{mine}")


def reduce_shards(tg: TaskGradients, method, process_group: Any, *, losses: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
                  need_gram: bool = True, check_finite: bool = False, reference: Optional[tuple] = None,
                  checked: bool = False, exact_shapes: bool = False):
    """Everything ``method.weights`` needs, made identical on every rank with one ``all_reduce``.

    ``tg`` is this rank's shard of the K task gradients (any layout; D may be 0). Returns
    ``(G, reference_dots, losses, generator)``: the global Gram (accumulate dtype of ``tg``, or
    ``None`` when not needed), the global dot products with the method's reference gradient (or
    ``None``), the rank-averaged losses (or the local ones when the method reads none), and the
    generator to pass to ``weights`` (see the module docstring). No collective runs when the
    method needs none of these (``mean``/``sum`` without ``return_info``).

    ``reference`` is this rank's shard of the call's reference gradient (P entries) or ``None``.

    With ``check_finite=True`` the ranks first compare their calls (K, parameters, dtype, method,
    optional pieces; one extra ``all_gather`` of a few int64 per rank and one host read), so a
    mismatch or a rank that fails on its own raises the same error on every rank instead of a
    hang or an abort in the ``all_reduce``; ``checked=True`` skips that when the caller did it.
    """
    group = resolve_group(process_group)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    K = tg.num_tasks
    device = tg.device
    local_losses = losses

    validate = check_finite and not checked  # one more small collective, see fastmtl/collectives.py
    try:  # this rank's own work; with validate, a failure here is reported to every rank
        pieces = []
        G_local = None
        n = K
        if need_gram:
            if method.uses_reference and reference is not None:
                G_local = gram_of(tg.with_extra_task(reference), backend)
                n = K + 1
            else:
                G_local = gram_of(tg, backend)
            pieces.append(G_local.reshape(-1).to(torch.float64))
        share_losses = losses is not None and method.uses_losses
        if share_losses:
            pieces.append(losses.to(device=device, dtype=torch.float64))
        if check_finite:
            pieces.append(_local_nonfinite(tg, losses))
        own = None
        if method.uses_generator:
            own = generator if generator is not None else _default_generator(device)
            state = own.get_state()
            capacity = max(_cpu_state_bytes(), state.numel())
            capacity = -(-capacity // _BYTES_PER_VALUE) * _BYTES_PER_VALUE
            pieces.append(pack_generator_state(state if rank == 0 else None, capacity).to(device))
        if not pieces:
            return None, None, losses, generator
    except Exception as exc:
        if validate:
            report_failure(group, exc, device, _WHAT)
        raise
    if validate:
        sig = signature(tg, method, gram_side=n if need_gram else 0, share_losses=share_losses,
                        state_bytes=capacity if own is not None else 0, exact=exact_shapes,
                        uses_reference=n > K)
        check_agreement(group, sig, exchange_device(group, device), _WHAT,
                        f"K = {K}, method {method.name!r}, parameter shapes {_short_shapes(tg)}")

    buf = torch.cat(pieces)
    collective("all_reduce of the partial Gram matrices", group, dist.all_reduce, buf, op=dist.ReduceOp.SUM,
               group=group)

    offset = 0
    G = reference_dots = None
    if need_gram:
        G_all = buf[: n * n].view(n, n).to(G_local.dtype)
        offset = n * n
        if n > K:
            G, reference_dots = G_all[:K, :K], G_all[K, :K]
        else:
            G = G_all
    if share_losses:
        losses = buf[offset: offset + K] / world
        offset += K
    if check_finite:
        _raise_nonfinite(buf[offset: offset + K + 1], tg, local_losses, world)
        offset += K + 1
    if own is not None:
        state0 = unpack_generator_state(buf[offset:])
        if state0.numel() != own.get_state().numel():
            raise ValueError(f"rank 0's generator state has {state0.numel()} bytes but this rank's "
                             f"{'generator' if generator is not None else 'default generator'} has "
                             f"{own.get_state().numel()}: pass generators of the same kind on every rank")
        if rank != 0:
            if generator is not None:
                generator.set_state(state0)
            else:
                generator = torch.Generator(device=own.device)
                generator.set_state(state0)
        elif generator is None:
            generator = own
    return G, reference_dots, losses, generator


def _short_shapes(tg: TaskGradients, most: int = 6) -> str:
    shapes = [None if s is None else tuple(s) for s in tg.shapes]
    return str(shapes[:most])[:-1] + f", ... ({len(shapes)} in all)]" if len(shapes) > most else str(shapes)


def all_reduce_gram(G: torch.Tensor, process_group: Any) -> torch.Tensor:
    """The global Gram from this rank's partial one (summed in float64, returned in G's dtype)."""
    buf = G.to(torch.float64).contiguous()
    group = resolve_group(process_group)
    collective("all_reduce of the partial Gram matrices", group, dist.all_reduce, buf, op=dist.ReduceOp.SUM,
               group=group)
    return buf.to(G.dtype)


def check_shard_local(method, tg: TaskGradients, process_group: Any, losses: Optional[torch.Tensor] = None,
                      check_finite: bool = False) -> None:
    """A shard-local (elementwise) DirectionMethod: with ``check_finite``, the calls' agreement and
    the non-finite counts (one small all_gather and one all_reduce); nothing else is shared."""
    if check_finite:
        group = resolve_group(process_group)
        check_agreement(group, signature(tg, method, gram_side=0, share_losses=False, state_bytes=0, exact=False),
                        exchange_device(group, tg.device), _WHAT)
        counts = _local_nonfinite(tg, losses)
        collective("all_reduce of the non-finite counts", group, dist.all_reduce, counts, op=dist.ReduceOp.SUM,
                   group=group)
        _raise_nonfinite(counts, tg, losses, dist.get_world_size(group))


class ShardedGram:
    """The pipeline's Gram source for gradients sharded over ``process_group`` (FSDP/ZeRO shards).

    Gram-space methods get the global Gram, rank-averaged losses and rank 0's generator from one
    ``all_reduce`` (:func:`reduce_shards`). DirectionMethods run when they are elementwise
    (``shard_local``: nothing shared, each rank draws its own random numbers) or run their own
    small collectives (``sharded_direction``: the losses and rank 0's generator are shared first);
    any other raises ``NotImplementedError``.

    ``checked=True``: the caller already compared the ranks' calls; ``exact_shapes``: every shape
    must agree in full (replicated gradients, ``ddp_combine``).
    """

    def __init__(self, process_group: Any, *, checked: bool = False, exact_shapes: bool = False):
        self.process_group = process_group
        self.checked = checked
        self.exact_shapes = exact_shapes

    def share(self, call, tg: TaskGradients, reference: Optional[tuple], need_gram: bool):
        return reduce_shards(tg, call.method, self.process_group, losses=call.losses, generator=call.generator,
                             backend=call.backend, need_gram=need_gram, check_finite=call.check_finite,
                             reference=reference, checked=self.checked, exact_shapes=self.exact_shapes)

    def direction_inputs(self, call):
        m = call.method
        if m.shard_local:
            check_shard_local(m, call.tg, self.process_group, call.losses, call.check_finite)
            return call.losses, call.generator
        if not m.sharded_direction:
            raise NotImplementedError(
                f"method {m.name or type(m).__name__!r} computes its direction from whole task gradients and has "
                "no sharded form; with process_group only Gram-space methods and DirectionMethods that declare "
                "shard_local or sharded_direction are supported")
        _, _, losses, generator = self.share(call, call.tg, None, False)
        return losses, generator

    def global_gram(self, G: torch.Tensor) -> torch.Tensor:
        return all_reduce_gram(G, self.process_group)
