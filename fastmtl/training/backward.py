"""``fastmtl.backward``: the multi-task counterpart of ``loss.backward()``.

K task gradients of the shared parameters, one :func:`fastmtl.combine` call, the result accumulated
into ``.grad``, and the task-specific heads back-propagated with the method's head convention.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence

import torch

from ..methods import METHODS, Method, make_method, method_class
from ..methods.slgrad import SLGrad
from ..pipeline import LOCAL, CombineInfo, ScaledGram, prepare, run
from .task_autograd import loss_list as as_loss_list, param_list, task_gradients

__all__ = ["backward", "head_weighting", "UNWEIGHTED_HEAD_METHODS"]

def _unweighted_head_methods() -> frozenset:
    return frozenset(name for name, cls in METHODS.items() if cls.head_weighting == "sum")


#: Methods whose reference implementations give every task-specific (head) parameter the plain,
#: unweighted gradient of its own task (``Σ_k ℓ_k`` restricted to the heads): the classes that
#: declare ``head_weighting = "sum"`` — the gradient-surgery family (PCGrad and CAGrad official
#: codes, GradDrop, GradVac, weighted PCGrad, ConFIG), LibMTL's gradient-method convention (DB-MTL)
#: and TorchJD's ``mtl_backward`` (UPGrad, DualProj). Every other method is a loss weighting and
#: its heads get ``Σ_k λ_k ℓ_k``, the convention of the reference implementations.
UNWEIGHTED_HEAD_METHODS = _unweighted_head_methods()


def head_weighting(method: Any) -> str:
    """``"weighted"`` (heads get ``Σ λ_k ℓ_k``) or ``"sum"`` (plain per-task gradients) for a method:
    its class's ``head_weighting`` attribute (a name, class or instance)."""
    if isinstance(method, str):
        return method_class(method).head_weighting
    return getattr(method, "head_weighting", "weighted")


def _accepts(cls, name: str) -> bool:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    return name in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _reference_for(reference_grad, shared, touched):
    if isinstance(reference_grad, torch.Tensor) or not isinstance(reference_grad, Sequence):
        raise TypeError("reference_grad must be a sequence with one tensor (or None) per shared parameter")
    if len(reference_grad) != len(shared):
        raise ValueError(f"reference_grad has {len(reference_grad)} entries but there are {len(shared)} shared "
                         "parameters")
    return [None if (r is None or not touched[p]) else r.detach() for p, r in enumerate(reference_grad)]


