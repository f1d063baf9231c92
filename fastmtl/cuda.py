"""CUDA C++ backend: thin wrappers over ``torch.ops.fastmtl.*_cuda`` and their availability.

The compiled extension ``fastmtl._C`` is optional. It is built by ``setup.py`` when torch is a CUDA
build and ``nvcc`` is found (see ``python -m fastmtl.info``). Importing ``fastmtl._C`` loads its
shared library, whose static ``TORCH_LIBRARY_FRAGMENT`` block registers the ops with the PyTorch
dispatcher; the module itself is empty (no pybind11). A plain import is used rather than
``torch.ops.load_library`` so that Python's import system finds the build-specific file name
(``_C.cpython-3XX-....so``) in regular and editable installs alike.

Ops (the arguments are the tensors themselves, so ``torch.compile`` and ``opcheck`` see them):

* ``gramian_cuda(Tensor?[] tensors, int num_tasks) -> Tensor``: ``[K, K]`` Gram matrix.
* ``weighted_sum_cuda(Tensor?[] tensors, int num_tasks, Tensor weights) -> Tensor``: every
  parameter's ``Σ_k weights[k] g_k[p]`` in one flat tensor, parameter ``p`` at offset
  ``Σ_{q<p} round_up(numel_q, 16)`` (zeros in the gaps); :func:`split_flat` makes per-parameter
  views of it.
* ``weighted_sum_cuda_out(Tensor?[] tensors, int num_tasks, Tensor weights, Tensor(a!)[] out) -> ()``:
  writes parameter ``p`` into ``out[p]`` (e.g. ``.grad``).

``tensors`` is task-major: entry ``k * P + p`` is task ``k``'s gradient of parameter ``p`` (``None``
when the task does not touch it). Accumulation is float32 (float64 for float64 inputs), in a fixed
order without atomics, so results are bitwise reproducible on a given device. The fake kernels
registered here give output shapes and dtypes without a device, for ``torch.compile`` and meta
tensors.

Hazard: tensors are read through raw addresses on the current stream of their device. Gradients
produced on another stream must be synchronised with it first (as for any PyTorch op).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from .gradients import TaskGradients
from .ops.op_format import (fake_gramian, fake_weighted_sum_flat, fake_weighted_sum_out, split_flat,
                            task_major_entries, weighted_sum_into)

# Must match kMaxTasks in csrc/ops.cpp.
MAX_TASKS = 2048
OP_NAMES = ("gramian_cuda", "weighted_sum_cuda", "weighted_sum_cuda_out")

_LOAD_ERROR: Optional[str] = None
_FAKE_ERROR: Optional[str] = None
_SMOKE: Dict[int, Optional[str]] = {}

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.fastmtl.*_cuda)
except Exception as exc:  # ImportError, or OSError for a library built against another torch
    _C = None
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def build_info() -> dict:
    """What ``setup.py`` recorded at build time (``fastmtl/_build_info.py``); empty if absent."""
    try:
        from . import _build_info
    except ImportError:
        return {}
    return {k: v for k, v in vars(_build_info).items() if k.isupper()}


def extension_loaded() -> bool:
    """Whether ``fastmtl._C`` was imported (the ops are registered)."""
    return _C is not None


def load_error() -> Optional[str]:
    """Why ``fastmtl._C`` could not be imported, or ``None``."""
    return _LOAD_ERROR


def cuda_part_loaded() -> bool:
    """Whether ``fastmtl._C`` is loaded with its CUDA part (the ``*_cuda`` ops are registered).

    A build without nvcc has only the CPU part (see ``python -m fastmtl.info``)."""
    return _C is not None and all(hasattr(torch.ops.fastmtl, name) for name in OP_NAMES)


def missing_reason() -> str:
    """Why the CUDA part of ``fastmtl._C`` is not loaded (build skipped, build failed, or import error)."""
    info = build_info()
    if _C is not None and info.get("CUDA_EXTENSION_BUILT") is False:
        return f"fastmtl._C was built without its CUDA part: {info.get('SKIP_REASON') or 'no reason recorded'}"
    if info.get("CUDA_EXTENSION_BUILT") is False and info.get("SKIP_REASON"):
        return f"fastmtl._C was not built: {info['SKIP_REASON']}"
    if _LOAD_ERROR and "No module named" not in _LOAD_ERROR:
        return f"fastmtl._C failed to load ({_LOAD_ERROR}); rebuild it against the installed torch"
    return ("fastmtl._C is not built (reinstall with `pip install -e . --no-build-isolation` where torch has "
            "CUDA and nvcc is on PATH or CUDA_HOME is set)")


def unavailable_reason() -> Optional[str]:
    """``None`` when the CUDA ops can run on the current CUDA device, else a short reason."""
    if _C is None or not cuda_part_loaded():
        return missing_reason()
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is not a CUDA build"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    if _FAKE_ERROR is not None:
        return f"fake kernels could not be registered: {_FAKE_ERROR}"
    try:
        device = torch.cuda.current_device()
    except Exception as exc:  # driver problems surface here
        return f"CUDA cannot be initialised: {exc}"
    return _smoke_test(device)


def _smoke_test(device: int) -> Optional[str]:
    """Run a tiny Gram on ``device`` once: catches a build without this GPU's architecture."""
    if device not in _SMOKE:
        try:
            x = torch.ones(3, device=f"cuda:{device}")
            torch.ops.fastmtl.gramian_cuda([x], 1)
            _SMOKE[device] = None
        except Exception as exc:  # e.g. "no kernel image is available for execution on the device"
            _SMOKE[device] = f"the CUDA kernels cannot run on cuda:{device}: {exc}"
    return _SMOKE[device]


