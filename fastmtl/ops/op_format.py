"""The pointer-table op format shared by the Triton, CUDA and CPU custom ops.

Inputs: a flat, task-major ``Tensor?[]`` — entry ``k * P + p`` is task ``k``'s gradient of
parameter ``p`` (``None`` = zeros). Flat outputs: every parameter at a multiple of
:data:`FLAT_PAD` elements (16-byte aligned for every supported dtype), zeros in the gaps;
:func:`split_flat` gives the per-parameter views. ``out=`` writes: one op call per output dtype
(:func:`weighted_sum_into`). The fake (meta) kernels of every backend's ops are built here
(:func:`fake_gramian`, :func:`fake_weighted_sum_flat`, :func:`fake_weighted_sum_out`), so real and
fake kernels read the list through the same helpers; those must work on fake tensors and SymInts.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Type

import torch

from ..gradients import accumulate_dtype

# Must match kOutPad in csrc/multi_tensor.cuh; the Triton kernels hard-code it in their padding.
FLAT_PAD = 16


def padded(n):
    """``n`` rounded up to :data:`FLAT_PAD` (works on SymInts)."""
    return (n + FLAT_PAD - 1) // FLAT_PAD * FLAT_PAD


def split_flat(flat: torch.Tensor, shapes: Sequence[Optional[torch.Size]]) -> list:
    """Per-parameter views of a flat op output (parameter ``p`` at ``Σ_{q<p} padded(numel_q)``);
    ``None`` shapes give ``None``."""
    views = []
    off = 0
    for shape in shapes:
        if shape is None:
            views.append(None)
            continue
        n = torch.Size(shape).numel()
        views.append(flat.narrow(0, off, n).view(shape))
        off += padded(n)
    return views


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
                      out_op: Callable, all_entries: Optional[Sequence] = None) -> list:
    """Write ``Σ_k weights[k] g_k[p]`` into ``out[p]`` through a ``weighted_sum_*_out`` op.

    The ops take one output dtype per call, so parameters are grouped by their ``out`` tensor's
    dtype: one call in the usual case (every parameter active, one dtype), one per dtype otherwise.
    Parameters no task touches are left out, and their ``out`` entries untouched. ``all_entries``:
    the gradients in the form ``out_op`` takes for a call over every parameter (default the flat
    task-major list).
    """
    targets = list(out)
    active = [p for p, shape in enumerate(tg.shapes) if shape is not None]
    groups: Dict[torch.dtype, list] = {}
    for p in active:
        groups.setdefault(targets[p].dtype, []).append(p)
    if len(groups) == 1 and len(active) == tg.num_params:
        out_op(task_major_entries(tg) if all_entries is None else all_entries, tg.num_tasks, weights, targets)
    else:
        for columns in groups.values():
            out_op(task_major_entries(tg, columns), tg.num_tasks, weights, [targets[p] for p in columns])
    return targets


# ---- fake (meta) kernels ------------------------------------------------------------------------


def fake_gramian(op: str, error: Type[Exception] = RuntimeError) -> Callable:
    """The fake kernel of a ``gramian`` op: ``[K, K]`` in the accumulation dtype (``error``: what a
    malformed list raises, as the op's real kernel does)."""
    def fake(tensors, num_tasks, *args, **kwargs):
        ref = first_entry(tensors, num_tasks, op, error)
        return ref.new_empty((num_tasks, num_tasks), dtype=accumulate_dtype(ref.dtype))
    return fake


def fake_weighted_sum_flat(op: str, error: Type[Exception] = RuntimeError) -> Callable:
    """The fake kernel of a flat ``weighted_sum`` op: one padded flat tensor of the inputs' dtype."""
    def fake(tensors, num_tasks, weights, *args, **kwargs):
        ref = first_entry(tensors, num_tasks, op, error)
        total = 0
        for n in column_numels(tensors, num_tasks):
            total = total + padded(n)
        return ref.new_empty((total,), dtype=ref.dtype)
    return fake


def fake_weighted_sum_out(op: str, error: Type[Exception] = RuntimeError) -> Callable:
    """The fake kernel of a ``weighted_sum_*_out`` op (it writes its ``out`` tensors)."""
    def fake(tensors, num_tasks, weights, out, *args, **kwargs):
        first_entry(tensors, num_tasks, op, error)
        return None
    return fake