def backward(losses: Any, shared_params: Any, method: Any = "mean", *, main_task: Optional[int] = None,
             reference_grad: Any = None, head_params: Any = None, generator: Optional[torch.Generator] = None,
             backend: Optional[str] = None, batched: Optional[bool] = None, return_info: bool = True,
             head_weighting: str = "auto", retain_graph: bool = False, grad_scaler: Any = None,
             **hyperparameters: Any) -> Optional[CombineInfo]:
    """Multi-task ``loss.backward()``: combine the task gradients of the shared parameters.

    1. ``g_k = ∇_shared ℓ_k`` for the K losses (:func:`task_gradients`: one batched autograd call
       or K calls; ``batched`` as there).
    2. ``d = fastmtl.combine([g_k], method, losses=ℓ, ...)`` (``d = Σ_k λ_k g_k`` for Gram-space and
       loss-weighting methods).
    3. ``d`` is **added** to the ``.grad`` of each shared parameter, like ``loss.backward()``
       accumulates (a ``.grad`` that is ``None`` is created and written directly by the combine
       kernel, with no extra pass; call ``optimizer.zero_grad()`` between steps as usual). Shared
       parameters that no task reaches keep their ``.grad`` unchanged.
    4. Task-specific parameters (``head_params``) are back-propagated in one autograd pass,
       accumulating into their ``.grad``, with the method's convention:

       * ``"weighted"`` — ``∇_heads Σ_k λ_k ℓ_k``, λ detached: every loss-weighting method
         (mean, sum, MGDA, IMTL-G, Aligned-MTL, Nash-MTL, HydaLearn, OL-AUX, GradNorm, FAMO, UW,
         DWA, RLW, GeMTL), so that heads and trunk see the same weighted objective;
       * ``"sum"`` — ``∇_heads Σ_k ℓ_k``, each head its own plain task gradient: PCGrad, weighted
         PCGrad, CAGrad, GradDrop, GradVac, ConFIG (gradient surgery: their official codes),
         DB-MTL (LibMTL's convention for gradient methods) and UPGrad / DualProj (TorchJD's
         ``mtl_backward``).

       ``head_weighting="weighted"|"sum"`` overrides it; see :func:`head_weighting`. Parameters that
       are neither shared nor heads are not touched.

    Args:
        losses: K scalar losses (a sequence, or a ``[K]`` tensor), each with its graph.
        shared_params: the shared parameters (a sequence, or a module such as the trunk).
        method: a method name built with ``**hyperparameters``, or a kept method instance.
        main_task: for auxiliary-task methods (HydaLearn, OL-AUX): passed to the constructor of a
            named method; for an instance it must match the instance's own ``main_task``.
        reference_grad: a main-task reference gradient for methods that use one (HydaLearn:
            ``δ_k = ⟨v, g_k⟩``), one tensor (or ``None``) per shared parameter, e.g. the gradient
            of the main-task loss on a validation batch. It adds one row to the Gram pass.
        head_params: the task-specific parameters (a sequence, or a module such as a
            ``ModuleList`` of heads); ``None``: only the shared parameters get gradients.
        generator, backend: forwarded to :func:`fastmtl.combine`.
        batched: see :func:`task_gradients`.
        return_info: return the :class:`fastmtl.CombineInfo` (λ, Gram, cosines); ``False``
            returns ``None`` and lets loss-only methods skip the Gram pass.
        retain_graph: keep the losses' graph afterwards.
        grad_scaler: a ``torch.amp.GradScaler`` for mixed precision. The task gradients are taken
            of the scaled losses ``s·ℓ_k`` (so small float16 gradients do not underflow); the method
            sees the Gram of the unscaled gradients (``G/s²``, no extra pass) and the losses as they
            are, and ``.grad`` receives the scaled direction ``s·d`` (heads: their scaled
            gradients) — exactly what ``loss.backward()`` on a scaled loss leaves. Then call
            ``grad_scaler.step(optimizer)`` and ``grad_scaler.update()`` as usual: a step whose
            task gradients overflowed gives a non-finite direction, which the scaler skips before
            lowering the scale. Methods that need the gradients themselves (DB-MTL, GradDrop,
            per-parameter GradVac) get them unscaled in place first (one extra pass).

    SLGrad weights (task, sample) pairs and needs per-sample losses: use :func:`slgrad_step`.
    No host synchronisation happens here (unless the method itself synchronises).
    """
    loss_list = as_loss_list(losses)
    shared = param_list(shared_params, "shared_params")
    heads = param_list(head_params, "head_params")
    if not shared:
        raise ValueError("shared_params is empty")
    shared_ids = {id(p) for p in shared}
    for i, p in enumerate(heads):
        if id(p) in shared_ids:
            raise ValueError(f"head_params[{i}] is also a shared parameter")
    if head_weighting not in ("auto", "weighted", "sum"):
        raise ValueError(f"head_weighting must be 'auto', 'weighted' or 'sum', got {head_weighting!r}")

    # The method, configured before any gradient is computed so that bad arguments fail early.
    if isinstance(method, Method):
        if hyperparameters:
            raise TypeError(f"hyper-parameters {sorted(hyperparameters)} were given with a method instance; "
                            "set them in its constructor")
        cls = type(method)
        if main_task is not None:
            if not hasattr(method, "main_task"):
                raise TypeError(f"method {cls.__name__} has no main task; do not pass main_task")
            if method.main_task != main_task:
                raise ValueError(f"main_task={main_task} differs from the method instance's "
                                 f"main_task={method.main_task}")
    else:
        if isinstance(method, type) and issubclass(method, Method):
            cls = method
        else:
            cls = method_class(method)
        if main_task is not None:
            if not _accepts(cls, "main_task"):
                raise TypeError(f"method {cls.name!r} has no main task; do not pass main_task")
            hyperparameters = dict(hyperparameters, main_task=main_task)
    if issubclass(cls, SLGrad):
        raise TypeError("SLGrad weights (task, sample) pairs: use fastmtl.training.slgrad_step (or "
                        "fastmtl.combine on per-sample gradients), not fastmtl.backward")
    if reference_grad is not None and not cls.uses_reference:
        raise TypeError(f"method {getattr(cls, 'name', cls.__name__)!r} does not use a reference gradient")
    m = make_method(method, dict(hyperparameters))

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

    if need_heads:
        convention = head_weighting if head_weighting != "auto" else m.head_weighting
        active = [k for k, l in enumerate(loss_list) if l.requires_grad]
        if convention == "weighted":
            lam = outcome.weights
            if lam is None:
                raise ValueError(f"method {m.name!r} returns no weights λ; pass head_weighting='sum'")
            cot = [lam[k].to(dtype=backprop[k].dtype, device=backprop[k].device) for k in active]
        else:
            cot = [torch.ones_like(backprop[k]) for k in active]
        torch.autograd.backward([backprop[k] for k in active], grad_tensors=cot, inputs=heads,
                                retain_graph=retain_graph)
    return outcome.info() if return_info else None
