"""Triton GradDrop: sign-purity masks and the masked sum in one elementwise pass.

Per coordinate (missing tensors are zeros), exactly as :mod:`fastmtl.reference.graddrop`:
``S = Σ_i g_i``, ``A = Σ_i |g_i|`` (float32, task order), ``U = tl.rand(seed, offset + base_p +
i)``, ``thr = (2U − 1)(A + eps)``, keep positive components where ``S > thr`` (``P > U``) and
negative ones where ``S < thr`` (``P < U``), ``d = Σ_i (M_i ? g_i : ℓ_i g_i)``. The threshold
form avoids a division, so the masks agree bit for bit with the reference, which reproduces
Triton's Philox in PyTorch (:func:`fastmtl.reference.graddrop.philox_uniform`).

One launch (per output dtype), one program per chunk of at most ``BLOCK`` elements of one
parameter, the same tables as the weighted sum (:mod:`fastmtl.triton.tables`): the K task blocks
are loaded once through the address table (float32 right after the load), and the result is
stored in the output dtype, into a fresh flat buffer or into ``out`` tensors. The random numbers
depend only on ``seed``, ``offset`` and each element's index in the concatenation of the
parameters, never on ``BLOCK`` or the grid, so results are reproducible everywhere.

Operators (``custom_op``, see :mod:`fastmtl.triton.gramian` for why):

* ``fastmtl::graddrop_triton(Tensor?[] tensors, int num_tasks, Tensor leak, int seed, int offset,
  float eps, int block=0) -> Tensor``: the flat result (parameter ``p`` at ``flat_off[p]``);
* ``fastmtl::graddrop_triton_out(..., Tensor(a!)[] out, int block=0) -> ()``.
"""

from typing import List, Optional

import torch
import triton
import triton.language as tl

from ..reference.graddrop import DEFAULT_EPS
from .tables import (ALIGN_BYTES, TL_DTYPES, Inputs, address_table, check_block, column_numels, device_guard,
                     first_tensor, gather_inputs, interpreter_active, layout, padded, prepare_outputs, split_flat)

OP = "fastmtl::graddrop_triton"
OP_OUT = "fastmtl::graddrop_triton_out"

# Largest K: the K rows of a block are held in registers.
MAX_TASKS = 32

# GPU launch heuristics by (largest K): (BLOCK, num_warps); the K rows stay in registers, so BLOCK
# shrinks as K grows.
_GPU_CONFIGS = ((8, 1024, 4), (16, 512, 4), (MAX_TASKS, 256, 4))
_INTERPRETER_BLOCK = 4096


def graddrop_config(num_tasks: int, block: int = 0) -> tuple:
    """``(BLOCK, num_warps)`` for GradDrop over ``num_tasks`` rows."""
    if interpreter_active():
        return (block or _INTERPRETER_BLOCK), 4
    for max_k, b, warps in _GPU_CONFIGS:
        if num_tasks <= max_k:
            return (block or b), warps
    raise ValueError(f"{OP}: at most {MAX_TASKS} tasks are supported, got {num_tasks}")


