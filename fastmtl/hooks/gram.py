"""Gram matrices from the hooks' records: the K×K task Gram, the per-(task, sample) Gramian and
dot products with a reference gradient, from one batched backward pass to the layer outputs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..gradients import loss_list
from torch import nn

from ..ops import gramian
from .capture import CallRecord, GramHooks
from .cost import LayerShape, StepCost, layer_cost, step_cost
from .ghost import (bias_sample_rows, bias_task_rows, conv2d_factors, linear_factors, sample_gram_ghost,
                    sample_gram_materialized, sample_reference_dots, task_gram_ghost, task_gram_materialized,
                    weight_blocks)

__all__ = ["HookGram", "ParamGroup", "param_groups", "task_gramian", "sample_gramian", "sample_dots",
           "per_sample_losses"]


@dataclass
class ParamGroup:
    """A hooked parameter and the recorded calls that use it (several for a layer called twice,
    or a weight shared by two layers)."""

    param: torch.Tensor
    name: str
    role: str  # "weight" or "bias"
    calls: List[int]
    shape: LayerShape


@dataclass
class HookGram:
    """What :func:`task_gramian` returns.

    Attributes:
        gram: ``[K, K]`` (float32; float64 for float64 models); rows of losses that do not
            require grad are zero.
        reference_dots: ``⟨v, g_k⟩`` ``[K]`` when a reference was given, else ``None``.
        layers: for every hooked weight, ``"ghost"`` or ``"materialize"`` (the way it was taken).
        cost: the cost model's estimate of this step in both modes.
    """

    gram: torch.Tensor
    reference_dots: Optional[torch.Tensor]
    layers: Dict[str, str] = field(default_factory=dict)
    cost: Optional[StepCost] = None


def _call_shape(r: CallRecord) -> Tuple[int, int, int, int, int]:
    """``(groups, B, L, d_in, d_out)`` of one call, from shapes only."""
    m = r.module
    if r.kind == "linear":
        d_in, d_out = m.in_features, m.out_features
        B = r.x.shape[0] if r.x.dim() > 1 else 1
        return 1, B, r.x.numel() // (d_in * B), d_in, d_out
    G = m.groups
    B = r.x.shape[0] if r.x.dim() == 4 else 1
    L = r.out_shape[-1] * r.out_shape[-2]
    return G, B, L, (m.in_channels // G) * m.kernel_size[0] * m.kernel_size[1], m.out_channels // G


def param_groups(hooks: GramHooks, records: List[CallRecord], per_sample: bool = False) -> List[ParamGroup]:
    """The hooked parameters used by ``records``, with their calls and the shape the cost model reads."""
    where: Dict[int, List[int]] = {}
    for i, r in enumerate(records):
        where.setdefault(id(r.module), []).append(i)
    out = []
    for p, name in zip(hooks.params, hooks.param_names):
        entry = hooks.hooked.get(id(p))
        if entry is None:
            continue
        role, uses = entry
        calls = sorted(i for m, _ in uses for i in where.get(id(m), []))
        if not calls:
            continue
        shapes = [_call_shape(records[i]) for i in calls]
        G, B, _, d_in, d_out = shapes[0]
        if per_sample and any(s[1] != B for s in shapes):
            raise ValueError(f"{name} is used on batches of different sizes ({sorted({s[1] for s in shapes})}): "
                             "per-sample Gramians need every call to see the same B samples")
        if per_sample:
            shape = LayerShape(name, G, B, sum(s[2] for s in shapes), d_in, d_out)
        else:
            shape = LayerShape(name, G, 1, sum(s[1] * s[2] for s in shapes), d_in, d_out)
        out.append(ParamGroup(p, name, role, calls, shape))
    return out


def _factors(r: CallRecord, D: torch.Tensor, need_inputs: bool = True):
    """``(A, D)`` of one call in the layout of :mod:`fastmtl.hooks.ghost`; ``A`` is ``None`` when
    not needed (a bias), which skips a convolution's unfold."""
    # Detached: the Gram is a statistic of this step, and a graph through the activations would
    # keep its intermediates alive.
    x = r.x.detach()
    if r.kind == "linear":
        A, D = linear_factors(x, D.detach(), r.module.out_features)
    elif need_inputs:
        A, D = conv2d_factors(r.module, x, D.detach())
    else:
        m, d = r.module, D.detach()
        if x.dim() == 3:
            d = d.unsqueeze(1)
        K, B, G = d.shape[0], d.shape[1], m.groups
        return None, d.reshape(K, B, G, m.out_channels // G, -1).permute(0, 2, 1, 4, 3)
    return (A if need_inputs else None), D


def _output_gradients(hooks: GramHooks, outputs: torch.Tensor, cotangents: torch.Tensor, edges: List[Any],
                      tensors: Sequence[torch.Tensor], batched: Optional[bool] = None) -> List[Optional[torch.Tensor]]:
    """``∂⟨c_r, outputs⟩/∂x`` for every cotangent row ``c_r`` and every input (edges, then tensors):
    ``[R, *shape]`` each, ``None`` where nothing reaches it. One backward pass vmapped over the R
    rows (``batched=True`` insists; ``False``: R passes); a model whose backward cannot be vmapped
    falls back to R passes (one warning per hooks)."""
    inputs = list(edges) + list(tensors)
    if not inputs:
        return []
    R = cotangents.shape[0]
    if R == 1:
        g = torch.autograd.grad(outputs, inputs, grad_outputs=cotangents[0], retain_graph=True, allow_unused=True)
        return [None if t is None else t.unsqueeze(0) for t in g]
    if batched or (batched is None and not hooks.batched_failed):
        try:
            return list(torch.autograd.grad(outputs, inputs, grad_outputs=cotangents, is_grads_batched=True,
                                            retain_graph=True, allow_unused=True))
        except (RuntimeError, NotImplementedError) as exc:
            if batched:
                raise
            hooks.batched_failed = True
            warnings.warn(f"fastmtl.hooks: the batched backward pass failed ({str(exc).splitlines()[0][:200]}); "
                          f"using {R} backward passes for these hooks from now on", RuntimeWarning, stacklevel=3)
    rows = [torch.autograd.grad(outputs, inputs, grad_outputs=cotangents[r], retain_graph=True, allow_unused=True)
            for r in range(R)]
    out = []
    for i in range(len(inputs)):
        present = [row[i] for row in rows if row[i] is not None]
        if not present:
            out.append(None)
            continue
        out.append(torch.stack([row[i] if row[i] is not None else torch.zeros_like(present[0]) for row in rows]))
    return out


def _choice(hooks: GramHooks, shape: LayerShape, K: int, per_sample: bool) -> str:
    return hooks.layer_gram if hooks.layer_gram != "auto" else layer_cost(shape, K, per_sample).choice


def _add(total: Optional[torch.Tensor], term: torch.Tensor) -> torch.Tensor:
    if total is None:
        return term
    if term.dtype != total.dtype:
        dtype = torch.promote_types(total.dtype, term.dtype)
        return total.to(dtype) + term.to(dtype)
    return total + term


def _check_reference(hooks: GramHooks, reference: Any) -> List[Optional[torch.Tensor]]:
    if isinstance(reference, torch.Tensor) or not isinstance(reference, Sequence):
        raise TypeError("the reference gradient must be a sequence with one tensor (or None) per shared parameter")
    if len(reference) != len(hooks.params):
        raise ValueError(f"the reference gradient has {len(reference)} entries but the hooks have "
                         f"{len(hooks.params)} shared parameters")
    out = []
    for p, name, v in zip(hooks.params, hooks.param_names, reference):
        if v is not None and tuple(v.shape) != tuple(p.shape):
            raise ValueError(f"reference gradient of {name}: shape {tuple(v.shape)}, parameter {tuple(p.shape)}")
        out.append(None if v is None else v.detach())
    return out


def _weight_terms(hooks: GramHooks, records, D_list, groups: List[ParamGroup], K: int, per_sample: bool,
                  reference, want_gram: bool):
    """Σ over hooked parameters of their Gram terms (and reference dots ``[K, B]``)."""
    gram = dots = None
    layers: Dict[str, str] = {}
    ref_of = {id(p): v for p, v in zip(hooks.params, reference)} if reference is not None else {}
    remaining = [0] * len(records)
    for grp in groups:
        for i in grp.calls:
            remaining[i] += 1
    for grp in groups:
        parts = [_factors(records[i], D_list[i], need_inputs=grp.role == "weight") for i in grp.calls]
        v = ref_of.get(id(grp.param))
        if grp.role == "weight":
            if want_gram:
                if len(parts) == 1:
                    A, D = parts[0]
                elif per_sample:
                    A = torch.cat([a for a, _ in parts], dim=2)
                    D = torch.cat([d for _, d in parts], dim=3)
                else:
                    A = torch.cat([a.reshape(a.shape[0], 1, -1, a.shape[-1]) for a, _ in parts], dim=2)
                    D = torch.cat([d.reshape(d.shape[0], d.shape[1], 1, -1, d.shape[-1]) for _, d in parts], dim=3)
                way = _choice(hooks, grp.shape, K, per_sample)
                layers[grp.name] = way
                if per_sample:
                    term = sample_gram_ghost(A, D) if way == "ghost" else sample_gram_materialized(A, D)
                else:
                    term = task_gram_ghost(A, D) if way == "ghost" else task_gram_materialized(A, D)
                gram = _add(gram, term)
                del A, D
            if v is not None:
                V = weight_blocks(v, grp.shape.groups)
                for A, D in parts:
                    d = sample_reference_dots(A, D, V)
                    dots = _add(dots, d if per_sample else d.sum(1))
        else:
            rows = None
            for _, D in parts:
                rows = _add(rows, bias_sample_rows(D) if per_sample else bias_task_rows(D))
            if want_gram:
                gram = _add(gram, rows @ rows.T)
            if v is not None:
                d = rows @ v.reshape(-1).to(rows.dtype)
                dots = _add(dots, d.reshape(K, -1) if per_sample else d)
        del parts
        for i in grp.calls:  # free each call's output gradients once its last parameter is done
            remaining[i] -= 1
            if remaining[i] == 0:
                D_list[i] = None
    return gram, dots, layers


def _embed(G: Optional[torch.Tensor], active: List[int], K: int, dtype: torch.dtype, device) -> torch.Tensor:
    if G is None:
        G = torch.zeros(len(active), len(active), dtype=dtype, device=device)
    if len(active) == K:
        return G
    idx = torch.tensor(active, device=G.device)
    full = torch.zeros(K, K, dtype=G.dtype, device=G.device)
    full[idx[:, None], idx[None, :]] = G
    return full


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _fallback_terms(grads: List[Optional[torch.Tensor]], params: List[torch.Tensor], ref_of: Dict[int, Any],
                    want_gram: bool):
    """Gram and reference dots of materialised rows ``[R, *shape]`` (the fallback parameters)."""
    present = [(g, p) for g, p in zip(grads, params) if g is not None]
    if not present:
        return None, None
    R = present[0][0].shape[0]
    G = gramian([[g[r] for g, _ in present] for r in range(R)]) if want_gram else None
    dots = None
    for g, p in present:
        v = ref_of.get(id(p))
        if v is not None:
            acc = _acc(g)
            dots = _add(dots, g.reshape(R, -1).to(acc) @ v.reshape(-1).to(acc))
    return G, dots


def task_gramian(losses: Any, hooks: Any, *, reference: Any = None, need_gram: bool = True,
                 batched: Optional[bool] = None) -> HookGram:
    """The K×K Gram of the task gradients over the hooks' parameters, from the recorded calls.

    One backward pass (vmapped over the K one-hot cotangents) to the outputs of the hooked layers
    and to the fallback parameters; then, per hooked weight, the ghost products or this layer's
    K gradients (:mod:`fastmtl.hooks.cost`), per bias its K row sums, and the materialised Gram of
    the fallback parameters. The graph is kept (a backward of ``Σ λ_k ℓ_k`` follows). The records
    stay until ``hooks.clear()``.

    Args:
        losses: K scalar losses (a sequence, or a ``[K]`` tensor).
        hooks: a :class:`GramHooks` (or a module it is registered on) that saw the forward pass.
        reference: a reference gradient ``v`` (one tensor or ``None`` per ``hooks.params``) for
            ``reference_dots = ⟨v, g_k⟩``.
        need_gram: ``False`` computes only the reference dots.
        batched: ``None``/``True``: one backward pass vmapped over the K losses (``None`` falls
            back to K passes, with one warning, where the backward cannot be vmapped; ``True``
            raises there); ``False``: K passes.
    """
    hk = _resolve(hooks)
    L = loss_list(losses)
    K = len(L)
    active = [k for k, l in enumerate(L) if l.requires_grad]
    ref = _check_reference(hk, reference) if reference is not None else None
    records = hk.calls_on_path([L[k].grad_fn for k in active])
    stacked = torch.stack([L[k] for k in active])
    eye = torch.eye(len(active), dtype=stacked.dtype, device=stacked.device)
    grads = _output_gradients(hk, stacked, eye, [r.out_edge for r in records], hk.fallback_params, batched)
    n = len(records)
    keep = [i for i in range(n) if grads[i] is not None]
    records, D_list, fb_grads = [records[i] for i in keep], [grads[i] for i in keep], grads[n:]
    del grads  # D_list alone holds the output gradients: each is freed once its layer is done
    hk.check_versions(records)
    groups = param_groups(hk, records)
    Ka = len(active)
    gram, dots, layers = _weight_terms(hk, records, D_list, groups, Ka, False, ref, need_gram)
    ref_of = {id(p): v for p, v in zip(hk.params, ref)} if ref is not None else {}
    fg, fd = _fallback_terms(fb_grads, hk.fallback_params, ref_of, need_gram)
    if fg is not None:
        gram = _add(gram, fg)
    if fd is not None:
        dots = _add(dots, fd)
    acc = _acc(stacked)
    G = _embed(gram, active, K, acc, stacked.device) if need_gram else None
    ref_dots = None
    if ref is not None:
        d = dots if dots is not None else torch.zeros(Ka, dtype=acc, device=stacked.device)
        ref_dots = torch.zeros(K, dtype=d.dtype, device=d.device)
        ref_dots[torch.tensor(active, device=d.device)] = d
    cost = step_cost([g.shape for g in groups if g.role == "weight"], K)
    return HookGram(G, ref_dots, layers, cost)


def per_sample_losses(losses: Any) -> torch.Tensor:
    """``[K, B]`` per-sample losses from a ``[K, B]`` tensor or K tensors of ``[B]``."""
    if isinstance(losses, torch.Tensor):
        out = losses
    elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)) and len(losses):
        if not all(isinstance(t, torch.Tensor) for t in losses):
            raise TypeError("per-sample losses must be a [K, B] tensor or K tensors of [B]")
        out = torch.stack([t.reshape(-1) for t in losses])
    else:
        raise TypeError(f"per-sample losses must be a [K, B] tensor or K tensors of [B], got {type(losses).__name__}")
    if out.dim() != 2 or out.numel() == 0:
        raise ValueError(f"per-sample losses must be [K, B] with K, B ≥ 1, got shape {tuple(out.shape)}")
    if not out.requires_grad:
        raise ValueError("the per-sample losses do not require grad: nothing to differentiate")
    return out


