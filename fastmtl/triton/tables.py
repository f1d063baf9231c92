"""Host side of the multi-tensor Triton kernels: input gathering, pointer/chunk tables, caches.

The kernels read K×P tensors ``g[k][p]`` (arbitrary sizes, some missing) in one launch through two
small device tables, built on the host and cached:

* the **layout table** (int64, depends on the parameter sizes and ``BLOCK`` only), for P parameters
  and C chunks::

      [0, P)          numel[p]        elements of parameter p
      [P, 2P)         base[p]         Σ_{q<p} numel[q]: index of p's first element in the
                                      concatenation of all parameters (GradDrop's RNG counter)
      [2P, 3P)        flat_off[p]     Σ_{q<p} round_up(numel[q], FLAT_PAD): p's offset in a flat
                                      output buffer (so every parameter starts 16-element aligned)
      [3P, 3P+C)      chunk_param[c]  parameter of chunk c
      [3P+C, 3P+2C)   chunk_blk[c]    block index of chunk c inside its parameter (the chunk covers
                                      elements [blk·BLOCK, min((blk+1)·BLOCK, numel)))

  Chunks are listed parameter by parameter, blocks in increasing order; parameters with no
  elements have none.

* the **address table** (int64): ``data_ptr()`` of every input, task-major (slot ``k·P + p``, 0 for
  a missing tensor), optionally followed by P output addresses (slot ``K·P + p``). The kernels turn
  an entry into a typed pointer with ``.to(tl.pointer_type(DTYPE))``.

Caches (bounded LRU, see :func:`cache_info`):

* layout key: ``(device, BLOCK, numels)``;
* address key: ``(device, stream, every address)``. Keys are addresses, never ``id()`` of tensor
  objects (``param.grad`` wrappers change every step while their storage usually does not), and
  the cache never holds tensors, so it extends no lifetime. A stale entry is harmless: a hit means
  the current tensors live at exactly those addresses. The CUDA caching allocator usually hands
  back the same addresses every step, so steady-state training hits.

A miss costs one small host-to-device copy, issued from pinned memory without blocking the host.
The stream is part of the key because that copy is ordered on the stream current at build time.

Hazards:

* Tensors reached only through a table are not kernel arguments, so nothing outside this package
  knows a kernel reads them. Callers keep the Python references alive until the launch has been
  enqueued (every op here does), which makes same-stream allocator reuse safe. Gradients produced
  on another stream must be synchronised with the current one first, as for any PyTorch op.
* Under ``TRITON_INTERPRET=1`` the kernels run on the host and dereference the raw addresses in the
  tables, so every tensor must be a CPU tensor; :func:`check_device` enforces it.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from ..ops.op_format import FLAT_PAD, column_numels, first_entry, padded, split_flat  # noqa: F401  (re-exported)
import triton
import triton.language as tl

# Dtypes the kernels load (and store); accumulation is always float32.
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Flat outputs place every parameter at a multiple of FLAT_PAD elements (fastmtl.ops.op_format;
# 16-byte aligned for every supported dtype), so the aligned (vectorised) kernel variant applies
# to them. The kernels zero the padding and hard-code this value there.
# Address alignment (bytes) the ALIGNED kernel variants promise to the compiler.
ALIGN_BYTES = 16

_LAYOUT_CAPACITY = 32
_ADDRESS_CAPACITY = 64


def interpreter_active() -> bool:
    """Whether ``@triton.jit`` functions are interpreted (``TRITON_INTERPRET=1`` at import time).

    Decided by the kernels themselves: Triton picks the interpreter when a function is decorated,
    so the environment variable read later could disagree with the already-built kernels.
    """
    return _INTERPRETED


@triton.jit
def _mode_probe():
    pass


def _is_interpreted(fn) -> bool:
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:  # pragma: no cover - every supported Triton has the interpreter
        return False
    return isinstance(fn, InterpretedFunction)


_INTERPRETED = _is_interpreted(_mode_probe)


def check_device(device: torch.device, op: str) -> None:
    """Raise a clear ``ValueError`` when ``device`` cannot run the kernels in the current mode."""
    if interpreter_active():
        if device.type != "cpu":
            raise ValueError(
                f"{op}: Triton runs in interpreter mode (TRITON_INTERPRET=1), which executes kernels on the "
                f"host and dereferences raw tensor addresses; every tensor must be a CPU tensor, got one on "
                f"{device}. Unset TRITON_INTERPRET to run on the GPU.")
    elif device.type != "cuda":
        raise ValueError(f"{op}: Triton kernels run on CUDA tensors, got tensors on {device} (set "
                         "TRITON_INTERPRET=1 before importing fastmtl.triton to run them on CPU tensors)")


def device_guard(device: torch.device):
    """Context making ``device`` current for a launch (Triton launches on the current device)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a small constant for CPU tensors / the interpreter)."""
    if device.type == "cuda":
        return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return 4


# ---- input gathering -----------------------------------------------------------------------------


@dataclass
class Inputs:
    """Validated task-major inputs of one op call.

    ``tensors[k * P + p]`` is a contiguous tensor or ``None``; non-contiguous inputs were replaced by
    contiguous copies, which this object keeps alive until the launch has been enqueued.
    """

    tensors: list
    num_tasks: int
    num_params: int
    numels: Tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def addresses(self) -> List[int]:
        return [0 if t is None else t.data_ptr() for t in self.tensors]


def first_tensor(tensors: Sequence[Optional[torch.Tensor]], num_tasks: int, op: str) -> torch.Tensor:
    """The first non-``None`` entry, after checking the task-major list shape (also used by fakes)."""
    return first_entry(tensors, num_tasks, op, ValueError)


def gather_inputs(tensors: Sequence[Optional[torch.Tensor]], num_tasks: int, op: str) -> Inputs:
    """Validate task-major ``tensors`` (K·P entries, ``None`` allowed) for a multi-tensor kernel.

    Non-contiguous tensors are copied to contiguous ones (one extra read and write of that
    parameter only); the kernels read every tensor as a flat run of ``numel`` elements.
    """
    ref = first_tensor(tensors, num_tasks, op)
    if ref.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: dtype {ref.dtype} is not supported by the Triton kernels (float16, bfloat16, "
                        "float32)")
    check_device(ref.device, op)
    K = num_tasks
    P = len(tensors) // K
    numels = [-1] * P
    out = []
    for i, t in enumerate(tensors):
        if t is None:
            out.append(None)
            continue
        k, p = divmod(i, P)
        if t.device != ref.device:
            raise ValueError(f"{op}: task {k}, parameter {p} is on {t.device} but other inputs are on {ref.device}")
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: task {k}, parameter {p} has dtype {t.dtype} but other inputs have {ref.dtype}")
        n = t.numel()
        if numels[p] < 0:
            numels[p] = n
        elif numels[p] != n:
            raise ValueError(f"{op}: task {k}, parameter {p} has {n} elements but another task's gradient of the "
                             f"same parameter has {numels[p]}")
        if not t.is_contiguous():
            t = t.contiguous()
        out.append(t)
    numels = tuple(max(n, 0) for n in numels)
    return Inputs(out, K, P, numels, ref.dtype, ref.device)


# ---- caches --------------------------------------------------------------------------------------


class _LRU:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.data: "collections.OrderedDict" = collections.OrderedDict()
        self.hits = 0
        self.misses = 0
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.data.get(key)
            if value is None:
                self.misses += 1
                return None
            self.hits += 1
            self.data.move_to_end(key)
            return value

    def put(self, key, value):
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.capacity:
                self.data.popitem(last=False)

    def clear(self):
        with self.lock:
            self.data.clear()
            self.hits = 0
            self.misses = 0

    def info(self) -> dict:
        return {"entries": len(self.data), "hits": self.hits, "misses": self.misses, "capacity": self.capacity}


_LAYOUTS = _LRU(_LAYOUT_CAPACITY)
_ADDRESSES = _LRU(_ADDRESS_CAPACITY)


def cache_info() -> dict:
    """Counters of the layout and address-table caches."""
    return {"layouts": _LAYOUTS.info(), "addresses": _ADDRESSES.info()}


def clear_caches() -> None:
    """Drop every cached table (rebuilt on the next call)."""
    _LAYOUTS.clear()
    _ADDRESSES.clear()


def _stream_key(device: torch.device):
    if device.type == "cuda":
        return torch.cuda.current_stream(device).stream_id
    return None


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        # Pinned + non_blocking: no host synchronisation; the caching host allocator keeps the
        # pinned buffer alive until the copy has run.
        return host.pin_memory().to(device, non_blocking=True)
    return host


@dataclass(frozen=True)
class Layout:
    """A device layout table and its sizes (see the module docstring for the format)."""

    table: torch.Tensor
    num_params: int
    num_chunks: int
    flat_numel: int  # elements of a flat output holding every parameter (FLAT_PAD-aligned)


def layout(device: torch.device, numels: Tuple[int, ...], block: int) -> Layout:
    """The cached layout table for parameters of ``numels`` elements cut into ``block``-chunks."""
    key = (device, block, numels)
    found = _LAYOUTS.get(key)
    if found is not None:
        return found
    P = len(numels)
    n = torch.tensor(numels, dtype=torch.int64)
    base = torch.cumsum(n, 0) - n
    pad = (n + FLAT_PAD - 1) // FLAT_PAD * FLAT_PAD
    flat_off = torch.cumsum(pad, 0) - pad
    blocks = (n + block - 1) // block
    C = int(blocks.sum())
    chunk_param = torch.repeat_interleave(torch.arange(P, dtype=torch.int64), blocks)
    first_chunk = torch.cumsum(blocks, 0) - blocks
    chunk_blk = torch.arange(C, dtype=torch.int64) - torch.repeat_interleave(first_chunk, blocks)
    host = torch.cat([n, base, flat_off, chunk_param, chunk_blk])
    found = Layout(_to_device(host, device), P, C, int(pad.sum()))
    _LAYOUTS.put(key, found)
    return found


@dataclass(frozen=True)
class AddressTable:
    """A device table of raw addresses and whether all of them are 16-byte aligned."""

    table: torch.Tensor
    aligned: bool


def address_table(device: torch.device, addresses: Sequence[int]) -> AddressTable:
    """The cached int64 device table holding ``addresses`` (0 = missing tensor)."""
    addresses = tuple(addresses)
    key = (device, _stream_key(device), addresses)
    found = _ADDRESSES.get(key)
    if found is not None:
        return found
    aligned = all(a % ALIGN_BYTES == 0 for a in addresses)
    found = AddressTable(_to_device(torch.tensor(addresses, dtype=torch.int64), device), aligned)
    _ADDRESSES.put(key, found)
    return found


# ---- outputs -------------------------------------------------------------------------------------


def prepare_outputs(out: Sequence[torch.Tensor], numels: Tuple[int, ...], device: torch.device, op: str):
    """Check ``out`` buffers; return ``(targets, copies)``.

    ``targets[p]`` is what the kernel writes: ``out[p]`` itself when contiguous, else a contiguous
    scratch tensor; ``copies`` lists the ``(out[p], scratch)`` pairs to copy back after the launch.
    """
    if len(out) != len(numels):
        raise ValueError(f"{op}: expected {len(numels)} out tensors (one per parameter), got {len(out)}")
    targets = []
    copies = []
    for p, (o, n) in enumerate(zip(out, numels)):
        if o.device != device:
            raise ValueError(f"{op}: out[{p}] is on {o.device} but the inputs are on {device}")
        if o.dtype not in KERNEL_DTYPES:
            raise TypeError(f"{op}: out[{p}] has dtype {o.dtype}; the Triton kernels write float16, bfloat16 or "
                            "float32")
        if o.numel() != n:
            raise ValueError(f"{op}: out[{p}] has {o.numel()} elements but the gradients of parameter {p} have {n}")
        if o.is_contiguous():
            targets.append(o)
        else:
            scratch = torch.empty(o.shape, dtype=o.dtype, device=o.device)
            targets.append(scratch)
            copies.append((o, scratch))
    return targets, copies


# ---- device side shared by the kernels ----------------------------------------------------------
#
# The multi-tensor kernels (gramian, weighted_sum, graddrop) read the tables inline rather than
# through shared ``@triton.jit`` helpers: under the interpreter every helper call re-patches
# ``triton.language`` and costs about a millisecond, per program. Hazards they all handle:
# * a table entry is an int64 address; it must be cast with ``.to(tl.pointer_type(DTYPE))`` (an
#   int32 table, or using the integer itself as a pointer, does not compile);
# * a missing tensor has address 0: every load through it is masked by ``raw != 0`` (masked lanes
#   issue no memory access, on GPU and in the interpreter alike);
# * values are converted to float32 right after the load: no arithmetic ever runs in bfloat16 or
#   float16 (the interpreter computes bfloat16 arithmetic on raw integer bits);
# * ``tl.multiple_of(ptr, 16)`` is a promise to the compiler, made only when the host checked that
#   every address in the table is 16-byte aligned (``ALIGNED``); full blocks then use 128-bit
#   loads, and the last block of each parameter is masked with ``idx < n``.


@triton.jit(do_not_specialize=["R", "N"])
def column_sum_kernel(src, dst, R, N, RBLOCK: tl.constexpr, NBLOCK: tl.constexpr):
    """``dst[j] = Σ_r src[r, j]`` for a row-major float32 ``[R, N]`` ``src``, in a fixed order.

    The deterministic second stage of every two-stage reduction here (no atomics): program ``b``
    owns columns ``[b·NBLOCK, (b+1)·NBLOCK)`` and sweeps the rows RBLOCK at a time into a
    ``[RBLOCK, NBLOCK]`` accumulator that is reduced once at the end, so the summation order
    depends only on R, N and the block sizes.
    """
    cols = tl.program_id(0) * NBLOCK + tl.arange(0, NBLOCK)
    cmask = cols < N
    acc = tl.zeros([RBLOCK, NBLOCK], dtype=tl.float32)
    for r0 in range(0, R, RBLOCK):
        rows = r0 + tl.arange(0, RBLOCK)
        m = (rows < R)[:, None] & cmask[None, :]
        acc += tl.load(src + rows.to(tl.int64)[:, None] * N + cols[None, :], mask=m, other=0.0)
    tl.store(dst + cols, tl.sum(acc, axis=0), mask=cmask)


def column_sum(src: torch.Tensor, dst: torch.Tensor) -> None:
    """Launch :func:`column_sum_kernel`: ``dst[:] = src.sum(0)`` in a fixed order (float32)."""
    R, N = src.shape
    nblock = min(triton.next_power_of_2(max(N, 1)), 256)
    rblock = max(1, min(64, 4096 // nblock))
    column_sum_kernel[(triton.cdiv(N, nblock),)](src, dst, R, N, RBLOCK=rblock, NBLOCK=nblock, num_warps=4)


TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


def check_block(block: int, op: str) -> int:
    """Validate a caller-chosen block size (a power of two, at least 16)."""
    if block < 16 or block & (block - 1):
        raise ValueError(f"{op}: block must be a power of two >= 16, got {block}")
    return block
