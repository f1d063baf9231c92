"""SLGrad's sample-level step with one forward-mode JVP instead of K·B backward passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch

from ..methods.slgrad import SLGrad
from .task_autograd import _param_list

__all__ = ["slgrad_step", "SLGradStepInfo"]


@dataclass
class SLGradStepInfo:
    """What :func:`slgrad_step` reports.

    Attributes:
        weights: the normalised SLGrad weights ``W`` ``[K, B]`` (float64; sum 1, or all zero).
        coefficients: the per-(task, sample) loss coefficients actually used, ``W/B``
            (``scale="paper_code"``) or ``W`` (``"convex"``).
        dots: ``a_{t,e} = ⟨∇ℓ_{t,e}, v⟩`` ``[K, B]`` (before the metric sign).
        losses: the per-sample losses ``ℓ_{t,e}`` ``[K, B]`` (detached).
        loss: the weighted training loss that was back-propagated (detached).
    """

    weights: torch.Tensor
    coefficients: torch.Tensor
    dots: torch.Tensor
    losses: torch.Tensor
    loss: torch.Tensor


def _functional_model(model: torch.nn.Module, shared: List[torch.Tensor], inputs: tuple) -> Callable:
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    missing = [i for i, p in enumerate(shared) if id(p) not in names]
    if missing:
        raise ValueError(f"shared_params{missing} are not parameters of the given module")
    keys = [names[id(p)] for p in shared]

    def fn(tensors):
        return torch.func.functional_call(model, dict(zip(keys, tensors)), inputs)

    return fn


def _stack_losses(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        if out.dim() != 2:
            raise ValueError(f"per_sample_losses_fn must return [K, B] losses (or K tensors of [B]), got shape "
                             f"{tuple(out.shape)}")
        return out
    return torch.stack([o.reshape(-1) for o in out])


def slgrad_step(model_fn: Any, per_sample_losses_fn: Callable, val_loss_fn: Optional[Callable],
                shared_params: Any, *, inputs: Any = (), val_grad: Any = None, scale: str = "paper_code",
                higher_is_better: bool = False, method: Optional[SLGrad] = None) -> SLGradStepInfo:
    """One SLGrad step (Grégoire, Chaudhary, Verboven, "Sample-Level Weighting for Multi-Task
    Learning with Auxiliary Tasks", arXiv 2306.04519): weights per (task, sample) pair from a
    clean main-task validation gradient, then one weighted backward pass.

    With ``v = ∇_shared L_val`` (main task, validation batch) and per-sample training losses
    ``ℓ_{t,e}`` (task ``t``, sample ``e``):

        ``a_{t,e} = ⟨∇_shared ℓ_{t,e}, v⟩``,  ``W = max(s·a, 0) / Σ_{t,e} max(s·a, 0)``
        (``W = 0`` when the sum is 0; ``s = −1`` if ``higher_is_better`` else ``+1``),
        then ``L = c Σ_{t,e} W_{t,e} ℓ_{t,e}`` is back-propagated, ``c = 1/B``
        (``scale="paper_code"``, the authors' code) or ``c = 1`` (``"convex"``).

    Cost: one backward for ``v``; **one** forward-mode pass (``torch.func.jvp`` of the per-sample
    loss matrix along ``v`` on the shared parameters: ``a`` is exactly its tangent, all K·B
    directional derivatives at once, never per-sample gradients); one backward of ``L`` through the
    graph recorded by that same forward pass. The authors' code needs K·B backward passes for ``a``.
    This is the one-update reading (weights from gradients at the current parameters, as in Ren
    et al. 2018); the released code additionally takes a look-ahead optimizer step first.

    Gradients are accumulated (as ``loss.backward()`` does) into every parameter that ``L``
    reaches: the shared ones and the heads, which use the same weights (the authors' convention).

    Args:
        model_fn: ``model_fn(shared_tensors) → outputs``, evaluating the training batch with the
            shared parameters replaced by the given tensors (same order as ``shared_params``);
            or an ``nn.Module``, called as ``functional_call(module, {shared names: tensors},
            inputs)``.
        per_sample_losses_fn: ``outputs → [K, B]`` per-sample losses (``reduction="none"``;
            dense tasks averaged over their other dimensions first), or K tensors of ``[B]``.
        val_loss_fn: ``() → scalar`` main-task validation loss at the current parameters
            (ignored when ``val_grad`` is given).
        shared_params: the shared parameters (a sequence, or a module).
        inputs: the module's positional inputs when ``model_fn`` is a module.
        val_grad: a precomputed ``v``, one tensor (or ``None`` = zeros) per shared parameter.
        scale: ``"paper_code"`` (``1/B``) or ``"convex"``.
        higher_is_better: ``v`` is the gradient of a metric to increase (flips the sign of ``a``).
        method: an :class:`fastmtl.methods.SLGrad` instance to take ``scale`` and the sign from.
    """
    shared = _param_list(shared_params, "shared_params")
    if not shared:
        raise ValueError("shared_params is empty")
    if method is None:
        method = SLGrad(scale=scale, higher_is_better=higher_is_better)
    if isinstance(model_fn, torch.nn.Module):
        model_fn = _functional_model(model_fn, shared, inputs if isinstance(inputs, tuple) else (inputs,))

    if val_grad is None:
        if val_loss_fn is None:
            raise ValueError("pass val_loss_fn or val_grad")
        val_loss = val_loss_fn()
        v = torch.autograd.grad(val_loss, shared, allow_unused=True)
    else:
        if len(val_grad) != len(shared):
            raise ValueError(f"val_grad has {len(val_grad)} entries but there are {len(shared)} shared parameters")
        v = val_grad
    tangents = tuple(torch.zeros_like(p) if t is None else t.detach().to(p.dtype) for p, t in zip(shared, v))

    def f(*tensors):
        return _stack_losses(per_sample_losses_fn(model_fn(tensors)))

    # The primal output keeps its autograd graph to every parameter (shared and heads): the same
    # forward pass serves the JVP and the weighted backward.
    losses, dots = torch.func.jvp(f, tuple(shared), tangents)
    dots = dots.detach()
    K, B = losses.shape
    coef = method.coefficients(dots.reshape(-1), num_samples=B)
    coef = coef.reshape(K, B)
    loss = (coef.to(losses.dtype) * losses).sum()
    loss.backward()
    W = coef * B if method.scale == "paper_code" else coef
    return SLGradStepInfo(weights=W, coefficients=coef, dots=dots, losses=losses.detach(), loss=loss.detach())