@triton.jit(do_not_specialize=["seed", "offset", "P", "C"])
def _graddrop_kernel(ptrs, layout, leak, out_flat, seed, offset, eps, P, C,
                     K: tl.constexpr, DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                     ALIGNED: tl.constexpr, OUT_FLAT: tl.constexpr, SOFT_BF16: tl.constexpr):
    """GradDrop of the chunk of this program (tables as in the weighted-sum kernel).

    ``leak``: K float32 leaks; ``seed``/``offset``: Philox key and counter offset; the counter of
    element ``idx`` of parameter ``p`` is ``offset + layout[P + p] + idx`` (int64). Written inline,
    without ``@triton.jit`` helper calls (each costs about a millisecond under the interpreter).
    """
    c = tl.program_id(0)
    p = tl.load(layout + 3 * P + c)
    blk = tl.load(layout + 3 * P + C + c)
    n = tl.load(layout + p)
    off = blk * BLOCK  # a multiple of BLOCK by construction
    idx = off + tl.arange(0, BLOCK)
    full = off + BLOCK <= n
    if full:
        # Full block: only the scalar "present" masks (a null address is never dereferenced).
        rows = ()
        for k in tl.static_range(K):
            raw = tl.load(ptrs + k * P + p)
            ptr = raw.to(tl.pointer_type(DTYPE))
            if ALIGNED:
                ptr = tl.multiple_of(ptr, 16)
            rows = rows + (tl.load(ptr + idx, mask=raw != 0, other=0.0).to(tl.float32),)
    else:
        # Last block: lanes at or past n are other memory and stay unread (they load as 0).
        rows = ()
        for k in tl.static_range(K):
            raw = tl.load(ptrs + k * P + p)
            ptr = raw.to(tl.pointer_type(DTYPE))
            if ALIGNED:
                ptr = tl.multiple_of(ptr, 16)
            rows = rows + (tl.load(ptr + idx, mask=(idx < n) & (raw != 0), other=0.0).to(tl.float32),)
    # Sign purity without a division: P > U  <=>  S > (2U - 1)(A + eps), since A + eps > 0.
    # S and A are summed in task order, as in the reference, so the comparisons agree bit for bit.
    S = tl.full([BLOCK], 0.0, tl.float32)
    A = tl.full([BLOCK], 0.0, tl.float32)
    for k in tl.static_range(K):
        S = S + rows[k]
        A = A + tl.abs(rows[k])
    u = tl.rand(seed, offset + tl.load(layout + P + p) + idx)
    thr = (2.0 * u - 1.0) * (A + eps)
    keep_pos = S > thr
    keep_neg = S < thr
    d = tl.full([BLOCK], 0.0, tl.float32)
    for k in tl.static_range(K):
        g = rows[k]
        keep = ((g > 0) & keep_pos) | ((g < 0) & keep_neg)
        d = d + tl.where(keep, g, tl.load(leak + k) * g)
    if OUT_FLAT:
        dst = out_flat + tl.load(layout + 2 * P + p)
        if ALIGNED:
            # flat_off is a multiple of 16 elements and the buffer start was checked on the host.
            dst = tl.multiple_of(dst, 16)
    else:
        dst = tl.load(ptrs + K * P + p).to(tl.pointer_type(OUT_DTYPE))
        if ALIGNED:
            dst = tl.multiple_of(dst, 16)
    if SOFT_BF16:
        # The interpreter converts float32 to bfloat16 by truncation; GPUs round to nearest even
        # (as PyTorch does). Round explicitly on the bits so both modes store the same values:
        # add 0x7FFF plus the lowest kept bit, keep the high half; NaN stays a quiet NaN.
        bits = d.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(d != d, 0x7FC0, bits)
        res = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        res = d.to(OUT_DTYPE)
    if full:
        tl.store(dst + idx, res)
    elif OUT_FLAT:
        # The flat buffer pads every parameter to a multiple of 16 elements: write zeros there
        # too, so the whole output is defined (the tail block always covers the padding).
        tl.store(dst + idx, tl.where(idx < n, res, 0.0), mask=idx < (n + 15) // 16 * 16)
    else:
        tl.store(dst + idx, res, mask=idx < n)


def _check_args(inp, leak, seed, offset, block, op):
    if inp.num_tasks > MAX_TASKS:
        raise ValueError(f"{op}: at most {MAX_TASKS} tasks are supported, got {inp.num_tasks}")
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"{op}: seed must be in [0, 2^63), got {seed}")
    if offset < 0 or offset + sum(inp.numels) >= 2 ** 63:
        raise ValueError(f"{op}: offset must be >= 0 and leave the counters below 2^63, got {offset}")
    if block:
        check_block(block, op)
    if leak.dim() != 1 or leak.shape[0] != inp.num_tasks:
        raise ValueError(f"{op}: leak must have shape [{inp.num_tasks}], got {tuple(leak.shape)}")
    if leak.device != inp.device:
        raise ValueError(f"{op}: leak is on {leak.device} but the gradients are on {inp.device}")
    return leak.to(torch.float32).contiguous()


def _launch(inp, leak, seed, offset, eps, flat, outs, block, warps, out_dtype):
    lay = layout(inp.device, inp.numels, block)
    if lay.num_chunks == 0:
        return
    addresses = inp.addresses()
    if flat is None:
        addresses = addresses + [o.data_ptr() for o in outs]
        dummy = leak
    else:
        dummy = flat
    addr = address_table(inp.device, addresses)
    aligned = addr.aligned and (flat is None or flat.data_ptr() % ALIGN_BYTES == 0)
    with device_guard(inp.device):
        _graddrop_kernel[(lay.num_chunks,)](addr.table, lay.table, leak, dummy, seed, offset, eps, inp.num_params,
                                            lay.num_chunks, K=inp.num_tasks, DTYPE=TL_DTYPES[inp.dtype],
                                            OUT_DTYPE=TL_DTYPES[out_dtype], BLOCK=block, ALIGNED=aligned,
                                            OUT_FLAT=flat is not None,
            SOFT_BF16=interpreter_active() and out_dtype == torch.bfloat16, num_warps=warps)


def _graddrop_impl(tensors, num_tasks, leak, seed, offset, eps, block):
    inp = gather_inputs(tensors, num_tasks, OP)  # keeps contiguous copies alive through the launch
    leak = _check_args(inp, leak, seed, offset, block, OP)
    block, warps = graddrop_config(inp.num_tasks, block)
    flat = torch.empty(sum(padded(n) for n in inp.numels), dtype=inp.dtype, device=inp.device)
    _launch(inp, leak, seed, offset, eps, flat, None, block, warps, inp.dtype)
    return flat


