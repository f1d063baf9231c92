"""SLGrad — Grégoire, Chaudhary, Verboven, "Sample-Level Weighting for Multi-Task Learning with
Auxiliary Tasks", arXiv 2306.04519 (Applied Intelligence 2024); rule as in the authors' code."""

from __future__ import annotations

from typing import Optional

import torch

from .base import Direction, DirectionMethod
from .common import check_choice, warn_instance_reference
from .registry import register_method


@register_method
class SLGrad(DirectionMethod):
    """Sample-level weights from a main-task validation gradient (SLGrad).

    Rows of the input are (task, sample) pairs: ``g_{t,e} = ∇_shared ℓ_{t,e}``, the gradient of
    task ``t``'s loss on training sample ``e``, in **task-major order** (row ``t·B + e``), with
    ``B = num_samples``. With ``v`` the gradient of the main-task validation loss (``reference``):

        ``a_{t,e} = ⟨g_{t,e}, v⟩``  (plain dot product over the shared parameters)
        ``W = max(s·a, 0) / Σ_{t,e} max(s·a, 0)``  — one normaliser over tasks *and* samples;
        ``W = 0`` (a zero update) when the sum is 0; ``s = +1`` for a loss-like ``v``
        (``higher_is_better=False``, the authors' setting), ``−1`` for a metric to increase.
        ``d = c Σ_{t,e} W_{t,e} g_{t,e}``, ``c = 1/B`` (``scale="paper_code"``: the code's weighted
        loss ``Σ_t (1/B) Σ_e W_{t,e} ℓ_{t,e}``, an effective step ``1/B`` times a convex
        combination) or ``c = 1`` (``scale="convex"``: comparable with the mean loss, whose
        per-pair weight is ``1/(K·B)``).

    ``combine`` form (materialised per-sample gradients; ``J`` is ``[K·B, D]``, or K·B rows of
    per-parameter tensors)::

        d, info = fastmtl.combine(J, method="slgrad", reference=v, num_samples=B, return_info=True)
        W = info.weights.reshape(K, B)           # the coefficients c·W

    Cost: one pass over the K·B rows for the dot products with ``v`` (not a (K·B)² Gram), one
    weighted sum; ``return_info=True`` additionally forms the (K·B)×(K·B) Gram of the rows for
    ``info.gram``/``info.cosine``. The fast path, which never forms per-sample gradients, is
    :func:`fastmtl.training.slgrad_step` (one forward-mode JVP gives all ``a_{t,e}``).
    The authors' code also takes a look-ahead optimizer step before computing the weights; that
    is a trainer-level choice, not part of this rule.

    Args:
        reference: deprecated here: pass ``v`` to the call, ``combine(..., reference=v)`` (an
            instance built with it uses it when the call passes none). Alias ``val_grad``.
        num_samples: ``B``; default: all rows are samples of one task (``K = 1``).
        scale: ``"paper_code"`` or ``"convex"``.
        higher_is_better: flip the sign of ``a`` (``v`` is the gradient of a metric to increase).
    """

    uses_generator = False

    name = "slgrad"
    uses_reference = True

    def __init__(self, reference=None, num_samples: Optional[int] = None, scale: str = "paper_code",
                 higher_is_better: bool = False, val_grad=None):
        if reference is not None and val_grad is not None:
            raise TypeError("pass the validation gradient once: reference= or val_grad=")
        check_choice("scale", scale, ("paper_code", "convex"))
        if num_samples is not None and (not isinstance(num_samples, int) or isinstance(num_samples, bool)
                                        or num_samples < 1):
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        reference = reference if reference is not None else val_grad
        if reference is not None:
            warn_instance_reference("SLGrad")
        self.reference = reference
        self.num_samples = num_samples
        self.scale = scale
        self.higher_is_better = bool(higher_is_better)

    def _samples(self, rows: int) -> int:
        B = rows if self.num_samples is None else self.num_samples
        if rows % B:
            raise ValueError(f"{rows} rows are not a whole number of tasks of num_samples={B} samples")
        return B

    def coefficients(self, dots: torch.Tensor, num_samples: Optional[int] = None) -> torch.Tensor:
        """Per-row coefficients ``c·W`` (float64) from the dot products ``a`` (``[K·B]``)."""
        a = dots.to(torch.float64)
        B = self._samples(a.shape[0]) if num_samples is None else num_samples
        if a.shape[0] % B:
            raise ValueError(f"{a.shape[0]} rows are not a whole number of tasks of {B} samples")
        w = (-a if self.higher_is_better else a).clamp_min(0)
        Z = w.sum()
        ok = Z > 0
        W = torch.where(ok, w / torch.where(ok, Z, torch.ones_like(Z)), torch.zeros_like(w))
        return W / B if self.scale == "paper_code" else W

    def direction(self, engine, ctx):
        reference = ctx.reference
        if reference is None:
            raise ValueError("slgrad needs a main-task validation gradient: combine(per_sample_grads, "
                             "method='slgrad', reference=v, num_samples=B)")
        lam = self.coefficients(engine.dots(reference))
        return Direction(engine.weighted_sum(lam), lam)
