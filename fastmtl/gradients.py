"""The K task gradients handed to :func:`fastmtl.combine`: the input type and its helpers.

Three input forms are accepted and none of them is copied into a flat buffer:

* a ``[K, D]`` tensor (rows are tasks): ``layout == "matrix"``;
* a sequence of K 1-D tensors of equal length: ``layout == "vectors"``;
* a sequence of K sequences of per-parameter tensors (``[K][P]``, e.g. the tuples returned by
  ``torch.autograd.grad``), where ``None`` means "this task does not touch this parameter" and is
  treated as zeros without being allocated: ``layout == "params"``.

Every backend works from :class:`TaskGradients`: ``entries[k][p]`` is the tensor of task ``k`` for
parameter ``p`` (or ``None``). For the matrix form there is one "parameter" whose entries are the
rows of the matrix (views, not copies), and ``matrix`` keeps the original 2-D tensor so that
backends may use one GEMM on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import torch

from .out_buffers import check_out_overlap

try:  # the bulk validation in C++ (csrc/describe_params.cpp); optional, like every part of _C
    from ._C import describe_params as _DESCRIBE_PARAMS
except Exception:  # ImportError, or OSError for a library built against another torch
    _DESCRIBE_PARAMS = None

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums over gradients of ``dtype`` are accumulated in (float64 for float64, else float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class TaskGradients:
    """K task gradients in one of the three layouts, validated."""

    layout: str
    entries: tuple  # K tuples of P (Tensor | None)
    shapes: tuple  # P torch.Size, the shape of every parameter
    device: torch.device
    dtype: torch.dtype
    matrix: Optional[torch.Tensor] = None
    numels: tuple = field(default=())

    @property
    def num_tasks(self) -> int:
        return len(self.entries)

    @property
    def num_params(self) -> int:
        return len(self.shapes)

    @property
    def total_numel(self) -> int:
        return sum(self.numels)

    def present(self, p: int) -> list:
        """Indices of the tasks that have a gradient for parameter ``p``."""
        return [k for k in range(self.num_tasks) if self.entries[k][p] is not None]

    def flat_views(self, p: int) -> list:
        """``entries[k][p]`` flattened (a view when contiguous), ``None`` kept."""
        return [None if row[p] is None else row[p].reshape(-1) for row in self.entries]

    def restrict(self, indices: Sequence[int]) -> "TaskGradients":
        """The task gradients restricted to the parameters ``indices`` (views, no copy)."""
        indices = list(indices)
        if indices == list(range(self.num_params)):
            return self
        return TaskGradients(
            layout="params",
            entries=tuple(tuple(row[p] for p in indices) for row in self.entries),
            shapes=tuple(self.shapes[p] for p in indices),
            device=self.device,
            dtype=self.dtype,
            matrix=None,
            numels=tuple(self.numels[p] for p in indices),
        )

    def with_extra_task(self, entries: tuple) -> "TaskGradients":
        """A copy with one more task appended, given as P validated entries (:func:`single_structure`).

        Used for methods that need dot products with an external vector (HydaLearn's main-task
        reference gradient): the augmented Gram's last row holds them.
        """
        return TaskGradients(
            layout="params" if self.layout == "matrix" else self.layout,
            entries=self.entries + (tuple(entries),),
            shapes=self.shapes,
            device=self.device,
            dtype=self.dtype,
            matrix=None,
            numels=self.numels,
        )


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor(shape={tuple(x.shape)}, dtype={x.dtype}, device={x.device})"
    return type(x).__name__


def _check_tensor(t: torch.Tensor, where: str) -> None:
    if t.is_sparse or t.layout != torch.strided:
        raise TypeError(f"{where}: sparse or non-strided tensors are not supported (layout {t.layout}); "
                        "call .to_dense() first")
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{where}: dtype {t.dtype} is not supported; gradients must be one of "
                        "float16, bfloat16, float32, float64")
    if t.requires_grad:
        raise ValueError(f"{where}: the tensor requires grad; pass detached gradients "
                         "(torch.autograd.grad(..., create_graph=False) or .detach())")


def canonicalize(grads: Any) -> TaskGradients:
    """Validate ``grads`` and describe it as a :class:`TaskGradients`.

    Raises ``ValueError``/``TypeError`` naming the task and parameter at fault.
    """
    if isinstance(grads, torch.Tensor):
        if grads.dim() != 2:
            raise ValueError(
                f"a tensor of task gradients must be 2-D [K, D] (rows are tasks), got shape {tuple(grads.shape)}; "
                "pass a list of tensors for other layouts")
        _check_tensor(grads, "grads")
        if grads.shape[0] == 0:
            raise ValueError("grads has K = 0 tasks; at least one task gradient is needed")
        rows = tuple((row,) for row in grads.unbind(0))  # views, one call
        return TaskGradients("matrix", rows, (torch.Size([grads.shape[1]]),), grads.device, grads.dtype,
                             matrix=grads, numels=(grads.shape[1],))

    if isinstance(grads, (str, bytes)) or not isinstance(grads, Sequence):
        raise TypeError(f"grads must be a [K, D] tensor, a sequence of K tensors, or a sequence of K "
                        f"sequences of per-parameter tensors; got {_describe(grads)}")
    K = len(grads)
    if K == 0:
        raise ValueError("grads is empty (K = 0 tasks); at least one task gradient is needed")

    if all(isinstance(g, torch.Tensor) for g in grads):
        first = grads[0]
        for k, g in enumerate(grads):
            _check_tensor(g, f"task {k}")
            if g.dim() != 1:
                raise ValueError(f"task {k}: a sequence of tensors must hold 1-D task gradients, got shape "
                                 f"{tuple(g.shape)}; use a sequence of sequences for per-parameter gradients")
            if g.shape != first.shape:
                raise ValueError(f"task {k}: gradient has length {g.shape[0]} but task 0 has {first.shape[0]}")
            _check_same(g, first, f"task {k}", "task 0")
        entries = tuple((g,) for g in grads)
        return TaskGradients("vectors", entries, (first.shape,), first.device, first.dtype,
                             numels=(first.numel(),))

    # Per-parameter layout: validated in bulk first (the common case, a few hundred parameters per
    # task, costs a fraction of the per-tensor checks below); any failure reruns the detailed
    # validation, which words the error.
    fast = params_fast(grads)
    if fast is not None:
        return fast
    rows = []
    P = None
    for k, row in enumerate(grads):
        if isinstance(row, torch.Tensor) or isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise TypeError(f"task {k}: expected a sequence of per-parameter tensors (or None), got "
                            f"{_describe(row)}; do not mix tensors and sequences across tasks")
        if P is None:
            P = len(row)
        elif len(row) != P:
            raise ValueError(f"task {k}: has {len(row)} parameter gradients but task 0 has {P}; every task "
                             "must list the same parameters (use None for untouched ones)")
        rows.append(tuple(row))
    if P == 0:
        raise ValueError("every task lists zero parameters; nothing to combine")

    ref = None
    ref_where = None
    shapes = [None] * P
    owners = [None] * P
    for k, row in enumerate(rows):
        for p, t in enumerate(row):
            if t is None:
                continue
            where = f"task {k}, parameter {p}"
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{where}: expected a tensor or None, got {_describe(t)}")
            _check_tensor(t, where)
            if ref is None:
                ref, ref_where = t, where
            else:
                _check_same(t, ref, where, ref_where)
            if shapes[p] is None:
                shapes[p], owners[p] = t.shape, k
            elif t.shape != shapes[p]:
                raise ValueError(f"{where}: shape {tuple(t.shape)} differs from task {owners[p]}'s "
                                 f"{tuple(shapes[p])} for the same parameter")
    if ref is None:
        raise ValueError("every task gradient is None: no task touches any parameter")
    missing = [p for p in range(P) if shapes[p] is None]
    for p in missing:
        shapes[p] = None  # no task touches it; its combined gradient is None
    numels = tuple(0 if s is None else int(torch.Size(s).numel()) for s in shapes)
    return TaskGradients("params", tuple(rows), tuple(shapes), ref.device, ref.dtype, numels=numels)


def params_fast(grads: Sequence) -> Optional[TaskGradients]:
    """The per-parameter layout validated in bulk, or ``None`` when anything needs the detailed
    validation of :func:`canonicalize` (which then raises, or accepts an unusual but valid input).

    Runs ``fastmtl._C.describe_params`` (the metadata of every tensor read in C++, about 20× faster
    than through Python attributes) where the extension is loaded, else
    :func:`params_fast_python`; both accept exactly the same inputs. Under ``torch.compile`` the
    Python version runs: Dynamo cannot trace into the C function.
    """
    if _DESCRIBE_PARAMS is None or torch.compiler.is_compiling():
        return params_fast_python(grads)
    found = _DESCRIBE_PARAMS(grads)
    if found is None:
        return None
    rows, shapes, numels, dtype, device = found
    return TaskGradients("params", rows, shapes, device, dtype, numels=numels)


def params_fast_python(grads: Sequence) -> Optional[TaskGradients]:
    """:func:`params_fast` in Python: the specification of ``fastmtl._C.describe_params``."""
    if not isinstance(grads, (list, tuple)):
        return None
    if not all(isinstance(row, (list, tuple)) for row in grads):
        return None
    rows = [tuple(row) for row in grads]
    P = len(rows[0])
    if P == 0 or any(len(row) != P for row in rows):
        return None
    present = [t for row in rows for t in row if t is not None]
    if not present or not all(type(t) is torch.Tensor or type(t) is torch.nn.Parameter for t in present):
        return None
    ref = present[0]
    dtype, device = ref.dtype, ref.device
    if dtype not in SUPPORTED_DTYPES or any(t.dtype != dtype or t.device != device or t.requires_grad
                                            or t.layout != torch.strided for t in present):
        return None
    shapes = list(rows[0])
    shapes = [None if t is None else t.shape for t in shapes]
    for row in rows[1:]:
        for p, t in enumerate(row):
            if t is None:
                continue
            if shapes[p] is None:
                shapes[p] = t.shape
            elif t.shape != shapes[p]:
                return None
    numels = tuple(0 if s is None else s.numel() for s in shapes)
    return TaskGradients("params", tuple(rows), tuple(shapes), device, dtype, numels=numels)


def _check_same(t: torch.Tensor, ref: torch.Tensor, where: str, ref_where: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{where}: is on {t.device} but {ref_where} is on {ref.device}; all task gradients "
                         "must be on one device")
    if t.dtype != ref.dtype:
        raise TypeError(f"{where}: has dtype {t.dtype} but {ref_where} has {ref.dtype}; all task gradients "
                        "must share one dtype")


def single_structure(x: Any, tg: TaskGradients, what: str) -> tuple:
    """Validate one gradient-shaped object against the layout of ``tg``; return its P entries."""
    if tg.layout in ("matrix", "vectors"):
        if not isinstance(x, torch.Tensor) or x.dim() != 1 or x.shape[0] != tg.numels[0]:
            raise ValueError(f"{what}: expected a 1-D tensor of length {tg.numels[0]}, got {_describe(x)}")
        _check_tensor(x, what)
        _check_same(x, _any_tensor(tg), what, "the task gradients")
        return (x,)
    if isinstance(x, torch.Tensor) or not isinstance(x, Sequence) or len(x) != tg.num_params:
        raise ValueError(f"{what}: expected a sequence of {tg.num_params} per-parameter tensors (or None), "
                         f"got {_describe(x)}")
    out = []
    for p, t in enumerate(x):
        if t is None:
            out.append(None)
            continue
        where = f"{what}, parameter {p}"
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: expected a tensor or None, got {_describe(t)}")
        _check_tensor(t, where)
        _check_same(t, _any_tensor(tg), where, "the task gradients")
        if tg.shapes[p] is not None and t.shape != tg.shapes[p]:
            raise ValueError(f"{where}: shape {tuple(t.shape)} differs from the task gradients' "
                             f"{tuple(tg.shapes[p])}")
        if tg.shapes[p] is None:
            raise ValueError(f"{where}: no task has a gradient for this parameter, so it cannot take part")
        out.append(t)
    return tuple(out)


def _any_tensor(tg: TaskGradients) -> torch.Tensor:
    for row in tg.entries:
        for t in row:
            if t is not None:
                return t
    raise AssertionError("validated TaskGradients hold at least one tensor")


def check_finite(tg: TaskGradients) -> None:
    """Raise ``ValueError`` naming every task (and parameter) holding NaN or Inf.

    This synchronises with the device (one boolean per tensor is read back); it runs only when the
    caller asks for it with ``check_finite=True``.
    """
    flags = []
    where = []
    for k, row in enumerate(tg.entries):
        for p, t in enumerate(row):
            if t is not None:
                flags.append(torch.isfinite(t).all())
                where.append((k, p))
    ok = torch.stack(flags).cpu().tolist()
    bad = [w for w, good in zip(where, ok) if not good]
    if bad:
        if tg.layout == "params":
            desc = ", ".join(f"task {k} (parameter {p})" for k, p in bad)
        else:
            desc = ", ".join(f"task {k}" for k, _ in bad)
        raise ValueError(f"non-finite values (NaN or Inf) in the gradient of {desc}")


def canonicalize_out(out: Any, tg: TaskGradients) -> tuple:
    """Validate ``out=`` buffers against the output structure; return P entries (Tensor | None).

    ``out[p]`` may be exactly one of parameter ``p``'s input gradients (in place); any other memory
    overlap with an input or another ``out`` buffer is a ``ValueError`` (:mod:`fastmtl.out_buffers`).
    """
    if tg.layout in ("matrix", "vectors"):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a tensor of shape [{tg.numels[0]}] for this input layout, got "
                            f"{_describe(out)}")
        targets = (out,)
    else:
        if isinstance(out, torch.Tensor) or not isinstance(out, Sequence) or len(out) != tg.num_params:
            raise TypeError(f"out must be a sequence of {tg.num_params} tensors (one per parameter), got "
                            f"{_describe(out)}")
        targets = tuple(out)
    for p, t in enumerate(targets):
        where = f"out[{p}]" if tg.layout == "params" else "out"
        if t is None:
            if tg.shapes[p] is not None:
                raise ValueError(f"{where}: is None but some task has a gradient for parameter {p}")
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{where}: expected a tensor, got {_describe(t)}")
        shape = tg.shapes[p]
        if shape is not None and t.shape != shape:
            raise ValueError(f"{where}: shape {tuple(t.shape)} does not match the gradient shape {tuple(shape)}")
        if t.device != tg.device:
            raise ValueError(f"{where}: is on {t.device} but the task gradients are on {tg.device}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{where}: dtype {t.dtype} is not a supported floating dtype")
        if t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{where}: requires grad; write into .grad buffers or detached tensors")
    check_out_overlap(targets, tg)  # host metadata only, see fastmtl/out_buffers.py
    return targets


def losses_tensor(losses: Any, num_tasks: int, device: torch.device) -> Optional[torch.Tensor]:
    """The K task losses as a detached float64 tensor on ``device`` (``None`` passes through)."""
    if losses is None:
        return None
    if isinstance(losses, torch.Tensor):
        t = losses.detach()
    elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)):
        if not all(isinstance(v, (torch.Tensor, int, float)) for v in losses):
            raise TypeError("losses must be a tensor or a sequence of K numbers / scalar tensors")
        vals = [v.detach().reshape(()) if isinstance(v, torch.Tensor) else torch.tensor(float(v)) for v in losses]
        t = torch.stack([v.to(device=device, dtype=torch.float64) for v in vals]) if vals else torch.zeros(0)
    else:
        raise TypeError(f"losses must be a tensor or a sequence of K numbers, got {_describe(losses)}")
    t = t.reshape(-1)
    if t.shape[0] != num_tasks:
        raise ValueError(f"losses has {t.shape[0]} entries but there are {num_tasks} task gradients")
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise TypeError(f"losses must be real numbers, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.float64)


def loss_list(losses: Any) -> List[torch.Tensor]:
    """K scalar losses from a sequence or a ``[K]`` tensor (the training steps' first argument)."""
    if isinstance(losses, torch.Tensor):
        if losses.dim() > 1:
            raise ValueError(f"losses must be K scalar losses or a [K] tensor, got shape {tuple(losses.shape)}")
        out = list(losses.reshape(-1).unbind(0))
    elif isinstance(losses, Sequence) and not isinstance(losses, (str, bytes)):
        out = []
        for k, l in enumerate(losses):
            if not isinstance(l, torch.Tensor) or l.numel() != 1:
                raise TypeError(f"loss {k}: expected a scalar tensor, got "
                                f"{type(l).__name__ if not isinstance(l, torch.Tensor) else tuple(l.shape)}")
            out.append(l.reshape(()))
    else:
        raise TypeError(f"losses must be a sequence of K scalar tensors or a [K] tensor, got {type(losses).__name__}")
    if not out:
        raise ValueError("losses is empty (K = 0 tasks)")
    return out


def param_list(params: Any, what: str) -> List[torch.Tensor]:
    """Parameters from a module, a tensor or a sequence; each must require grad."""
    if params is None:
        return []
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    if isinstance(params, torch.Tensor):
        params = [params]
    out = list(params)
    for i, p in enumerate(out):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{what}[{i}]: expected a tensor (parameter), got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"{what}[{i}]: does not require grad")
    return out
