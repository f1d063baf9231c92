"""Triton Gram kernel vs the float64 reference (interpreter on CPU here, the real kernel on a GPU).

Sizes are chosen for the interpreter (about a millisecond per interpreted operation): small
tensors, small ``block`` where many chunks are needed.
"""

import pytest
import torch

pytest.importorskip("triton")

import fastmtl  # noqa: E402
from fastmtl.gradients import canonicalize  # noqa: E402
from fastmtl.reference.primitives import gramian_ref  # noqa: E402
from fastmtl.triton import gramian as gram_mod  # noqa: E402
from fastmtl.triton import tables  # noqa: E402
from fastmtl.triton.gramian import gramian_triton  # noqa: E402
from _families import make_jacobian  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

INTERPRETED = tables.interpreter_active()
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = torch.device("cpu" if INTERPRETED else "cuda")
RTOL = 1e-6  # float32 accumulation vs float64


def _f64(grads):
    if isinstance(grads, torch.Tensor):
        return grads.double()
    return [[None if t is None else t.double() for t in row] for row in grads]


def _reference(grads):
    return gramian_ref(canonicalize(_f64(grads)))


def _check(G, R):
    """Entry-wise: |G_ij − R_ij| ≤ RTOL·sqrt(R_ii R_jj) (+ a tiny floor for zero rows)."""
    assert G.dtype == torch.float32 and G.shape == R.shape
    G = G.double().cpu()
    R = R.cpu()
    d = R.diagonal().clamp_min(0).sqrt()
    bound = RTOL * d[:, None] * d[None, :] + 1e-30
    err = (G - R).abs()
    assert bool((err <= bound).all()), f"max error ratio {(err / bound).max().item():.3g}"


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).to(DEVICE)


@pytest.mark.parametrize("K", [1, 2, 3, 8, 16])
def test_matrix_matches_reference(K):
    J = _rand(K, 1237, seed=K)  # D not a multiple of any block
    G = gramian_triton(canonicalize(J), block=256)
    _check(G, _reference(J))


@pytest.mark.parametrize("family", ["conflict", "aligned", "lowrank", "zero", "scaled"])
def test_families(family):
    J = make_jacobian(family, 4, 333, seed=1, dtype=torch.float32).to(DEVICE)
    _check(gramian_triton(canonicalize(J), block=128), _reference(J))


def test_many_small_parameters_with_missing_entries():
    K, P = 3, 240
    g = torch.Generator().manual_seed(7)
    sizes = torch.randint(1, 41, (P,), generator=g).tolist()
    grads = []
    for k in range(K):
        row = []
        for p, n in enumerate(sizes):
            missing = (p % 5 == k) or p == 17  # parameter 17: no task touches it
            row.append(None if missing else _rand(n, seed=1000 * k + p))
        grads.append(row)
    tg = canonicalize(grads)
    assert tg.shapes[17] is None
    _check(gramian_triton(tg, block=32), _reference(grads))


def test_multidimensional_parameters():
    shapes = [(3, 5), (7,), (2, 3, 4), (1,), (16, 2)]
    grads = [[_rand(*s, seed=10 * k + i) for i, s in enumerate(shapes)] for k in range(3)]
    _check(gramian_triton(canonicalize(grads), block=16), _reference(grads))


@pytest.mark.parametrize("n", [1, 15, 16, 17, 32, 48])
def test_exact_and_partial_blocks(n):
    # block = 16: n = BLOCK and 2·BLOCK are exact multiples (no tail), n = 1 is a lone tail.
    grads = [[_rand(n, seed=k), _rand(2 * n + 1, seed=10 + k)] for k in range(3)]
    _check(gramian_triton(canonicalize(grads), block=16), _reference(grads))


def test_views_inside_nan_buffers():
    """Inputs are views into bigger NaN-filled buffers: any read past a tensor's end poisons G."""
    K, sizes = 3, [5, 16, 33, 1, 64]
    grads = []
    for k in range(K):
        buf = torch.full((sum(sizes) + 3 * len(sizes) + 8,), float("nan"), device=DEVICE)
        row, start = [], 1 + k  # odd starts: misaligned views, so the unhinted variant runs
        for i, n in enumerate(sizes):
            buf[start:start + n] = _rand(n, seed=100 * k + i)
            row.append(buf[start:start + n])
            start += n + 3  # NaN gaps before and after every view
        grads.append(row)
    G = gramian_triton(canonicalize(grads), block=16)
    assert torch.isfinite(G).all()
    _check(G, _reference(grads))
    # Row views of a [K, D] slice of a NaN buffer (the matrix layout; 16-byte aligned starts).
    big = torch.full((4, 200), float("nan"), device=DEVICE)
    big[:, :100] = _rand(4, 100, seed=3)
    J = big[:, :100]
    G = gramian_triton(canonicalize(J), block=16)
    assert torch.isfinite(G).all()
    _check(G, _reference(J))


def test_alignment_flag():
    buf = torch.zeros(64, device=DEVICE)
    assert tables.address_table(DEVICE, [buf.data_ptr(), 0]).aligned
    assert not tables.address_table(DEVICE, [buf[1:].data_ptr()]).aligned


