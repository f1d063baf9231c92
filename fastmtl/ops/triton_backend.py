"""Registers the Triton backend: CUDA tensors (CPU tensors under ``TRITON_INTERPRET=1``),
float32/float16/bfloat16, deterministic.

Importing this module never fails and does not import Triton: ``fastmtl.triton`` is imported by
the availability probe, the first time the backend is considered, and a missing or broken Triton
shows up as the probe's reason. With ``TRITON_INTERPRET=1`` (read when ``fastmtl`` is imported)
the kernels run in Triton's interpreter on CPU tensors; automatic selection never picks that
(it is far slower than the reference on CPU), ``backend="triton"`` does.
"""

import importlib.util
import os
from typing import List, Optional

import torch

from .registry import Backend, register_backend

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_state = {"module": None, "error": None}


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes", "y")


def _module():
    """``fastmtl.triton`` (imported on first use), or ``None`` with the error recorded."""
    if _state["module"] is None and _state["error"] is None:
        try:
            from .. import triton as module
            _state["module"] = module
        except Exception as exc:  # a broken optional dependency must never break fastmtl
            _state["error"] = f"{type(exc).__name__}: {exc}"
    return _state["module"]


def _probe() -> Optional[str]:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    if not _interpret_requested():
        try:
            cuda = torch.cuda.is_available()
        except Exception:  # a broken driver reads as "no GPU"
            cuda = False
        if not cuda:
            return "no CUDA device is available (TRITON_INTERPRET=1 runs the kernels on CPU tensors, slowly)"
    if _module() is None:
        return f"fastmtl.triton failed to import: {_state['error']}"
    return None


def _extra_reasons(tg) -> List[str]:
    module = _module()
    reasons = []
    if module.interpreter_active():
        if tg.device.type != "cpu":
            reasons.append("in interpreter mode (TRITON_INTERPRET=1) the kernels run on CPU tensors only, got "
                           f"{tg.device.type}")
    elif tg.device.type != "cuda":
        reasons.append(f"the kernels were compiled for the GPU (TRITON_INTERPRET was not set when fastmtl.triton "
                       f"was imported), got {tg.device.type} tensors")
    limit = min(module.MAX_GRAMIAN_TASKS, module.MAX_WEIGHTED_SUM_TASKS)
    if tg.num_tasks > limit:
        reasons.append(f"handles at most {limit} tasks, got {tg.num_tasks}")
    return reasons


def _gramian(tg):
    return _module().gramian_triton(tg)


def _weighted_sum(tg, weights, out=None):
    return _module().weighted_sum_triton(tg, weights, out)


def _graddrop(tg, seed, offset, leak, eps, out=None):
    return _module().graddrop_triton(tg, seed, offset, leak, eps, out)


register_backend(Backend(
    name="triton",
    priority=10,
    devices=("cuda", "cpu") if _interpret_requested() else ("cuda",),
    dtypes=_DTYPES,
    # Fixed-order two-stage reductions without atomics; bitwise repeatable for a given device.
    deterministic=True,
    probe=_probe,
    implementations={"gramian": _gramian, "weighted_sum": _weighted_sum, "graddrop": _graddrop},
    extra_reasons=_extra_reasons,
    automatic_devices=("cuda",),
))
