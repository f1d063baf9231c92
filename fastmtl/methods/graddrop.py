"""GradDrop — Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
Dropout", NeurIPS 2020."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import Direction, DirectionMethod
from .common import check_positive
from .registry import register_method
from ..reference.graddrop import DEFAULT_EPS


@register_method
class GradDrop(DirectionMethod):
    """Gradient sign dropout (Chen et al., NeurIPS 2020): elementwise, not Gram-reducible.

    Per coordinate: positive sign purity ``P = ½(1 + Σ_i g_i / (Σ_i |g_i| + eps))``, one uniform
    ``U`` shared by the tasks, keep-mask ``M_i = [P > U][g_i > 0] + [P < U][g_i < 0]``, and
    ``d = Σ_i (ℓ_i + (1 − ℓ_i) M_i) g_i`` with leak ``ℓ_i`` (default 0; 1 passes a task — e.g. the
    main task — through unchanged). Scale: sum over tasks (the CAGrad repository's mean ×K).

    The uniforms are counter-based (Philox, identical on the Triton kernel and the PyTorch
    reference): each call draws a seed from ``generator`` (the default CPU generator when none is
    given; a CPU generator needs no device synchronisation) and numbers elements by their position
    in the concatenation of the parameters. The registry's ``graddrop`` primitive runs it: the fused
    Triton kernel on CUDA tensors, the compiled ``cpu`` backend's kernel on CPU tensors (one pass:
    read K values, write one; the same bits as the reference), the reference elsewhere.
    ``info.weights`` is ``None``: the direction is not one combination.

    GradDrop was proposed at a layer's activations; applied to parameter gradients, as here, it is
    the variant most libraries ship (LibMTL's parameter mode, TorchJD).
    """

    name = "graddrop"
    head_weighting = "sum"  # gradient surgery: heads get their own task's gradient
    shard_local = True  # elementwise: each rank drops signs on its own shard

    def __init__(self, leak: Optional[Sequence[float]] = None, eps: float = DEFAULT_EPS):
        if leak is not None:
            lk = torch.as_tensor(leak, dtype=torch.float64).reshape(-1)
            if bool(((lk < 0) | (lk > 1)).any()) or not bool(torch.isfinite(lk).all()):
                raise ValueError("leak must hold values in [0, 1]")
            self.leak = lk
        else:
            self.leak = None
        self.eps = check_positive("eps", eps)

    def direction(self, engine, ctx):
        K = ctx.num_tasks
        leak = None
        if self.leak is not None:
            if self.leak.shape[0] != K:
                raise ValueError(f"leak has {self.leak.shape[0]} entries for K={K} tasks")
            leak = self.leak.to(ctx.device)
        # One seed per call. With a CPU generator (or none: the default CPU generator) this is a
        # host-side draw; a CUDA generator is honoured too, at the cost of one synchronisation.
        generator = ctx.generator
        gen_device = generator.device if generator is not None else "cpu"
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=gen_device).item())
        return Direction(engine.graddrop(seed, 0, leak, self.eps))
