"""``combine`` on the per-parameter layout allocates no K×D temporary.

CPU probe: :class:`fastmtl.bench.alloc_probe.AllocationProbe`, a ``TorchDispatchMode`` that sees every ATen op run under it,
counts the bytes of each *new* storage an op returns (outputs aliasing an input — views, in-place
and ``out=`` ops — are not new), and releases them when the storage is freed (a ``weakref``
finaliser on the storage object, which PyTorch keeps unique per storage). ``peak`` is the largest
number of live bytes allocated since the probe started, i.e. the extra memory of the call. It does
not see scratch memory that a kernel allocates and frees internally (BLAS workspaces), which is
bounded by the kernel, not by K·D.

Bound checked (reference backend): the Gram pass works on column chunks of ``_CHUNK_ELEMENTS``
accumulate-dtype values (16 MiB; fastmtl/reference/primitives.py) and keeps at most three such
buffers live at once (the up-cast rows, their stack, the previous chunk's stack); the weighted sum
keeps one parameter's accumulator; plus the output when no ``out=`` is given. None of this grows
with D beyond the output, so for large D it is far below K·D·element_size. On a GPU the same is checked with
``torch.cuda.max_memory_allocated`` (skipped without one).
"""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl.bench.alloc_probe import AllocationProbe
from fastmtl.reference.primitives import _CHUNK_ELEMENTS


def test_probe_sees_allocations_and_frees():
    with AllocationProbe() as probe:
        a = torch.empty(1 << 20)  # 4 MiB
        b = a[10:]  # a view: no new storage
        b.add_(0)  # in place: no new storage
        del a, b
        c = torch.empty(1 << 19)  # 2 MiB, after the 4 MiB block was freed
        del c
    assert probe.peak == 4 << 20 and probe.live == 0


def test_probe_detects_a_concatenation():
    rows = [torch.randn(1 << 18) for _ in range(4)]
    with AllocationProbe() as probe:
        J = torch.stack(rows)
        (J @ J.T).sum()
        del J
    assert probe.peak >= 4 * (1 << 18) * 4  # the K×D copy is visible


def _params(K, sizes, dtype):
    base = torch.linspace(-1.0, 1.0, max(sizes))
    return [[(base[:n] * (1 + k) + 0.1 * p).sin().to(dtype) for p, n in enumerate(sizes)] for k in range(K)]


def _peak(grads, method, out, dtype):
    with AllocationProbe() as probe:
        d = fastmtl.combine(grads, method, out=out, backend="reference", generator=torch.Generator().manual_seed(0))
        del d
    return probe.peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("method", ["upgrad", "mean"])
@pytest.mark.parametrize("with_out", [True, False], ids=["out", "no_out"])
def test_per_parameter_layout_has_no_KxD_temporary(method, dtype, with_out, monkeypatch):
    # A 256 KiB chunk makes "bounded by the chunk, not by K·D" visible at a moderate D.
    monkeypatch.setattr("fastmtl.reference.primitives._CHUNK_ELEMENTS", 1 << 16)
    K, sizes = 8, [1 << 15] * 16  # D = 512K values per task, 16 parameters
    grads = _params(K, sizes, dtype)
    out = [torch.empty(n, dtype=dtype) for n in sizes] if with_out else None
    D = sum(sizes)
    es = torch.finfo(dtype).bits // 8
    acc = 4  # float32 accumulation for float32/bfloat16
    peak = _peak(grads, method, out, dtype)
    # Gram pass: at most three chunk-sized buffers live at once (the up-cast rows, their stack and
    # the previous chunk's stack); weighted sum: one parameter's accumulator; plus the output.
    chunk = (1 << 16) * acc
    bound = 3 * chunk + max(sizes) * acc + (0 if with_out else D * es) + (16 << 10)
    assert peak <= bound, (peak, bound)
    assert peak < K * D * es / 4, (peak, K * D * es)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_peak_does_not_grow_with_D(dtype):
    # Default chunk (16 MiB): doubling the number of parameters doubles D but not the extra memory.
    K, size = 8, 1 << 19
    peaks = []
    for P in (4, 8):
        grads = _params(K, [size] * P, dtype)
        out = [torch.empty(size, dtype=dtype) for _ in range(P)]
        peaks.append(_peak(grads, "upgrad", out, dtype))
        del grads, out
    assert peaks[1] <= peaks[0] + (64 << 10), peaks
    assert peaks[1] <= 3 * _CHUNK_ELEMENTS * 4 + size * 4 + (64 << 10), peaks


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", ["upgrad", "pcgrad"])
def test_per_parameter_layout_gpu_peak(method):
    K, sizes = 8, [1 << 20] * 8
    grads = [[t.cuda() for t in row] for row in _params(K, sizes, torch.float32)]
    out = [torch.empty(n, device="cuda") for n in sizes]
    fastmtl.combine(grads, method, out=out)  # warm-up (kernels, workspaces)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fastmtl.combine(grads, method, out=out)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < K * sum(sizes) * 4 / 4, extra
