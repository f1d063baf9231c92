"""A small stand-in for LibMTL's training machinery, following its documented interface.

LibMTL on PyPI (1.1.5) does not import with current torchvision (``import LibMTL`` imports its
ResNet module, which imports ``torchvision.models.utils``, absent from torchvision 0.29, the
release for torch 2.14), and its ``Trainer`` hard-codes ``cuda:0``; the GitHub version's ``Trainer`` also needs ``torch_geometric`` and ``cvxpy`` and
hard-codes ``cuda:0``. So the tests drive fastmtl's weighting class through this stand-in, which
reproduces the contract a weighting class sees in LibMTL:

* the model class is ``class MTLmodel(architecture, weighting)``, built with the architecture's
  arguments ``(task_name, encoder_class, decoders, rep_grad, multi_input, device, **arch_args)``,
  then ``init_param()`` is called, then the model is moved to the device;
* the architecture provides ``task_name``, ``task_num``, ``rep_grad``, ``multi_input``, ``device``,
  ``encoder``, ``decoders``, ``get_share_params()`` (the encoder's parameters),
  ``zero_grad_share_params()``, and with ``rep_grad`` the representation ``rep`` and detached
  per-task copies ``rep_tasks[task]`` (leaves requiring grad) that the decoders read;
* one optimizer over ``model.parameters()``; each step the losses are one ``[K]`` tensor filled by
  index, ``optimizer.zero_grad(set_to_none=False)``, ``w = model.backward(losses, **weight_args)``,
  ``w`` stored in ``batch_weight[:, epoch, batch]`` when not ``None``, ``optimizer.step()``;
  ``model.epoch`` is set at the start of every epoch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class HPS(nn.Module):
    """Hard parameter sharing: one encoder, one decoder per task (LibMTL's ``AbsArchitecture`` contract)."""

    def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs):
        super().__init__()
        self.task_name = task_name
        self.task_num = len(task_name)
        self.encoder_class = encoder_class
        self.decoders = decoders
        self.rep_grad = rep_grad
        self.multi_input = multi_input
        self.device = device
        self.kwargs = kwargs
        self.encoder = encoder_class()
        if self.rep_grad:
            self.rep_tasks = {}
            self.rep = {}

    def forward(self, inputs, task_name=None):
        out = {}
        s_rep = self.encoder(inputs)
        for task in self.task_name:
            out[task] = self.decoders[task](self._prepare_rep(s_rep, task))
        return out

    def get_share_params(self):
        return self.encoder.parameters()

    def zero_grad_share_params(self):
        self.encoder.zero_grad(set_to_none=False)

    def _prepare_rep(self, rep, task):
        if not self.rep_grad:
            return rep
        self.rep = rep
        self.rep_tasks[task] = rep.detach().clone()
        self.rep_tasks[task].requires_grad = True
        return self.rep_tasks[task]


class EW(nn.Module):
    """LibMTL's equal weighting, as its documentation defines it: ``Σ_k 1·ℓ_k``, weights all 1."""

    def init_param(self):
        pass

    def backward(self, losses, **kwargs):
        (losses * torch.ones_like(losses)).sum().backward()
        return np.ones(self.task_num)


def build_model(weighting, encoder_class, decoders, rep_grad=False, device="cpu", task_name=None):
    task_name = list(decoders.keys()) if task_name is None else task_name

    class MTLmodel(HPS, weighting):
        def __init__(self, task_name, encoder_class, decoders, rep_grad, multi_input, device, kwargs):
            super().__init__(task_name, encoder_class, decoders, rep_grad, multi_input, device, **kwargs)
            self.init_param()

    model = MTLmodel(task_name=task_name, encoder_class=encoder_class, decoders=decoders, rep_grad=rep_grad,
                     multi_input=False, device=torch.device(device), kwargs={})
    return model.to(device)


def train(model, batches, epochs, lr=0.05, weight_args=None, famo_update=False, loss_fn=None):
    """LibMTL's single-level training loop on ``batches`` (a list of ``(x, {task: y})``); returns
    ``batch_weight`` (``[K, epochs, batches]``) and the losses of every step (same shape)."""
    weight_args = {} if weight_args is None else weight_args
    loss_fn = loss_fn or (lambda pred, y: ((pred.squeeze(-1) - y) ** 2).mean())
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    batch_weight = np.zeros([model.task_num, epochs, len(batches)])
    seen = np.zeros([model.task_num, epochs, len(batches)])
    for epoch in range(epochs):
        model.epoch = epoch
        model.train()
        for b, (x, y) in enumerate(batches):
            preds = model(x)
            losses = torch.zeros(model.task_num)
            for tn, task in enumerate(model.task_name):
                losses[tn] = loss_fn(preds[task], y[task])
            seen[:, epoch, b] = losses.detach().numpy()
            optimizer.zero_grad(set_to_none=False)
            w = model.backward(losses, **weight_args)
            if w is not None:
                batch_weight[:, epoch, b] = w
            optimizer.step()
            if famo_update:
                with torch.no_grad():
                    preds = model(x)
                    new = torch.stack([loss_fn(preds[t], y[t]) for t in model.task_name])
                model.update_w(new)
    return batch_weight, seen
