"""Triton weighted sum ``d[p] = Σ_k λ_k g_k[p]``, read straight from per-parameter tensors.

One pass, one launch (per output dtype): program ``c`` handles chunk ``c`` (at most ``BLOCK``
elements of one parameter, from the layout table of :mod:`fastmtl.triton.tables`), loads the K
task blocks through the address table, accumulates ``λ_k · g_k`` in float32 (inputs converted
right after the load) and stores the block in the output dtype. Missing tensors (``None``) are
zeros: their λ is replaced by 0, so a non-finite λ of a task that does not touch a parameter
does not leak into it (as in the reference). λ is read from a device float32 tensor, so new
weights never recompile anything and never synchronise with the host. Full blocks take an
unmasked, vectorisable path; the last block of each parameter is masked. The result does not
depend on ``BLOCK`` (every element sums its K terms in task order).

Outputs are either one fresh flat buffer (parameter ``p`` at ``flat_off[p]``, a multiple of 16
elements; per-parameter views are returned) or existing tensors given as ``out`` (e.g. the
parameters' ``.grad``), written in place; their addresses follow the inputs in the address table.
Non-contiguous ``out`` tensors are written through a contiguous scratch tensor and copied back.

Operators (see :mod:`fastmtl.triton.gramian` for why these are ``custom_op`` and not
``triton_op``):

* ``fastmtl::weighted_sum_triton(Tensor?[] tensors, int num_tasks, Tensor weights, int block=0)
  -> Tensor``: the flat result, dtype of the inputs;
* ``fastmtl::weighted_sum_triton_out(Tensor?[] tensors, int num_tasks, Tensor weights,
  Tensor(a!)[] out, int block=0) -> ()``: writes parameter ``p`` into ``out[p]`` (cast to its
  dtype; float32, float16 or bfloat16).
"""

from typing import List, Optional

import torch
import triton
import triton.language as tl

from ..ops.op_format import fake_weighted_sum_flat, fake_weighted_sum_out
from .tables import (ALIGN_BYTES, TL_DTYPES, Inputs, address_table, check_block, device_guard,
                     gather_inputs, interpreter_active, layout, padded, prepare_outputs,
                     split_flat)

OP = "fastmtl::weighted_sum_triton"
OP_OUT = "fastmtl::weighted_sum_triton_out"

# Largest K: the task loop is unrolled (K loads in flight per thread).
MAX_TASKS = 64

# GPU launch heuristics by (largest K, bytes per element): (BLOCK, num_warps). Up to K = 16, 8
# elements per thread (two 128-bit loads per float32 row, one per half-precision row; 16 half
# elements spill at K = 8 in the unaligned variant); beyond, 4.
_GPU_CONFIGS = ((16, 4, 1024, 4), (16, 2, 1024, 4), (MAX_TASKS, 4, 512, 4), (MAX_TASKS, 2, 512, 4))
_INTERPRETER_BLOCK = 4096


def weighted_sum_config(num_tasks: int, dtype: torch.dtype, block: int = 0) -> tuple:
    """``(BLOCK, num_warps)`` for a weighted sum of ``num_tasks`` rows of ``dtype``."""
    if interpreter_active():
        return (block or _INTERPRETER_BLOCK), 4
    size = 4 if dtype == torch.float32 else 2
    for max_k, nbytes, b, warps in _GPU_CONFIGS:
        if num_tasks <= max_k and size == nbytes:
            return (block or b), warps
    raise ValueError(f"{OP}: at most {MAX_TASKS} tasks are supported, got {num_tasks}")


