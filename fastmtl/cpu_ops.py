"""CPU multi-tensor kernels of ``fastmtl._C``: Gram matrix, weighted sum and GradDrop over a pointer
table.

``csrc/cpu_multi_tensor.cpp`` and ``csrc/cpu_graddrop.cpp`` register these ops for CPU tensors (the
arguments are the tensors themselves, task-major: entry ``k * P + p`` is task ``k``'s gradient of
parameter ``p``, ``None`` where the task does not touch it):

* ``gramian_cpu(Tensor?[] tensors, int num_tasks) -> Tensor``: ``G[i, j] = Σ_p ⟨g_i[p], g_j[p]⟩``,
  ``[K, K]``, float32 (float64 for float64 inputs);
* ``weighted_sum_cpu(Tensor?[] tensors, int num_tasks, Tensor weights) -> Tensor[]``: every
  parameter's ``d[p] = Σ_k weights[k] g_k[p]``, shaped like the parameter, in the inputs' dtype
  (one allocation each; an empty 1-D tensor for a parameter no task touches);
* ``weighted_sum_cpu_out(..., Tensor(a!)[] out) -> ()``: writes ``d[p]`` into ``out[p]`` (e.g. the
  parameters' ``.grad``); ``out[p]`` may be exactly one of parameter ``p``'s inputs;
* ``graddrop_cpu(Tensor?[] tensors, int num_tasks, Tensor leak, int seed, int offset, float eps)
  -> Tensor[]`` and ``graddrop_cpu_out(..., Tensor(a!)[] out) -> ()``: GradDrop's masked sum,
  bit for bit :func:`fastmtl.reference.graddrop.graddrop_ref` (the same Philox-4x32-10 uniforms,
  computed in C++ instead of int64 tensor ops); ``out`` tensors may differ in dtype.

No Python loop per parameter and no ``torch.cat``: the kernel reads every tensor in place,
bfloat16/float16 natively (converted a 256-element block at a time in registers/L1), accumulates in
float32 (float64 for float64) within fixed 16384-element chunks and in float64 across chunks.
``at::parallel_for`` runs over fixed groups of chunks whose partial Gram matrices are added in
group order, so results are bitwise identical for any thread count (GradDrop is elementwise).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .gradients import TaskGradients, accumulate_dtype
from .reference.graddrop import DEFAULT_EPS
from .ops.op_format import fake_gramian, fake_weighted_sum_out, first_entry, task_major_entries, weighted_sum_into

OP_NAMES = ("gramian_cpu", "weighted_sum_cpu", "weighted_sum_cpu_out", "graddrop_cpu", "graddrop_cpu_out")

_LOAD_ERROR: Optional[str] = None
_FAKE_ERROR: Optional[str] = None

try:
    from . import _C  # noqa: F401  (loading the library registers torch.ops.fastmtl.*)
except Exception as exc:  # ImportError, or OSError for a library built against another torch
    _C = None
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def _direct_entry_points() -> dict:
    """The direct eager entry points of ``fastmtl._C`` (``csrc/cpu_direct.cpp``) by op name, or ``{}``."""
    names = {name: f"{name}_direct" for name in OP_NAMES}
    if _C is None or not all(hasattr(_C, direct) for direct in names.values()):
        return {}
    return {name: getattr(_C, direct) for name, direct in names.items()}


_DIRECT = _direct_entry_points()


def _op(name: str):
    """The callable that runs CPU kernel ``name``: its op, or in plain eager mode its direct entry point.

    An op call converts every element of its ``Tensor?[]`` argument through the dispatcher's
    Python binding (about 0.12 µs per tensor: 0.2 ms per call at K = 8 × 200 parameters); the
    direct entry point runs the same C++ function, with the same results and errors, for a few ns
    per tensor. The op stays in use wherever the dispatcher does something: under
    ``torch.compile`` tracing, inside a ``TorchDispatchMode`` or ``TorchFunctionMode`` (fake
    tensors, the allocation probe, flop counters), and while the autograd profiler records.
    """
    direct = _DIRECT.get(name)
    if direct is None or not plain_eager():
        return getattr(torch.ops.fastmtl, name)
    return direct


def plain_eager() -> bool:
    """Whether nothing intercepts torch calls now: no ``torch.compile`` tracing, no dispatch or
    function mode (fake tensors, probes), no autograd profiler. Only then may a C++ function of
    ``fastmtl._C`` read tensors directly in place of the ops."""
    return not (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
                or torch._C._len_torch_function_stack()
                or getattr(torch.autograd.profiler, "_is_profiler_enabled", True))


def _kernel(name: str, tg: TaskGradients) -> tuple:
    """``(callable, tensors)``: :func:`_op`'s callable for ``name`` and ``tg``'s gradients in the form it
    takes: the direct entry point reads the K rows as they are, the op takes the flat task-major list
    (which costs a Python pass over the K × P entries)."""
    fn = _op(name)
    return fn, (tg.entries if fn is _DIRECT.get(name) else task_major_entries(tg))


def _drop_untouched(parts: list, tg: TaskGradients) -> list:
    """The kernels' per-parameter results with ``None`` where no task touches the parameter."""
    if None not in tg.shapes:
        return parts
    return [None if shape is None else part for part, shape in zip(parts, tg.shapes)]


