"""Triton kernels of fastmtl (optional: needs the ``triton`` package).

Importing this package registers the operators ``torch.ops.fastmtl.gramian_triton``,
``weighted_sum_triton``, ``weighted_sum_triton_out``, ``graddrop_triton``, ``graddrop_triton_out``
and ``batched_dot_triton``. Kernels run on CUDA tensors; with ``TRITON_INTERPRET=1`` set before
this package is imported they run in Triton's interpreter on CPU tensors instead (slowly: for
tests). Use the kernels through the registry (``fastmtl.combine(..., backend="triton")``) or
call the functions below, which take the reference implementations' arguments:

* :func:`gramian_triton` (``gramian_ref``), :func:`weighted_sum_triton` (``weighted_sum_ref``);
* :func:`graddrop_triton` (``fastmtl.reference.graddrop.graddrop_ref``);
* :func:`batched_dot_triton` (``rows @ vec`` with float32 accumulation).

The multi-tensor kernels read per-parameter tensors in place through cached pointer tables
(:mod:`fastmtl.triton.tables`); nothing is concatenated.
"""

from .tables import cache_info, clear_caches, interpreter_active
from .gramian import gramian_triton
from .weighted_sum import weighted_sum_triton
from .graddrop import graddrop_triton
from .batched_dot import batched_dot_triton
from .gramian import MAX_TASKS as MAX_GRAMIAN_TASKS
from .weighted_sum import MAX_TASKS as MAX_WEIGHTED_SUM_TASKS

OP_NAMES = ("gramian_triton", "weighted_sum_triton", "weighted_sum_triton_out", "graddrop_triton",
            "graddrop_triton_out", "batched_dot_triton")

__all__ = ["gramian_triton", "weighted_sum_triton", "graddrop_triton", "batched_dot_triton", "cache_info",
           "clear_caches", "interpreter_active", "MAX_GRAMIAN_TASKS", "MAX_WEIGHTED_SUM_TASKS", "OP_NAMES"]
