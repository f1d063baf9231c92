"""Triton GradDrop vs the PyTorch reference (same counter-based random numbers), statistics and edge cases."""

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from fastmtl.gradients import canonicalize  # noqa: E402
from fastmtl.reference.graddrop import DEFAULT_EPS, graddrop_ref, philox_uniform  # noqa: E402
from fastmtl.triton import graddrop as gd_mod  # noqa: E402
from fastmtl.triton import tables  # noqa: E402
from fastmtl.triton.graddrop import graddrop_triton  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

INTERPRETED = tables.interpreter_active()
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")
SEED = 1234


@triton.jit
def _rand_kernel(out, seed, offset, N, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out + i, tl.rand(seed, offset + i.to(tl.int64)), mask=i < N)


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)


def _check(parts, grads, seed, offset=0, leak=None, eps=DEFAULT_EPS, rtol=1e-6):
    """Against graddrop_ref: a mask disagreement would cost a whole |g_k|, far above the tolerance."""
    tg = canonicalize(grads)
    # The reference writes into buffers of the same dtypes, so both round the same way.
    ref = graddrop_ref(tg, seed, offset, leak, eps, out=[None if a is None else torch.empty_like(a) for a in parts])
    assert len(parts) == len(ref)
    for p, (a, b) in enumerate(zip(parts, ref)):
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert a.shape == b.shape
        scale = sum(tg.entries[k][p].double().abs() for k in tg.present(p))
        out_eps = {torch.float32: 0.0, torch.float16: 2 ** -11, torch.bfloat16: 2 ** -8}[a.dtype]
        err = (a.double() - b.double()).abs()
        tol = rtol * scale + out_eps * b.double().abs() + 1e-30
        assert bool((err <= tol).all()), f"parameter {p}: max error ratio {(err / tol).max().item():.3g}"


@pytest.mark.parametrize("seed,offset", [(0, 0), (1, 5), (SEED, 2 ** 32 - 7), (2 ** 40 + 3, 2 ** 41), (2 ** 62, 9)])
def test_philox_reference_matches_tl_rand(seed, offset):
    N = 300
    out = torch.empty(N, device=DEVICE)
    _rand_kernel[(triton.cdiv(N, 128),)](out, seed, offset, N, BLOCK=128)
    ref = philox_uniform(seed, offset + torch.arange(N, device=DEVICE))
    assert torch.equal(out, ref)
    assert bool(((ref >= 0) & (ref < 1)).all())


@pytest.mark.parametrize("K", [1, 2, 3, 8, 16])
def test_matrix_matches_reference(K):
    J = _rand(K, 1237, seed=K)
    leak = torch.rand(K, generator=torch.Generator().manual_seed(K)).to(DEVICE)
    _check(graddrop_triton(canonicalize(J), SEED, 11, leak, block=256), J, SEED, 11, leak)


def test_many_small_parameters_with_missing_entries():
    K, P = 3, 120
    g = torch.Generator().manual_seed(9)
    sizes = torch.randint(1, 41, (P,), generator=g).tolist()
    grads = [[None if (p % 4 == k or p == 3) else _rand(n, seed=1000 * k + p) for p, n in enumerate(sizes)]
             for k in range(K)]
    parts = graddrop_triton(canonicalize(grads), SEED, 0, block=32)
    assert parts[3] is None
    _check(parts, grads, SEED, 0)


@pytest.mark.parametrize("n", [1, 16, 17, 32])
def test_exact_and_partial_blocks(n):
    grads = [[_rand(n, seed=k), _rand(2 * n + 1, seed=10 + k)] for k in range(3)]
    _check(graddrop_triton(canonicalize(grads), 7, 3, block=16), grads, 7, 3)


def test_views_inside_nan_buffers_in_and_out():
    K, sizes = 3, [5, 16, 33, 1]
    grads = []
    for k in range(K):
        buf = torch.full((sum(sizes) + 3 * len(sizes) + 8,), float("nan"), device=DEVICE)
        row, start = [], 1 + k
        for i, n in enumerate(sizes):
            buf[start:start + n] = _rand(n, seed=100 * k + i)
            row.append(buf[start:start + n])
            start += n + 3
        grads.append(row)
    parts = graddrop_triton(canonicalize(grads), SEED, 0, block=16)
    assert all(torch.isfinite(p).all() for p in parts)
    _check(parts, grads, SEED, 0)
    sentinel = -777.0
    obuf = torch.full((sum(sizes) + 3 * len(sizes) + 8,), sentinel, device=DEVICE)
    outs, start, inside = [], 2, torch.zeros_like(obuf, dtype=torch.bool)
    for n in sizes:
        outs.append(obuf[start:start + n])
        inside[start:start + n] = True
        start += n + 3
    graddrop_triton(canonicalize(grads), SEED, 0, out=outs, block=16)
    _check(outs, grads, SEED, 0)
    assert bool((obuf[~inside] == sentinel).all())