def _graddrop_out_impl(tensors, num_tasks, leak, seed, offset, eps, out, block):
    inp = gather_inputs(tensors, num_tasks, OP_OUT)
    leak = _check_args(inp, leak, seed, offset, block, OP_OUT)
    targets, copies = prepare_outputs(out, inp.numels, inp.device, OP_OUT)
    block, warps = graddrop_config(inp.num_tasks, block)
    if len({t.dtype for t in targets}) == 1:
        _launch(inp, leak, seed, offset, eps, None, targets, block, warps, targets[0].dtype)
    else:
        # Output dtypes differ (rare): one launch per parameter, its counters shifted by its base
        # so that every element draws the same number as in a single launch.
        K, P = inp.num_tasks, inp.num_params
        base = 0
        for p in range(P):
            one = Inputs([inp.tensors[k * P + p] for k in range(K)], K, 1, (inp.numels[p],), inp.dtype, inp.device)
            _launch(one, leak, seed, offset + base, eps, None, [targets[p]], block, warps, targets[p].dtype)
            base += inp.numels[p]
    for dst, scratch in copies:
        dst.copy_(scratch)


@torch.library.custom_op(OP, mutates_args=())
def graddrop_op(tensors: List[Optional[torch.Tensor]], num_tasks: int, leak: torch.Tensor, seed: int, offset: int,
                eps: float, block: int = 0) -> torch.Tensor:
    """Flat GradDrop direction of task-major ``tensors`` (parameter ``p`` at ``flat_off[p]``)."""
    return _graddrop_impl(tensors, num_tasks, leak, seed, offset, eps, block)


@graddrop_op.register_fake
def _graddrop_fake(tensors, num_tasks, leak, seed, offset, eps, block=0):
    ref = first_tensor(tensors, num_tasks, OP)
    total = 0
    for n in column_numels(tensors, num_tasks):
        total = total + padded(n)
    return ref.new_empty((total,), dtype=ref.dtype)


@torch.library.custom_op(OP_OUT, mutates_args=("out",))
def graddrop_out_op(tensors: List[Optional[torch.Tensor]], num_tasks: int, leak: torch.Tensor, seed: int,
                    offset: int, eps: float, out: List[torch.Tensor], block: int = 0) -> None:
    """Writes the GradDrop direction of parameter ``p`` into ``out[p]``."""
    _graddrop_out_impl(tensors, num_tasks, leak, seed, offset, eps, out, block)


@graddrop_out_op.register_fake
def _graddrop_out_fake(tensors, num_tasks, leak, seed, offset, eps, out, block=0):
    first_tensor(tensors, num_tasks, OP_OUT)
    return None


def graddrop_triton(tg, seed: int, offset: int = 0, leak: Optional[torch.Tensor] = None, eps: float = DEFAULT_EPS,
                    out: Optional[list] = None, block: Optional[int] = None) -> list:
    """GradDrop direction ``d[p] = Σ_i (ℓ_i + (1 − ℓ_i) M_i) g_i[p]`` (same contract as ``graddrop_ref``).

    Args:
        tg: :class:`fastmtl.gradients.TaskGradients` (float32/float16/bfloat16; ``None`` = zeros).
        seed: Philox key in ``[0, 2^63)``.
        offset: counter offset; element ``i`` of parameter ``p`` uses counter
            ``offset + base_p + i`` (``base_p`` = elements of the parameters before ``p``).
        leak: ``[K]`` leaks (default zeros), any float dtype, on the gradients' device.
        eps: added to ``Σ|g_i|`` in the sign purity.
        out: optional P tensors (``None`` where no task has a gradient), written and returned.
        block: elements per chunk (a power of two >= 16); does not change the result.

    Returns:
        A list of P tensors shaped like the parameters (``None`` for a parameter no task
        touches): views into one fresh flat buffer of the gradients' dtype, or the ``out``
        tensors. Equal bit for bit in its masks to ``graddrop_ref`` with the same arguments.
    """
    K = tg.num_tasks
    if leak is None:
        leak = torch.zeros(K, dtype=torch.float32, device=tg.device)
    elif leak.device != tg.device:
        leak = leak.to(tg.device)
    # Parameters no task touches have no elements: dropping them keeps every counter unchanged.
    active = [p for p, shape in enumerate(tg.shapes) if shape is not None]
    tensors = [row[p] for row in tg.entries for p in active]
    if out is None:
        flat = torch.ops.fastmtl.graddrop_triton(tensors, K, leak, int(seed), int(offset), float(eps),
                                                 int(block or 0))
        views = split_flat(flat, [tg.shapes[p] for p in active])
        result = [None] * tg.num_params
        for p, v in zip(active, views):
            result[p] = v
        return result
    targets = list(out)
    torch.ops.fastmtl.graddrop_triton_out(tensors, K, leak, int(seed), int(offset), float(eps),
                                          [targets[p] for p in active], int(block or 0))
    return targets
