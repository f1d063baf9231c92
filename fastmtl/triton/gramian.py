"""Triton Gram matrix ``G[i, j] = Σ_p ⟨g_i[p], g_j[p]⟩`` read straight from per-parameter tensors.

Structure (one launch for the partials, one tiny launch for the fixed-order second stage):

* **Partials.** The parameters are cut into chunks of at most ``BLOCK`` elements (the layout
  table, :mod:`fastmtl.triton.tables`). The grid is persistent: program ``g`` sweeps a contiguous
  range of chunks; for each chunk it loads the K task rows once (a Triton tuple of float32 blocks,
  converted right after the load), adds the block sums of all K(K+1)/2 pairwise products to
  float32 scalars, and finally writes its ``K×K`` partial (both triangles) to ``partials[g]``.
  Full blocks take an unmasked path (vector loads); the last block of a parameter is masked.
* **Second stage.** :func:`~fastmtl.triton.tables.column_sum_kernel` sums the partial rows in a
  fixed order. There are no float atomics, so ``G`` is bitwise repeatable for a given device,
  layout and block size, and exactly symmetric (both triangles sum the same values in the same
  order).

Inputs: float32/float16/bfloat16 (one dtype per call); accumulation is float32. Missing tensors
(``None``) count as zeros and, as in the reference, add nothing to the pairs they belong to, even
when the other task's entry holds Inf/NaN (no ``0 · Inf`` NaN). A ``[K, D]`` matrix is the one-parameter case (its rows are the
entries).

Operator design: ``torch.ops.fastmtl.gramian_triton(Tensor?[] tensors, int num_tasks, int block=0)
-> Tensor`` takes the task-major list of tensors (entry ``k·P + p``) and is registered with
:func:`torch.library.custom_op` (plus a fake kernel), **not** with ``torch.library.triton_op``.
``triton_op`` runs its body under ``torch.compile`` with fake and functional tensors to put the
kernel launches into the graph; these kernels reach their inputs only through a table of raw
``data_ptr()`` values, which fake tensors do not have, and even with the addresses produced by an
opaque helper the traced graph would show the kernel reading just the table: the compiler would
be free to reuse the gradients' memory before the kernel runs, and for the ``out=`` variants
functionalization would drop the writes. An opaque op whose arguments are the tensors themselves
tells ``torch.compile`` exactly what is read and written; the kernels run inside it.

Non-contiguous inputs are copied to contiguous tensors first (that parameter only): the kernels
read each tensor as one run of ``numel`` elements. Inputs are never concatenated; the only
host work per call is building the address-table key (K·P ``data_ptr()`` calls) and, on a cache
miss, one small asynchronous host-to-device copy. Nothing synchronises with the device.

Launch parameters come from a small table by K (:func:`gram_config`); ``block`` overrides BLOCK
(tests use tiny blocks). There is deliberately no autotuning: the summation order depends on
BLOCK and the grid, so a timing-based choice could differ between processes and break bitwise
reproducibility. The interpreter uses one configuration.
"""

from typing import List, Optional

import torch
import triton
import triton.language as tl

from ..ops.op_format import fake_gramian
from .tables import (TL_DTYPES, address_table, check_block, column_sum, device_guard, gather_inputs, interpreter_active, layout, num_sms)

OP = "fastmtl::gramian_triton"

# Largest K the kernel is built for: it unrolls K(K+1)/2 pair accumulators held in registers
# (sm_90: no spills up to here, see tests/test_triton_compile.py). 17 = 16 tasks plus an extra
# reference row (HydaLearn's augmented Gram).
MAX_TASKS = 17

# GPU launch heuristics: (largest K, BLOCK, num_warps). Each thread holds BLOCK/(32·num_warps)
# elements of the K rows and of the K(K+1)/2 pair accumulators, so BLOCK shrinks as K grows.
_GPU_CONFIGS = ((2, 2048, 8), (4, 1024, 8), (8, 512, 8), (MAX_TASKS, 256, 8))
# Interpreter: one configuration; the cost is per interpreted operation, so big blocks are cheap.
_INTERPRETER_BLOCK = 4096
# Persistent grid: this many programs per SM at most on GPU. Under the interpreter programs run
# one after the other, and each ends with K(K+1)/2 ``tl.sum`` calls (about a millisecond each
# there), so few programs are used.
_PROGRAMS_PER_SM = 4
_INTERPRETER_PROGRAMS = 2


