"""Triton batched dot products ``out[r] = ⟨rows[r], vec⟩`` for ``rows`` ``[R, D]`` and ``vec`` ``[D]``.

SLGrad's per-sample (per-task) gradients dotted with one validation gradient: many rows, one
shared vector, float32 accumulation whatever the input dtypes (float32/float16/bfloat16, each
converted right after the load; ``rows`` and ``vec`` may have different dtypes).

Structure: a 2-D grid. Program ``(t, s)`` takes ``R_TILE`` rows (so each block of ``vec`` is read
once for ``R_TILE`` rows) and a contiguous range of ``BLOCK``-column blocks, accumulates
``rows · vec`` in a ``[R_TILE, BLOCK]`` float32 accumulator, reduces it once and writes
``partials[s, rows]``. The split count ``S`` is chosen so that there are a few programs per SM
even for few rows. :func:`~fastmtl.triton.tables.column_sum_kernel` then sums the ``S`` partials
of each row in a fixed order: no atomics, bitwise repeatable for a given device and shape.

``rows`` may have any row stride (e.g. a slice of a bigger buffer); each row must be contiguous
(``rows.stride(1) == 1``) and ``vec`` must be contiguous, otherwise they are copied first.

Operator: ``fastmtl::batched_dot_triton(Tensor rows, Tensor vec, int block=0) -> Tensor``. The
kernels receive the tensors themselves (no pointer table), so on GPU this is a genuine
:func:`torch.library.triton_op`: ``torch.compile`` traces into it and sees both launches (through
``wrap_triton``). Under ``TRITON_INTERPRET=1`` ``wrap_triton`` hands back the bare interpreted
function, which cannot be traced, so there the same body is registered as an opaque
:func:`torch.library.custom_op` with a fake kernel instead.
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .tables import KERNEL_DTYPES, check_block, check_device, column_sum_kernel, interpreter_active, num_sms

OP = "fastmtl::batched_dot_triton"

_R_TILE = 4
_GPU_BLOCK = 1024
_GPU_WARPS = 4
_INTERPRETER_BLOCK = 4096
_PROGRAMS_PER_SM = 4
_INTERPRETER_PROGRAMS = 4


@triton.jit(do_not_specialize=["R", "D", "blocks_per_prog"])
def _batched_dot_kernel(rows, vec, partials, R, D, row_stride, blocks_per_prog,
                        R_TILE: tl.constexpr, BLOCK: tl.constexpr):
    """``partials[s, r] = Σ_{columns of split s} rows[r, :] · vec`` for the R_TILE rows of this program.

    ``row_stride`` (elements) stays specialisable: when it is a multiple of 16 the compiler knows
    every row start is aligned and vectorises the row loads.
    """
    t = tl.program_id(0)
    s = tl.program_id(1)
    r = t * R_TILE + tl.arange(0, R_TILE)
    rmask = r < R
    row_start = r.to(tl.int64) * row_stride
    lanes = tl.arange(0, BLOCK)
    b_begin = s.to(tl.int64) * blocks_per_prog
    b_end = tl.minimum(b_begin + blocks_per_prog, tl.cdiv(D, BLOCK))
    acc = tl.full([R_TILE, BLOCK], 0.0, tl.float32)
    for b in range(b_begin, b_end):
        idx = b * BLOCK + lanes
        if b * BLOCK + BLOCK <= D:
            # Full block: masks vary along rows only, so column loads stay vectorisable.
            v = tl.load(vec + idx).to(tl.float32)
            x = tl.load(rows + row_start[:, None] + idx[None, :], mask=rmask[:, None], other=0.0)
        else:
            # Last block: columns at or past D are other memory (e.g. the next row) and stay unread.
            cmask = idx < D
            v = tl.load(vec + idx, mask=cmask, other=0.0).to(tl.float32)
            x = tl.load(rows + row_start[:, None] + idx[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        acc += x.to(tl.float32) * v[None, :]
    tl.store(partials + s.to(tl.int64) * R + r, tl.sum(acc, axis=1), mask=rmask)


def _check(rows: torch.Tensor, vec: torch.Tensor) -> None:
    if rows.dim() != 2 or vec.dim() != 1 or rows.shape[1] != vec.shape[0]:
        raise ValueError(f"{OP}: expected rows [R, D] and vec [D], got {tuple(rows.shape)} and {tuple(vec.shape)}")
    for name, t in (("rows", rows), ("vec", vec)):
        if t.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{OP}: {name} has dtype {t.dtype}; supported: float16, bfloat16, float32")
    if rows.device != vec.device:
        raise ValueError(f"{OP}: rows are on {rows.device} but vec is on {vec.device}")
    check_device(rows.device, OP)


def _batched_dot(rows: torch.Tensor, vec: torch.Tensor, block: int = 0) -> torch.Tensor:
    _check(rows, vec)
    if block:
        check_block(block, OP)
    interpreted = interpreter_active()
    block = block or (_INTERPRETER_BLOCK if interpreted else _GPU_BLOCK)
    if rows.stride(1) != 1:
        rows = rows.contiguous()
    if vec.stride(0) != 1:
        vec = vec.contiguous()
    R, D = rows.shape
    out = torch.empty((R,), dtype=torch.float32, device=rows.device)
    if R == 0:
        return out
    if D == 0:
        return out.zero_()
    tiles = triton.cdiv(R, _R_TILE)
    nblocks = triton.cdiv(D, block)
    target = _INTERPRETER_PROGRAMS if interpreted else _PROGRAMS_PER_SM * num_sms(rows.device)
    splits = max(1, min(nblocks, triton.cdiv(target, tiles)))
    per_prog = triton.cdiv(nblocks, splits)
    splits = triton.cdiv(nblocks, per_prog)
    partials = torch.empty((splits, R), dtype=torch.float32, device=rows.device)
    wrap_triton(_batched_dot_kernel)[(tiles, splits)](rows, vec, partials, R, D, rows.stride(0), per_prog,
                                                      R_TILE=_R_TILE, BLOCK=block, num_warps=_GPU_WARPS)
    nblock = min(triton.next_power_of_2(R), 256)
    rblock = max(1, min(64, 4096 // nblock))
    wrap_triton(column_sum_kernel)[(triton.cdiv(R, nblock),)](partials, out, splits, R, RBLOCK=rblock,
                                                              NBLOCK=nblock, num_warps=4)
    return out


def _batched_dot_fake(rows, vec, block=0):
    _check(rows, vec)
    return rows.new_empty((rows.shape[0],), dtype=torch.float32)


if interpreter_active():
    batched_dot_op = torch.library.custom_op(OP, _batched_dot, mutates_args=())
    batched_dot_op.register_fake(_batched_dot_fake)
else:
    batched_dot_op = torch.library.triton_op(OP, _batched_dot, mutates_args=())


def batched_dot_triton(rows: torch.Tensor, vec: torch.Tensor, block=None) -> torch.Tensor:
    """``out[r] = Σ_d rows[r, d] · vec[d]``, float32 ``[R]`` (float32 accumulation).

    Args:
        rows: ``[R, D]`` float32/float16/bfloat16, rows contiguous (any row stride).
        vec: ``[D]`` float32/float16/bfloat16 (may differ from ``rows``' dtype).
        block: columns per block (a power of two >= 16); default from the launch heuristics.

    Bitwise repeatable for a given device, shape and block.
    """
    return torch.ops.fastmtl.batched_dot_triton(rows, vec, int(block or 0))
