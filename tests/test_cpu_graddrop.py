"""The compiled CPU GradDrop (``cpu`` backend) against the PyTorch reference, bit for bit.

The reference (``fastmtl.reference.graddrop``) computes the Philox uniforms with int64 tensor ops and
the masks from ``S > (2U − 1)(A + eps)`` at the accumulation precision; the kernel must draw the same
numbers and round every operation the same way, so every comparison below is exact
(``torch.equal``; ``rtol = atol = 0`` with ``equal_nan`` where NaNs are involved).
"""

import os
import subprocess
import sys

import pytest
import torch

import fastmtl
from fastmtl import cpu_ops
from fastmtl.gradients import canonicalize
from fastmtl.ops import select
from fastmtl.reference.graddrop import DEFAULT_EPS, graddrop_ref
from _per_param import per_param

pytestmark = pytest.mark.skipif(cpu_ops.unavailable_reason() is not None,
                                reason=f"CPU kernels unavailable: {cpu_ops.unavailable_reason()}")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SIZES = [1, 7, 300, 16384 + 5, 2, 999, 3 * 16384 + 1] + [11, 3, 65] * 65  # 202 parameters


def assert_same(got, want):
    assert len(got) == len(want)
    for p, (a, b) in enumerate(zip(got, want)):
        assert (a is None) == (b is None), p
        if a is None:
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, p
        assert torch.equal(a, b), f"parameter {p}: {(a.double() - b.double()).abs().max().item()}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed,offset", [(1234, 0), (2 ** 40 + 3, 2 ** 32 - 20000), (2 ** 63 - 1, 77)])
def test_per_parameter_matches_reference_bitwise(dtype, seed, offset):
    K = 5
    # Parameter 4: no task at all; others miss some tasks (zeros). The offset of the second case
    # makes the counters cross 2^32 (the high counter word changes inside a parameter).
    missing = {(k, 4) for k in range(K)} | {(0, 1), (2, 3), (3, 3), (1, 6), (4, 100)}
    rows = per_param(K, SIZES, dtype, seed=1, missing=missing)
    tg = canonicalize(rows)
    assert select("graddrop", tg).name == "cpu"
    leak = torch.tensor([0.0, 0.25, 1.0, 0.5, 0.1], dtype=torch.float64)
    for lk in (None, leak):
        got = cpu_ops.graddrop_tg(tg, seed, offset, lk, DEFAULT_EPS)
        assert got[4] is None
        assert_same(got, graddrop_ref(tg, seed, offset, lk, DEFAULT_EPS))


@pytest.mark.parametrize("offset", [2 ** 32 - 13, 2 ** 33 - 8 * 40, 2 ** 62 - 1000])
def test_counters_crossing_a_32_bit_boundary(offset):
    # The vectorised Philox takes eight consecutive counters at once; a group whose low word wraps
    # (first case), one that ends exactly at the boundary (second) and a large high word (third).
    J = torch.randn(3, 1000, generator=torch.Generator().manual_seed(11))
    tg = canonicalize(J)
    assert_same(cpu_ops.graddrop_tg(tg, 2 ** 35 + 1, offset), graddrop_ref(tg, 2 ** 35 + 1, offset))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 2, 8])