def gram_config(num_tasks: int, device: torch.device, block: int = 0) -> tuple:
    """``(BLOCK, num_warps)`` for a Gram of ``num_tasks`` rows (``block`` > 0 overrides BLOCK)."""
    if interpreter_active():
        return (block or _INTERPRETER_BLOCK), 4
    for max_k, b, warps in _GPU_CONFIGS:
        if num_tasks <= max_k:
            return (block or b), warps
    raise ValueError(f"{OP}: at most {MAX_TASKS} tasks are supported, got {num_tasks}")


@triton.jit(do_not_specialize=["P", "C", "per_prog"])
def _gram_partials_kernel(ptrs, layout, partials, P, C, per_prog,
                          K: tl.constexpr, DTYPE: tl.constexpr, BLOCK: tl.constexpr,
                          ALIGNED: tl.constexpr, MASKED: tl.constexpr):
    """``partials[g, i, j] = Σ_{chunks c of program g} ⟨rows_i(c), rows_j(c)⟩`` (float32).

    ``ptrs``: int64 address table (slot ``k·P + p``, 0 = missing); ``layout``: int64 layout table
    (numel at ``[p]``, chunk parameter at ``[3P + c]``, chunk block at ``[3P + C + c]``).
    Program ``g`` handles chunks ``[g·per_prog, min((g+1)·per_prog, C))``.

    ``MASKED``: some task misses some parameter; the products of a pair then count only where both
    rows are present (a per-pair select on scalar flags). The host picks it only when an entry is
    missing: the variant is separate because a runtime branch between the two updates in one
    kernel made the K = 16 build spill registers.

    Each pair ``(i, j)``, ``i <= j``, has a ``[BLOCK]`` float32 accumulator (at position
    ``i·K − i(i−1)/2 + (j − i)`` of the tuple) that is reduced once, after the last chunk: no
    per-block reductions (shuffles and barriers on GPU). Everything is written inline, without
    calls to ``@triton.jit`` helpers in the loop (``tl.zeros`` and ``tl.sum`` are such helpers,
    ``tl.full`` is not): under the interpreter each helper call re-patches the language module
    and costs about a millisecond.
    """
    pid = tl.program_id(0)
    c_begin = pid.to(tl.int64) * per_prog
    c_end = tl.minimum(c_begin + per_prog, C)
    lanes = tl.arange(0, BLOCK)
    acc = ()
    for _ in tl.static_range(K * (K + 1) // 2):
        acc = acc + (tl.full([BLOCK], 0.0, tl.float32),)
    for c in range(c_begin, c_end):
        p = tl.load(layout + 3 * P + c)
        blk = tl.load(layout + 3 * P + C + c)
        n = tl.load(layout + p)
        off = blk * BLOCK  # a multiple of BLOCK by construction
        idx = off + lanes
        if off + BLOCK <= n:
            # Full block: the only mask is the scalar "tensor present" flag (a null address is
            # never dereferenced), which keeps the loads vectorisable.
            rows = ()
            here = ()
            for k in tl.static_range(K):
                raw = tl.load(ptrs + k * P + p)
                ptr = raw.to(tl.pointer_type(DTYPE))
                if ALIGNED:
                    ptr = tl.multiple_of(ptr, 16)
                present = raw != 0
                rows = rows + (tl.load(ptr + idx, mask=present, other=0.0).to(tl.float32),)
                here = here + (present,)
        else:
            # Last block of the parameter: lanes at or past n belong to other memory (another
            # allocation, or the rest of a larger buffer this tensor is a view of) and stay unread.
            rows = ()
            here = ()
            for k in tl.static_range(K):
                raw = tl.load(ptrs + k * P + p)
                ptr = raw.to(tl.pointer_type(DTYPE))
                if ALIGNED:
                    ptr = tl.multiple_of(ptr, 16)
                present = raw != 0
                rows = rows + (tl.load(ptr + idx, mask=(idx < n) & present, other=0.0).to(tl.float32),)
                here = here + (present,)
        new = ()
        for i in tl.static_range(K):
            for j in tl.static_range(i, K):
                a = acc[i * K - (i * (i - 1)) // 2 + (j - i)]
                if MASKED:
                    # A missing row reads as zeros but must take no part in the products: with an
                    # Inf/NaN in task i's entry, 0 * Inf would make NaN of the pairs of i with the
                    # tasks that do not touch this parameter, which the reference leaves untouched.
                    new = new + (tl.where(here[i] & here[j], a + rows[i] * rows[j], a),)
                else:
                    new = new + (a + rows[i] * rows[j],)
        acc = new
    dst = partials + pid.to(tl.int64) * (K * K)
    for i in tl.static_range(K):
        for j in tl.static_range(i, K):
            s = tl.sum(acc[i * K - (i * (i - 1)) // 2 + (j - i)], axis=0)
            tl.store(dst + i * K + j, s)
            if i != j:
                tl.store(dst + j * K + i, s)


def _gramian_impl(tensors: List[Optional[torch.Tensor]], num_tasks: int, block: int) -> torch.Tensor:
    inp = gather_inputs(tensors, num_tasks, OP)  # keeps contiguous copies alive through the launch
    K = inp.num_tasks
    if K > MAX_TASKS:
        raise ValueError(f"{OP}: at most {MAX_TASKS} tasks are supported, got {K}")
    if block:
        check_block(block, OP)
    block, warps = gram_config(K, inp.device, block)
    lay = layout(inp.device, inp.numels, block)
    G = torch.empty((K, K), dtype=torch.float32, device=inp.device)
    C = lay.num_chunks
    if C == 0:
        return G.zero_()
    addresses = inp.addresses()
    P = inp.num_params
    masked = any(n and not addresses[k * P + p] for p, n in enumerate(inp.numels) for k in range(K))
    addr = address_table(inp.device, addresses)
    cap = _INTERPRETER_PROGRAMS if interpreter_active() else _PROGRAMS_PER_SM * num_sms(inp.device)
    programs = min(C, cap)
    per_prog = triton.cdiv(C, programs)
    programs = triton.cdiv(C, per_prog)
    partials = torch.empty((programs, K * K), dtype=torch.float32, device=inp.device)
    with device_guard(inp.device):
        _gram_partials_kernel[(programs,)](addr.table, lay.table, partials, inp.num_params, C, per_prog,
                                           K=K, DTYPE=TL_DTYPES[inp.dtype], BLOCK=block,
                                           ALIGNED=addr.aligned, MASKED=masked, num_warps=warps)
        column_sum(partials, G.view(K * K))
    return G


@torch.library.custom_op(OP, mutates_args=())
def gramian_op(tensors: List[Optional[torch.Tensor]], num_tasks: int, block: int = 0) -> torch.Tensor:
    """``[K, K]`` float32 Gram matrix of task-major ``tensors`` (entry ``k·P + p``, ``None`` = zeros)."""
    return _gramian_impl(tensors, num_tasks, block)


gramian_op.register_fake(fake_gramian(OP, ValueError))


def gramian_triton(tg, block: Optional[int] = None) -> torch.Tensor:
    """``G[i, j] = Σ_p ⟨g_i[p], g_j[p]⟩`` for validated task gradients (same contract as ``gramian_ref``).

    Args:
        tg: :class:`fastmtl.gradients.TaskGradients` (any layout; float32/float16/bfloat16).
        block: elements per chunk (a power of two >= 16); default from the launch heuristics.

    Returns:
        ``[K, K]`` float32 tensor on the gradients' device. Accumulation is float32 whatever the
        input dtype; the result is bitwise repeatable for a fixed device, layout and block.
    """
    tensors = [t for row in tg.entries for t in row]
    return torch.ops.fastmtl.gramian_triton(tensors, tg.num_tasks, int(block or 0))
