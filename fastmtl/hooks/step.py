"""Pieces shared by the training steps that get λ without the K task gradients of the shared
parameters (hooks mode, representation gradients): input checks, the method, λ from a Gram
matrix, and the back-propagation of the heads."""

from __future__ import annotations

import inspect
from typing import Any, List, Optional, Sequence

import torch

from ..methods import METHODS, Method, make_method

__all__ = ["loss_list", "param_list", "resolve_method", "refuse_gradient_methods", "weights_from_gram",
           "head_convention", "backward_heads", "cosine_of", "loss_vector", "check_disjoint"]


def loss_list(losses: Any) -> List[torch.Tensor]:
    """K scalar losses from a sequence or a ``[K]`` tensor (the rules of ``fastmtl.backward``)."""
    if isinstance(losses, torch.Tensor):
        if losses.dim() > 1:
            raise ValueError(f"losses must be K scalar losses or a [K] tensor, got shape {tuple(losses.shape)}")
        out = list(losses.reshape(-1).unbind(0))
    elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)):
        out = []
        for k, l in enumerate(losses):
            if not isinstance(l, torch.Tensor) or l.numel() != 1:
                raise TypeError(f"loss {k}: expected a scalar tensor, got "
                                f"{type(l).__name__ if not isinstance(l, torch.Tensor) else tuple(l.shape)}")
            out.append(l.reshape(()))
    else:
        raise TypeError(f"losses must be a sequence of K scalar tensors or a [K] tensor, got {type(losses).__name__}")
    if not out:
        raise ValueError("losses is empty (K = 0 tasks)")
    if not any(l.requires_grad for l in out):
        raise ValueError("no loss requires grad: nothing to differentiate")
    return out


def loss_vector(losses: List[torch.Tensor]) -> torch.Tensor:
    return torch.stack([l.detach().to(torch.float64) for l in losses])


def param_list(params: Any, what: str) -> List[torch.Tensor]:
    """Parameters from a module, a tensor or a sequence; each must require grad."""
    if params is None:
        return []
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    if isinstance(params, torch.Tensor):
        params = [params]
    out = list(params)
    for i, p in enumerate(out):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{what}[{i}]: expected a tensor (parameter), got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"{what}[{i}]: does not require grad")
    return out


def _accepts(cls, name: str) -> bool:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    return name in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def resolve_method(method: Any, hyperparameters: dict, main_task: Optional[int]) -> Method:
    """A method instance, with ``main_task`` handled as ``fastmtl.backward`` does."""
    if isinstance(method, Method):
        if main_task is not None:
            if not hasattr(method, "main_task"):
                raise TypeError(f"method {type(method).__name__} has no main task; do not pass main_task")
            if method.main_task != main_task:
                raise ValueError(f"main_task={main_task} differs from the method instance's "
                                 f"main_task={method.main_task}")
        return make_method(method, hyperparameters)
    if main_task is not None:
        if isinstance(method, str):
            cls = METHODS.get(method.lower().replace("-", "_"))
        else:
            cls = method if isinstance(method, type) else None
        if cls is not None and not _accepts(cls, "main_task"):
            raise TypeError(f"method {getattr(cls, 'name', cls)!r} has no main task; do not pass main_task")
        hyperparameters = dict(hyperparameters, main_task=main_task)
    return make_method(method, dict(hyperparameters))


def refuse_gradient_methods(m: Method, mode: str, alternative: str) -> None:
    """Methods that read the gradients themselves, not only their Gram matrix, cannot run here."""
    if m.gram_free_direction:
        raise TypeError(f"method {m.name!r} reads the task gradients themselves (not only their Gram matrix), so "
                        f"it cannot run in {mode}: {alternative}")


def weights_from_gram(m: Method, G: Optional[torch.Tensor], losses: torch.Tensor, *, K: int,
                      generator: Optional[torch.Generator], reference_dots: Optional[torch.Tensor] = None,
                      device: Optional[torch.device] = None) -> torch.Tensor:
    """λ = ``m.weights(G, ...)`` under fastmtl's non-finite policy: a non-finite G (or reference
    dots) gives λ = NaN and the method sees zeros, never a silently wrong finite λ."""
    if G is None or not m.requires_gram:
        return m.weights(G if m.requires_gram else None, losses=losses, generator=generator,
                         reference_dots=reference_dots, num_tasks=K, device=device if G is None else G.device)
    finite = torch.isfinite(G).all()
    if reference_dots is not None:
        finite = finite & torch.isfinite(reference_dots).all()
    zero = torch.zeros((), dtype=G.dtype, device=G.device)
    G0 = torch.where(finite, G, zero)
    ref0 = None if reference_dots is None else torch.where(finite, reference_dots, zero.to(reference_dots.dtype))
    lam = m.weights(G0, losses=losses.to(G.device), generator=generator, reference_dots=ref0, num_tasks=K,
                    device=G.device)
    return torch.where(finite, lam, torch.full_like(lam, float("nan")))


def cosine_of(G: torch.Tensor) -> torch.Tensor:
    """``G_ij / (‖g_i‖‖g_j‖)``, 0 where a norm is 0 (as ``CombineInfo.cosine``)."""
    n = torch.sqrt(torch.diagonal(G).clamp_min(0))
    denom = n[:, None] * n[None, :]
    ok = denom > 0
    return torch.where(ok, G / torch.where(ok, denom, torch.ones_like(denom)), torch.zeros_like(G))


def head_convention(m: Method, head_weighting: str) -> str:
    """``"weighted"`` or ``"sum"``: the head convention of ``fastmtl.backward`` for this method."""
    if head_weighting not in ("auto", "weighted", "sum"):
        raise ValueError(f"head_weighting must be 'auto', 'weighted' or 'sum', got {head_weighting!r}")
    if head_weighting != "auto":
        return head_weighting
    from ..training import head_weighting as convention  # late: fastmtl.training imports this package
    return convention(m)


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


def check_disjoint(shared: List[torch.Tensor], heads: List[torch.Tensor]) -> None:
    shared_ids = {id(p) for p in shared}
    for i, p in enumerate(heads):
        if id(p) in shared_ids:
            raise ValueError(f"head_params[{i}] is also a shared parameter")