def is_available() -> bool:
    """Whether the ``cuda`` backend can run here."""
    return unavailable_reason() is None


# ---- fake (meta) kernels ------------------------------------------------------------------------


def _register_fakes() -> None:
    for name, fake in (("gramian_cuda", fake_gramian), ("weighted_sum_cuda", fake_weighted_sum_flat),
                       ("weighted_sum_cuda_out", fake_weighted_sum_out)):
        torch.library.register_fake(f"fastmtl::{name}")(fake(f"fastmtl::{name}"))


if cuda_part_loaded():
    try:
        _register_fakes()
    except Exception as exc:  # an incompatible torch.library: report through the probe, never on import
        _FAKE_ERROR = f"{type(exc).__name__}: {exc}"


# ---- wrappers -----------------------------------------------------------------------------------


def gramian(tensors: Sequence[Optional[torch.Tensor]], num_tasks: int) -> torch.Tensor:
    """``torch.ops.fastmtl.gramian_cuda``: K×K Gram of task-major entries."""
    return torch.ops.fastmtl.gramian_cuda(list(tensors), num_tasks)


def weighted_sum_flat(tensors: Sequence[Optional[torch.Tensor]], num_tasks: int,
                      weights: torch.Tensor) -> torch.Tensor:
    """``torch.ops.fastmtl.weighted_sum_cuda``: the flat, padded result (see :func:`split_flat`)."""
    return torch.ops.fastmtl.weighted_sum_cuda(list(tensors), num_tasks, weights)


def weighted_sum_out(tensors: Sequence[Optional[torch.Tensor]], num_tasks: int, weights: torch.Tensor,
                     out: Sequence[torch.Tensor]) -> None:
    """``torch.ops.fastmtl.weighted_sum_cuda_out``: writes parameter ``p`` into ``out[p]``."""
    torch.ops.fastmtl.weighted_sum_cuda_out(list(tensors), num_tasks, weights, list(out))


def table_cache_stats() -> dict:
    """Host-side table cache counters: entries, hits, misses, capacity."""
    entries, hits, misses, capacity = torch.ops.fastmtl.table_cache_stats()
    return {"entries": entries, "hits": hits, "misses": misses, "capacity": capacity}


def table_cache_clear() -> None:
    """Drop every cached device table (they are rebuilt on the next call)."""
    torch.ops.fastmtl.table_cache_clear()


# ---- backend implementations (the reference signatures) ------------------------------------------


def gramian_tg(tg: TaskGradients) -> torch.Tensor:
    """Gram matrix of validated task gradients; same contract as ``gramian_ref``."""
    return torch.ops.fastmtl.gramian_cuda(task_major_entries(tg), tg.num_tasks)


def weighted_sum_tg(tg: TaskGradients, weights: torch.Tensor,
                    out: Optional[Sequence[Optional[torch.Tensor]]] = None) -> list:
    """``Σ_k weights[k] g_k[p]`` per parameter; same contract as ``weighted_sum_ref``.

    Without ``out``: one flat allocation, returned as per-parameter views. With ``out``: written in
    place (one launch per distinct dtype among the ``out`` tensors, normally one).
    """
    K = tg.num_tasks
    if weights.device != tg.device:
        weights = weights.to(tg.device)
    if out is None:
        flat = torch.ops.fastmtl.weighted_sum_cuda(task_major_entries(tg), K, weights)
        return split_flat(flat, tg.shapes)
    return weighted_sum_into(tg, weights, out, torch.ops.fastmtl.weighted_sum_cuda_out)


def extra_reasons(tg: TaskGradients) -> List[str]:
    """Input-dependent limits of the CUDA backend."""
    if tg.num_tasks > MAX_TASKS:
        return [f"handles at most {MAX_TASKS} tasks, got {tg.num_tasks}"]
    return []
