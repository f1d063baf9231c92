"""HydaLearn's exact ("fake update") gains, with parameters and optimizer state restored bitwise."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import torch

from ..methods import Context
from ..methods.hydalearn import HydaLearn
from ..gradients import param_list
from .fake_step import restore_optimizer, snapshot_optimizer

__all__ = ["hydalearn_lookahead_weights", "LookaheadResult"]


class LookaheadResult(NamedTuple):
    """``weights`` λ ``[K]`` (float64, HydaLearn's normalisation), ``gains`` δ ``[K]``, and the metric
    before (``base_metric``) and after each fake step (``metrics`` ``[K]``)."""

    weights: torch.Tensor
    gains: torch.Tensor
    base_metric: torch.Tensor
    metrics: torch.Tensor


def hydalearn_lookahead_weights(params: Any, optimizer: Optional[torch.optim.Optimizer], task_grads: Any,
                                metric_fn: Callable[[], Any], lr: Optional[float] = None, *,
                                higher_is_better: bool = False, main_task: int = 0, normalize: str = "sum",
                                fallback: str = "main") -> LookaheadResult:
    """HydaLearn's exact main-task gains from one fake update per task (Verboven, Chaudhary,
    Berrevoets, Ginis, Verbeke, "HydaLearn: Highly Dynamic Task Weighting for Multi-task Learning
    with Auxiliary Tasks", Applied Intelligence 2023, arXiv 2008.11643).

    **Reconstruction**: the paper describes a "fake update" and a "main-task gain"; no reference
    code exists, and the details below are this library's reading. For each task ``k``:

        ``θ'_k = step(θ, g_k)``,  ``δ_k = s · (M(θ'_k) − M(θ))``,  ``s = +1`` if
        ``higher_is_better`` (AUC, accuracy) else ``−1`` (a loss),

    where ``step`` is one step of ``optimizer`` with ``.grad = g_k`` (its own learning rate,
    momentum and state; ``lr`` overrides the learning rate of every group for the fake step), or
    plain SGD ``θ − lr·g_k`` without an optimizer. Other parameters the optimizer holds do not move
    (their ``.grad`` is hidden during the fake steps). Parameters that task ``k`` does not reach
    (``None``) get no gradient for that fake step. After each fake step the parameters, their
    ``.grad`` and the optimizer state (state tensors updated in place, param-group settings) are
    restored bitwise. The gains become weights by the same code as
    :class:`fastmtl.methods.HydaLearn` (``δ`` passed as its reference dot products): ``λ = δ⁺/Σδ⁺``
    (``normalize="sum"``) or ``λ_main = 1, λ_k = δ⁺_k/δ_main`` (``"main"``), with
    ``fallback="main"|"zero"`` when no gain is positive.

    The real update is then ``Σ_k λ_k g_k``, e.g. ``fastmtl.weighted_sum(task_grads, λ,
    out=[p.grad ...])`` followed by ``optimizer.step()``. Pass all parameters (shared and heads)
    with their task gradients so that the fake and real updates move the heads too.

    Costs K+1 evaluations of ``metric_fn`` and K optimizer steps; synchronises (the metric is read).

    Args:
        params: the parameters the fake steps move (a sequence, or a module).
        optimizer: the training optimizer (``None``: plain SGD with ``lr``).
        task_grads: K task gradients over ``params``: K sequences of per-parameter tensors
            (``None`` = untouched), e.g. from :func:`task_gradients`.
        metric_fn: ``() → M`` the main-task measure at the current parameters (a float or a scalar
            tensor), e.g. the main-task loss or AUC on the minibatch or a validation batch.
        lr: learning rate of the fake step (required without an optimizer).
    """
    plist = param_list(params, "params")
    if optimizer is None and lr is None:
        raise ValueError("pass an optimizer or a learning rate lr for the fake steps")
    K = len(task_grads)
    if K == 0:
        raise ValueError("task_grads is empty")
    for k, row in enumerate(task_grads):
        if len(row) != len(plist):
            raise ValueError(f"task {k}: has {len(row)} gradients but there are {len(plist)} parameters")
    sign = 1.0 if higher_is_better else -1.0

    def measure():
        with torch.no_grad():
            val = metric_fn()
        return torch.as_tensor(val.detach() if isinstance(val, torch.Tensor) else val,
                               dtype=torch.float64).reshape(()).cpu()

    # Parameters the optimizer holds besides ``params`` must not move during the fake steps: their
    # gradients are hidden (set to None, which every torch optimizer skips) and everything restored.
    ids = {id(p) for p in plist}
    others = [] if optimizer is None else list({id(p): p for g in optimizer.param_groups for p in g["params"]
                                               if id(p) not in ids}.values())
    plist_all = plist + others
    saved_params = [p.detach().clone() for p in plist_all]
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in plist_all]
    snap = snapshot_optimizer(optimizer) if optimizer is not None else None
    for p in others:
        p.grad = None

    base = measure()
    metrics = []
    try:
        for k in range(K):
            if optimizer is None:
                with torch.no_grad():
                    for p, g in zip(plist, task_grads[k]):
                        if g is not None:
                            p.sub_(g.to(p.dtype), alpha=lr)
            else:
                for p, g in zip(plist, task_grads[k]):
                    p.grad = None if g is None else g.detach().to(p.dtype).clone()
                if lr is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                optimizer.step()
            metrics.append(measure())
            with torch.no_grad():
                for p, s in zip(plist_all, saved_params):
                    p.copy_(s)
            if snap is not None:
                restore_optimizer(optimizer, snap)
    finally:
        with torch.no_grad():
            for p, s in zip(plist_all, saved_params):
                p.copy_(s)
        for p, g in zip(plist_all, saved_grads):
            if g is None:
                p.grad = None
            elif p.grad is None or p.grad.shape != g.shape:
                p.grad = g
            else:
                p.grad.copy_(g)
        if snap is not None:
            restore_optimizer(optimizer, snap)
    metrics_t = torch.stack(metrics)
    gains = sign * (metrics_t - base)
    rule = HydaLearn(main_task=main_task, normalize=normalize, fallback=fallback)
    G = torch.zeros(K, K, dtype=torch.float64, device=gains.device)
    weights = rule.weights(G, Context(num_tasks=K, device=gains.device, reference_dots=gains))
    return LookaheadResult(weights=weights, gains=gains, base_metric=base, metrics=metrics_t)
