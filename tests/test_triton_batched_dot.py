"""Triton batched dot products ``rows @ vec`` (float32 accumulation) vs float64."""

import pytest
import torch

pytest.importorskip("triton")

from fastmtl.triton import tables  # noqa: E402
from fastmtl.triton.batched_dot import batched_dot_triton  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

INTERPRETED = tables.interpreter_active()
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)


def _check(out, rows, vec, rtol=1e-6):
    """|out_r − ⟨rows_r, vec⟩| ≤ rtol · Σ_d |rows_rd · vec_d| (float32 accumulation vs float64)."""
    assert out.dtype == torch.float32 and out.shape == (rows.shape[0],)
    r64, v64 = rows.double().cpu(), vec.double().cpu()
    ref = r64 @ v64
    tol = rtol * (r64.abs() @ v64.abs()) + 1e-30
    err = (out.double().cpu() - ref).abs()
    assert bool((err <= tol).all()), f"max error ratio {(err / tol).max().item():.3g}"


@pytest.mark.parametrize("R", [1, 3, 5, 17])
@pytest.mark.parametrize("D", [1, 64, 1000])
def test_matches_float64(R, D):
    rows, vec = _rand(R, D, seed=R), _rand(D, seed=D)
    _check(batched_dot_triton(rows, vec, block=64), rows, vec)


@pytest.mark.parametrize("rdtype,vdtype", [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
                                           (torch.bfloat16, torch.float32), (torch.float32, torch.float16)])
def test_low_precision(rdtype, vdtype):
    rows, vec = _rand(6, 333, dtype=rdtype, seed=1), _rand(333, dtype=vdtype, seed=2)
    _check(batched_dot_triton(rows, vec, block=64), rows, vec)


def test_views_inside_nan_buffer():
    # Rows of a [R, D] slice of a wider NaN-filled buffer (row stride 3 + D + 5, odd start).
    R, D = 5, 77
    buf = torch.full((R, D + 8), float("nan"), device=DEVICE)
    buf[:, 3:3 + D] = _rand(R, D, seed=3)
    rows = buf[:, 3:3 + D]
    vbuf = torch.full((D + 10,), float("nan"), device=DEVICE)
    vbuf[1:1 + D] = _rand(D, seed=4)
    vec = vbuf[1:1 + D]
    out = batched_dot_triton(rows, vec, block=16)
    assert torch.isfinite(out).all()
    _check(out, rows, vec)


def test_exact_blocks_and_noncontiguous():
    for D in (16, 32, 48):
        rows, vec = _rand(3, D, seed=D), _rand(D, seed=D + 1)
        _check(batched_dot_triton(rows, vec, block=16), rows, vec)
    rows = _rand(40, 6, seed=5).T  # stride(1) != 1: copied
    vec = _rand(80, seed=6)[::2]
    _check(batched_dot_triton(rows, vec, block=16), rows, vec)


def test_empty_and_repeatable():
    assert batched_dot_triton(_rand(0, 5), _rand(5)).shape == (0,)
    assert torch.equal(batched_dot_triton(_rand(3, 0), _rand(0)).cpu(), torch.zeros(3))
    rows, vec = _rand(9, 500, seed=7), _rand(500, seed=8)
    assert torch.equal(batched_dot_triton(rows, vec, block=32), batched_dot_triton(rows, vec, block=32))


def test_errors():
    with pytest.raises(ValueError, match="expected rows"):
        batched_dot_triton(_rand(3, 4), _rand(5))
    with pytest.raises(TypeError, match="dtype"):
        batched_dot_triton(_rand(3, 4, dtype=torch.float64), _rand(4))


def test_opcheck():
    rows, vec = _rand(5, 70, seed=9), _rand(70, seed=10)
    torch.library.opcheck(torch.ops.fastmtl.batched_dot_triton.default, (rows, vec, 16))
