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

Faults (:mod:`fastmtl.collectives`): a rank that dies or raises before a collective leaves the
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

from ..collectives import resolve_group
from .ddp import ddp_combine, shard_bounds
from .sharded import ShardedGram, all_reduce_gram, reduce_shards

__all__ = ["ShardedGram", "reduce_shards", "all_reduce_gram", "ddp_combine", "resolve_group", "shard_bounds"]
