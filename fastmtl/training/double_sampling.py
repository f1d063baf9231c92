"""``double_sampling_backward``: MoDo's and SDMGrad's step from independent minibatches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ..methods import Context, make_method
from ..ops import gramian, weighted_sum
from ..pipeline import guarded_weights
from .task_autograd import loss_list, param_list, task_gradients

__all__ = ["double_sampling_backward", "DoubleSamplingInfo"]


@dataclass
class DoubleSamplingInfo:
    """``weights``: λ (float64 ``[K]``); ``cross_gram``: ``A = J₁J₂ᵀ`` as accumulated (``A_ij =
    ⟨g_i(z₁), g_j(z₂)⟩``); ``method``: the instance (with its state)."""

    weights: torch.Tensor
    cross_gram: torch.Tensor
    method: Any


def double_sampling_backward(loss_sets: Sequence[Any], shared_params: Any, method: Any = "modo", *,
                             head_params: Any = None, batched: Optional[bool] = None, backend: Optional[str] = None,
                             head_weighting: str = "auto", **hyperparameters: Any) -> DoubleSamplingInfo:
    """A training step of a double-sampling method (MoDo, SDMGrad) from independent minibatches.

    MoDo (Chen et al., NeurIPS 2023) and SDMGrad (Xiao et al., NeurIPS 2023) update their weights
    with ``A = J₁J₂ᵀ``, the task gradients of **two independent minibatches** paired (an unbiased
    estimate of ``JJᵀ``; one batch's ``JJᵀ`` is biased), so one step needs the task gradients
    twice — or three times, the direction coming from a third batch:

    * ``loss_sets = [losses₁, losses₂, losses₃]`` (the papers' ``z₁, z₂, z₃``; SDMGrad's ``ξ, ξ', ζ``;
      LibMTL's form): ``λ`` from ``A = J₁J₂ᵀ``, ``d = Σ_k λ_k g_k(z₃)``;
    * ``loss_sets = [losses₁, losses₂]``: ``λ`` from ``A``, ``d = Σ_k λ_k (g_k(z₁) + g_k(z₂))/2``
      (TorchJD's two-batch form; the authors' MoDo code sums the two instead of averaging, a
      factor 2 its learning rate absorbs).

    Each set holds the K task losses of one minibatch (with their graphs; e.g. K losses of
    ``model(x_s)``). ``A`` comes from one Gram pass over both sets' ``2K`` gradients (its
    off-diagonal block; nothing is concatenated) and λ from ``method.weights(A, ...)``; ``d`` is
    **added** to the shared parameters' ``.grad`` like :func:`fastmtl.backward` does. Heads
    (``head_params``) get the mean over the sets of ``∇ Σ_k ℓ_k`` (``"sum"``, these methods'
    convention) or of ``∇ Σ_k λ_k ℓ_k`` (``"weighted"``); LibMTL's MoDo also averages the heads
    over its three batches (the official SDMGrad code sums them).

    For one batch only, ``fastmtl.backward(losses, shared, method)`` runs the single-sample form
    (``A = JJᵀ``). Single process: for sharded gradients use ``combine(..., process_group=pg)``
    with the single-sample form.

    Args:
        loss_sets: 2 or 3 sequences of K scalar losses, from independent minibatches.
        shared_params: the shared parameters (a sequence or a module).
        method: ``"modo"`` / ``"sdmgrad"`` (built with ``**hyperparameters``) or a kept instance of a
            method that accepts a cross Gram.
        head_params, batched, backend, head_weighting: as in :func:`fastmtl.backward`.
    """
    if isinstance(loss_sets, torch.Tensor) or not isinstance(loss_sets, Sequence) or len(loss_sets) not in (2, 3):
        raise ValueError("loss_sets must hold 2 or 3 sequences of K losses (independent minibatches), got "
                         f"{len(loss_sets) if isinstance(loss_sets, Sequence) else type(loss_sets).__name__}")
    sets = [loss_list(s) for s in loss_sets]
    K = len(sets[0])
    for i, s in enumerate(sets[1:], start=1):
        if len(s) != K:
            raise ValueError(f"loss set {i} has {len(s)} losses, set 0 has {K}")
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
    m = make_method(method, dict(hyperparameters))
    if not getattr(m, "accepts_cross_gram", False):
        raise TypeError(f"method {m.name or type(m).__name__!r} does not take a cross Gram of two samples; "
                        "double sampling is for MoDo and SDMGrad (use fastmtl.backward for the others)")
    m.check_num_tasks(K)

    need_heads = bool(heads)
    grads = [task_gradients(s, shared, batched=batched, retain_graph=need_heads) for s in sets]
    both = [list(row) for row in grads[0]] + [list(row) for row in grads[1]]
    A = gramian(both, backend=backend)[:K, K:]
    device = A.device
    losses = torch.stack([torch.stack([l.detach().to(torch.float64) for l in s]) for s in sets]).mean(0).to(device)
    lam = guarded_weights(m, A, Context(num_tasks=K, device=device, losses=losses), False)
    m.record_num_tasks(K)

    if len(sets) == 3:
        rows, coef = [list(row) for row in grads[2]], lam
    else:
        rows, coef = both, torch.cat([lam, lam]) * 0.5
    touched = [any(row[p] is not None for row in rows) for p in range(len(shared))]
    bufs = [torch.empty_like(p) if touched[i] else None for i, p in enumerate(shared)]
    weighted_sum(rows, coef, out=bufs, backend=backend)
    for p, buf in zip(shared, bufs):
        if buf is None:
            continue
        if p.grad is None:
            p.grad = buf
        else:
            p.grad.add_(buf)

    if need_heads:
        convention = head_weighting if head_weighting != "auto" else m.head_weighting
        outs, cots = [], []
        for s in sets:
            for k, l in enumerate(s):
                if l.requires_grad:
                    c = lam[k] if convention == "weighted" else torch.ones((), dtype=torch.float64)
                    outs.append(l)
                    cots.append((c / len(sets)).to(dtype=l.dtype, device=l.device))
        torch.autograd.backward(outs, grad_tensors=cots, inputs=heads)
    return DoubleSamplingInfo(weights=lam, cross_gram=A, method=m)
