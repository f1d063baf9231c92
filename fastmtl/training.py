"""Training-loop helpers: task gradients → combination → ``.grad``.

* :func:`backward` — the multi-task counterpart of ``loss.backward()``: K task gradients of the
  shared parameters, one :func:`fastmtl.combine` call, the result accumulated into ``.grad``, and
  the task-specific heads back-propagated with the method's head convention.
* :func:`task_gradients` — just the K task gradients (looped or one batched autograd call).
* :func:`slgrad_step` — SLGrad's sample-level step with one forward-mode JVP instead of K·B
  backward passes.
* :func:`hydalearn_lookahead_weights` — HydaLearn's exact ("fake update") gains, with the
  parameters and the optimizer state restored bitwise afterwards.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch

from .api import CombineInfo, _check_num_tasks, _method_weights, combine
from .methods import METHODS, Method, make_method
from .methods.hydalearn import HydaLearn
from .methods.slgrad import SLGrad
from .ops import weighted_sum

__all__ = ["backward", "task_gradients", "head_weighting", "UNWEIGHTED_HEAD_METHODS", "slgrad_step",
           "SLGradStepInfo", "hydalearn_lookahead_weights", "LookaheadResult"]

#: Methods whose reference implementations give every task-specific (head) parameter the plain,
#: unweighted gradient of its own task (``Σ_k ℓ_k`` restricted to the heads): the gradient-surgery
#: family, whose combination is not a loss weighting (PCGrad and CAGrad official codes, GradDrop,
#: GradVac, weighted PCGrad, ConFIG), LibMTL's gradient-method convention (DB-MTL) and TorchJD's
#: ``mtl_backward`` (UPGrad, DualProj). Every other method is a loss weighting (mean, sum, MGDA,
#: IMTL-G, Aligned-MTL, Nash-MTL, HydaLearn, OL-AUX, GradNorm, FAMO, UW, DWA, RLW, GeMTL, ...), and
#: its heads get ``Σ_k λ_k ℓ_k``, the convention of the reference implementations.
UNWEIGHTED_HEAD_METHODS = frozenset({"pcgrad", "wpcgrad", "cagrad", "graddrop", "gradvac", "config", "db_mtl",
                                     "upgrad", "dualproj"})

#: ``batched=None`` uses the batched autograd call when K × (number of parameter values) is at most
#: this. Measured on CPU MLPs (docs/training_and_experiments.md): the batched call is 1.2–2.3×
#: faster for small models (K·D up to ~0.3M), even at ~3M, and 0.8–1.1× at 21M, where holding K
#: cotangents per activation at once costs more memory traffic than the K separate passes.
BATCHED_AUTO_MAX_ELEMENTS = 1 << 22

# Shared-parameter sets (by identity) for which the batched autograd call failed once: later calls
# use the K-call loop straight away instead of failing again.
_BATCHED_FAILED: set = set()


# --------------------------------------------------------------------------------------------------
# Task gradients


def _loss_list(losses: Any) -> List[torch.Tensor]:
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
    return out


def _param_list(params: Any, what: str) -> List[torch.Tensor]:
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


def _looped_grads(losses, params, keep_graph):
    K, P = len(losses), len(params)
    active = [k for k, l in enumerate(losses) if l.requires_grad]
    grads: List[Tuple] = [(None,) * P] * K
    for i, k in enumerate(active):
        last = i == len(active) - 1
        grads[k] = torch.autograd.grad(losses[k], params, retain_graph=keep_graph or not last, allow_unused=True)
    return grads


def _batched_grads(losses, params, keep_graph):
    K = len(losses)
    stacked = torch.stack(losses)
    eye = torch.eye(K, dtype=stacked.dtype, device=stacked.device)
    cols = torch.autograd.grad(stacked, params, grad_outputs=eye, is_grads_batched=True,
                               retain_graph=keep_graph, allow_unused=True)
    # cols[p] is [K, *shape]; rows are views, never copies.
    return [tuple(None if c is None else c[k] for c in cols) for k in range(K)]


def task_gradients(losses: Any, params: Any, *, batched: Optional[bool] = None,
                   retain_graph: bool = False) -> List[Tuple[Optional[torch.Tensor], ...]]:
    """The K task gradients ``∇_θ ℓ_k`` of ``params``, as K tuples of per-parameter tensors.

    ``None`` marks a parameter that task ``k`` does not reach (``allow_unused``); this is the
    ``[K][P]`` input form of :func:`fastmtl.combine`.

    Args:
        losses: K scalar losses (a sequence, or a ``[K]`` tensor).
        params: the parameters (a sequence, or a module).
        batched: ``True``: one ``torch.autograd.grad(..., is_grads_batched=True)`` call (the
            backward pass vmapped over the K one-hot output cotangents); ``False``: K calls with
            ``retain_graph``; ``None`` (default): batched when ``K × numel(params) ≤``
            :data:`BATCHED_AUTO_MAX_ELEMENTS` (4M), else the loop; a batched call that fails (an
            operation without a batching rule) falls back to the loop, with one warning, and the
            loop is used for this parameter set from then on. In the batched form a task that does
            not reach a parameter gets zeros, not ``None``, unless no task reaches it. Measured on
            CPU MLPs, batched is 1.2–2.3× faster for small models and slower for large ones (see
            ``docs/training_and_experiments.md``); it holds K cotangents per activation at once,
            so the loop needs less memory.
        retain_graph: keep the graph after the last call (for more backward passes on it).
    """
    losses = _loss_list(losses)
    params = _param_list(params, "params")
    if not params:
        raise ValueError("params is empty")
    if not any(l.requires_grad for l in losses):
        raise ValueError("no loss requires grad: nothing to differentiate")
    key = tuple(id(p) for p in params)
    if batched is None:
        size = len(losses) * sum(p.numel() for p in params)
        use_batched = key not in _BATCHED_FAILED and size <= BATCHED_AUTO_MAX_ELEMENTS
    else:
        use_batched = batched
    if len(losses) == 1 or not all(l.requires_grad for l in losses):
        use_batched = False
    if use_batched:
        try:
            return _batched_grads(losses, params, retain_graph)
        except (RuntimeError, NotImplementedError) as exc:
            if batched:
                raise
            _BATCHED_FAILED.add(key)
            warnings.warn(f"fastmtl: the batched task-gradient call failed ({str(exc).splitlines()[0][:200]}); "
                          "using K autograd calls for these parameters from now on", RuntimeWarning, stacklevel=2)
    return _looped_grads(losses, params, retain_graph)


# --------------------------------------------------------------------------------------------------
# backward


def head_weighting(method: Any) -> str:
    """``"weighted"`` (heads get ``Σ λ_k ℓ_k``) or ``"sum"`` (plain per-task gradients) for a method.

    A method class may declare its own convention with a ``head_weighting`` class attribute;
    otherwise :data:`UNWEIGHTED_HEAD_METHODS` lists the ``"sum"`` methods.
    """
    declared = getattr(method, "head_weighting", None)
    if declared is not None:
        return declared
    name = method if isinstance(method, str) else getattr(method, "name", "")
    return "sum" if name.lower().replace("-", "_") in UNWEIGHTED_HEAD_METHODS else "weighted"


def _accepts(cls, name: str) -> bool:
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return False
    return name in sig.parameters or any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def _reference_for(reference_grad, shared, touched):
    if isinstance(reference_grad, torch.Tensor) or not isinstance(reference_grad, Sequence):
        raise TypeError("reference_grad must be a sequence with one tensor (or None) per shared parameter")
    if len(reference_grad) != len(shared):
        raise ValueError(f"reference_grad has {len(reference_grad)} entries but there are {len(shared)} shared "
                         "parameters")
    return [None if (r is None or not touched[p]) else r.detach() for p, r in enumerate(reference_grad)]


def backward(losses: Any, shared_params: Any, method: Any = "mean", *, main_task: Optional[int] = None,
             reference_grad: Any = None, head_params: Any = None, generator: Optional[torch.Generator] = None,
             backend: Optional[str] = None, batched: Optional[bool] = None, return_info: bool = True,
             head_weighting: str = "auto", retain_graph: bool = False,
             **hyperparameters: Any) -> Optional[CombineInfo]:
    """Multi-task ``loss.backward()``: combine the task gradients of the shared parameters.

    1. ``g_k = ∇_shared ℓ_k`` for the K losses (:func:`task_gradients`: one batched autograd call
       or K calls; ``batched`` as there).
    2. ``d = fastmtl.combine([g_k], method, losses=ℓ, ...)`` (``d = Σ_k λ_k g_k`` for Gram-space and
       loss-weighting methods).
    3. ``d`` is **added** to the ``.grad`` of each shared parameter, like ``loss.backward()``
       accumulates (a ``.grad`` that is ``None`` is created and written directly by the combine
       kernel, with no extra pass; call ``optimizer.zero_grad()`` between steps as usual). Shared
       parameters that no task reaches keep their ``.grad`` unchanged.
    4. Task-specific parameters (``head_params``) are back-propagated in one autograd pass,
       accumulating into their ``.grad``, with the method's convention:

       * ``"weighted"`` — ``∇_heads Σ_k λ_k ℓ_k``, λ detached: every loss-weighting method
         (mean, sum, MGDA, IMTL-G, Aligned-MTL, Nash-MTL, HydaLearn, OL-AUX, GradNorm, FAMO, UW,
         DWA, RLW, GeMTL), so that heads and trunk see the same weighted objective;
       * ``"sum"`` — ``∇_heads Σ_k ℓ_k``, each head its own plain task gradient: PCGrad, weighted
         PCGrad, CAGrad, GradDrop, GradVac, ConFIG (gradient surgery: their official codes),
         DB-MTL (LibMTL's convention for gradient methods) and UPGrad / DualProj (TorchJD's
         ``mtl_backward``).

       ``head_weighting="weighted"|"sum"`` overrides it; see :func:`head_weighting`. Parameters that
       are neither shared nor heads are not touched.

    Args:
        losses: K scalar losses (a sequence, or a ``[K]`` tensor), each with its graph.
        shared_params: the shared parameters (a sequence, or a module such as the trunk).
        method: a method name built with ``**hyperparameters``, or a kept method instance.
        main_task: for auxiliary-task methods (HydaLearn, OL-AUX): passed to the constructor of a
            named method; for an instance it must match the instance's own ``main_task``.
        reference_grad: a main-task reference gradient for methods that use one (HydaLearn:
            ``δ_k = ⟨v, g_k⟩``), one tensor (or ``None``) per shared parameter, e.g. the gradient
            of the main-task loss on a validation batch. It adds one row to the Gram pass.
        head_params: the task-specific parameters (a sequence, or a module such as a
            ``ModuleList`` of heads); ``None``: only the shared parameters get gradients.
        generator, backend: forwarded to :func:`fastmtl.combine`.
        batched: see :func:`task_gradients`.
        return_info: return the :class:`fastmtl.CombineInfo` (λ, Gram, cosines); ``False``
            returns ``None`` and lets loss-only methods skip the Gram pass.
        retain_graph: keep the losses' graph afterwards.

    SLGrad weights (task, sample) pairs and needs per-sample losses: use :func:`slgrad_step`.
    No host synchronisation happens here (unless the method itself synchronises).
    """
    loss_list = _loss_list(losses)
    shared = _param_list(shared_params, "shared_params")
    heads = _param_list(head_params, "head_params")
    if not shared:
        raise ValueError("shared_params is empty")
    shared_ids = {id(p) for p in shared}
    for i, p in enumerate(heads):
        if id(p) in shared_ids:
            raise ValueError(f"head_params[{i}] is also a shared parameter")
    if head_weighting not in ("auto", "weighted", "sum"):
        raise ValueError(f"head_weighting must be 'auto', 'weighted' or 'sum', got {head_weighting!r}")

    # The method, configured before any gradient is computed so that bad arguments fail early.
    instance = isinstance(method, Method)
    if instance:
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
        if isinstance(method, str):
            cls = _method_class(method)
        elif isinstance(method, type) and issubclass(method, Method):
            cls = method
        else:
            raise TypeError(f"method must be a name or a fastmtl.methods.Method instance, got {type(method).__name__}")
        if main_task is not None:
            if not _accepts(cls, "main_task"):
                raise TypeError(f"method {cls.name!r} has no main task; do not pass main_task")
            hyperparameters = dict(hyperparameters, main_task=main_task)
    if issubclass(cls, SLGrad):
        raise TypeError("SLGrad weights (task, sample) pairs: use fastmtl.training.slgrad_step (or "
                        "fastmtl.combine on per-sample gradients), not fastmtl.backward")
    if reference_grad is not None and not getattr(cls, "uses_reference", False):
        raise TypeError(f"method {getattr(cls, 'name', cls.__name__)!r} does not use a reference gradient")

    need_heads = any(True for _ in heads)
    grads = task_gradients(loss_list, shared, batched=batched, retain_graph=retain_graph or need_heads)
    K, P = len(grads), len(shared)
    touched = [any(grads[k][p] is not None for k in range(K)) for p in range(P)]
    loss_vec = torch.stack([l.detach().to(torch.float64) for l in loss_list])

    m = method if instance else None
    saved_reference = None
    if reference_grad is not None:
        ref = _reference_for(reference_grad, shared, touched)
        if instance:
            saved_reference = method.reference
            method.reference = ref
        else:
            hyperparameters = dict(hyperparameters, reference=ref)
    if m is None:
        m = make_method(method, dict(hyperparameters))

    # Output buffers: a fresh buffer becomes .grad; an existing .grad gets the direction added.
    bufs = [torch.empty_like(p) if touched[p_i] else None for p_i, p in enumerate(shared)]
    try:
        convention = head_weighting if head_weighting != "auto" else _head_convention(m)
        if not return_info and not m.requires_gram and not m.gram_free_direction:
            # Loss-only weighting: λ without a Gram pass (which combine(return_info=True) would
            # add), then one weighted sum — the same steps as combine.
            _check_num_tasks(m, K)
            lam = _method_weights(m, None, losses=loss_vec, generator=generator, reference_dots=None, num_tasks=K,
                                  check_finite=False, device=shared[0].device)
            weighted_sum(grads, lam, out=bufs, backend=backend)
            info = None
        elif not return_info and not (need_heads and convention == "weighted"):
            combine(grads, m, losses=loss_vec, generator=generator, backend=backend, out=bufs)
            info = lam = None
        else:
            _, info = combine(grads, m, losses=loss_vec, generator=generator, backend=backend, out=bufs,
                              return_info=True)
            lam = info.weights
    finally:
        if instance and reference_grad is not None:
            method.reference = saved_reference
    for p, buf in zip(shared, bufs):
        if buf is None:
            continue
        if p.grad is None:
            p.grad = buf
        else:
            p.grad.add_(buf)

    if need_heads:
        active = [k for k, l in enumerate(loss_list) if l.requires_grad]
        if convention == "weighted":
            if lam is None:
                raise ValueError(f"method {m.name!r} returns no weights λ; pass head_weighting='sum'")
            cot = [lam[k].to(dtype=loss_list[k].dtype, device=loss_list[k].device) for k in active]
        else:
            cot = [torch.ones_like(loss_list[k]) for k in active]
        torch.autograd.backward([loss_list[k] for k in active], grad_tensors=cot, inputs=heads,
                                retain_graph=retain_graph)
    return info if return_info else None


def _method_class(name: str):
    key = name.lower().replace("-", "_")
    if key not in METHODS:
        make_method(name, {})  # raises the registry's error (with close matches)
    return METHODS[key]


def _head_convention(m: Method) -> str:
    return head_weighting(m)


# --------------------------------------------------------------------------------------------------
# SLGrad


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


# --------------------------------------------------------------------------------------------------
# HydaLearn exact look-ahead


class LookaheadResult(NamedTuple):
    """``weights`` λ ``[K]`` (float64, HydaLearn's normalisation), ``gains`` δ ``[K]``, and the metric
    before (``base_metric``) and after each fake step (``metrics`` ``[K]``)."""

    weights: torch.Tensor
    gains: torch.Tensor
    base_metric: torch.Tensor
    metrics: torch.Tensor


def _snapshot_optimizer(optimizer: torch.optim.Optimizer):
    state = {}
    for p, s in optimizer.state.items():
        state[p] = {k: (v.clone() if isinstance(v, torch.Tensor) else _copy_value(v)) for k, v in s.items()}
    groups = [{k: _copy_value(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    return state, groups


def _copy_value(v):
    return copy.deepcopy(v)


def _restore_optimizer(optimizer: torch.optim.Optimizer, snap) -> None:
    state, groups = snap
    for p in list(optimizer.state.keys()):
        if p not in state:
            del optimizer.state[p]
    for p, saved in state.items():
        live = optimizer.state[p]
        for k in list(live.keys()):
            if k not in saved:
                del live[k]
        for k, v in saved.items():
            cur = live.get(k)
            if isinstance(v, torch.Tensor) and isinstance(cur, torch.Tensor) and cur.shape == v.shape \
                    and cur.dtype == v.dtype and cur.device == v.device:
                cur.copy_(v)  # in place: keeps tensor identity (fused / capturable optimizers)
            else:
                live[k] = v
    for g, saved in zip(optimizer.param_groups, groups):
        for k in list(g.keys()):
            if k != "params" and k not in saved:
                del g[k]
        g.update(saved)


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
    plist = _param_list(params, "params")
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
    snap = _snapshot_optimizer(optimizer) if optimizer is not None else None
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
                _restore_optimizer(optimizer, snap)
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
            _restore_optimizer(optimizer, snap)
    metrics_t = torch.stack(metrics)
    gains = sign * (metrics_t - base)
    rule = HydaLearn(main_task=main_task, normalize=normalize, fallback=fallback)
    weights = rule.weights(torch.zeros(K, K, dtype=torch.float64), reference_dots=gains, num_tasks=K)
    return LookaheadResult(weights=weights, gains=gains, base_metric=base, metrics=metrics_t)
