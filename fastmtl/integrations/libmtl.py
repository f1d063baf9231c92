"""Any fastmtl method as a LibMTL weighting strategy (``AbsWeighting``-compatible).

LibMTL's ``Trainer`` builds its model as ``class MTLmodel(architecture, weighting)``, calls
``init_param()``, and each step ``w = model.backward(train_losses, **weight_args)``, storing ``w``
as the step's task weights. :func:`weighting` returns such a weighting class::

    from fastmtl.integrations.libmtl import weighting
    UPGradW = weighting("upgrad")                         # or weighting("cagrad", c=0.4), ...
    trainer = Trainer(task_dict, weighting=UPGradW, architecture=HPS, ...,
                      kwargs={"weight_args": {}, "arch_args": {}})

(LibMTL releases that take the weighting by name look it up in ``LibMTL.weighting``; register the
class there first: ``LibMTL.weighting.FastMTL_upgrad = UPGradW``, then ``weighting="FastMTL_upgrad"``.)

The class relies only on what LibMTL's architectures provide — ``task_num``, ``task_name``,
``rep_grad``, ``rep`` / ``rep_tasks``, ``get_share_params()``, ``epoch`` — and never imports LibMTL.
Each step:

* ``rep_grad=False``: :func:`fastmtl.backward` on the shared parameters (``get_share_params()``):
  task gradients, the method's combination added to their ``.grad``, and every other trainable
  parameter of the model (the decoders) back-propagated with the method's head convention;
* ``rep_grad=True`` (one shared representation): the task gradients are taken with respect to the
  representation (all its samples, as in MGDA-UB), combined, and back-propagated through the
  encoder; LibMTL's own methods instead compute their weights from the batch-summed representation
  gradients;
* methods with epochs (DWA, weighted PCGrad, GradNorm) get ``end_epoch()`` when ``self.epoch``
  advances; FAMO's ``update_w(new_losses)`` calls ``FAMO.update``; UW's log-variances (without
  its own ``lr``) are registered as model parameters, so LibMTL's optimizer trains them, and its
  ``loss_term`` is back-propagated each step.

Head convention: fastmtl's (``fastmtl.training.head_weighting``). LibMTL gives the decoders the
plain per-task gradients in every method that computes task gradients (MGDA, IMTL, Aligned-MTL,
...), while fastmtl's loss weightings (MGDA, IMTL-G, Aligned-MTL, Nash-MTL, ...) give them
``Σ λ_k ℓ_k``; ``weighting(..., head_weighting="sum")`` reproduces LibMTL's.

The returned weights are λ as a NumPy array, as LibMTL's methods return theirs (one device-to-host
copy per step); ``return_weights=False`` returns ``None`` instead and avoids it.
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch

import fastmtl
from fastmtl.methods import METHODS, UW, Method, make_method
from fastmtl.training import head_weighting as method_head_weighting

__all__ = ["weighting", "LibMTLWeighting"]


class LibMTLWeighting(torch.nn.Module):
    """LibMTL ``AbsWeighting`` interface over a fastmtl method; configure it with :func:`weighting`.

    Class attributes set by :func:`weighting`: ``fastmtl_method`` (name, class or instance),
    ``fastmtl_hyperparameters``, ``fastmtl_generator``, ``fastmtl_return_weights``,
    ``fastmtl_head_weighting``. After ``init_param()`` the method instance is ``self.fastmtl``.
    """

    fastmtl_method: Any = "mean"
    fastmtl_hyperparameters: dict = {}
    fastmtl_generator: Optional[torch.Generator] = None
    fastmtl_return_weights: bool = True
    fastmtl_head_weighting: str = "auto"

    def __init__(self, *args: Any, **kwargs: Any):
        # Cooperative: LibMTL's architecture __init__ reaches this through super().
        super().__init__(*args, **kwargs)

    def init_param(self) -> None:
        """Build the method for ``self.task_num`` tasks (LibMTL calls this once, after the architecture)."""
        hp = dict(self.fastmtl_hyperparameters)
        spec = self.fastmtl_method
        if isinstance(spec, str) and spec.lower().replace("-", "_") in METHODS:
            cls = METHODS[spec.lower().replace("-", "_")]
            # Methods with learnable parameters (UW) create them now, so the optimizer sees them.
            if "num_tasks" in inspect.signature(cls).parameters and "num_tasks" not in hp:
                hp["num_tasks"] = self.task_num
        m = make_method(spec, hp)
        self.fastmtl = m
        # UW without its own step size: s is trained by LibMTL's optimizer through loss_term.
        self._fastmtl_trains_params = isinstance(m, UW) and m.lr is None
        self.fastmtl_params = torch.nn.ParameterList(m.parameters() if self._fastmtl_trains_params else [])
        self._fastmtl_epoch = getattr(self, "epoch", None)

    def _fastmtl_method_ready(self) -> Method:
        if not isinstance(getattr(self, "fastmtl", None), Method):
            raise RuntimeError("init_param() has not run: LibMTL's Trainer calls it when it builds the model")
        return self.fastmtl

    def _fastmtl_epoch_boundary(self, m: Method) -> None:
        epoch = getattr(self, "epoch", None)
        last = self._fastmtl_epoch
        self._fastmtl_epoch = epoch
        if epoch is None or last is None or epoch <= last or not callable(getattr(m, "end_epoch", None)):
            return
        for _ in range(epoch - last):
            m.end_epoch()

    def _fastmtl_heads(self, shared: list) -> list:
        skip = {id(p) for p in shared} | {id(p) for p in self.fastmtl_params}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in skip]

    def backward(self, losses: Any, **kwargs: Any):
        """One LibMTL step: combine, write ``.grad``; returns λ (NumPy) or ``None``."""
        if kwargs:
            raise TypeError(f"weight_args {sorted(kwargs)} were given to a fastmtl weighting; set hyper-parameters in "
                            "fastmtl.integrations.libmtl.weighting(name, **hyperparameters) and pass "
                            "weight_args={}")
        m = self._fastmtl_method_ready()
        if isinstance(losses, torch.Tensor) and losses.dim() == 1 and losses.shape[0] != self.task_num:
            raise ValueError(f"losses has {losses.shape[0]} entries but the model has {self.task_num} tasks")
        self._fastmtl_epoch_boundary(m)
        shared = list(self.get_share_params())
        heads = self._fastmtl_heads(shared)
        if getattr(self, "rep_grad", False):
            info = self._fastmtl_rep_backward(losses, m, heads)
        else:
            info = fastmtl.backward(losses, shared, m, head_params=heads or None, generator=self.fastmtl_generator,
                                    return_info=self.fastmtl_return_weights, head_weighting=self.fastmtl_head_weighting)
        if self._fastmtl_trains_params:
            m.loss_term(losses).backward()
        if not self.fastmtl_return_weights or info is None or info.weights is None:
            return None
        return info.weights.detach().cpu().numpy()

    def _fastmtl_rep_backward(self, losses: Any, m: Method, heads: list):
        rep = getattr(self, "rep", None)
        if not isinstance(rep, torch.Tensor):
            raise NotImplementedError("rep_grad=True with one representation per task (multi_input, or an encoder "
                                      "returning a list) has no common space to combine task gradients in; use "
                                      "rep_grad=False")
        loss_list = list(losses.unbind(0)) if isinstance(losses, torch.Tensor) else list(losses)
        leaves = [self.rep_tasks[t] for t in self.task_name]
        grads = [list(torch.autograd.grad(l, [leaf], retain_graph=True, allow_unused=True))
                 for l, leaf in zip(loss_list, leaves)]
        loss_vec = torch.stack([l.detach().reshape(()).to(torch.float64) for l in loss_list])
        d, info = fastmtl.combine(grads, m, losses=loss_vec, generator=self.fastmtl_generator, return_info=True)
        convention = self.fastmtl_head_weighting
        if convention == "auto":
            convention = method_head_weighting(m)
        if heads:
            if convention == "weighted":
                if info.weights is None:
                    raise ValueError(f"method {m.name!r} returns no weights λ; pass head_weighting='sum'")
                cot = [info.weights[k].to(loss_list[k].dtype) for k in range(len(loss_list))]
            else:
                cot = [torch.ones_like(l) for l in loss_list]
            torch.autograd.backward(loss_list, grad_tensors=cot, inputs=heads)
        if d[0] is not None:
            rep.backward(d[0].to(rep.dtype))
        return info

    def update_w(self, new_losses: Any) -> None:
        """FAMO's second step (LibMTL's trainer calls it after ``optimizer.step()``)."""
        m = self._fastmtl_method_ready()
        if not callable(getattr(m, "update", None)):
            raise TypeError(f"method {m.name!r} has no update(new_losses) step")
        m.update(new_losses.detach() if isinstance(new_losses, torch.Tensor) else new_losses)


def weighting(method: Any = "mean", *, generator: Optional[torch.Generator] = None, return_weights: bool = True,
              head_weighting: str = "auto", **hyperparameters: Any) -> type:
    """A LibMTL weighting class (pass it as ``Trainer(weighting=...)``) running a fastmtl method.

    ``method`` is a registry name built with ``hyperparameters`` (each model built from the class
    gets its own instance), a method class, or an instance (shared by every model built from the
    class). ``generator`` seeds the method's random choices; ``head_weighting`` overrides the head
    convention (``"weighted"`` or ``"sum"``, see :func:`fastmtl.backward`). The name, class and
    hyper-parameters are checked here.
    """
    if head_weighting not in ("auto", "weighted", "sum"):
        raise ValueError(f"head_weighting must be 'auto', 'weighted' or 'sum', got {head_weighting!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    probe = make_method(method, dict(hyperparameters))  # raises on a bad name or hyper-parameters
    if probe.name == "slgrad":
        raise TypeError("SLGrad weights (task, sample) pairs, which LibMTL's task losses do not provide: use "
                        "fastmtl.training.slgrad_step")
    attrs = dict(fastmtl_method=method, fastmtl_hyperparameters=dict(hyperparameters), fastmtl_generator=generator,
                 fastmtl_return_weights=bool(return_weights), fastmtl_head_weighting=head_weighting,
                 __doc__=f"LibMTL weighting running fastmtl's {probe.name!r} method.", __module__=__name__)
    return type(f"FastMTL_{probe.name}", (LibMTLWeighting,), attrs)
