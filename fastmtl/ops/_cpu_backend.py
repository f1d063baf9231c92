"""Registers the compiled CPU backend (``fastmtl._C``'s multi-tensor kernels): CPU tensors,
float32/float16/bfloat16/float64, deterministic for any thread count.

Priority sits above the reference, so automatic selection takes it on CPU tensors where
:func:`fastmtl._cpu_ops.defer_to_blas` does not send the call to BLAS; the reference stays the
fallback (and runs whenever the extension is missing, which the probe reports).
"""

from ..gradients import SUPPORTED_DTYPES
from .. import _cpu_ops
from .registry import Backend, register_backend

register_backend(Backend(
    name="cpu",
    priority=5,
    devices=("cpu",),
    dtypes=SUPPORTED_DTYPES,
    # Fixed chunks and groups, partial sums added in group order: independent of the thread count.
    deterministic=True,
    probe=_cpu_ops.unavailable_reason,
    implementations={"gramian": _cpu_ops.gramian_tg, "weighted_sum": _cpu_ops.weighted_sum_tg},
    defer=_cpu_ops.defer_to_blas,
))
