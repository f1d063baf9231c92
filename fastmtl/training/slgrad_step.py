"""SLGrad's sample-level step with one forward-mode JVP instead of K·B backward passes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import torch

from ..methods.slgrad import SLGrad
from ..gradients import param_list

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
        lookahead_loss: with ``lookahead=True``, the loss of the look-ahead step (weighted with
            the previous weights, detached); ``None`` otherwise.
    """

    weights: torch.Tensor
    coefficients: torch.Tensor
    dots: torch.Tensor
    losses: torch.Tensor
    loss: torch.Tensor
    lookahead_loss: Optional[torch.Tensor] = None


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
                higher_is_better: bool = False, method: Optional[SLGrad] = None, lookahead: bool = False,
                optimizer: Optional[torch.optim.Optimizer] = None,
                prev_weights: Optional[torch.Tensor] = None) -> SLGradStepInfo:
    """One SLGrad step (Grégoire, Chaudhary, Verboven, "Sample-Level Weighting for Multi-Task
    Learning with Auxiliary Tasks", arXiv 2306.04519): weights per (task, sample) pair from a
    clean main-task validation gradient, then one weighted backward pass.

    With ``v = ∇_shared L_val`` (main task, validation batch) and per-sample training losses
    ``ℓ_{t,e}`` (task ``t``, sample ``e``):

        ``a_{t,e} = ⟨∇_shared ℓ_{t,e}, v⟩``,  ``W = max(s·a, 0) / Σ_{t,e} max(s·a, 0)``
        (``W = 0`` when the sum is 0; ``s = −1`` if ``higher_is_better`` else ``+1``),
        then ``L = c Σ_{t,e} W_{t,e} ℓ_{t,e}`` is back-propagated, ``c = 1/B``
        (``scale="paper_code"``, the authors' code) or ``c = 1`` (``"convex"``).

    When no pair has a positive alignment with ``v`` (e.g. the validation gradient is zero because
    a ReLU head is dead on every validation input) every ``W`` is 0 and the step leaves ``.grad``
    unchanged: the model is not updated, exactly as in the authors' code. ``info.weights`` shows
    it (all zeros); a run that keeps getting zero weights is not training.

    Cost: one backward for ``v``; **one** forward-mode pass (``torch.func.jvp`` of the per-sample
    loss matrix along ``v`` on the shared parameters: ``a`` is exactly its tangent, all K·B
    directional derivatives at once, never per-sample gradients); one backward of ``L`` through the
    graph recorded by that same forward pass. The authors' code needs K·B backward passes for ``a``.
    Two readings of the step order:

    * ``lookahead=False`` (default): the **one-update reading** (weights from gradients at the
      current parameters, as in Ren et al. 2018). Gradients are accumulated (as
      ``loss.backward()`` does) into every parameter that ``L`` reaches: the shared ones and the
      heads, which use the same weights (the authors' convention). The caller steps its optimizer.
    * ``lookahead=True``: **the released code's choice** (``vub-dl/SLGrad`` @e5ea387,
      ``SLGrad.train``), two real ``optimizer`` steps per minibatch, none undone:

      1. look-ahead step: ``optimizer.zero_grad()``, backward of ``c Σ_{t,e} W'_{t,e} ℓ_{t,e}``
         with the **previous** call's weights ``W' = prev_weights`` (``1/(K·B)`` everywhere when
         ``None``, the code's initial value), ``optimizer.step()``; the code's lines that would
         restore the model and optimizer state afterwards are commented out, so this step stays;
      2. ``v`` from ``val_loss_fn()`` **at the moved parameters** (``val_grad`` is refused: it
         would be stale);
      3. ``a`` and ``W`` as above, from the training batch re-evaluated at the moved parameters;
      4. second step: ``optimizer.zero_grad()``, backward of ``c Σ W ℓ``, ``optimizer.step()``.

      Pass ``info.weights`` back as ``prev_weights`` next time (a wider ``[K, B']`` matrix is
      sliced to ``[:, :B]``, the code's convention for a short last batch). Any gradient already
      in ``.grad`` is discarded by step 1's ``zero_grad``; gradient clipping between backward and
      step is not part of the code and not offered. Costs one more forward/backward and one more
      optimizer step than the one-update reading, and the optimizer's state (momentum, Adam
      moments, step counts) sees two updates per minibatch.

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
        lookahead: take the released code's look-ahead step and second step (see above).
        optimizer: the optimizer that steps the model (required with ``lookahead=True``, refused
            without: the one-update reading leaves stepping to the caller).
        prev_weights: ``W'`` of the look-ahead step, ``[K, B']`` with ``B' ≥ B`` (``lookahead``
            only).
    """
    shared = param_list(shared_params, "shared_params")
    if not shared:
        raise ValueError("shared_params is empty")
    if method is None:
        method = SLGrad(scale=scale, higher_is_better=higher_is_better)
    if isinstance(model_fn, torch.nn.Module):
        model_fn = _functional_model(model_fn, shared, inputs if isinstance(inputs, tuple) else (inputs,))

    lookahead_loss = None
    if lookahead:
        if optimizer is None:
            raise ValueError("lookahead=True takes two optimizer steps: pass optimizer=")
        if val_grad is not None:
            raise ValueError("lookahead=True needs v at the parameters after the look-ahead step: pass val_loss_fn, "
                             "not val_grad")
        lookahead_loss = _lookahead_step(model_fn, per_sample_losses_fn, shared, method, optimizer, prev_weights)
    elif optimizer is not None or prev_weights is not None:
        raise ValueError("optimizer= and prev_weights= belong to lookahead=True; without it the caller steps")

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
    if lookahead:
        optimizer.zero_grad()
    loss.backward()
    if lookahead:
        optimizer.step()
    W = coef * B if method.scale == "paper_code" else coef
    return SLGradStepInfo(weights=W, coefficients=coef, dots=dots, losses=losses.detach(), loss=loss.detach(),
                          lookahead_loss=lookahead_loss)


def _lookahead_step(model_fn: Callable, per_sample_losses_fn: Callable, shared: List[torch.Tensor], method: SLGrad,
                    optimizer: torch.optim.Optimizer, prev_weights: Optional[torch.Tensor]) -> torch.Tensor:
    """The released code's first step: the weighted loss with the previous weights, one real step."""
    losses = _stack_losses(per_sample_losses_fn(model_fn(tuple(shared))))
    K, B = losses.shape
    if prev_weights is None:
        W = torch.full((K, B), 1.0 / (K * B), dtype=torch.float64, device=losses.device)
    else:
        if prev_weights.dim() != 2 or prev_weights.shape[0] != K or prev_weights.shape[1] < B:
            raise ValueError(f"prev_weights must be [K={K}, B' >= {B}], got {tuple(prev_weights.shape)}")
        W = prev_weights[:, :B].detach()
    coef = W / B if method.scale == "paper_code" else W
    loss = (coef.to(device=losses.device, dtype=losses.dtype) * losses).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()
