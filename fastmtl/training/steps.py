"""The pieces every training-level step shares: the method from the arguments, the heads'
convention and their backward pass, λ from a Gram formed outside ``combine`` (module hooks,
representation gradients).

:func:`fastmtl.backward` (all three Gram modes) and the representation path use these, so the
argument rules and the head conventions are written once.
"""

from __future__ import annotations

import inspect
from typing import Any, List, Optional

import torch

from ..methods import Context, Method, make_method, method_class
from ..methods.slgrad import SLGrad
from ..pipeline import guarded_weights

__all__ = ["resolve_method", "check_heads", "head_convention", "backward_heads", "loss_vector",
           "weights_from_gram", "refuse_gradient_methods"]


def _accepts(cls, name: str) -> bool:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    return name in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def resolve_method(method: Any, hyperparameters: dict, *, main_task: Optional[int] = None,
                   reference_grad: Any = None) -> Method:
    """The method instance for a training step, configured before any gradient is computed.

    ``main_task`` goes to a named method's constructor (and must match an instance's own);
    SLGrad (it weights (task, sample) pairs) and a ``reference_grad`` for a method that reads none
    are refused.
    """
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
        cls = method if isinstance(method, type) and issubclass(method, Method) else method_class(method)
        if main_task is not None:
            if not _accepts(cls, "main_task"):
                raise TypeError(f"method {cls.name!r} has no main task; do not pass main_task")
            hyperparameters = dict(hyperparameters, main_task=main_task)
    if issubclass(cls, SLGrad):
        raise TypeError("SLGrad weights (task, sample) pairs: use fastmtl.training.slgrad_step (or "
                        "fastmtl.combine on per-sample gradients), not fastmtl.backward")
    if reference_grad is not None and not cls.uses_reference:
        raise TypeError(f"method {getattr(cls, 'name', cls.__name__)!r} does not use a reference gradient")
    return make_method(method, dict(hyperparameters))


def refuse_gradient_methods(m: Method, mode: str, alternative: str) -> None:
    """Methods that read the gradients themselves (or the Gram of chosen parameters) need them
    materialised: they cannot run where only a Gram of all shared parameters exists."""
    if m.computes_direction or m.gram_params is not None:
        raise TypeError(f"method {m.name!r} reads the task gradients themselves (not only their Gram matrix), so "
                        f"it cannot run in {mode}: {alternative}")


def check_heads(shared: List[torch.Tensor], heads: List[torch.Tensor], head_weighting: str) -> None:
    """Heads and shared parameters are disjoint; ``head_weighting`` is a known convention."""
    shared_ids = {id(p) for p in shared}
    for i, p in enumerate(heads):
        if id(p) in shared_ids:
            raise ValueError(f"head_params[{i}] is also a shared parameter")
    if head_weighting not in ("auto", "weighted", "sum"):
        raise ValueError(f"head_weighting must be 'auto', 'weighted' or 'sum', got {head_weighting!r}")


def head_convention(m: Method, head_weighting: str) -> str:
    """``"weighted"`` or ``"sum"``: the override, or the method's own ``head_weighting``."""
    return m.head_weighting if head_weighting == "auto" else head_weighting


def backward_heads(losses: List[torch.Tensor], lam: Optional[torch.Tensor], heads: List[torch.Tensor],
                   convention: str, retain_graph: bool, method_name: str) -> None:
    """``∇_heads Σ_k λ_k ℓ_k`` (``"weighted"``) or ``∇_heads Σ_k ℓ_k`` (``"sum"``), accumulated."""
    if not heads:
        return
    active = [k for k, l in enumerate(losses) if l.requires_grad]
    if convention == "weighted":
        if lam is None:
            raise ValueError(f"method {method_name!r} returns no weights λ; pass head_weighting='sum'")
        cot = [lam[k].to(dtype=losses[k].dtype, device=losses[k].device) for k in active]
    else:
        cot = [torch.ones_like(losses[k]) for k in active]
    torch.autograd.backward([losses[k] for k in active], grad_tensors=cot, inputs=heads, retain_graph=retain_graph)


def loss_vector(losses: List[torch.Tensor]) -> torch.Tensor:
    """The K losses as one detached float64 vector."""
    return torch.stack([l.detach().to(torch.float64) for l in losses])


def weights_from_gram(m: Method, G: Optional[torch.Tensor], losses: torch.Tensor, *,
                      generator: Optional[torch.Generator] = None, reference_dots: Optional[torch.Tensor] = None,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """λ from a Gram formed outside ``combine``, under the same rules: the stateful instance's task
    count, the non-finite policy (:func:`fastmtl.pipeline.guarded_weights`)."""
    K = losses.shape[0]
    m.check_num_tasks(K)
    device = G.device if G is not None else (device if device is not None else losses.device)
    ctx = Context(num_tasks=K, device=device, losses=losses.to(device), generator=generator,
                  reference_dots=reference_dots)
    lam = guarded_weights(m, G if m.requires_gram else None, ctx, check_finite=False)
    m.record_num_tasks(K)
    return lam
