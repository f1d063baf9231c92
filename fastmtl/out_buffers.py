"""Reject ``out=`` buffers that share memory with the inputs or with each other.

Every backend reads the task gradients and writes ``out``; the fast ones do it in one kernel over
all parameters at once, the reference parameter by parameter. So a write into ``out[p]`` may land
on memory that is still to be read:

* ``out[p]`` overlapping a gradient of another parameter ``q`` (e.g. both views of one flat buffer):
  the kernels race with the reads of ``q``, and the reference overwrites ``q``'s gradients before
  reading them whenever ``q > p``; the result depends on the backend and on scheduling.
* ``out[p]`` partially overlapping a gradient of ``p`` itself (a shifted or strided view): one
  thread writes elements another has not read yet.
* ``out[p]`` overlapping ``out[q]``: the later write wins.

The one overlap that is well defined everywhere is kept: ``out[p]`` *exactly* one of parameter
``p``'s own gradients (same address, dtype and strides), an elementwise in-place update.

The check uses host metadata only (``data_ptr()``, sizes, strides; no tensor is read and nothing
synchronises with the device): one sort of the ``out`` buffers' byte ranges, then one binary
search per input tensor, O(number of tensors · log P). Ranges are extents (first to last byte a
view may touch), so two views interleaved in one buffer (``x[0::2]`` and ``x[1::2]``) count as
overlapping: conservative, and the error says so.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Optional, Sequence, Tuple

import torch


def byte_span(t: torch.Tensor, numel: Optional[int] = None) -> Optional[Tuple[int, int]]:
    """``[first, last + 1)`` byte addresses that ``t``'s elements may occupy; ``None`` if empty."""
    n = t.numel() if numel is None else numel
    if n == 0:
        return None
    lo = t.data_ptr()
    if t.is_contiguous():
        extent = n
    else:  # PyTorch strides are never negative: the extent runs from the first element on
        extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return lo, lo + extent * t.element_size()


def check_out_overlap(targets: Sequence[Optional[torch.Tensor]], tg) -> None:
    """Raise ``ValueError`` if an ``out`` buffer overlaps another ``out`` buffer, a gradient of
    another parameter, or (other than exactly) a gradient of its own parameter.

    ``targets`` are the validated per-parameter ``out`` tensors of :func:`canonicalize_out`
    (``None`` where nothing is written), ``tg`` the :class:`~fastmtl.gradients.TaskGradients`.
    """
    params = tg.layout == "params"
    spans = []
    for p, t in enumerate(targets):
        if t is None or tg.shapes[p] is None:
            continue  # nothing is written there
        span = byte_span(t)
        if span is not None:
            spans.append((span[0], span[1], p))
    if not spans:
        return
    spans.sort()

    # The out buffers among themselves: sorted by start, any start before the furthest end so far
    # is an overlap.
    far_hi, far_p = spans[0][1], spans[0][2]
    for lo, hi, p in spans[1:]:
        if lo < far_hi:
            a, b = sorted((far_p, p))
            raise ValueError(f"out[{a}] and out[{b}] overlap in memory; every parameter needs its own output "
                             "buffer (views of one buffer are fine if their ranges do not overlap)")
        if hi > far_hi:
            far_hi, far_p = hi, p

    # Disjoint, so their ends are sorted too: the first out ending after an input's start is the
    # only candidate that can also begin before the input's end.
    starts = [s[0] for s in spans]
    ends = [s[1] for s in spans]
    owner = [s[2] for s in spans]
    last = len(ends)
    itemsize = torch.empty((), dtype=tg.dtype).element_size()
    for k, row in enumerate(tg.entries):
        for q, (t, n) in enumerate(zip(row, tg.numels)):
            if t is None or n == 0:
                continue
            lo = t.data_ptr()
            i = bisect_right(ends, lo)
            if i == last:
                continue
            # Contiguous (the usual case): the span is n elements; otherwise work out the extent.
            if starts[i] >= lo + n * itemsize and t.is_contiguous():
                continue
            if starts[i] >= byte_span(t, n)[1]:
                continue
            p = owner[i]
            out = targets[p]
            if p == q and starts[i] == lo and out.dtype == t.dtype and out.stride() == t.stride():
                continue  # exactly this gradient: an elementwise in-place update
            where = f"out[{p}]" if params else "out"
            grad = f"task {k}'s gradient of parameter {q}" if params else f"task {k}'s gradient"
            if p == q:
                how = ("partially overlaps " + grad + " (an out buffer may be exactly one of its own parameter's "
                       "gradients, same address, dtype and strides, but no other view of it)")
            else:
                how = f"overlaps {grad} in memory (the gradients of other parameters are still being read)"
            raise ValueError(f"{where} {how}; write into a separate buffer (memory ranges are compared: "
                             "views interleaved in one buffer count as overlapping)")
