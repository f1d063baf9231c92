"""Gram matrices from module hooks, without the K task gradients of the shared parameters.

For ``nn.Linear`` and ``nn.Conv2d`` the weight gradient of a loss is ``Σ_n δ_n a_nᵀ`` (output
gradients times inputs, over the batch rows and positions), so the inner product of two task
gradients is ``Σ_{n,m} (δ_n·δ'_m)(a_n·a_m)``: the K×K Gram comes from the layers' inputs and one
backward pass of the K losses to the layers' outputs ("ghost" inner products), and the
per-(task, sample) Gramian likewise. Then ``Σ_k λ_k ℓ_k`` is back-propagated once.

* :class:`GramHooks` — forward hooks on the known layers of the shared modules; create once,
  before the forward passes.
* :func:`task_gramian`, :func:`sample_gramian`, :func:`sample_dots` — the Gram matrices alone.
* :mod:`fastmtl.hooks.cost` — the cost model (per layer: ghost or this layer's K gradients; per
  step: hooks or materialise).

The training steps built on them live in :mod:`fastmtl.training`: ``fastmtl.backward(...,
gram_mode="hooks"|"auto")`` (:func:`fastmtl.training.hooks_backward`) and
:func:`fastmtl.training.slgrad_backward` (SLGrad's step with the per-(task, sample) dot products
from hooks). See docs/gram_modes.md.
"""

from .capture import KNOWN_LAYERS, CallRecord, GramHooks, hooks_for
from .cost import LayerCost, LayerShape, StepCost, layer_cost, step_cost
from .gram import HookGram, sample_dots, sample_gramian, task_gramian

__all__ = ["GramHooks", "hooks_for", "task_gramian", "sample_gramian", "sample_dots", "HookGram", "CallRecord",
           "KNOWN_LAYERS", "LayerShape", "LayerCost", "StepCost", "layer_cost", "step_cost"]