def test_matrix_and_combine_match_reference(dtype, K):
    J = torch.randn(K, 3 * 16384 + 77, generator=torch.Generator().manual_seed(K), dtype=torch.float64).to(dtype)
    tg = canonicalize(J)
    assert select("graddrop", tg).name == "cpu"
    assert_same(cpu_ops.graddrop_tg(tg, 99, 5, None, 1e-3), graddrop_ref(tg, 99, 5, None, 1e-3))
    d, info = fastmtl.combine(J, method="graddrop", generator=torch.Generator().manual_seed(3), return_info=True)
    ref = fastmtl.combine(J, method="graddrop", generator=torch.Generator().manual_seed(3), backend="reference")
    assert info.backend == "cpu" and d.dtype == dtype
    assert torch.equal(d, ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_into_existing_tensors_of_any_dtype(dtype):
    K, sizes = 4, SIZES[:12]
    missing = {(k, 2) for k in range(K)} | {(1, 5)}
    rows = per_param(K, sizes, dtype, seed=3, missing=missing)
    tg = canonicalize(rows)
    leak = torch.tensor([0.5, 0.0, 0.75, 0.125])
    # Mixed out dtypes (float64 results into float16/bfloat16 round twice, through float32, as
    # PyTorch's copy_ does), one non-contiguous out, and no out tensor for the untouched parameter.
    out_dtypes = [torch.float32, torch.float16, None, torch.bfloat16, torch.float64] + [torch.float32] * 7
    outs = []
    for p, dt in enumerate(out_dtypes):
        if dt is None:
            outs.append(None)
            continue
        shape = rows[0][p].shape
        o = torch.full(shape[::-1], 7.0, dtype=dt).T if p == 3 and len(shape) == 2 else torch.full(shape, 7.0, dtype=dt)
        outs.append(o)
    want = graddrop_ref(tg, 2 ** 33 + 1, 10, leak, DEFAULT_EPS, out=[None if o is None else o.clone() for o in outs])
    got = cpu_ops.graddrop_tg(tg, 2 ** 33 + 1, 10, leak, DEFAULT_EPS, out=list(outs))
    assert all(a is b for a, b in zip(got, outs))
    assert_same(got, want)
    # out[p] may be exactly one of parameter p's own inputs (each block is read before it is written).
    alias_rows = per_param(3, [40000, 5, 300], dtype, seed=4)
    want = graddrop_ref(canonicalize(alias_rows), 5, 0)
    out = [torch.empty_like(t) for t in alias_rows[0]]
    out[0] = alias_rows[1][0]
    cpu_ops.graddrop_tg(canonicalize(alias_rows), 5, 0, out=out)
    assert_same(out, want)
    # Through combine, into .grad-like buffers.
    grads = [torch.zeros_like(t) for t in alias_rows[0]]
    ref_grads = [torch.zeros_like(t) for t in alias_rows[0]]
    fastmtl.combine(alias_rows, method="graddrop", out=grads, generator=torch.Generator().manual_seed(2))
    fastmtl.combine(alias_rows, method="graddrop", out=ref_grads, generator=torch.Generator().manual_seed(2),
                    backend="reference")
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_float64_result_into_half_rounds_like_copy():
    # 1 + 2^-11 + 2^-40 rounds to 1 + 2^-10 in one step but to 1 through float32 (PyTorch's path).
    x = torch.full((64,), 1 + 2 ** -11 + 2 ** -40, dtype=torch.float64)
    tg = canonicalize(x[None])
    for dt in (torch.float16, torch.bfloat16):
        out = [torch.empty(64, dtype=dt)]
        cpu_ops.graddrop_tg(tg, 0, 0, out=out)
        want = torch.empty(64, dtype=dt).copy_(x)
        assert torch.equal(out[0], want)


def test_nonfinite_values_and_zeros_match_reference():
    g = torch.Generator().manual_seed(8)
    J = torch.randn(3, 500, generator=g)
    J[0, ::7] = float("inf")
    J[1, ::11] = float("-inf")
    J[2, ::13] = float("nan")
    J[:, ::17] = 0.0
    J[1, ::19] = -0.0
    tg = canonicalize(J)
    leak = torch.tensor([0.0, 0.5, 1.0])
    got = cpu_ops.graddrop_tg(tg, 7, 3, leak)[0]
    want = graddrop_ref(tg, 7, 3, leak)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(torch.signbit(got), torch.signbit(want))


def test_result_does_not_depend_on_the_thread_count():
    rows = per_param(6, [70001, 5, 16384 * 9 + 1, 3] * 3, torch.bfloat16, seed=5, missing={(1, 2)})
    tg = canonicalize(rows)
    leak = torch.linspace(0, 1, 6)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(cpu_ops.graddrop_tg(tg, 2 ** 50, 123, leak))
    finally:
        torch.set_num_threads(before)
    for r in results[1:]:
        assert_same(r, results[0])
    assert_same(results[0], graddrop_ref(tg, 2 ** 50, 123, leak))


_BASELINE_CHECK = """
import torch
from fastmtl import cpu_ops
from fastmtl.gradients import canonicalize
from fastmtl.reference.graddrop import graddrop_ref
g = torch.Generator().manual_seed(12)
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
    rows = [[None if (k, p) == (1, 0) else torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
             for p, n in enumerate([1000, 3, 300])] for k in range(3)]
    tg = canonicalize(rows)
    leak = torch.tensor([0.0, 0.5, 1.0])
    for seed, offset in ((3, 2 ** 32 - 13), (2 ** 45 + 1, 0)):
        for a, b in zip(cpu_ops.graddrop_tg(tg, seed, offset, leak), graddrop_ref(tg, seed, offset, leak)):
            assert a.dtype == b.dtype and torch.equal(a, b), dtype
print("same bits")
"""


def test_baseline_build_gives_the_same_bits():
    # The kernels are compiled twice (baseline x86-64 and AVX2/FMA/F16C, the latter with its own
    # Philox); FASTMTL_CPU_BASELINE=1 makes a process run the baseline one.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FASTMTL_CPU_BASELINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    res = subprocess.run([sys.executable, "-c", _BASELINE_CHECK], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0 and "same bits" in res.stdout, res.stderr[-3000:]


def test_matches_the_triton_kernel_in_the_interpreter():
    pytest.importorskip("triton")
    from fastmtl.triton import tables
    if not tables.interpreter_active():
        pytest.skip("the Triton kernel runs on CPU tensors only in the interpreter (TRITON_INTERPRET=1)")
    from fastmtl.triton.graddrop import graddrop_triton
    rows = per_param(3, [37, 1, 300], torch.float32, seed=6, missing={(1, 1)})
    tg = canonicalize(rows)
    leak = torch.tensor([0.0, 0.5, 0.25])
    assert_same(cpu_ops.graddrop_tg(tg, 2 ** 41 + 9, 2 ** 32 - 100, leak),
                graddrop_triton(tg, 2 ** 41 + 9, 2 ** 32 - 100, leak, block=64))


def test_bad_arguments_raise():
    tg = canonicalize(torch.randn(2, 10))
    with pytest.raises(ValueError, match="seed"):
        cpu_ops.graddrop_tg(tg, -1)
    with pytest.raises(ValueError, match="seed"):
        cpu_ops.graddrop_tg(tg, 2 ** 63)
    with pytest.raises(ValueError, match="offset"):
        cpu_ops.graddrop_tg(tg, 0, -5)
    with pytest.raises(ValueError, match="leak"):
        cpu_ops.graddrop_tg(tg, 0, leak=torch.zeros(3))
    with pytest.raises(RuntimeError, match="counter"):
        torch.ops.fastmtl.graddrop_cpu([torch.ones(10)], 1, torch.zeros(1), 0, 2 ** 63 - 5, 1e-7)
    base = torch.randn(100)
    a, b = base[:50], base[50:]
    with pytest.raises(RuntimeError, match="overlaps"):
        torch.ops.fastmtl.graddrop_cpu_out([a, b], 2, torch.zeros(2), 0, 0, 1e-7, [base[25:75]])
    with pytest.raises(RuntimeError, match="elements"):
        torch.ops.fastmtl.graddrop_cpu_out([a, b], 2, torch.zeros(2), 0, 0, 1e-7, [torch.empty(49)])


def test_opcheck():
    rows = per_param(3, [5, 33, 1, 4], torch.float32, seed=6, missing={(1, 1), (0, 3), (1, 3), (2, 3)})
    flat = [t for row in rows for t in row]
    leak = torch.tensor([0.0, 0.5, 1.0])
    torch.library.opcheck(torch.ops.fastmtl.graddrop_cpu.default, (flat, 3, leak, 2 ** 40, 7, 1e-7))
    out = [torch.empty(5), torch.empty(33, dtype=torch.float64), torch.empty(1), torch.empty(4)]
    torch.library.opcheck(torch.ops.fastmtl.graddrop_cpu_out.default, (flat, 3, leak, 2 ** 40, 7, 1e-7, out))
