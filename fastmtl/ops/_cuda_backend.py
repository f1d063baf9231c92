"""Registers the CUDA C++ backend (``fastmtl._C``): CUDA tensors, fp32/fp16/bf16/fp64, deterministic.

Importing this module never fails: when the extension is missing, the backend is still registered
and its probe says why it cannot run (see ``python -m fastmtl.info``). When a CUDA device is
available but the extension is not, a warning is issued once, at import.
"""

import warnings

import torch

from ..gradients import SUPPORTED_DTYPES
from .. import cuda as _cuda
from .registry import Backend, register_backend

register_backend(Backend(
    name="cuda",
    priority=20,
    devices=("cuda",),
    dtypes=SUPPORTED_DTYPES,
    # Fixed-order reductions without atomics: bitwise repeatable for a given device and build.
    deterministic=True,
    probe=_cuda.unavailable_reason,
    implementations={"gramian": _cuda.gramian_tg, "weighted_sum": _cuda.weighted_sum_tg},
    extra_reasons=_cuda.extra_reasons,
))


def _warn_if_missing() -> None:
    if _cuda.extension_loaded():
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
