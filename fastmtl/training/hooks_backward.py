"""``hooks_backward``: ``fastmtl.backward`` with the Gram from module hooks (``gram_mode``)."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..hooks.capture import hooks_for
from ..hooks.cost import step_cost
from ..hooks.gram import param_groups, task_gramian
from ..pipeline import CombineInfo, cosine_from_gram
from .materialized import materialized_backward
from .steps import (backward_heads, check_heads, head_convention, loss_vector, refuse_gradient_methods,
                    resolve_method, weights_from_gram)
from ..gradients import loss_list, param_list

__all__ = ["hooks_backward", "GRAM_MODES"]

GRAM_MODES = ("materialize", "hooks", "auto")


def hooks_backward(losses: Any, shared: Any, method: Any = "mean", *, gram_mode: str = "hooks",
                   main_task: Optional[int] = None, reference_grad: Any = None, head_params: Any = None,
                   generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
                   batched: Optional[bool] = None, return_info: bool = True, head_weighting: str = "auto",
                   retain_graph: bool = False, **hyperparameters: Any) -> Optional[CombineInfo]:
    """``fastmtl.backward`` without the K task gradients of the shared parameters.

    1. ``G`` from the hooks (:func:`fastmtl.hooks.task_gramian`): one backward pass vmapped over
       the K losses to the outputs of the hooked layers, per-layer ghost products (or that
       layer's K gradients, whichever the cost model finds cheaper), the fallback parameters'
       gradients materialised.
    2. ``λ = method.weights(G, losses)`` (the same K×K solve as ``fastmtl.combine``).
    3. One ordinary backward pass of ``Σ_k λ_k ℓ_k`` into the shared parameters' ``.grad``
       (accumulated, as ``loss.backward()`` does); the heads get ``Σ_k λ_k ℓ_k`` or ``Σ_k ℓ_k``
       per the method's convention (:func:`fastmtl.training.head_weighting`), in the same pass
       when they are weighted.

    The direction is ``Σ_k λ_k g_k``, the one ``fastmtl.backward`` writes, with λ from the same G
    (rounding aside): exact for every Gram method (PCGrad and the other coefficient-tracking
    methods included) and every loss weighting. Methods that read the gradients themselves
    (GradDrop, DB-MTL, GradVac per parameter, GradNorm on chosen parameters, SLGrad) raise in
    ``"hooks"`` mode and take the materialised path in ``"auto"`` mode.

    Args:
        losses: K scalar losses.
        shared: a :class:`fastmtl.hooks.GramHooks` created before the forward pass, or a module
            it is registered on. With ``gram_mode="auto"`` anything ``fastmtl.backward`` takes
            (parameters without hooks are materialised).
        gram_mode: ``"hooks"``, ``"auto"`` (hooks when the cost model of
            :mod:`fastmtl.hooks.cost` says they are cheaper and the method allows), or
            ``"materialize"`` (``fastmtl.training.backward`` unchanged).
        main_task, reference_grad, head_params, generator, return_info, head_weighting,
        retain_graph, hyperparameters: as ``fastmtl.backward``. ``reference_grad`` (one tensor
            per ``hooks.params``) gives ``⟨v, g_k⟩`` from the hooks too.
        backend: used by the fallback parameters' Gram and on the materialised path.
        batched: the K-loss backward pass to the layer outputs, vmapped (``None``, ``True``) or K
            passes (``False``), see :func:`fastmtl.hooks.task_gramian`; on the materialised path,
            as ``fastmtl.backward``.

    Returns:
        A :class:`fastmtl.CombineInfo` (λ, the hooks' G, cosines; ``backend="autograd"``: the
        weighted sum is autograd's) or ``None`` with ``return_info=False``. The recorded calls are
        cleared.
    """
    if gram_mode not in GRAM_MODES:
        raise ValueError(f"gram_mode must be one of {list(GRAM_MODES)}, got {gram_mode!r}")
    hooks = hooks_for(shared)
    common = dict(main_task=main_task, reference_grad=reference_grad, head_params=head_params, generator=generator,
                  backend=backend, batched=batched, return_info=return_info, head_weighting=head_weighting,
                  retain_graph=retain_graph)
    if gram_mode == "materialize" or (hooks is None and gram_mode == "auto"):
        return _materialize(losses, shared if hooks is None else hooks, method, common, hyperparameters)
    if hooks is None:
        raise TypeError("gram_mode='hooks' reads the Gram from module hooks registered before the forward pass: "
                        "create hooks = fastmtl.hooks.GramHooks(trunk) once, run the forward, then pass hooks (or "
                        f"trunk) as the shared argument; got {type(shared).__name__}")
    m = resolve_method(method, hyperparameters, main_task=main_task, reference_grad=reference_grad)
    if gram_mode == "auto" and (m.computes_direction or m.gram_params is not None):
        return _materialize(losses, hooks, m, dict(common, main_task=None), {})
    refuse_gradient_methods(m, "gram_mode='hooks'", "use gram_mode='materialize' (or 'auto')")

    L = loss_list(losses)
    if not any(l.requires_grad for l in L):
        raise ValueError("no loss requires grad: nothing to differentiate")
    heads = param_list(head_params, "head_params")
    check_heads(hooks.params, heads, head_weighting)
    convention = head_convention(m, head_weighting)
    K = len(L)
    loss_vec = loss_vector(L)
    if gram_mode == "auto":
        records = hooks.calls_on_path([l.grad_fn for l in L if l.requires_grad])
        shapes = [g.shape for g in param_groups(hooks, records) if g.role == "weight"]
        if step_cost(shapes, K).choice == "materialize":
            return _materialize(losses, hooks, m, dict(common, main_task=None), {})

    reference = reference_grad if m.uses_reference else None
    need_gram = m.requires_gram or return_info
    hg = None
    if need_gram or reference is not None:
        hg = task_gramian(L, hooks, reference=reference, need_gram=need_gram, batched=batched)
    G = None if hg is None else hg.gram
    lam = weights_from_gram(m, G, loss_vec, generator=generator,
                            reference_dots=None if hg is None else hg.reference_dots, device=L[0].device)
    hooks.clear()

    active = [k for k, l in enumerate(L) if l.requires_grad]
    cot = [lam[k].to(dtype=L[k].dtype, device=L[k].device) for k in active]
    shared_params = list(hooks.params)
    if convention == "weighted" and heads:  # heads and trunk see the same Σ λ_k ℓ_k: one pass
        torch.autograd.backward([L[k] for k in active], grad_tensors=cot, inputs=shared_params + heads,
                                retain_graph=retain_graph)
    else:
        torch.autograd.backward([L[k] for k in active], grad_tensors=cot, inputs=shared_params,
                                retain_graph=retain_graph or bool(heads))
        backward_heads(L, lam, heads, convention, retain_graph, m.name)
    if not return_info:
        return None
    return CombineInfo(weights=lam, gram=G, cosine=None if G is None else cosine_from_gram(G), method=m, backend="autograd")


def _materialize(losses, shared, method, common, hyperparameters):
    """The materialised path on the shared parameters (the records, if any, are dropped)."""
    hooks = hooks_for(shared)
    params = shared
    if hooks is not None:
        hooks.clear()
        params = hooks.params
    return materialized_backward(losses, params, method, **common, **hyperparameters)
