"""Registers the CUDA C++ backend (``fastmtl._C``): CUDA tensors, fp32/fp16/bf16/fp64, deterministic.

Primitives: the multi-tensor ``gramian`` / ``weighted_sum`` kernels, and the K×K solvers of
:mod:`fastmtl.solvers` (``fastmtl.solvers.compiled``: one kernel launch per solve, K ≤ 64).

Importing this module never fails: when the extension is missing, the backend is still registered
and its probe says why it cannot run (see ``python -m fastmtl.info``). When a CUDA device is
available but the extension is not, a warning is issued once, at import.
"""

import warnings

import torch

from ..gradients import SUPPORTED_DTYPES
from .. import cuda as _cuda
from ..solvers import compiled as _solvers
from .registry import Backend, GramOperand, register_backend


def _extra_reasons(operand) -> list:
    if isinstance(operand, GramOperand):
        return _solvers.solve_reasons("cuda", operand.num_tasks, operand.dtype)
    return _cuda.extra_reasons(operand)

register_backend(Backend(
    name="cuda",
    priority=20,
    devices=("cuda",),
    dtypes=SUPPORTED_DTYPES,
    # Fixed-order reductions without atomics: bitwise repeatable for a given device and build.
    deterministic=True,
    probe=_cuda.unavailable_reason,
    implementations={"gramian": _cuda.gramian_tg, "weighted_sum": _cuda.weighted_sum_tg, **_solvers.IMPLEMENTATIONS},
    extra_reasons=_extra_reasons,
))


def _warn_if_missing() -> None:
    if _cuda.extension_loaded() and _cuda.cuda_part_loaded():
        return
    try:
        cuda_available = torch.cuda.is_available()
    except Exception:  # a broken driver must not break `import fastmtl`
        cuda_available = False
    if cuda_available:
        warnings.warn(
            f"CUDA is available but fastmtl's CUDA extension is not ({_cuda.missing_reason()}); the 'cuda' "
            "backend is disabled and fastmtl falls back to the 'triton' or 'reference' backend. "
            "Run `python -m fastmtl.info` for details.",
            RuntimeWarning,
            stacklevel=2,
        )


_warn_if_missing()