def test_noncontiguous_inputs_are_copied():
    base = [_rand(6, 9, seed=k) for k in range(3)]
    grads = [[b.T, b[:, ::2], b[::2, 1]] for b in base]  # transposed, strided, strided 1-D
    assert not any(t.is_contiguous() for t in grads[0][:2])
    _check(gramian_triton(canonicalize(grads), block=16), _reference(grads))
    Jt = _rand(40, 3, seed=5).T  # a non-contiguous [K, D] matrix
    _check(gramian_triton(canonicalize(Jt), block=16), _reference(Jt))


def test_empty_parameters_and_single_task():
    grads = [[torch.zeros(0, device=DEVICE), _rand(10, seed=1)]]
    _check(gramian_triton(canonicalize(grads), block=16), _reference(grads))
    zero = [[torch.zeros(0, device=DEVICE)], [torch.zeros(0, device=DEVICE)]]
    assert torch.equal(gramian_triton(canonicalize(zero)).cpu(), torch.zeros(2, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    J = _rand(4, 777, dtype=dtype, seed=2)
    # Reference from the same low-precision values, up-cast: only accumulation error remains.
    _check(gramian_triton(canonicalize(J), block=128), _reference(J))
    grads = [[_rand(33, dtype=dtype, seed=k), None if k == 1 else _rand(5, dtype=dtype, seed=9 + k)]
             for k in range(3)]
    _check(gramian_triton(canonicalize(grads), block=16), _reference(grads))


def test_bitwise_repeatable_and_symmetric():
    grads = [[_rand(100, seed=k), _rand(7, seed=5 + k)] for k in range(4)]
    tg = canonicalize(grads)
    a = gramian_triton(tg, block=16)
    b = gramian_triton(tg, block=16)
    assert torch.equal(a, b)
    assert torch.equal(a, a.T)


def test_tables_are_cached():
    grads = [[_rand(50, seed=k), _rand(9, seed=3 + k)] for k in range(2)]
    tg = canonicalize(grads)
    gramian_triton(tg, block=16)
    before = tables.cache_info()
    gramian_triton(tg, block=16)
    after = tables.cache_info()
    assert after["addresses"]["hits"] == before["addresses"]["hits"] + 1
    assert after["layouts"]["hits"] == before["layouts"]["hits"] + 1
    assert after["addresses"]["misses"] == before["addresses"]["misses"]


def test_errors():
    with pytest.raises(ValueError, match="at most"):
        gramian_triton(canonicalize(_rand(gram_mod.MAX_TASKS + 1, 4)))
    with pytest.raises(ValueError, match="power of two"):
        gramian_triton(canonicalize(_rand(2, 4)), block=24)
    with pytest.raises(TypeError, match="not supported"):
        torch.ops.fastmtl.gramian_triton([torch.ones(3, dtype=torch.float64, device=DEVICE)], 1)
    # The wrong device for the current mode is rejected with a clear message (no GPU needed).
    wrong = torch.device("cuda" if INTERPRETED else "cpu")
    with pytest.raises(ValueError, match="interpreter" if INTERPRETED else "CUDA tensors"):
        tables.check_device(wrong, "fastmtl::gramian_triton")


def test_opcheck():
    grads = [_rand(37, seed=1), None, _rand(37, seed=2), _rand(5, seed=3)]  # K = 2, P = 2
    torch.library.opcheck(torch.ops.fastmtl.gramian_triton.default, (grads, 2, 16))


def test_registry_backend():
    J = _rand(3, 50, seed=4)
    G = fastmtl.gramian(J, backend="triton")
    _check(G, _reference(J))
    if INTERPRETED:
        # The interpreter is never picked automatically on CPU.
        assert fastmtl.ops.select("gramian", canonicalize(J)).name != "triton"


# ---- combine through the registry -----------------------------------------------------------------

GRAM_METHODS = ["mean", "sum", "pcgrad", "cagrad", "mgda", "imtl_g", "upgrad", "dualproj", "aligned_mtl",
                "hydalearn", "wpcgrad"]


def _inputs(layout):
    J = make_jacobian("conflict", 4, 90, seed=11, dtype=torch.float32).to(DEVICE)
    if layout == "matrix":
        return J
    sizes = [30, 1, 40, 19]
    rows = []
    for k in range(4):
        row, start = [], 0
        for p, n in enumerate(sizes):
            row.append(None if (k, p) == (2, 1) else J[k, start:start + n].clone())
            start += n
        rows.append(row)
    return rows


@pytest.mark.parametrize("layout", ["matrix", "params"])
@pytest.mark.parametrize("method", GRAM_METHODS)
def test_combine_triton_matches_reference(method, layout):
    grads = _inputs(layout)
    losses = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64, device=DEVICE)
    res = {}
    for backend in ("triton", "reference"):
        d, info = fastmtl.combine(grads, method=method, losses=losses, backend=backend, return_info=True,
                                  generator=torch.Generator().manual_seed(5))
        res[backend] = (d, info)
        assert info.backend == backend
    (dt, it), (dr, ir) = res["triton"], res["reference"]
    torch.testing.assert_close(it.gram, ir.gram, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(it.weights, ir.weights, rtol=1e-4, atol=1e-5)
    if layout == "matrix":
        dt, dr = [dt], [dr]
    for a, b in zip(dt, dr):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