def unavailable_reason() -> Optional[str]:
    """``None`` when the CPU kernels are registered, else why not."""
    if _C is None:
        return f"fastmtl._C is not loaded ({_LOAD_ERROR})"
    missing = [name for name in OP_NAMES if not hasattr(torch.ops.fastmtl, name)]
    if missing:
        return f"fastmtl._C was built without the CPU multi-tensor kernels ({', '.join(missing)} missing)"
    if _FAKE_ERROR is not None:
        return f"fake kernels could not be registered: {_FAKE_ERROR}"
    return None


def _register_fakes() -> None:
    torch.library.register_fake("fastmtl::gramian_cpu")(fake_gramian("fastmtl::gramian_cpu"))
    torch.library.register_fake("fastmtl::weighted_sum_cpu_out")(fake_weighted_sum_out("fastmtl::weighted_sum_cpu_out"))

    torch.library.register_fake("fastmtl::weighted_sum_cpu")(_per_parameter_fake("fastmtl::weighted_sum_cpu"))
    torch.library.register_fake("fastmtl::graddrop_cpu")(_per_parameter_fake("fastmtl::graddrop_cpu"))

    @torch.library.register_fake("fastmtl::graddrop_cpu_out")
    def _graddrop_out_fake(tensors, num_tasks, leak, seed, offset, eps, out):
        first_entry(tensors, num_tasks, "fastmtl::graddrop_cpu_out", RuntimeError)
        return None


def _per_parameter_fake(op: str):
    def fake(tensors, num_tasks, *args):
        ref = first_entry(tensors, num_tasks, op, RuntimeError)
        # One allocation per parameter, as the real kernel returns (outputs must not alias).
        P = len(tensors) // num_tasks
        parts = []
        for p in range(P):
            column = [tensors[k * P + p] for k in range(num_tasks) if tensors[k * P + p] is not None]
            parts.append(ref.new_empty(column[0].shape if column else (0,)))
        return parts
    return fake


if _C is not None and all(hasattr(torch.ops.fastmtl, name) for name in OP_NAMES):
    try:
        _register_fakes()
    except Exception as exc:  # an incompatible torch.library: reported by the probe, never on import
        _FAKE_ERROR = f"{type(exc).__name__}: {exc}"


# ---- backend implementations (the reference signatures) ------------------------------------------


def gramian_tg(tg: TaskGradients) -> torch.Tensor:
    """Gram matrix of validated task gradients; same contract as ``gramian_ref``."""
    fn, tensors = _kernel("gramian_cpu", tg)
    return fn(tensors, tg.num_tasks)


def weighted_sum_tg(tg: TaskGradients, weights: torch.Tensor,
                    out: Optional[Sequence[Optional[torch.Tensor]]] = None) -> list:
    """``Σ_k weights[k] g_k[p]`` per parameter; same contract as ``weighted_sum_ref``.

    Without ``out``: one new tensor per parameter (``None`` where no task has one); in plain eager
    mode these are consecutive slices of one allocation, each its own tensor. With ``out``:
    written in place (one call per distinct dtype among the ``out`` tensors, normally one).
    """
    K = tg.num_tasks
    if weights.device != tg.device:
        weights = weights.to(tg.device)
    if out is None:
        fn, tensors = _kernel("weighted_sum_cpu", tg)
        return _drop_untouched(fn(tensors, K, weights), tg)
    fn, tensors = _kernel("weighted_sum_cpu_out", tg)
    return weighted_sum_into(tg, weights, out, fn, all_entries=tensors)


def graddrop_tg(tg: TaskGradients, seed: int, offset: int = 0, leak: Optional[torch.Tensor] = None,
                eps: float = DEFAULT_EPS, out: Optional[Sequence[Optional[torch.Tensor]]] = None) -> list:
    """GradDrop direction per parameter; same contract and same bits as ``graddrop_ref``.

    Element ``i`` of parameter ``p`` draws the Philox uniform of counter ``offset + base_p + i``
    (``base_p``: elements of the parameters before ``p``; parameters no task touches count 0).
    Without ``out``: one new tensor per parameter in the gradients' dtype (``None`` where no task
    has one; slices of one allocation in plain eager mode). With ``out``: written in place, one
    call whatever the ``out`` dtypes.
    """
    seed, offset = int(seed), int(offset)
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"graddrop: seed must be in [0, 2^63), got {seed}")
    if offset < 0:
        raise ValueError(f"graddrop: offset must be >= 0, got {offset}")
    K = tg.num_tasks
    if leak is None:
        leak = torch.zeros(K, dtype=accumulate_dtype(tg.dtype), device=tg.device)
    else:
        if leak.numel() != K:
            raise ValueError(f"graddrop: leak must hold one value per task ({K}), got shape {tuple(leak.shape)}")
        if leak.device != tg.device:
            leak = leak.to(tg.device)
    if out is None:
        fn, tensors = _kernel("graddrop_cpu", tg)
        return _drop_untouched(fn(tensors, K, leak, seed, offset, float(eps)), tg)
    targets = list(out)
    # Parameters no task touches have no elements and shift no counter: leaving them out of the
    # call (their out entries may be None) changes no random number.
    active = [p for p, shape in enumerate(tg.shapes) if shape is not None]
    if len(active) == tg.num_params:
        fn, tensors = _kernel("graddrop_cpu_out", tg)
        fn(tensors, K, leak, seed, offset, float(eps), targets)
    elif active:
        _op("graddrop_cpu_out")(task_major_entries(tg, active), K, leak, seed, offset, float(eps),
                                 [targets[p] for p in active])
    return targets