@triton.jit(do_not_specialize=["P", "C"])
def _weighted_sum_kernel(ptrs, layout, lam, out_flat, P, C,
                         K: tl.constexpr, DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                         ALIGNED: tl.constexpr, OUT_FLAT: tl.constexpr, SOFT_BF16: tl.constexpr):
    """``out[p][idx] = Σ_k λ_k · g_k[p][idx]`` for the chunk of this program.

    ``ptrs``: int64 address table, inputs at slot ``k·P + p`` (0 = missing) and, unless
    ``OUT_FLAT``, output ``p`` at slot ``K·P + p``; ``layout``: int64 layout table; ``lam``: K
    float32 weights; ``out_flat``: the flat output when ``OUT_FLAT`` (parameter ``p`` at
    ``layout[2P + p]``). Written inline, without ``@triton.jit`` helper calls (each costs about a
    millisecond under the interpreter).
    """
    c = tl.program_id(0)
    p = tl.load(layout + 3 * P + c)
    blk = tl.load(layout + 3 * P + C + c)
    n = tl.load(layout + p)
    off = blk * BLOCK  # a multiple of BLOCK by construction
    idx = off + tl.arange(0, BLOCK)
    if OUT_FLAT:
        dst = out_flat + tl.load(layout + 2 * P + p)
        if ALIGNED:
            # flat_off is a multiple of 16 elements and the buffer start was checked on the host.
            dst = tl.multiple_of(dst, 16)
    else:
        dst = tl.load(ptrs + K * P + p).to(tl.pointer_type(OUT_DTYPE))
        if ALIGNED:
            dst = tl.multiple_of(dst, 16)
    full = off + BLOCK <= n
    if full:
        # Full block: only the scalar "present" masks (a null address is never dereferenced).
        acc = tl.full([BLOCK], 0.0, tl.float32)
        for k in tl.static_range(K):
            raw = tl.load(ptrs + k * P + p)
            ptr = raw.to(tl.pointer_type(DTYPE))
            if ALIGNED:
                ptr = tl.multiple_of(ptr, 16)
            w = tl.where(raw != 0, tl.load(lam + k), 0.0)
            acc += w * tl.load(ptr + idx, mask=raw != 0, other=0.0).to(tl.float32)
    else:
        # Last block of the parameter: lanes at or past n are neither read nor written (they may
        # belong to another tensor, e.g. the rest of a larger buffer these tensors are views of).
        acc = tl.full([BLOCK], 0.0, tl.float32)
        for k in tl.static_range(K):
            raw = tl.load(ptrs + k * P + p)
            ptr = raw.to(tl.pointer_type(DTYPE))
            if ALIGNED:
                ptr = tl.multiple_of(ptr, 16)
            w = tl.where(raw != 0, tl.load(lam + k), 0.0)
            acc += w * tl.load(ptr + idx, mask=(idx < n) & (raw != 0), other=0.0).to(tl.float32)
    if SOFT_BF16:
        # The interpreter converts float32 to bfloat16 by truncation; GPUs round to nearest even
        # (as PyTorch does). Round explicitly on the bits so both modes store the same values:
        # add 0x7FFF plus the lowest kept bit, keep the high half; NaN stays a quiet NaN.
        bits = acc.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(acc != acc, 0x7FC0, bits)
        res = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        res = acc.to(OUT_DTYPE)
    if full:
        tl.store(dst + idx, res)
    elif OUT_FLAT:
        # The flat buffer pads every parameter to a multiple of 16 elements: write zeros there
        # too, so the whole output is defined (the tail block always covers the padding).
        tl.store(dst + idx, tl.where(idx < n, res, 0.0), mask=idx < (n + 15) // 16 * 16)
    else:
        tl.store(dst + idx, res, mask=idx < n)


def _weights(weights: torch.Tensor, num_tasks: int, device: torch.device, op: str) -> torch.Tensor:
    if weights.dim() != 1 or weights.shape[0] != num_tasks:
        raise ValueError(f"{op}: weights must have shape [{num_tasks}], got {tuple(weights.shape)}")
    if weights.device != device:
        raise ValueError(f"{op}: weights are on {weights.device} but the gradients are on {device}")
    # A device-side cast (no host synchronisation); float32 is what the kernel reads.
    return weights.to(torch.float32).contiguous()


def _launch(inp, lam, flat, outs, block, warps, out_dtype):
    """One launch over the parameters of ``inp``: into ``flat`` or, if it is None, into ``outs``."""
    lay = layout(inp.device, inp.numels, block)
    if lay.num_chunks == 0:
        return
    addresses = inp.addresses()
    if flat is None:
        addresses = addresses + [o.data_ptr() for o in outs]
        dummy = lam
    else:
        dummy = flat
    addr = address_table(inp.device, addresses)
    aligned = addr.aligned and (flat is None or flat.data_ptr() % ALIGN_BYTES == 0)
    with device_guard(inp.device):
        _weighted_sum_kernel[(lay.num_chunks,)](addr.table, lay.table, lam, dummy, inp.num_params, lay.num_chunks,
                                                K=inp.num_tasks, DTYPE=TL_DTYPES[inp.dtype],
                                                OUT_DTYPE=TL_DTYPES[out_dtype], BLOCK=block, ALIGNED=aligned,
                                                OUT_FLAT=flat is not None,
            SOFT_BF16=interpreter_active() and out_dtype == torch.bfloat16, num_warps=warps)


def _check_tasks(num_tasks: int, op: str) -> None:
    if num_tasks > MAX_TASKS:
        raise ValueError(f"{op}: at most {MAX_TASKS} tasks are supported, got {num_tasks}")


def _weighted_sum_impl(tensors, num_tasks, weights, block):
    inp = gather_inputs(tensors, num_tasks, OP)  # keeps contiguous copies alive through the launch
    _check_tasks(inp.num_tasks, OP)
    if block:
        check_block(block, OP)
    lam = _weights(weights, inp.num_tasks, inp.device, OP)
    block, warps = weighted_sum_config(inp.num_tasks, inp.dtype, block)
    flat = torch.empty(sum(padded(n) for n in inp.numels), dtype=inp.dtype, device=inp.device)
    _launch(inp, lam, flat, None, block, warps, inp.dtype)
    return flat


def _weighted_sum_out_impl(tensors, num_tasks, weights, out, block):
    inp = gather_inputs(tensors, num_tasks, OP_OUT)
    _check_tasks(inp.num_tasks, OP_OUT)
    if block:
        check_block(block, OP_OUT)
    lam = _weights(weights, inp.num_tasks, inp.device, OP_OUT)
    targets, copies = prepare_outputs(out, inp.numels, inp.device, OP_OUT)
    block, warps = weighted_sum_config(inp.num_tasks, inp.dtype, block)
    groups = {}
    for p, t in enumerate(targets):
        groups.setdefault(t.dtype, []).append(p)
    for out_dtype, columns in groups.items():
        sub = inp if len(groups) == 1 else _columns(inp, columns)
        _launch(sub, lam, None, [targets[p] for p in columns], block, warps, out_dtype)
    for dst, scratch in copies:
        dst.copy_(scratch)


def _columns(inp, columns):
    """The inputs restricted to parameters ``columns`` (for one launch per output dtype)."""
    K, P = inp.num_tasks, inp.num_params
    tensors = [inp.tensors[k * P + p] for k in range(K) for p in columns]
    return Inputs(tensors, K, len(columns), tuple(inp.numels[p] for p in columns), inp.dtype, inp.device)


@torch.library.custom_op(OP, mutates_args=())
def weighted_sum_op(tensors: List[Optional[torch.Tensor]], num_tasks: int, weights: torch.Tensor,
                    block: int = 0) -> torch.Tensor:
    """Flat ``Σ_k weights[k] g_k[p]`` of task-major ``tensors`` (parameter ``p`` at ``flat_off[p]``)."""
    return _weighted_sum_impl(tensors, num_tasks, weights, block)


weighted_sum_op.register_fake(fake_weighted_sum_flat(OP, ValueError))


@torch.library.custom_op(OP_OUT, mutates_args=("out",))
def weighted_sum_out_op(tensors: List[Optional[torch.Tensor]], num_tasks: int, weights: torch.Tensor,
                        out: List[torch.Tensor], block: int = 0) -> None:
    """Writes ``Σ_k weights[k] g_k[p]`` into ``out[p]`` for every parameter ``p``."""
    _weighted_sum_out_impl(tensors, num_tasks, weights, out, block)


weighted_sum_out_op.register_fake(fake_weighted_sum_out(OP_OUT, ValueError))


def weighted_sum_triton(tg, weights: torch.Tensor, out: Optional[list] = None,
                        block: Optional[int] = None) -> list:
    """``d[p] = Σ_k weights[k] · g_k[p]`` for every parameter (same contract as ``weighted_sum_ref``).

    Args:
        tg: :class:`fastmtl.gradients.TaskGradients` (float32/float16/bfloat16; ``None`` = zeros).
        weights: ``[K]`` tensor on the gradients' device (any float dtype; read as float32).
        out: optional P tensors (``None`` where no task has a gradient), written in place and
            returned; their dtype may differ from the gradients' (float32/float16/bfloat16).
        block: elements per chunk (a power of two >= 16); default from the launch heuristics.

    Returns:
        A list of P tensors shaped like the parameters (``None`` for a parameter no task
        touches): views into one fresh flat buffer of the gradients' dtype, or the ``out``
        tensors. Accumulation is float32.
    """
    K = tg.num_tasks
    active = [p for p, shape in enumerate(tg.shapes) if shape is not None]
    if len(active) == tg.num_params:
        tensors = [t for row in tg.entries for t in row]
    else:
        tensors = [row[p] for row in tg.entries for p in active]
    if weights.device != tg.device:
        weights = weights.to(tg.device)
    if out is None:
        flat = torch.ops.fastmtl.weighted_sum_triton(tensors, K, weights, int(block or 0))
        views = split_flat(flat, [tg.shapes[p] for p in active])
        result = [None] * tg.num_params
        for p, v in zip(active, views):
            result[p] = v
        return result
    targets = list(out)
    torch.ops.fastmtl.weighted_sum_triton_out(tensors, K, weights, [targets[p] for p in active], int(block or 0))
    return targets
