"""Exact multi-task gradient combination over ``torch.distributed``.

Sharded gradients (FSDP / FSDP2 / ZeRO) — ``combine(grads, method, process_group=pg)``
------------------------------------------------------------------------------------------
After the reduce-scatter of data-parallel training, every rank holds a *shard* of every task's
gradient: the same K tasks, a different slice of the D coordinates (possibly an empty one). The
Gram matrix is a sum over coordinates, so

1. each rank computes the partial Gram of its shard (zeros for an empty shard);
2. ONE ``all_reduce`` (sum) of a small float64 buffer gives every rank the global ``G``; the other
   K-sized quantities a method needs ride in the same buffer (see :func:`reduce_shards`);
3. every rank computes the same λ from the same ``G``;
4. each rank forms ``Σ_k λ_k g_k`` on its own shard — the result is this rank's shard of the
   direction that ``combine`` would give on the concatenated gradients.

``combine(..., process_group=pg)`` is a *collective*: call it on every rank of ``pg``, in the same
order, with the same K, method, hyper-parameters and the same optional arguments (``losses``,
``return_info``, ``check_finite`` given or not) — exactly like any ``torch.distributed`` call.

Faults (``fastmtl/_dist_checks.py``): a rank that dies or raises before a collective leaves the
others in it until the process group's timeout (or until gloo sees the closed connection); they
then raise the backend's error re-worded with the collective's name and rank. With
``check_finite=True`` the ranks also compare their calls first (one extra ``all_gather`` of a few
int64 per rank, one host read): a K, parameter-count, shape, dtype, method or optional-argument
mismatch, or a rank whose own validation or local work fails, raises on every rank at once with
the ranks and values at fault named — instead of gloo aborting the process or NCCL hanging on
``all_reduce`` buffers of different lengths.

What rides in the one ``all_reduce`` (float64; every entry is a sum over ranks):

* the partial Gram, ``K×K`` — or ``(K+1)×(K+1)`` when the method takes dot products with an
  external reference gradient (HydaLearn's ``reference``, sharded like the task gradients): its
  last row holds those dot products;
* the task losses (K values) when the method reads losses: every rank's *local* losses are
  averaged, matching the rank-averaged gradients of data-parallel training;
* with ``check_finite=True``: per task, the number of ranks whose shard holds NaN/Inf (plus one
  value for the losses), so that every rank raises the same ``ValueError``;
* the random-number generator state of rank 0 when the method draws random choices (below).

Random choices (PCGrad's orders, weighted PCGrad's priority order): **rank 0's generator decides**.
Rank 0 puts the state of its generator (``generator=`` if given, else the default generator of the
gradients' device) into the buffer; every other rank draws from that state — the ``generator=`` it
was given is set to rank 0's state, or, with ``generator=None``, a temporary generator is. So λ is
identical on every rank even when the ranks pass differently seeded generators (or none), the
result is exactly that of a single-process ``combine`` with rank 0's generator, and generators
passed on every rank advance in lock-step from the first call on. Only methods that may draw random
numbers pay for this (about 6.7 KB in the buffer and one device→host copy); a method class can
declare ``uses_generator = False`` / ``True`` to say whether it does.

Methods whose direction is not one Gram-weighted combination (``gram_free_direction``) run
shard-locally, without communication, when they declare ``shard_local = True`` — elementwise
methods are shard-local by nature, and GradDrop declares it. Their random draws are each rank's
own (GradDrop numbers its uniforms by position within the shard): pass per-rank seeds (e.g.
``seed + rank``) for independent masks across shards. Methods that declare
``sharded_direction = True`` (DB-MTL, per-parameter GradVac) get ``process_group`` in their
``direction`` and run their own small all-reduces (buffer norms, block Grams). Any other such
method raises ``NotImplementedError`` with ``process_group`` (it would need whole gradients).

Replicated parameters (DDP) — :func:`ddp_combine`
-------------------------------------------------
With DDP every rank holds the whole model and *local* task gradients from its own batch. The exact
combination needs the Gram of the rank-averaged gradients, which no sum of per-rank partial Grams
gives (cross-rank products are missing). :func:`ddp_combine` reduce-scatters the K task gradients
(each rank receives the average over ranks of a 1/world column slice of every task), runs the
sharded algorithm above on the slice and all-gathers the combined direction: ``(K+1)·(n−1)/n·D``
values of traffic per rank instead of ``2K·(n−1)/n·D`` for K all-reduces, and each rank reads only
``K·D/n`` gradient values. With ``reduced=True`` (gradients already identical on every rank) each
rank takes its 1/world slice as views, all-reduces the partial Grams and combines the full
gradients locally. ``docs/multi_gpu.md`` compares the costs.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.distributed as dist

from ._dist_checks import check_agreement, collective, exchange_device, report_failure, signature
from .gradients import TaskGradients, canonicalize, canonicalize_out, check_finite as _local_check_finite
from .ops.primitives import assemble, gramian_of
from .ops.registry import select

__all__ = ["reduce_shards", "all_reduce_gram", "check_shard_local", "ddp_combine", "resolve_group",
           "shard_bounds"]

# Generator states travel six bytes per float64 value (48-bit integers are exact in float64).
_BYTES_PER_VALUE = 6
_CPU_STATE_BYTES: List[int] = []
_WHAT = "combine(..., process_group=...)"
_WHAT_DDP = "ddp_combine"


def resolve_group(process_group: Any):
    """The ``ProcessGroup`` behind ``process_group`` (a group, or a 1-D ``DeviceMesh``)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("process_group was given but torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group() first")
    if hasattr(process_group, "get_group") and hasattr(process_group, "ndim"):  # a DeviceMesh
        if process_group.ndim != 1:
            raise ValueError(f"process_group is a {process_group.ndim}-D DeviceMesh; pass the group of the "
                             "dimension the gradients are sharded over, e.g. mesh.get_group('shard') for HSDP")
        return process_group.get_group()
    return process_group


