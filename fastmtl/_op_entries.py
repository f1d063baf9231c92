"""The flat, task-major ``Tensor?[]`` argument shared by the Triton and CUDA custom ops.

Entry ``k * P + p`` is task ``k``'s gradient of parameter ``p`` (``None`` = zeros). Both the real
kernels and their fake (meta) kernels read the list through these helpers, so they must work on
fake tensors too.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Type

import torch


def first_entry(tensors: Sequence[Optional[torch.Tensor]], num_tasks: int, op: str,
                error: Type[Exception] = ValueError) -> torch.Tensor:
    """The first non-``None`` entry, after checking that the list is ``num_tasks × P`` long."""
    if num_tasks < 1:
        raise error(f"{op}: num_tasks must be at least 1, got {num_tasks}")
    if len(tensors) == 0 or len(tensors) % num_tasks != 0:
        raise error(f"{op}: expected num_tasks * P entries (task-major), got {len(tensors)} for "
                    f"num_tasks = {num_tasks}")
    for t in tensors:
        if t is not None:
            return t
    raise error(f"{op}: every entry is None; at least one task gradient is needed")


def column_numels(tensors: Sequence[Optional[torch.Tensor]], num_tasks: int) -> List[int]:
    """Elements of every parameter (0 where no task has a tensor)."""
    P = len(tensors) // num_tasks
    numels = []
    for p in range(P):
        n = 0
        for k in range(num_tasks):
            t = tensors[k * P + p]
            if t is not None:
                n = t.numel()
                break
        numels.append(n)
    return numels


def task_major_entries(tg, columns: Optional[Sequence[int]] = None) -> list:
    """``tg``'s gradients as the ops' flat task-major list, optionally restricted to ``columns``."""
    if columns is None:
        return [t for row in tg.entries for t in row]
    return [row[p] for row in tg.entries for p in columns]


def weighted_sum_into(tg, weights: torch.Tensor, out: Sequence[Optional[torch.Tensor]],
                      out_op: Callable) -> list:
    """Write ``Σ_k weights[k] g_k[p]`` into ``out[p]`` through a ``weighted_sum_*_out`` op.

    The ops take one output dtype per call, so parameters are grouped by their ``out`` tensor's
    dtype: one call in the usual case (every parameter active, one dtype), one per dtype otherwise.
    Parameters no task touches are left out, and their ``out`` entries untouched.
    """
    targets = list(out)
    active = [p for p, shape in enumerate(tg.shapes) if shape is not None]
    groups: Dict[torch.dtype, list] = {}
    for p in active:
        groups.setdefault(targets[p].dtype, []).append(p)
    if len(groups) == 1 and len(active) == tg.num_params:
        out_op(task_major_entries(tg), tg.num_tasks, weights, targets)
    else:
        for columns in groups.values():
            out_op(task_major_entries(tg, columns), tg.num_tasks, weights, [targets[p] for p in columns])
    return targets
