"""Representation gradients (``rep_grad``, Sener & Koltun's MGDA-UB) for every Gram method.

The K task gradients are taken with respect to the shared representation ``z`` (batch ×
features) instead of the shared parameters: one backward pass through the heads only (vmapped
over the K losses), the Gram of the ``[K, B·F]`` representation gradients gives λ, and
``z.backward(d_z)`` with ``d_z = Σ_k λ_k ∂ℓ_k/∂z`` runs once through the trunk.

What is exact (docs/gram_modes.md has the per-method table): ``d_z`` is exactly the method
applied to the representation gradients (PCGrad's coefficient tracking included: its projected
vectors are combinations of the ``∂ℓ_k/∂z``), and the parameter gradient is exactly
``Σ_k λ_k g_k`` for that λ. The λ of a method that reads G differs from the one of the shared
parameters' Gram — the MGDA-UB approximation (for MGDA: minimising an upper bound of the
parameter-space objective, Sener & Koltun 2018, Thm. 1). Loss weightings (λ from the losses only)
are exact.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch

from ..pipeline import CombineInfo, prepare, run
from .steps import backward_heads, check_heads, head_convention, loss_vector, refuse_gradient_methods, resolve_method
from ..gradients import loss_list, param_list

__all__ = ["representation_backward", "representation_gradients"]


def _representations(representation: Any) -> List[torch.Tensor]:
    reps = [representation] if isinstance(representation, torch.Tensor) else list(representation) \
        if isinstance(representation, Sequence) else None
    if not reps:
        raise TypeError("representation must be a tensor (or a non-empty sequence of tensors), got "
                        f"{type(representation).__name__}")
    for i, z in enumerate(reps):
        where = "representation" if len(reps) == 1 else f"representation[{i}]"
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"{where}: expected a tensor, got {type(z).__name__}")
        if not z.requires_grad:
            raise ValueError(f"{where} does not require grad: pass the shared trunk's output, computed with grad "
                             "enabled from the shared parameters (not a detached copy)")
    return reps


def _check_paths(losses: List[torch.Tensor], reps: List[torch.Tensor], shared: List[torch.Tensor]) -> bool:
    """Every loss that requires grad reaches a representation, and reaches no shared parameter any
    other way (that part of its gradient would be lost by ``z.backward``). A walk over the heads'
    graph only: it stops at the representations. Returns whether two losses reach a common
    parameter above ``z`` (a common head), which makes one batched backward pass cheaper than K
    separate ones."""
    from torch.autograd.graph import get_gradient_edge

    targets = {}
    for z in reps:
        e = get_gradient_edge(z)
        targets.setdefault(e.node, set()).add(e.output_nr)
    shared_ids = {id(p): i for i, p in enumerate(shared)}
    seen_leaves: set = set()
    overlap = False
    for k, loss in enumerate(losses):
        if not loss.requires_grad:
            continue
        reached = False
        visited = set()
        leaves = set()
        stack = [(loss.grad_fn, None)] if loss.grad_fn is not None else []
        while stack:
            node, nr = stack.pop()
            if node in targets and (nr is None or nr in targets[node]):
                reached = True
                continue
            if node in visited:
                continue
            visited.add(node)
            var = getattr(node, "variable", None)
            if var is not None:
                leaves.add(id(var))
            if var is not None and id(var) in shared_ids:
                raise ValueError(f"loss {k} reaches shared_params[{shared_ids[id(var)]}] without passing through the "
                                 "representation: z.backward(d_z) would drop that part of its gradient. Pass the "
                                 "tensor(s) all shared computation flows through (or use fastmtl.backward)")
            stack.extend((nxt, out_nr) for nxt, out_nr in node.next_functions if nxt is not None)
        if not reached:
            raise ValueError(f"loss {k} does not depend on the representation (z is not on its path): its "
                             "representation gradient would be zero although the loss requires grad")
        overlap = overlap or not seen_leaves.isdisjoint(leaves)
        seen_leaves |= leaves
    return overlap


def representation_gradients(losses: Any, representation: Any, *, batched: Optional[bool] = None,
                             retain_graph: bool = True):
    """The K gradients ``∂ℓ_k/∂z`` (K tuples, one tensor per representation; zeros for a loss that
    does not require grad), through the heads only: one backward pass vmapped over the K losses,
    or K passes (``batched`` as :func:`fastmtl.training.task_gradients`)."""
    from . import task_gradients  # late: fastmtl.training imports fastmtl.hooks

    L = loss_list(losses)
    reps = _representations(representation)
    grads = task_gradients(L, reps, batched=batched, retain_graph=retain_graph)
    return [tuple(torch.zeros_like(z) if g is None else g for g, z in zip(row, reps)) for row in grads]


def representation_backward(losses: Any, representation: Any, method: Any = "mean", *, shared_params: Any,
                            main_task: Optional[int] = None, reference_grad: Any = None, head_params: Any = None,
                            generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
                            batched: Optional[bool] = None, return_info: bool = True, head_weighting: str = "auto",
                            retain_graph: bool = False, **hyperparameters: Any) -> Optional[CombineInfo]:
    """``fastmtl.backward(losses, shared_params, method, representation=z)``: λ from the Gram of
    the representation gradients, then ``z.backward(Σ_k λ_k ∂ℓ_k/∂z)``.

    1. ``r_k = ∂ℓ_k/∂z`` for the K losses, through the heads only: one autograd call per loss when
       the losses' graphs above ``z`` are disjoint (separate heads: each head runs once), else one
       call vmapped over the K losses (a common head), as ``fastmtl.training.task_gradients``.
    2. ``G_z = [r_k·r_j]`` (:func:`fastmtl.gramian`), ``λ = method.weights(G_z, losses)``.
    3. ``d_z = Σ_k λ_k r_k`` (:func:`fastmtl.weighted_sum`) and ``z.backward(d_z)`` restricted
       to ``shared_params``: their ``.grad`` gets ``Σ_k λ_k ∇_θ ℓ_k`` added.
    4. The heads as in ``fastmtl.backward``: ``Σ_k λ_k ℓ_k`` or ``Σ_k ℓ_k`` per the method's
       convention (``head_weighting``).

    Before any ``.grad`` is touched, the heads' graph is checked: every loss that requires grad
    must reach ``z``, and none may reach a shared parameter except through ``z``.

    Exact for loss weightings; for methods that read G it is the MGDA-UB approximation (λ from
    ``G_z``, not from the shared parameters' Gram), see docs/gram_modes.md. Methods that read the
    gradients themselves (GradDrop, DB-MTL, GradVac per parameter, GradNorm on chosen parameters,
    SLGrad) and external reference gradients (a ``reference_grad`` lives in parameter space) are
    refused.

    Args:
        losses: K scalar losses.
        representation: ``z``, the shared trunk's output the heads read (or a sequence of such
            tensors, e.g. several feature maps); it must require grad.
        method, main_task, head_params, generator, return_info, head_weighting, retain_graph,
        hyperparameters: as ``fastmtl.backward``.
        shared_params: the parameters upstream of ``z`` that get ``.grad``.
        reference_grad: refused (``TypeError``): a reference lives in parameter space.
        backend: for the Gram and weighted-sum passes over the representation gradients.
        batched: the pass through the heads: ``None`` chooses as in step 1, ``True`` one vmapped
            pass, ``False`` one pass per loss.

    Returns:
        :class:`fastmtl.CombineInfo` with ``gram``/``cosine`` of the representation gradients.
    """
    L = loss_list(losses)
    reps = _representations(representation)
    shared = param_list(shared_params, "shared_params")
    if not shared:
        raise ValueError("shared_params is empty")
    heads = param_list(head_params, "head_params")
    check_heads(shared, heads, head_weighting)
    m = resolve_method(method, hyperparameters, main_task=main_task)
    refuse_gradient_methods(m, "representation mode", "use fastmtl.backward without representation=")
    if reference_grad is not None or (m.uses_reference and m.reference is not None):
        raise TypeError(f"a reference gradient (method {m.name!r}) lives in parameter space; representation mode "
                        "has no parameter-space task gradients to compare it with: use fastmtl.backward without "
                        "representation=")
    convention = head_convention(m, head_weighting)
    common_head = _check_paths(L, reps, shared)

    # Separate heads: the vmapped pass would run every head on all K cotangents (K² head passes,
    # most on zeros), K passes run each head once. A common head: one vmapped pass.
    if batched is None:
        batched = None if common_head else False
    rgrads = representation_gradients(L, reps, batched=batched, retain_graph=True)
    # The combination in z-space is an ordinary combine call on the representation gradients.
    outcome = run(prepare(rgrads, m, {}, losses=loss_vector(L), generator=generator, backend=backend),
                  need_info=return_info)
    lam, d = outcome.weights, outcome.parts
    del rgrads
    pairs = [(z, dz) for z, dz in zip(reps, d) if dz is not None]
    torch.autograd.backward([z for z, _ in pairs], grad_tensors=[dz.to(z.dtype) for z, dz in pairs], inputs=shared,
                            retain_graph=retain_graph or bool(heads))
    backward_heads(L, lam, heads, convention, retain_graph, m.name)
    if not return_info:
        return None
    return CombineInfo(weights=lam, gram=outcome.gram, cosine=outcome.info().cosine, method=m,
                       backend="representation")
