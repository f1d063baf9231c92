"""The cost model behind the per-layer ghost/materialise choice and ``gram_mode="auto"``.

Counts are multiply-adds (time) and tensor elements held at once (memory), from the shapes the
hooks recorded: per layer ``G`` groups, ``N = B·L`` input rows (B samples, L rows per sample),
``d_in``/``d_out`` per group; ``K`` tasks. Stated in docs/gram_modes.md.

Per layer, for the K×K task Gram:

=================  =========================================  ==========================
way                multiply-adds                              elements held
=================  =========================================  ==========================
ghost              ``G·(N²·d_in + K·N²·d_out + K²·N·d_out)``  ``G·(N² + K·N·d_out)``
materialise layer  ``G·K·N·d_in·d_out + K²·G·d_in·d_out``     ``K·G·d_in·d_out``
=================  =========================================  ==========================

and for the per-(task, sample) Gramian (``K·B`` rows):

=================  ====================================================  ==========================
ghost              ``G·((B·L)²·d_in + (K·B·L)²·d_out)``                  ``G·(K·B·L)²``
materialise layer  ``G·K·N·d_in·d_out + (K·B)²·G·d_in·d_out``            ``K·B·G·d_in·d_out``
=================  ====================================================  ==========================

The cheaper in multiply-adds wins (ties: ghost). For a whole step (``gram_mode="auto"``):

* materialise: K backward passes through the hooked layers, each forming input and weight
  gradients (``2·K·Σ G·N·d_in·d_out``), the Gram and the weighted sum (``K²·D + K·D``);
  it holds the K task gradients, ``K·D`` elements;
* hooks: one K-batched backward to the layer outputs, input gradients only
  (``K·Σ G·N·d_in·d_out``), the per-layer Gram terms above, and one ordinary backward of
  ``Σ_k λ_k ℓ_k`` (``2·Σ G·N·d_in·d_out``); it holds the K output gradients of every layer
  (``K·Σ G·N·d_out``) plus the largest per-layer term.

Parameters outside known layers cost the same in both (their K gradients are materialised).
``auto`` takes hooks when its multiply-adds are at most materialise's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence

__all__ = ["LayerShape", "LayerCost", "StepCost", "layer_cost", "step_cost"]


@dataclass(frozen=True)
class LayerShape:
    """What the cost of one hooked weight depends on."""

    name: str
    groups: int
    samples: int  # B
    rows_per_sample: int  # L
    d_in: int
    d_out: int
    has_bias: bool = False

    @property
    def rows(self) -> int:
        return self.samples * self.rows_per_sample

    @property
    def weight_numel(self) -> int:
        return self.groups * self.d_in * self.d_out


@dataclass(frozen=True)
class LayerCost:
    shape: LayerShape
    ghost_flops: float
    ghost_elements: float
    materialize_flops: float
    materialize_elements: float

    @property
    def choice(self) -> str:
        return "ghost" if self.ghost_flops <= self.materialize_flops else "materialize"

    @property
    def flops(self) -> float:
        return self.ghost_flops if self.choice == "ghost" else self.materialize_flops

    @property
    def elements(self) -> float:
        return self.ghost_elements if self.choice == "ghost" else self.materialize_elements


def layer_cost(shape: LayerShape, K: int, per_sample: bool = False) -> LayerCost:
    """Multiply-adds and elements of both ways for one layer (see the module docstring)."""
    G, B, L, di, do = shape.groups, shape.samples, shape.rows_per_sample, shape.d_in, shape.d_out
    N = B * L
    if per_sample:
        ghost_f = G * ((B * L) ** 2 * di + (K * B * L) ** 2 * do)
        ghost_m = G * (K * B * L) ** 2
        mat_f = G * K * N * di * do + (K * B) ** 2 * G * di * do
        mat_m = K * B * G * di * do
    else:
        ghost_f = G * (N * N * di + K * N * N * do + K * K * N * do)
        ghost_m = G * (N * N + K * N * do)
        mat_f = G * K * N * di * do + K * K * G * di * do
        mat_m = K * G * di * do
    return LayerCost(shape, float(ghost_f), float(ghost_m), float(mat_f), float(mat_m))


@dataclass(frozen=True)
class StepCost:
    """Estimated multiply-adds and held elements of one training step in both modes."""

    K: int
    layers: List[LayerCost] = field(default_factory=list)
    hooks_flops: float = 0.0
    hooks_elements: float = 0.0
    materialize_flops: float = 0.0
    materialize_elements: float = 0.0

    @property
    def choice(self) -> str:
        return "hooks" if self.hooks_flops <= self.materialize_flops else "materialize"


def step_cost(shapes: Sequence[LayerShape], K: int) -> StepCost:
    """Both modes' cost for the hooked layers of one step (parameters outside them cost the same)."""
    layers = [layer_cost(s, K) for s in shapes]
    mm = sum(s.groups * s.rows * s.d_in * s.d_out for s in shapes)  # one pass's weight-sized products
    D = sum(s.weight_numel + (s.groups * s.d_out if s.has_bias else 0) for s in shapes)
    outputs = sum(s.groups * s.rows * s.d_out for s in shapes)
    hooks_f = K * mm + sum(c.flops for c in layers) + 2 * mm
    hooks_m = K * outputs + max((c.elements for c in layers), default=0.0)
    mat_f = 2 * K * mm + K * K * D + K * D
    mat_m = K * D
    return StepCost(K, layers, float(hooks_f), float(hooks_m), float(mat_f), float(mat_m))