_BATCH_MIXING = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _sample_pass(losses: Any, hooks: Any, reference: Any):
    hk = _resolve(hooks)
    for root in hk.modules:
        for name, m in root.named_modules():
            if isinstance(m, _BATCH_MIXING) and m.training:
                raise ValueError(f"{name or type(m).__name__} is a BatchNorm in training mode: it mixes the samples "
                                 "of a batch, so per-sample gradients cannot be read from the batch's output "
                                 "gradients. Use fastmtl.training.slgrad_step (forward-mode JVP) or eval mode")
    Ls = per_sample_losses(losses)
    K, B = Ls.shape
    ref = _check_reference(hk, reference) if reference is not None else None
    records = hk.calls_on_path([Ls.grad_fn])
    # Row b of ∂(Σ_b ℓ_{k,b})/∂out is ∂ℓ_{k,b}/∂out_b: samples do not mix (no BatchNorm in training mode).
    cot = torch.eye(K, dtype=Ls.dtype, device=Ls.device)[:, :, None].expand(K, K, B).contiguous()
    grads = _output_gradients(hk, Ls, cot, [r.out_edge for r in records], [])
    keep = [i for i in range(len(records)) if grads[i] is not None]
    records, D_list = [records[i] for i in keep], [grads[i] for i in keep]
    hk.check_versions(records)
    fb = []
    if hk.fallback_params:  # per-sample rows of parameters outside known layers: K·B cotangents
        cot_fb = torch.eye(K * B, dtype=Ls.dtype, device=Ls.device).reshape(K * B, K, B)
        fb = _output_gradients(hk, Ls, cot_fb, [], hk.fallback_params)
    return hk, Ls, records, D_list, fb, ref


