"""Training-level oracles: Auto-λ's meta step as its official code runs it on a model.

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows (here the "inputs"
are a model and loss closures rather than gradient matrices).
"""

from __future__ import annotations

import copy

import torch

__all__ = ["AutoLambdaLiteral"]


class AutoLambdaLiteral:
    """``lorenmt/auto-lambda``'s ``AutoLambda`` class (``auto_lambda.py``), transcribed.

    ``model_`` is a deep copy that holds the virtual parameters ``θ'``; the meta-weights are a
    tensor with ``requires_grad`` trained by ``torch.optim.Adam(lr=meta_lr)``; ``train_fn(model)``
    and ``val_fn(model)`` return the K task losses of a model (the official ``model_fit`` of its
    predictions). :meth:`unrolled_backward` is one meta step (the trainer's
    ``meta_optimizer.zero_grad(); autol.unrolled_backward(...); meta_optimizer.step()``).
    """

    def __init__(self, model: torch.nn.Module, num_tasks: int, primary=None, weight_init: float = 0.1,
                 meta_lr: float = 1e-4, dtype=torch.float64):
        self.model = model
        self.model_ = copy.deepcopy(model)
        self.meta_weights = torch.tensor([weight_init] * num_tasks, requires_grad=True, dtype=dtype)
        self.meta_optimizer = torch.optim.Adam([self.meta_weights], lr=meta_lr)
        self.primary = list(range(num_tasks)) if primary is None else list(primary)

    def virtual_step(self, train_fn, alpha: float, model_optim: torch.optim.Optimizer) -> None:
        """``θ' = θ − α(μ·momentum_buffer + ∇_θ Σ w_i ℓ_i + wd·θ)`` written into ``model_``."""
        train_loss = train_fn(self.model)
        loss = sum(w * train_loss[i] for i, w in enumerate(self.meta_weights))
        gradients = torch.autograd.grad(loss, list(self.model.parameters()))
        with torch.no_grad():
            for weight, weight_, grad in zip(self.model.parameters(), self.model_.parameters(), gradients):
                if "momentum" in model_optim.param_groups[0].keys():
                    m = model_optim.state[weight].get("momentum_buffer", 0.0) * model_optim.param_groups[0]["momentum"]
                else:
                    m = 0
                weight_.copy_(weight - alpha * (m + grad + model_optim.param_groups[0]["weight_decay"] * weight))

    def unrolled_backward(self, train_fn, val_fn, alpha: float, model_optim: torch.optim.Optimizer) -> None:
        """One meta step: virtual step, primary validation gradient, finite-difference Hessian, Adam."""
        self.meta_optimizer.zero_grad()
        self.virtual_step(train_fn, alpha, model_optim)
        pri_weights = [1.0 if t in self.primary else 0.0 for t in range(len(self.meta_weights))]
        val_loss = val_fn(self.model_)
        loss = sum(w * val_loss[i] for i, w in enumerate(pri_weights))
        d_model = torch.autograd.grad(loss, tuple(self.model_.parameters()), allow_unused=True)
        hessian = self.compute_hessian(d_model, train_fn)
        with torch.no_grad():
            for mw, h in zip([self.meta_weights], hessian):
                mw.grad = -alpha * h
        self.meta_optimizer.step()

    def compute_hessian(self, d_model, train_fn):
        norm = torch.cat([w.view(-1) for w in d_model]).norm()
        eps = 0.01 / norm
        with torch.no_grad():
            for p, d in zip(self.model.parameters(), d_model):
                p += eps * d
        train_loss = train_fn(self.model)
        loss = sum(w * train_loss[i] for i, w in enumerate(self.meta_weights))
        d_weight_p = torch.autograd.grad(loss, self.meta_weights)
        with torch.no_grad():
            for p, d in zip(self.model.parameters(), d_model):
                p -= 2 * eps * d
        train_loss = train_fn(self.model)
        loss = sum(w * train_loss[i] for i, w in enumerate(self.meta_weights))
        d_weight_n = torch.autograd.grad(loss, self.meta_weights)
        with torch.no_grad():
            for p, d in zip(self.model.parameters(), d_model):
                p += eps * d
        return [(p - n) / (2.0 * eps) for p, n in zip(d_weight_p, d_weight_n)]
