"""The flat, task-major ``Tensor?[]`` argument shared by the Triton and CUDA custom ops.

Entry ``k * P + p`` is task ``k``'s gradient of parameter ``p`` (``None`` = zeros). Both the real
kernels and their fake (meta) kernels read the list through these helpers, so they must work on
fake tensors too.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Type

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
