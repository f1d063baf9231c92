"""Triton weighted sum ``Σ_k λ_k g_k`` vs the float64 reference, into new tensors and into ``out``."""

import pytest
import torch

pytest.importorskip("triton")

import fastmtl  # noqa: E402
from fastmtl.gradients import canonicalize  # noqa: E402
from fastmtl.reference.primitives import weighted_sum_ref  # noqa: E402
from fastmtl.triton import tables  # noqa: E402
from fastmtl.triton import weighted_sum as ws_mod  # noqa: E402
from fastmtl.triton.weighted_sum import weighted_sum_triton  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

INTERPRETED = tables.interpreter_active()
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)


def _f64(grads):
    if isinstance(grads, torch.Tensor):
        return grads.double()
    return [[None if t is None else t.double() for t in row] for row in grads]


def _reference(grads, lam):
    return weighted_sum_ref(canonicalize(_f64(grads)), lam.double())


def _check(parts, ref, grads, lam, rtol=1e-6):
    """|d − d_ref| ≤ rtol · Σ_k |λ_k g_k| element-wise (float32 accumulation), plus output rounding."""
    bound = _abs_sum(canonicalize(_f64(grads)), lam)
    assert len(parts) == len(ref)
    for a, b, s in zip(parts, ref, bound):
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert a.shape == b.shape
        out_eps = {torch.float32: 0.0, torch.float16: 2 ** -11, torch.bfloat16: 2 ** -8}[a.dtype]
        err = (a.double().cpu() - b.cpu()).abs()
        tol = rtol * s.cpu() + out_eps * b.abs().cpu() + 1e-30
        assert bool((err <= tol).all()), f"max error ratio {(err / tol).max().item():.3g}"


def _abs_sum(tg64, lam):
    """Σ_k |λ_k| |g_k| per parameter (the scale of the float32 rounding error)."""
    out = []
    for p in range(tg64.num_params):
        if tg64.shapes[p] is None:
            out.append(None)
            continue
        s = torch.zeros(tg64.shapes[p], dtype=torch.float64, device=tg64.device)
        for k in tg64.present(p):
            s += lam[k].abs().double().to(s.device) * tg64.entries[k][p].abs()
        out.append(s)
    return out


