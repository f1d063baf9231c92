"""Auto-λ's bilevel (look-ahead) meta step, on fake steps restored bitwise."""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Optional, Sequence

import torch

from ..methods.auto_lambda import AutoLambda
from .fake_step import FakeStep
from .task_autograd import loss_list, param_list, task_gradients

__all__ = ["auto_lambda_step", "AutoLambdaStepInfo"]


class AutoLambdaStepInfo(NamedTuple):
    """``weights``: ``w`` after the meta step (float64 ``[K]``); ``previous``: ``w`` before it;
    ``meta_grad``: ``∂ℓ^val/∂w`` (``[K]``); ``val_loss``: the primary validation loss at the
    virtual parameters ``θ'`` (a 0-dim tensor); ``alpha``: the virtual step's learning rate."""

    weights: torch.Tensor
    previous: torch.Tensor
    meta_grad: torch.Tensor
    val_loss: torch.Tensor
    alpha: float


def _grads(loss: torch.Tensor, params: List[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    if not loss.requires_grad:
        return [None] * len(params)
    return list(torch.autograd.grad(loss, params, allow_unused=True))


def _weighted(w: torch.Tensor, losses: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum(w[k].to(dtype=l.dtype, device=l.device) * l for k, l in enumerate(losses))


def _sgd_virtual_step(params, grads, optimizer, alpha: float) -> None:
    """The official ``virtual_step``: ``θ' = θ − α(μ·buf + g + wd·θ)`` with ``param_groups[0]``'s
    momentum and weight decay and each parameter's SGD momentum buffer (0 when it has none)."""
    group = optimizer.param_groups[0] if optimizer is not None else {}
    wd = float(group.get("weight_decay", 0.0))
    with torch.no_grad():
        for p, g in zip(params, grads):
            g = torch.zeros_like(p) if g is None else g.to(p.dtype)
            step = g + wd * p
            if "momentum" in group:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    step = step + group["momentum"] * buf
            p.sub_(alpha * step)


def auto_lambda_step(method: AutoLambda, params: Any, train_losses: Callable[[], Sequence[torch.Tensor]],
                     val_losses: Callable[[], Sequence[torch.Tensor]], optimizer: Optional[torch.optim.Optimizer] = None,
                     *, lr: Optional[float] = None, virtual_step: str = "optimizer",
                     hessian: str = "finite_difference", fd_scale: float = 0.01) -> AutoLambdaStepInfo:
    """One Auto-λ meta step (Liu, Davison, Johns, TMLR 2022; official code ``lorenmt/auto-lambda``).

    With ``w`` the method's meta-weights, ``θ`` the parameters and ``α`` the training learning rate:

    1. **virtual step** — ``θ' = step(θ, ∇_θ Σ_k w_k ℓ_k^train(θ))``;
    2. ``v = ∇_θ' Σ_{i∈P} ℓ_i^val(θ')`` (``P``: the method's ``primary_tasks``, default all);
    3. the meta-gradient ``∂ℓ^val/∂w_k = −α ⟨∇_θ ℓ_k^train(θ), v⟩`` (``θ'`` depends on ``w`` only
       through the step), by the official central difference
       ``h_k = (ℓ_k^train(θ + εv) − ℓ_k^train(θ − εv))/(2ε)``, ``ε = fd_scale/‖v‖``
       (``hessian="finite_difference"``, default), or exactly from the K task gradients at ``θ``
       (``hessian="exact"``: K backward passes instead of one, no extra forward passes);
    4. :meth:`AutoLambda.meta_step` — one Adam step on ``w``.

    Every fake move of the parameters is undone bitwise: parameter values, their ``.grad``, the
    optimizer's state and param-group settings, and — when ``params`` is a module — its buffers
    (BatchNorm statistics updated by the extra forward passes). The official code restores ``θ``
    by adding ``εv`` back (not bitwise) and lets BatchNorm statistics drift; fastmtl restores from
    a snapshot instead. After the call, take the real training step with the new ``w`` (e.g.
    ``fastmtl.backward(losses, shared, method, head_params=heads)``, or ``(w * losses).sum().backward()``).

    ``virtual_step``: ``"optimizer"`` (default) takes one step of ``optimizer`` itself (its own
    learning rate, momentum, weight decay and state; ``lr`` overrides the learning rate), which for
    ``torch.optim.SGD`` is exactly the official formula; ``"sgd"`` is the official formula
    ``θ' = θ − α(μ·buf + g + wd·θ)`` literally (``param_groups[0]``'s momentum and weight decay, the
    SGD momentum buffers; with Adam-type optimizers the official code takes this plain SGD step
    too). Without an optimizer the step is ``θ − α g``. ``α`` is ``lr`` or
    ``optimizer.param_groups[0]["lr"]`` (the official ``scheduler.get_last_lr()[0]``).

    Args:
        method: the :class:`fastmtl.methods.AutoLambda` instance whose ``w`` is trained.
        params: the parameters the virtual step moves: all the model's (shared and heads), a
            sequence or a module (then its buffers are restored too).
        train_losses: ``() → K`` training losses at the current parameters (with their graph),
            e.g. ``lambda: model_losses(model(x), y)``. Called 3 times (``"exact"``: twice).
        val_losses: ``() → K`` losses on other data (the official code draws a second batch from
            the training set): called once, at ``θ'``.
        optimizer: the training optimizer (``None``: plain SGD with ``lr``).
        fd_scale: ``ε·‖v‖`` of the central difference (official 0.01).

    The closures' randomness (dropout) makes the finite difference noisy, as in the official
    code. Costs 2 backward and 4 forward passes (``"exact"``: K + 1 backward, 2 forward), no host
    synchronisation.
    """
    if not isinstance(method, AutoLambda):
        raise TypeError(f"auto_lambda_step trains an AutoLambda instance, got {type(method).__name__}")
    if virtual_step not in ("optimizer", "sgd"):
        raise ValueError(f"virtual_step must be 'optimizer' or 'sgd', got {virtual_step!r}")
    if hessian not in ("finite_difference", "exact"):
        raise ValueError(f"hessian must be 'finite_difference' or 'exact', got {hessian!r}")
    fd_scale = float(fd_scale)
    if not fd_scale > 0 or fd_scale == float("inf"):
        raise ValueError(f"fd_scale must be finite and > 0, got {fd_scale}")
    if optimizer is None and lr is None:
        raise ValueError("pass the training optimizer or the learning rate lr of the virtual step")
    alpha = float(lr if lr is not None else optimizer.param_groups[0]["lr"])
    buffers = list(params.buffers()) if isinstance(params, torch.nn.Module) else []
    plist = param_list(params, "params")
    if not plist:
        raise ValueError("params is empty")
    if virtual_step == "optimizer" and optimizer is not None:
        held = {id(p) for g in optimizer.param_groups for p in g["params"]}
        missing = [i for i, p in enumerate(plist) if id(p) not in held]
        if missing:
            raise ValueError(f"params {missing[:5]} are not in the optimizer, so its virtual step would not move "
                             "them; pass the optimizer of all params, or virtual_step='sgd'")

    with FakeStep(plist, optimizer, buffers) as fake:
        losses = loss_list(train_losses())
        K = len(losses)
        w = method.ensure_weights(K, losses[0].device)
        previous = w.clone()
        if hessian == "exact":
            task_grads = task_gradients(losses, plist)
            grads = [None if all(row[p] is None for row in task_grads) else
                     sum(w[k].to(plist[p].dtype) * row[p] for k, row in enumerate(task_grads) if row[p] is not None)
                     for p in range(len(plist))]
        else:
            grads = _grads(_weighted(w, losses), plist)
        # 1. The virtual step.
        if virtual_step == "optimizer" and optimizer is not None:
            for p, g in zip(plist, grads):
                p.grad = None if g is None else g.detach().to(p.dtype).clone()
            if lr is not None:
                for group in optimizer.param_groups:
                    group["lr"] = alpha
            optimizer.step()
        else:
            _sgd_virtual_step(plist, grads, optimizer if virtual_step == "sgd" else None, alpha)
        # 2. The primary validation loss and its gradient at θ'.
        val = loss_list(val_losses())
        if len(val) != K:
            raise ValueError(f"val_losses returned {len(val)} losses, train_losses {K}")
        mask = method.primary_mask(K, w.device)
        val_loss = _weighted(mask, val)
        v = _grads(val_loss, plist)
        fake.restore_parameters()
        # 3. The Hessian-vector product ⟨∇ℓ_k^train(θ), v⟩.
        if hessian == "exact":
            h = _dots(task_grads, v, w.device)
        else:
            h = _finite_difference(plist, fake.values, v, train_losses, fd_scale, K, w.device)
        meta_grad = -alpha * h
        method.meta_step(meta_grad)
    return AutoLambdaStepInfo(weights=method.meta_weights.clone(), previous=previous, meta_grad=meta_grad,
                              val_loss=val_loss.detach(), alpha=alpha)


def _dots(task_grads, v, device) -> torch.Tensor:
    """``⟨g_k, v⟩`` over the parameters both reach, in float64."""
    out = torch.zeros(len(task_grads), dtype=torch.float64, device=device)
    for k, row in enumerate(task_grads):
        for g, d in zip(row, v):
            if g is not None and d is not None:
                out[k] += (g.to(torch.float64) * d.to(torch.float64)).sum().to(device)
    return out


def _finite_difference(plist, theta, v, train_losses, fd_scale, K, device) -> torch.Tensor:
    """``(ℓ(θ + εv) − ℓ(θ − εv))/(2ε)``, ``ε = fd_scale/‖v‖``, each point set from the snapshot ``θ``."""
    present = [(p, t, d) for p, t, d in zip(plist, theta, v) if d is not None]
    if not present:
        return torch.zeros(K, dtype=torch.float64, device=device)
    norm = torch.sqrt(sum(d.to(torch.float64).pow(2).sum() for _, _, d in present))
    # v = 0 (the primary tasks do not depend on θ): ε would be infinite; the product is 0 then.
    ok = norm > 0
    eps = torch.where(ok, fd_scale / torch.where(ok, norm, torch.ones_like(norm)), torch.zeros_like(norm))
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, t, d in present:
                p.copy_(t + (sign * eps).to(p.dtype) * d.to(p.dtype))
            values.append(torch.stack([l.detach().to(torch.float64) for l in loss_list(train_losses())]))
    with torch.no_grad():
        for p, t, _ in present:
            p.copy_(t)
    diff = (values[0] - values[1]).to(device)
    return torch.where(ok, diff / (2.0 * torch.where(ok, eps, torch.ones_like(eps))).to(device), torch.zeros_like(diff))
