"""SLGrad's step with the per-(task, sample) dot products ``⟨∇ℓ_{k,b}, v⟩`` read from module hooks."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..hooks.capture import hooks_for
from ..hooks.gram import per_sample_losses, sample_dots
from ..methods import SLGrad
from .slgrad_step import SLGradStepInfo

__all__ = ["slgrad_backward"]


def slgrad_backward(losses: Any, hooks: Any, *, val_loss_fn: Optional[Callable] = None, val_grad: Any = None,
                    scale: str = "paper_code", higher_is_better: bool = False, method: Optional[SLGrad] = None):
    """One SLGrad step (the one-update reading of :func:`fastmtl.training.slgrad_step`) from hooks.

    ``a_{k,b} = ⟨∇_shared ℓ_{k,b}, v⟩`` comes from the hooked layers' inputs and the K output
    gradients of one batched backward pass (:func:`fastmtl.hooks.sample_dots`); then
    ``W = max(s·a, 0)/Σ max(s·a, 0)`` and ``c Σ_{k,b} W_{k,b} ℓ_{k,b}`` is back-propagated once
    into every parameter it reaches (``.grad`` accumulated; the caller steps its optimizer), as
    ``slgrad_step`` does. The forward pass is the caller's (with the hooks registered), so the
    model runs once, without forward-mode AD.

    Args:
        losses: the training batch's per-sample losses ``[K, B]`` (``reduction="none"``), or K
            tensors of ``[B]``, computed with the hooks recording.
        hooks: a :class:`fastmtl.hooks.GramHooks` on the shared modules (or such a module).
        val_loss_fn: ``() → scalar`` main-task validation loss; its forward runs with the hooks
            paused and ``v = ∇_shared`` of it (ignored when ``val_grad`` is given).
        val_grad: a precomputed ``v``, one tensor (or ``None``) per ``hooks.params``.
        scale, higher_is_better, method: as :func:`fastmtl.training.slgrad_step`.

    Returns:
        :class:`fastmtl.training.SLGradStepInfo` (``lookahead_loss`` is ``None``). The records
        are cleared.
    """
    hk = hooks_for(hooks)
    if hk is None:
        raise TypeError(f"expected a fastmtl.hooks.GramHooks (or a module one is registered on), got "
                        f"{type(hooks).__name__}")
    if method is None:
        method = SLGrad(scale=scale, higher_is_better=higher_is_better)
    elif not isinstance(method, SLGrad):
        raise TypeError(f"method must be a fastmtl.methods.SLGrad instance, got {type(method).__name__}")
    Ls = per_sample_losses(losses)
    if val_grad is None:
        if val_loss_fn is None:
            raise ValueError("pass val_loss_fn or val_grad")
        with hk.paused():
            val_loss = val_loss_fn()
        v = torch.autograd.grad(val_loss, hk.params, allow_unused=True)
    else:
        v = val_grad
    dots = sample_dots(Ls, hk, v).detach()
    hk.clear()
    K, B = Ls.shape
    coef = method.coefficients(dots.reshape(-1), num_samples=B).reshape(K, B)
    loss = (coef.to(Ls.dtype) * Ls).sum()
    loss.backward()
    W = coef * B if method.scale == "paper_code" else coef
    return SLGradStepInfo(weights=W, coefficients=coef, dots=dots, losses=Ls.detach(), loss=loss.detach())
