"""``fastmtl.backward``: the multi-task counterpart of ``loss.backward()``.

K task gradients of the shared parameters, one :func:`fastmtl.combine` call, the result accumulated
into ``.grad``, and the task-specific heads back-propagated with the method's head convention.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..methods import METHODS, method_class
from ..pipeline import CombineInfo
from .hooks_backward import hooks_backward
from .materialized import materialized_backward
from .representation import representation_backward

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


def backward(losses: Any, shared_params: Any, method: Any = "mean", *, main_task: Optional[int] = None,
             reference_grad: Any = None, head_params: Any = None, generator: Optional[torch.Generator] = None,
             backend: Optional[str] = None, batched: Optional[bool] = None, return_info: bool = True,
             head_weighting: str = "auto", retain_graph: bool = False, grad_scaler: Any = None,
             gram_mode: str = "materialize", representation: Any = None,
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
        gram_mode: where G comes from. ``"materialize"`` (default): the K task gradients of the
            shared parameters. ``"hooks"``: from module hooks, without them
            (:func:`fastmtl.training.hooks_backward`; ``shared_params`` is then a
            :class:`fastmtl.hooks.GramHooks` or a module it is registered on); ``"auto"``: hooks
            where the cost model finds them cheaper. See docs/gram_modes.md.
        representation: the shared representation ``z`` (or several): λ from the Gram of the
            ``[K, B·F]`` gradients ``∂ℓ_k/∂z`` (MGDA-UB), then one backward of ``d_z`` through the
            trunk (:func:`fastmtl.training.representation_backward`).

    SLGrad weights (task, sample) pairs and needs per-sample losses: use :func:`slgrad_step`.
    No host synchronisation happens here (unless the method itself synchronises).
    """
    if representation is not None or gram_mode != "materialize":
        common = dict(main_task=main_task, reference_grad=reference_grad, head_params=head_params,
                      generator=generator, backend=backend, batched=batched, return_info=return_info,
                      head_weighting=head_weighting, retain_graph=retain_graph, **hyperparameters)
        if grad_scaler is not None:
            raise TypeError("grad_scaler= works with the materialised task gradients only (gram_mode='materialize', "
                            "no representation=)")
        if representation is not None:
            if gram_mode != "materialize":
                raise ValueError("pass representation= or gram_mode=, not both")
            return representation_backward(losses, representation, method, shared_params=shared_params, **common)
        return hooks_backward(losses, shared_params, method, gram_mode=gram_mode, **common)

    return materialized_backward(losses, shared_params, method, main_task=main_task, reference_grad=reference_grad,
                                 head_params=head_params, generator=generator, backend=backend, batched=batched,
                                 return_info=return_info, head_weighting=head_weighting, retain_graph=retain_graph,
                                 grad_scaler=grad_scaler, **hyperparameters)
