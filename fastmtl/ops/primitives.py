"""Public entry points of the primitives, over any input layout."""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..gradients import TaskGradients, canonicalize, canonicalize_out
from .registry import select


def gramian_of(tg: TaskGradients, backend: Optional[str] = None) -> torch.Tensor:
    """Gram matrix of already-validated task gradients (float32, or float64 for float64 inputs)."""
    return select("gramian", tg, backend).implementations["gramian"](tg)


def weighted_sum_of(tg: TaskGradients, weights: torch.Tensor, out: Optional[tuple] = None,
                    backend: Optional[str] = None) -> list:
    """``Σ_k weights[k]·g_k`` per parameter, as a list of P tensors (``None`` where no task has one)."""
    return select("weighted_sum", tg, backend).implementations["weighted_sum"](tg, weights, out)


def assemble(tg: TaskGradients, parts: list) -> Any:
    """Give per-parameter results the structure of one task's gradient."""
    if tg.layout in ("matrix", "vectors"):
        return parts[0]
    return list(parts)


def gramian(grads: Any, *, backend: Optional[str] = None) -> torch.Tensor:
    """K×K Gram matrix ``G = J Jᵀ`` of the task gradients, read in place (no flattening copy).

    ``grads`` is a ``[K, D]`` tensor, K 1-D tensors, or K sequences of per-parameter tensors
    (``None`` = zeros). Accumulates in float32 (float64 for float64 inputs).
    """
    return gramian_of(canonicalize(grads), backend)


def weighted_sum(grads: Any, weights: torch.Tensor, *, out: Any = None,
                 backend: Optional[str] = None) -> Any:
    """``d = Σ_k weights[k] · g_k`` in the structure of one task's gradient.

    With ``out`` (a tensor, or one tensor per parameter such as the parameters' ``.grad``), the
    result is written there. Accumulates in float32 (float64 for float64 inputs).
    """
    tg = canonicalize(grads)
    if not isinstance(weights, torch.Tensor) or weights.shape != (tg.num_tasks,):
        raise ValueError(f"weights must be a tensor of shape [{tg.num_tasks}], got "
                         f"{getattr(weights, 'shape', type(weights).__name__)}")
    targets = None if out is None else canonicalize_out(out, tg)
    return assemble(tg, weighted_sum_of(tg, weights, targets, backend))
