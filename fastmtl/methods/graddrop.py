"""GradDrop — Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
Dropout", NeurIPS 2020."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import Method, check_positive
from ..ops.registry import get_backend, requested_backend
from ..reference.graddrop import DEFAULT_EPS, graddrop_ref


class GradDrop(Method):
    """Gradient sign dropout (Chen et al., NeurIPS 2020): elementwise, not Gram-reducible.

    Per coordinate: positive sign purity ``P = ½(1 + Σ_i g_i / (Σ_i |g_i| + eps))``, one uniform
    ``U`` shared by the tasks, keep-mask ``M_i = [P > U][g_i > 0] + [P < U][g_i < 0]``, and
    ``d = Σ_i (ℓ_i + (1 − ℓ_i) M_i) g_i`` with leak ``ℓ_i`` (default 0; 1 passes a task — e.g. the
    main task — through unchanged). Scale: sum over tasks (the CAGrad repository's mean ×K).

    The uniforms are counter-based (Philox, identical on the Triton kernel and the PyTorch
    reference): each call draws a seed from ``generator`` (a CPU generator by default, so no
    device synchronisation) and numbers elements by their position in the concatenation of the
    parameters. On CUDA tensors the fused Triton kernel runs (one pass: read K values, write one);
    elsewhere the reference. ``info.weights`` is ``None``: the direction is not one combination.

    GradDrop was proposed at a layer's activations; applied to parameter gradients, as here, it is
    the variant most libraries ship (LibMTL's parameter mode, TorchJD).
    """

    name = "graddrop"
    gram_free_direction = True
    requires_gram = False
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

    def weights(self, G, **kwargs):
        raise TypeError("GradDrop is elementwise: it has no task weights (use combine)")

    def direction(self, tg, *, losses=None, generator=None, out=None, backend=None):
        K = tg.num_tasks
        leak = None
        if self.leak is not None:
            if self.leak.shape[0] != K:
                raise ValueError(f"leak has {self.leak.shape[0]} entries for K={K} tasks")
            leak = self.leak.to(tg.device)
        gen = generator if generator is not None and generator.device.type == "cpu" else None
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=gen).item())  # host-side draw, no device sync
        request = requested_backend(backend)
        name = request[0] if request is not None else None
        triton = get_backend("triton") if "triton" in _backend_names() else None
        use_triton = triton is not None and (
            name == "triton" or (name is None and tg.device.type == "cuda"
                                 and not triton.not_supported_reasons("gramian", tg)))
        if name == "triton" and triton is not None:
            reasons = triton.not_supported_reasons("gramian", tg)
            if reasons:
                raise RuntimeError(f"backend 'triton' cannot run GradDrop on these inputs: {', '.join(reasons)}")
        if use_triton:
            from ..triton.graddrop import graddrop_triton
            parts = graddrop_triton(tg, seed, 0, leak, self.eps, out)
        else:
            parts = graddrop_ref(tg, seed, 0, leak, self.eps, out)
        return parts, None, None


def _backend_names():
    from ..ops.registry import _BACKENDS
    return _BACKENDS
