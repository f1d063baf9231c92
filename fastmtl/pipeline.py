"""The one path from task gradients to a direction: prepare → gram → weights → apply.

:func:`fastmtl.combine`, the sharded forms in :mod:`fastmtl.distributed` and
:func:`fastmtl.backward` all run it. Two things vary, and are arguments rather than copies:

* **where the Gram comes from** — a *source*: :data:`LOCAL` (this process's gradients) or
  :class:`fastmtl.distributed.ShardedGram` (partial Grams all-reduced over a process group, with
  the losses, the finiteness flags and rank 0's generator state in the same buffer);
* **where the direction goes** — the call's output buffers (``out=``), or new tensors that the
  caller returns, all-gathers (``ddp_combine``) or adds to ``.grad`` (``backward``).

:func:`prepare` validates a call into a :class:`Call`; :func:`run` executes it and returns an
:class:`Outcome`. Methods see a :class:`fastmtl.methods.Context`, never the call itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

from .gradients import (TaskGradients, accumulate_dtype, canonicalize, canonicalize_out, check_finite as
                        check_gradients_finite, losses_tensor, single_structure)
from .methods import Context, Method, make_method
from .ops import Engine
from .ops.finite_guard import finite_guard
from .ops.primitives import assemble  # noqa: F401  (re-exported: the callers' last step)


@dataclass
class CombineInfo:
    """What ``combine(..., return_info=True)`` reports alongside the direction.

    Attributes:
        weights: λ, shape ``[K]`` (float64): the direction is ``Σ_k λ_k g_k``; ``None`` for
            methods whose direction is not one combination of the task gradients (GradDrop).
        gram: ``G = J Jᵀ`` as accumulated (float32, or float64 for float64 gradients).
        cosine: ``G_ij / (‖g_i‖‖g_j‖)``, 0 where a norm is 0.
        method: the method instance used (holds its state for stateful methods).
        backend: name of the backend that produced the direction.
    """

    weights: torch.Tensor
    gram: Optional[torch.Tensor]
    cosine: Optional[torch.Tensor]
    method: Any
    backend: str


def cosine_from_gram(G: torch.Tensor) -> torch.Tensor:
    """``G_ij / (‖g_i‖‖g_j‖)`` with 0 where a norm is 0."""
    n = torch.sqrt(torch.diagonal(G).clamp_min(0))
    denom = n[:, None] * n[None, :]
    return torch.where(denom > 0, G / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(G))


@dataclass
class Call:
    """One validated call: the inputs every later step reads."""

    tg: TaskGradients
    method: Method
    targets: Optional[tuple]
    losses: Optional[torch.Tensor]
    reference: Optional[tuple]
    generator: Optional[torch.Generator]
    backend: Optional[str]
    check_finite: bool


@dataclass
class Outcome:
    """What :func:`run` produced: per-parameter ``parts``, λ (or ``None``), the Gram (if formed)."""

    parts: List[Optional[torch.Tensor]]
    weights: Optional[torch.Tensor]
    gram: Optional[torch.Tensor]
    backend: str
    method: Method

    def info(self) -> CombineInfo:
        G = self.gram
        return CombineInfo(weights=self.weights, gram=G, cosine=None if G is None else cosine_from_gram(G),
                           method=self.method, backend=self.backend)


def prepare(grads: Any, method: Any, hyperparameters: dict, *, losses: Any = None, reference: Any = None,
            out: Any = None, generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
            check_finite: bool = False, local_checks: bool = True) -> Call:
    """Validate one call. ``local_checks=False`` leaves the finiteness checks to a sharded source."""
    tg = canonicalize(grads)
    m = make_method(method, hyperparameters)
    targets = None if out is None else canonicalize_out(out, tg)
    K = tg.num_tasks
    m.check_num_tasks(K)
    if reference is None:
        reference = m.reference  # deprecated: given to the method's constructor
    elif not m.uses_reference:
        raise TypeError(f"method {m.name or type(m).__name__!r} does not use a reference gradient")
    ref_entries = None if reference is None else single_structure(reference, tg, "reference")
    if check_finite and local_checks:
        check_gradients_finite(tg)
    loss_vec = losses_tensor(losses, K, tg.device)
    if loss_vec is not None and check_finite and local_checks and not bool(torch.isfinite(loss_vec).all()):
        raise ValueError("non-finite task losses: " + str(loss_vec.tolist()))
    return Call(tg, m, targets, loss_vec, ref_entries, generator, backend, check_finite)


class LocalGram:
    """The Gram of this process's gradients: no communication."""

    process_group = None

    def share(self, call: Call, tg: TaskGradients, reference: Optional[tuple], need_gram: bool):
        """``(G, reference_dots, losses, generator)`` for the method (G over ``tg``)."""
        G = dots = None
        if need_gram:
            if reference is not None and call.method.uses_reference:
                G_aug = Engine(tg.with_extra_task(reference), call.backend).gramian()
                K = tg.num_tasks
                G, dots = G_aug[:K, :K], G_aug[K, :K]
            else:
                G = gram_of(tg, call.backend)
        return G, dots, call.losses, call.generator

    def direction_inputs(self, call: Call):
        """``(losses, generator)`` for a DirectionMethod."""
        return call.losses, call.generator

    def global_gram(self, G: torch.Tensor) -> torch.Tensor:
        return G


LOCAL = LocalGram()