def sample_gramian(losses: Any, hooks: Any) -> torch.Tensor:
    """Gramian of the K·B per-(task, sample) gradients ``∇ℓ_{k,b}`` over the hooks' parameters:
    ``[K·B, K·B]``, task-major rows (``k·B + b``), without forming them (ghost products per layer
    where cheaper, :mod:`fastmtl.hooks.cost`).

    ``losses``: ``[K, B]`` per-sample losses (``reduction="none"``) or K tensors of ``[B]``. Samples
    must not interact in the forward pass (no BatchNorm in training mode, checked in the hooked
    modules), as for any per-sample gradient read from batch gradients.
    """
    hk, Ls, records, D_list, fb, _ = _sample_pass(losses, hooks, None)
    K, B = Ls.shape
    groups = param_groups(hk, records, per_sample=True)
    gram, _, _ = _weight_terms(hk, records, D_list, groups, K, True, None, True)
    fg, _ = _fallback_terms(fb, hk.fallback_params, {}, True)
    if fg is not None:
        gram = _add(gram, fg)
    if gram is None:
        gram = torch.zeros(K * B, K * B, dtype=_acc(Ls), device=Ls.device)
    return gram


def sample_dots(losses: Any, hooks: Any, reference: Any) -> torch.Tensor:
    """``a_{k,b} = ⟨∇ℓ_{k,b}, v⟩`` for a reference gradient ``v`` (one tensor or ``None`` per
    ``hooks.params``): ``[K, B]``, one product of each layer's inputs with ``v`` and a dot with its
    output gradients; no per-sample gradient is formed (except for fallback parameters)."""
    hk, Ls, records, D_list, fb, ref = _sample_pass(losses, hooks, reference)
    K, B = Ls.shape
    groups = param_groups(hk, records, per_sample=True)
    _, dots, _ = _weight_terms(hk, records, D_list, groups, K, True, ref, False)
    ref_of = {id(p): v for p, v in zip(hk.params, ref)}
    _, fd = _fallback_terms(fb, hk.fallback_params, ref_of, False)
    if fd is not None:
        dots = _add(dots, fd.reshape(K, B))
    if dots is None:
        dots = torch.zeros(K, B, dtype=_acc(Ls), device=Ls.device)
    return dots


def _resolve(hooks: Any) -> GramHooks:
    from .capture import hooks_for

    hk = hooks_for(hooks)
    if hk is None:
        raise TypeError("expected a fastmtl.hooks.GramHooks (or a module one is registered on), created before the "
                        f"forward pass; got {type(hooks).__name__}")
    return hk