def _lam(K, seed=0):
    return torch.randn(K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(DEVICE)


@pytest.mark.parametrize("K", [1, 2, 3, 8, 16])
def test_matrix_matches_reference(K):
    J = _rand(K, 1237, seed=K)
    lam = _lam(K, K)
    _check(weighted_sum_triton(canonicalize(J), lam, block=256), _reference(J, lam), J, lam)


def test_many_small_parameters_with_missing_entries():
    K, P = 3, 240
    g = torch.Generator().manual_seed(8)
    sizes = torch.randint(1, 41, (P,), generator=g).tolist()
    grads = [[None if (p % 4 == k or p == 5) else _rand(n, seed=1000 * k + p) for p, n in enumerate(sizes)]
             for k in range(K)]
    lam = _lam(K, 1)
    parts = weighted_sum_triton(canonicalize(grads), lam, block=32)
    assert parts[5] is None
    _check(parts, _reference(grads, lam), grads, lam)


@pytest.mark.parametrize("n", [1, 15, 16, 17, 32, 48])
def test_exact_and_partial_blocks(n):
    grads = [[_rand(n, seed=k), _rand(2 * n + 1, seed=10 + k)] for k in range(3)]
    lam = _lam(3)
    _check(weighted_sum_triton(canonicalize(grads), lam, block=16), _reference(grads, lam), grads, lam)


def test_views_inside_nan_buffers_in_and_out():
    """Inputs and outputs are views into NaN buffers: stray reads poison d, stray writes hit the NaN gaps."""
    K, sizes = 3, [5, 16, 33, 1, 64]
    lam = _lam(K, 2)
    grads = []
    for k in range(K):
        buf = torch.full((sum(sizes) + 3 * len(sizes) + 8,), float("nan"), device=DEVICE)
        row, start = [], 1 + k
        for i, n in enumerate(sizes):
            buf[start:start + n] = _rand(n, seed=100 * k + i)
            row.append(buf[start:start + n])
            start += n + 3
        grads.append(row)
    ref = _reference(grads, lam)
    parts = weighted_sum_triton(canonicalize(grads), lam, block=16)
    assert all(torch.isfinite(p).all() for p in parts)
    _check(parts, ref, grads, lam)
    # out= views into a sentinel buffer: the gaps must keep their sentinel value.
    sentinel = 12345.0
    obuf = torch.full((sum(sizes) + 3 * len(sizes) + 8,), sentinel, device=DEVICE)
    outs, start, spans = [], 3, []
    for n in sizes:
        outs.append(obuf[start:start + n])
        spans.append((start, start + n))
        start += n + 3
    weighted_sum_triton(canonicalize(grads), lam, out=outs, block=16)
    _check(outs, ref, grads, lam)
    mask = torch.ones_like(obuf, dtype=torch.bool)
    for s, e in spans:
        mask[s:e] = False
    assert bool((obuf[mask] == sentinel).all())


def test_out_buffers_dtypes_and_noncontiguous():
    shapes = [(4, 6), (9,), (3, 3)]
    grads = [[_rand(*s, dtype=torch.bfloat16, seed=10 * k + i) for i, s in enumerate(shapes)] for k in range(3)]
    lam = _lam(3, 4)
    ref = _reference(grads, lam)
    outs = [torch.empty(6, 4, device=DEVICE).T,  # non-contiguous float32
            torch.empty(9, dtype=torch.float16, device=DEVICE),
            torch.empty(3, 3, dtype=torch.bfloat16, device=DEVICE)]
    got = weighted_sum_triton(canonicalize(grads), lam, out=outs, block=16)
    assert all(a is b for a, b in zip(got, outs))
    _check(outs, ref, grads, lam)
    # Same dtype everywhere: one launch, straight into .grad-like buffers.
    outs = [torch.empty(s, device=DEVICE) for s in shapes]
    weighted_sum_triton(canonicalize(grads), lam, out=outs, block=16)
    _check(outs, ref, grads, lam)


def test_noncontiguous_inputs_are_copied():
    base = [_rand(6, 9, seed=k) for k in range(3)]
    grads = [[b.T, b[:, ::2], b[::2, 1]] for b in base]
    lam = _lam(3, 5)
    _check(weighted_sum_triton(canonicalize(grads), lam, block=16), _reference(grads, lam), grads, lam)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_missing_tasks_ignore_nonfinite_weights():
    # Task 1 has no gradient for parameter 0: its (infinite) weight must not turn that part NaN.
    grads = [[_rand(20, seed=0), _rand(3, seed=1)], [None, _rand(3, seed=2)]]
    lam = torch.tensor([0.5, float("inf")], dtype=torch.float64, device=DEVICE)
    parts = weighted_sum_triton(canonicalize(grads), lam, block=16)
    torch.testing.assert_close(parts[0], 0.5 * grads[0][0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    J = _rand(4, 777, dtype=dtype, seed=2)
    lam = _lam(4, 6)
    parts = weighted_sum_triton(canonicalize(J), lam, block=128)
    assert parts[0].dtype == dtype
    _check(parts, _reference(J, lam), J, lam)
    out = torch.empty(777, device=DEVICE)  # float32 output: only accumulation error
    weighted_sum_triton(canonicalize(J), lam, out=[out], block=128)
    _check([out], _reference(J, lam), J, lam)


def test_bitwise_repeatable_and_block_independent():
    grads = [[_rand(100, seed=k), _rand(7, seed=5 + k)] for k in range(4)]
    tg = canonicalize(grads)
    lam = _lam(4, 7)
    a = weighted_sum_triton(tg, lam, block=16)
    b = weighted_sum_triton(tg, lam, block=16)
    c = weighted_sum_triton(tg, lam, block=64)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)


def test_new_weights_do_not_recompile():
    J = _rand(3, 100, seed=1)
    tg = canonicalize(J)
    weighted_sum_triton(tg, _lam(3, 1), block=16)
    kernel = ws_mod._weighted_sum_kernel

    def compiled():  # number of compiled variants (the interpreter compiles nothing)
        caches = getattr(kernel, "device_caches", {})
        return sum(len(entry[0]) for entry in caches.values())

    before = compiled()
    for seed in range(2, 5):
        lam = _lam(3, seed)
        _check(weighted_sum_triton(tg, lam, block=16), _reference(J, lam), J, lam)
    assert compiled() == before


def test_errors():
    with pytest.raises(ValueError, match="at most"):
        weighted_sum_triton(canonicalize(_rand(ws_mod.MAX_TASKS + 1, 4)), _lam(ws_mod.MAX_TASKS + 1))
    with pytest.raises(ValueError, match="weights must have shape"):
        torch.ops.fastmtl.weighted_sum_triton([_rand(4)], 1, _lam(2))
    with pytest.raises(ValueError, match="elements"):
        torch.ops.fastmtl.weighted_sum_triton_out([_rand(4)], 1, _lam(1), [torch.empty(5, device=DEVICE)])


def test_flat_output_padding_is_zero():
    grads = [_rand(5, seed=1), _rand(20, seed=2)]  # K = 1, P = 2: offsets 0 and 16, 48 elements
    flat = torch.ops.fastmtl.weighted_sum_triton(grads, 1, torch.tensor([2.0], device=DEVICE), 16)
    assert flat.shape == (48,)
    torch.testing.assert_close(flat[:5], 2 * grads[0])
    torch.testing.assert_close(flat[16:36], 2 * grads[1])
    assert bool((flat[5:16] == 0).all()) and bool((flat[36:] == 0).all())


def test_opcheck():
    grads = [_rand(37, seed=1), None, _rand(37, seed=2), _rand(5, seed=3)]  # K = 2, P = 2
    lam = torch.tensor([0.3, -1.2], device=DEVICE)
    torch.library.opcheck(torch.ops.fastmtl.weighted_sum_triton.default, (grads, 2, lam, 16))
    outs = [torch.empty(37, device=DEVICE), torch.empty(5, device=DEVICE)]
    torch.library.opcheck(torch.ops.fastmtl.weighted_sum_triton_out.default, (grads, 2, lam, outs, 16))


def test_registry_and_combine():
    J = _rand(3, 50, seed=4)
    lam = _lam(3, 8)
    d = fastmtl.weighted_sum(J, lam, backend="triton")
    _check([d], _reference(J, lam), J, lam)
    d = fastmtl.combine(J, method="mean", backend="triton")
    torch.testing.assert_close(d, J.mean(0), rtol=1e-6, atol=1e-7)
    model = torch.nn.Linear(5, 3).to(DEVICE)
    grads = [[_rand(3, 5, seed=k), _rand(3, seed=9 + k)] for k in range(2)]
    bufs = [torch.zeros_like(p) for p in model.parameters()]
    fastmtl.combine(grads, method="sum", backend="triton", out=bufs)
    torch.testing.assert_close(bufs[0], grads[0][0] + grads[1][0])
    torch.testing.assert_close(bufs[1], grads[0][1] + grads[1][1])


def test_torch_compile_fullgraph():
    """The ops are opaque custom ops: torch.compile(fullgraph=True) traces around them, no graph break."""
    from torch._dynamo.testing import CompileCounterWithBackend

    def step(grads):
        G = fastmtl.gramian(grads, backend="triton")
        lam = torch.softmax(-G.diagonal(), 0)
        return fastmtl.weighted_sum(grads, lam, backend="triton")

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    grads = [[_rand(40, seed=k), None if k == 1 else _rand(7, 3, seed=5 + k)] for k in range(3)]
    out = compiled(grads)
    ref = step(grads)
    for a, b in zip(out, ref):
        assert torch.equal(a, b)
    assert counter.frame_count == 1