class ScaledGram:
    """A source over task gradients that carry a loss scale ``s`` (mixed precision, GradScaler).

    The gradients are ``s·g_k``; the method sees the Gram (and reference dot products) of the
    unscaled ``g_k`` — ``G/s²`` and ``dots/s``, K×K work, no extra pass — and the weighted sum of the
    scaled gradients is ``s·d``, which ``GradScaler.step`` unscales (and skips when it is not finite)
    like any scaled gradient. ``scale`` is a 0-d tensor on the device (no host synchronisation).
    """

    def __init__(self, inner, scale: torch.Tensor):
        self.inner = inner
        self.scale = scale
        self.process_group = inner.process_group

    def share(self, call: Call, tg: TaskGradients, reference: Optional[tuple], need_gram: bool):
        G, dots, losses, generator = self.inner.share(call, tg, reference, need_gram)
        if G is not None:
            G = G / (self.scale.to(G.dtype) ** 2)
        if dots is not None:
            dots = dots / self.scale.to(dots.dtype)
        return G, dots, losses, generator

    def direction_inputs(self, call: Call):
        return self.inner.direction_inputs(call)

    def global_gram(self, G: torch.Tensor) -> torch.Tensor:
        return self.inner.global_gram(G) / (self.scale.to(G.dtype) ** 2)

def gram_of(tg: TaskGradients, backend: Optional[str]) -> torch.Tensor:
    """``J Jᵀ`` of ``tg`` (a K×K zero matrix when ``tg`` holds no parameter, e.g. an empty block)."""
    if tg.num_params == 0:
        return torch.zeros(tg.num_tasks, tg.num_tasks, dtype=accumulate_dtype(tg.dtype), device=tg.device)
    return Engine(tg, backend).gramian()


def run(call: Call, source: Any = LOCAL, *, need_info: bool = False,
        gram_inputs: Optional[Tuple[TaskGradients, Optional[tuple]]] = None) -> Outcome:
    """Execute a prepared call: the Gram from ``source``, λ, and the direction into the call's targets.

    ``gram_inputs`` (``(task gradients, reference entries)``) forms the Gram over other views of
    the same gradients than the direction is formed over (``ddp_combine`` with ``reduced=True``:
    this rank's column slice); default: the call's own.
    """
    m, tg = call.method, call.tg
    K = tg.num_tasks
    engine = Engine(tg, call.backend, call.targets)
    if m.computes_direction:
        losses, generator = source.direction_inputs(call)
        ctx = Context(num_tasks=K, device=tg.device, losses=losses, generator=generator,
                      reference=call.reference, process_group=source.process_group)
        result = m.direction(engine, ctx)
        G = result.gram
        if need_info:
            G = source.global_gram(gram_of(tg, call.backend) if G is None else G)
        m.record_num_tasks(K)
        return Outcome(result.parts, result.weights, G, engine.direction_backend or "reference", m)

    gram_tg, gram_ref = gram_inputs if gram_inputs is not None else (tg, call.reference)
    block = m.gram_params if m.requires_gram else None
    if block is not None:
        bad = [i for i in block if i >= gram_tg.num_params]
        if bad:
            raise ValueError(f"{m.name}: param_indices {bad} are out of range for {gram_tg.num_params} parameter "
                             "gradients")
        block = [i for i in block if gram_tg.shapes[i] is not None]  # the chosen parameters some task touches
        gram_tg = gram_tg.restrict(block)
        gram_ref = None if gram_ref is None else tuple(gram_ref[p] for p in block)
    G, dots, losses, generator = source.share(call, gram_tg, gram_ref, m.requires_gram or need_info)
    ctx = Context(num_tasks=K, device=tg.device, losses=losses, generator=generator, reference_dots=dots)
    lam = guarded_weights(m, G if m.requires_gram else None, ctx, call.check_finite)
    m.record_num_tasks(K)
    if need_info and block is not None:
        G = source.share(call, tg, None, True)[0]  # the info reports the whole Gram
    return Outcome(engine.weighted_sum(lam), lam, G, engine.direction_backend, m)


def guarded_weights(m: Method, G: Optional[torch.Tensor], ctx: Context, check_finite: bool) -> torch.Tensor:
    """``m.weights(G, ctx)`` under fastmtl's non-finite policy (docs/bad_input.md).

    λ of a method that reads G depends on every coordinate of every task, so a non-finite G (a NaN
    or Inf gradient, or a float32 Gram that overflowed) gives ``λ = NaN`` — the direction is NaN
    everywhere, never a silently wrong finite one. The method itself sees a zero Gram then, so no
    solver is handed NaN. ``check_finite=True`` raises instead, naming the tasks.
    """
    if G is None:
        return m.weights(None, ctx)
    safe_G, dots, finite = finite_guard(G, ctx.reference_dots)
    if check_finite and not bool(finite):
        rows = (~torch.isfinite(G)).any(1).cpu().tolist()
        bad = ", ".join(f"task {k}" for k, b in enumerate(rows) if b) or "the reference gradient"
        raise ValueError(f"the Gram matrix is not finite although the gradients are: dot products overflowed "
                         f"{G.dtype} (max {torch.finfo(G.dtype).max:.3g}) for {bad}; pass float64 gradients or "
                         "scale the losses down")
    if dots is not ctx.reference_dots:  # zeros in place of non-finite dots
        ctx = Context(num_tasks=ctx.num_tasks, device=ctx.device, losses=ctx.losses, generator=ctx.generator,
                      reference_dots=dots)
    lam = m.weights(safe_G, ctx)
    return torch.where(finite, lam, float("nan"))