def test_noncontiguous_inputs_and_outputs():
    base = [_rand(6, 9, seed=k) for k in range(3)]
    grads = [[b.T, b[:, ::2]] for b in base]
    _check(graddrop_triton(canonicalize(grads), 5, 0, block=16), grads, 5, 0)
    outs = [torch.empty(6, 9, device=DEVICE).T, torch.empty(5, 6, device=DEVICE).T]
    graddrop_triton(canonicalize(grads), 5, 0, out=outs, block=16)
    _check(outs, grads, 5, 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(dtype):
    grads = [[_rand(300, dtype=dtype, seed=k), _rand(7, dtype=dtype, seed=5 + k)] for k in range(3)]
    parts = graddrop_triton(canonicalize(grads), SEED, 0, block=64)
    assert parts[0].dtype == dtype
    _check(parts, grads, SEED, 0)
    outs = [torch.empty(300, device=DEVICE), torch.empty(7, dtype=torch.bfloat16, device=DEVICE)]  # mixed dtypes
    graddrop_triton(canonicalize(grads), SEED, 0, out=outs, block=64)
    _check(outs, grads, SEED, 0)


def test_mixed_output_dtypes_use_the_same_random_numbers():
    grads = [[_rand(40, seed=k), _rand(9, seed=5 + k), _rand(33, seed=9 + k)] for k in range(2)]
    single = [torch.empty(n, device=DEVICE) for n in (40, 9, 33)]
    mixed = [torch.empty(40, device=DEVICE), torch.empty(9, dtype=torch.float16, device=DEVICE),
             torch.empty(33, device=DEVICE)]
    graddrop_triton(canonicalize(grads), 3, 100, out=single, block=16)
    graddrop_triton(canonicalize(grads), 3, 100, out=mixed, block=16)
    assert torch.equal(single[0], mixed[0]) and torch.equal(single[2], mixed[2])
    torch.testing.assert_close(single[1].half(), mixed[1])


def test_reproducible_and_block_independent():
    grads = [[_rand(100, seed=k), _rand(7, seed=5 + k)] for k in range(3)]
    tg = canonicalize(grads)
    a = graddrop_triton(tg, SEED, 0, block=16)
    b = graddrop_triton(tg, SEED, 0, block=16)
    c = graddrop_triton(tg, SEED, 0, block=64)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)
    other = graddrop_triton(tg, SEED + 1, 0, block=16)
    shifted = graddrop_triton(tg, SEED, 1, block=16)
    assert not torch.equal(other[0], a[0]) and not torch.equal(shifted[0], a[0])


def test_keep_frequency_follows_sign_purity():
    # Two tasks, g_1 = a > 0 and g_2 = −b < 0 everywhere: P = a / (a + b); the positive
    # component survives with probability P and the negative one otherwise.
    N = 4000
    for a, b in ((3.0, 1.0), (1.0, 4.0)):
        J = torch.stack([torch.full((N,), a), torch.full((N,), -b)]).to(DEVICE)
        d = graddrop_triton(canonicalize(J), SEED, 0)[0]
        kept_pos = (d == a).double().mean().item()
        assert bool(((d == a) | (d == -b)).all())
        P = a / (a + b)
        assert abs(kept_pos - P) < 4 * (P * (1 - P) / N) ** 0.5


def test_sign_purity_edge_cases():
    N = 64
    pos = _rand(3, N, seed=1).abs() + 0.1
    # Pure signs: everything is kept.
    torch.testing.assert_close(graddrop_triton(canonicalize(pos), SEED, 0)[0], pos.sum(0))
    torch.testing.assert_close(graddrop_triton(canonicalize(-pos), SEED, 0)[0], -pos.sum(0))
    # All zeros: zero (never NaN).
    zero = torch.zeros(3, N, device=DEVICE)
    assert torch.equal(graddrop_triton(canonicalize(zero), SEED, 0)[0], torch.zeros(N, device=DEVICE))
    # Leak 1 for every task: nothing is dropped.
    mixed = _rand(3, N, seed=2)
    full = graddrop_triton(canonicalize(mixed), SEED, 0, leak=torch.ones(3, device=DEVICE))[0]
    torch.testing.assert_close(full, mixed[0] + mixed[1] + mixed[2])
    # Leak 1 for task 0 only: task 0 always passes through, the others are masked.
    leak = torch.tensor([1.0, 0.0, 0.0], device=DEVICE)
    d = graddrop_triton(canonicalize(mixed), SEED, 0, leak=leak)[0]
    rest = d - mixed[0]
    kept1 = torch.isclose(rest, mixed[1] + mixed[2], atol=1e-6) | torch.isclose(rest, mixed[1], atol=1e-6) \
        | torch.isclose(rest, mixed[2], atol=1e-6) | torch.isclose(rest, torch.zeros_like(rest), atol=1e-6)
    assert bool(kept1.all())
    _check([d], mixed, SEED, 0, leak)
    # A single task: its gradient is pure everywhere and passes unchanged.
    one = _rand(1, N, seed=3)
    torch.testing.assert_close(graddrop_triton(canonicalize(one), SEED, 0)[0], one[0])


def test_errors():
    J = _rand(2, 10)
    with pytest.raises(ValueError, match="seed"):
        graddrop_triton(canonicalize(J), -1)
    with pytest.raises(ValueError, match="leak"):
        graddrop_triton(canonicalize(J), 0, leak=torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match="at most"):
        graddrop_triton(canonicalize(_rand(gd_mod.MAX_TASKS + 1, 4)), 0)


def test_opcheck():
    grads = [_rand(37, seed=1), None, _rand(37, seed=2), _rand(5, seed=3)]  # K = 2, P = 2
    leak = torch.tensor([0.0, 0.5], device=DEVICE)
    torch.library.opcheck(torch.ops.fastmtl.graddrop_triton.default, (grads, 2, leak, SEED, 4, 1e-7, 16))
    outs = [torch.empty(37, device=DEVICE), torch.empty(5, device=DEVICE)]
    torch.library.opcheck(torch.ops.fastmtl.graddrop_triton_out.default, (grads, 2, leak, SEED, 4, 1e-7, outs, 16))