def shard_bounds(numel: int, world: int, rank: int) -> Tuple[int, int]:
    """``[lo, hi)`` of rank ``rank`` when ``numel`` coordinates are cut into ``world`` equal slices
    of ``ceil(numel / world)`` (the last ones shorter or empty), as :func:`ddp_combine` does."""
    step = -(-numel // world) if numel else 0
    lo = min(numel, rank * step)
    return lo, min(numel, lo + step)


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


def _may_draw_random(method) -> bool:
    """Whether ``method.weights`` may draw from its generator (``Method.uses_generator``)."""
    return bool(getattr(method, "uses_generator", True))


def _pack_state(state: Optional[torch.Tensor], capacity: int) -> torch.Tensor:
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


def _unpack_state(values: torch.Tensor) -> torch.Tensor:
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
            _local_check_finite(tg)
            local = "this rank's shard is finite"
        except ValueError as exc:
            local = "this rank's shard: " + str(exc).split(" in the gradient of ", 1)[-1]
        raise ValueError(f"non-finite values (NaN or Inf) in the gradient of {where}; {local}")
    if counts[-1]:
        mine = "" if losses is None else f"; this rank's losses: {losses.tolist()}"
        raise ValueError(f"non-finite task losses on {counts[-1]} of {world} ranks{mine}")


def reduce_shards(tg: TaskGradients, method, process_group: Any, *, losses: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
                  need_gram: bool = True, check_finite: bool = False, reference: Any = ...,
                  checked: bool = False, exact_shapes: bool = False):
    """Everything ``method.weights`` needs, made identical on every rank with one ``all_reduce``.

    ``tg`` is this rank's shard of the K task gradients (any layout; D may be 0). Returns
    ``(G, reference_dots, losses, generator)``: the global Gram (accumulate dtype of ``tg``, or
    ``None`` when not needed), the global dot products with the method's reference gradient (or
    ``None``), the rank-averaged losses (or the local ones when the method reads none), and the
    generator to pass to ``weights`` (see the module docstring). No collective runs when the
    method needs none of these (``mean``/``sum`` without ``return_info``).

    ``reference`` overrides ``method.reference`` (this rank's shard of it); ``...`` means use it.

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
    if reference is ...:
        reference = getattr(method, "reference", None)

    validate = check_finite and not checked  # one more small collective, see fastmtl/_dist_checks.py
    try:  # this rank's own work; with validate, a failure here is reported to every rank
        pieces = []
        G_local = None
        n = K
        if need_gram:
            if method.uses_reference and reference is not None:
                G_local = gramian_of(tg.with_extra_task(reference, "reference"), backend)
                n = K + 1
            else:
                G_local = gramian_of(tg, backend)
            pieces.append(G_local.reshape(-1).to(torch.float64))
        share_losses = losses is not None and method.uses_losses
        if share_losses:
            pieces.append(losses.to(device=device, dtype=torch.float64))
        if check_finite:
            pieces.append(_local_nonfinite(tg, losses))
        own = None
        if _may_draw_random(method):
            own = generator if generator is not None else _default_generator(device)
            state = own.get_state()
            capacity = max(_cpu_state_bytes(), state.numel())
            capacity = -(-capacity // _BYTES_PER_VALUE) * _BYTES_PER_VALUE
            pieces.append(_pack_state(state if rank == 0 else None, capacity).to(device))
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
        state0 = _unpack_state(buf[offset:])
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


def _is_shard_local(method) -> bool:
    """Whether a ``gram_free_direction`` method is elementwise (``Method.shard_local``)."""
    return bool(getattr(method, "shard_local", False))


def check_shard_local(method, tg: TaskGradients, process_group: Any, losses: Optional[torch.Tensor] = None,
                      check_finite: bool = False) -> None:
    """Allow a ``gram_free_direction`` method on sharded gradients only if it is shard-local."""
    if not _is_shard_local(method) and not getattr(method, "sharded_direction", False):
        raise NotImplementedError(
            f"method {method.name or type(method).__name__!r} computes its direction from whole task "
            "gradients (gram_free_direction) and has no sharded form; with process_group only Gram-space "
            "methods and elementwise methods that declare shard_local = True are supported")
    if check_finite:  # the calls' agreement first (one small all_gather), see fastmtl/_dist_checks.py
        group = resolve_group(process_group)
        check_agreement(group, signature(tg, method, gram_side=0, share_losses=False, state_bytes=0, exact=False),
                        exchange_device(group, tg.device), _WHAT)
        counts = _local_nonfinite(tg, losses)
        collective("all_reduce of the non-finite counts", group, dist.all_reduce, counts, op=dist.ReduceOp.SUM,
                   group=group)
        _raise_nonfinite(counts, tg, losses, dist.get_world_size(group))


# --------------------------------------------------------------------------------------------
# DDP: replicated parameters, local task gradients.
# --------------------------------------------------------------------------------------------

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
                losses: Any = None, generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
                out: Any = None, check_finite: bool = False, return_info: bool = False, **hyperparameters: Any):
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
    from .api import CombineInfo, _method_weights, cosine_from_gram
    from .gradients import losses_tensor
    from .methods import make_method

    group = resolve_group(process_group if process_group is not None else dist.group.WORLD)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    try:
        tg = canonicalize(grads)
        m = make_method(method, hyperparameters)
        if m.gram_free_direction:
            raise NotImplementedError(f"ddp_combine supports Gram-space methods; {m.name!r} is not one "
                                      "(reduce-scatter the gradients and use combine(..., process_group=...))")
        targets = None if out is None else canonicalize_out(out, tg)
        K = tg.num_tasks
        loss_vec = losses_tensor(losses, K, tg.device)
    except Exception as exc:
        if check_finite:  # every rank raises, instead of waiting for this one
            report_failure(group, exc, None, _WHAT_DDP)
        raise
    if check_finite:  # replicas: D and every shape must agree; before the K-sized reduce-scatter
        sig = signature(tg, m, gram_side=K + (m.uses_reference and m.reference is not None),
                        share_losses=loss_vec is not None and m.uses_losses, state_bytes=0, exact=True)
        check_agreement(group, sig, exchange_device(group, tg.device), _WHAT_DDP,
                        f"K = {K}, D = {tg.total_numel}, method {m.name!r}")
    extra = None
    if m.uses_reference and m.reference is not None:
        extra = tg.with_extra_task(m.reference, "reference").entries[K]
    D = tg.total_numel
    need_gram = m.requires_gram or return_info
    lo, hi = shard_bounds(D, world, rank)

    if reduced:
        shard_grads, shard_ref = _slice_input(tg, extra, lo, hi)
        shard = canonicalize(shard_grads)
        G, ref_dots, loss_vec, generator = reduce_shards(
            shard, m, group, losses=loss_vec, generator=generator, backend=backend, need_gram=need_gram,
            check_finite=check_finite, reference=shard_ref, checked=True)
        lam = _method_weights(m, G, losses=loss_vec, generator=generator, reference_dots=ref_dots, num_tasks=K,
                              check_finite=check_finite, device=tg.device)
        chosen = select("weighted_sum", tg, backend)
        direction = assemble(tg, chosen.implementations["weighted_sum"](tg, lam, targets))
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
        G, ref_dots, loss_vec, generator = reduce_shards(
            shard, m, group, losses=loss_vec, generator=generator, backend=backend, need_gram=need_gram,
            check_finite=check_finite, reference=recv[K] if extra is not None else None, checked=True)
        lam = _method_weights(m, G, losses=loss_vec, generator=generator, reference_dots=ref_dots, num_tasks=K,
                              check_finite=check_finite, device=shard.device)
        chosen = select("weighted_sum", shard, backend)
        d_shard = chosen.implementations["weighted_sum"](shard, lam, None)[0]
        full = torch.empty(world * step, dtype=tg.dtype, device=tg.device)
        _all_gather(full, d_shard.contiguous(), group)
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
        direction = assemble(tg, parts)

    if not return_info:
        return direction
    return direction, CombineInfo(weights=lam, gram=G, cosine=None if G is None else cosine_from_gram(G), method=m,
                                  backend=chosen.name)
