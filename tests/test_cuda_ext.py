"""The CUDA C++ extension ``fastmtl._C`` and the ``cuda`` backend.

Without a GPU these tests check what can be checked on the host: the extension was built whenever
torch is a CUDA build and nvcc exists; ``import fastmtl._C`` registers the ops with the expected
schemas; the fake kernels give the right shapes and dtypes (meta tensors, fake CUDA tensors,
symbolic shapes); ``torch.library.opcheck`` passes on meta tensors (test_schema,
test_autograd_registration, test_faketensor and test_aot_dispatch_dynamic all run there; what needs
a device is the CUDA kernel itself, so opcheck on CUDA tensors is in the GPU section);
``torch.compile(fullgraph=True)`` traces the ops; CPU tensors get a clear ``RuntimeError``;
``python -m fastmtl.info`` runs.

With a GPU: the equivalence matrix against the float64 reference (K in {1, 2, 3, 5, 8, 13, 16, 20,
40}, odd sizes, hundreds of small parameters, missing entries, fp32/fp16/bf16/fp64, views inside
NaN-filled buffers, non-contiguous inputs), bitwise repeatability, ``out=`` into ``.grad``, CUDA graph
capture of a whole ``fastmtl.combine`` call, and ``torch.compile(fullgraph=True)`` on CUDA tensors.
GPU cases skip (never fail) without a usable device.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import fastmtl
from fastmtl import cuda as fcuda
from fastmtl.gradients import canonicalize
from fastmtl.ops import get_backend
from fastmtl.reference.primitives import gramian_ref, weighted_sum_ref

from _families import make_jacobian, split_params

needs_ext = pytest.mark.skipif(not fcuda.extension_loaded(), reason=f"fastmtl._C not loaded: {fcuda.load_error()}")
_GPU_REASON = fcuda.unavailable_reason()
_gpu_skip = pytest.mark.skipif(_GPU_REASON is not None, reason=f"cuda backend unavailable: {_GPU_REASON}")


def gpu(fn):
    """The GPU section: marked ``gpu`` (selected by ``pytest -m gpu``) and skipped without a device."""
    return pytest.mark.gpu(_gpu_skip(fn))


SCHEMAS = {
    "gramian_cuda": "fastmtl::gramian_cuda(Tensor?[] tensors, int num_tasks) -> Tensor",
    "weighted_sum_cuda": "fastmtl::weighted_sum_cuda(Tensor?[] tensors, int num_tasks, Tensor weights) -> Tensor",
    "weighted_sum_cuda_out": ("fastmtl::weighted_sum_cuda_out(Tensor?[] tensors, int num_tasks, Tensor weights, "
                              "Tensor(a!)[] out) -> ()"),
}


# ---- build and registration (no device needed) ---------------------------------------------------


def _toolchain():
    """(present, why not): torch is a CUDA build and nvcc exists."""
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    from torch.utils import cpp_extension

    home = cpp_extension.CUDA_HOME
    nvcc = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc not found"
    return True, None


def test_extension_built_whenever_possible():
    present, why = _toolchain()
    if not present:
        pytest.skip(why)
    info = fcuda.build_info()
    assert info, "fastmtl/_build_info.py is missing: install with `pip install -e . --no-build-isolation`"
    if info.get("SKIP_REASON") == "FASTMTL_BUILD_CUDA=0":
        pytest.skip("built with FASTMTL_BUILD_CUDA=0")
    assert info["CUDA_EXTENSION_BUILT"], f"torch has CUDA and nvcc exists, yet: {info.get('SKIP_REASON')}"
    assert info["TORCH_VERSION"] == torch.__version__, "the extension was built against another torch"
    assert fcuda.extension_loaded(), fcuda.load_error()


@needs_ext
def test_import_registers_ops_with_schemas():
    import fastmtl._C as ext

    assert ext.__name__ == "fastmtl._C"
    for name, schema in SCHEMAS.items():
        op = getattr(torch.ops.fastmtl, name)
        assert str(op.default._schema) == schema
        assert torch.Tag.pt2_compliant_tag in op.default.tags
    assert list(torch.ops.fastmtl.gramian_cuda._schemas) == [""]  # one overload, .default


@needs_ext
def test_table_cache_ops_run_without_device():
    fcuda.table_cache_clear()
    stats = fcuda.table_cache_stats()
    assert stats["entries"] == 0 and stats["hits"] == 0 and stats["capacity"] > 0


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device="meta", dtype=dtype)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_fake_kernels_on_meta(dtype):
    K = 2
    t = [_meta(3, 5, dtype=dtype), None, _meta(7, dtype=dtype), _meta(3, 5, dtype=dtype), None, None]
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    G = torch.ops.fastmtl.gramian_cuda(t, K)
    assert G.shape == (K, K) and G.dtype == acc and G.device.type == "meta"
    w = _meta(K)
    flat = torch.ops.fastmtl.weighted_sum_cuda(t, K, w)
    # 15 -> 16, 7 -> 16, 0 (no task touches parameter 2)
    assert flat.shape == (32,) and flat.dtype == dtype
    assert torch.ops.fastmtl.weighted_sum_cuda_out(t, K, w, [_meta(3, 5), _meta(7), _meta(1)]) is None


@needs_ext
def test_fake_kernels_with_fake_cuda_and_symbolic_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    with FakeTensorMode():
        a = torch.empty(3, 5, device="cuda", dtype=torch.bfloat16)
        G = torch.ops.fastmtl.gramian_cuda([a, None, a, a], 2)
        assert G.shape == (2, 2) and G.dtype == torch.float32 and G.device.type == "cuda"
        d = torch.ops.fastmtl.weighted_sum_cuda([a, None, a, a], 2, torch.empty(2, device="cuda"))
        assert d.shape == (32,) and d.dtype == torch.bfloat16 and d.device.type == "cuda"
    mode = FakeTensorMode(shape_env=ShapeEnv())
    x = torch.empty(2, 37)
    with mode:
        fx = mode.from_tensor(x, static_shapes=False)
        d = torch.ops.fastmtl.weighted_sum_cuda([fx[0], fx[1]], 2, torch.empty(2))
        assert isinstance(d.shape[0], torch.SymInt)  # padded symbolically: 16 * ((s + 15) // 16)
        assert "//" in str(d.shape[0])


@needs_ext
def test_fake_kernel_errors_match_the_real_ones():
    with pytest.raises(RuntimeError, match="num_tasks"):
        torch.ops.fastmtl.gramian_cuda([_meta(3)], 0)
    with pytest.raises(RuntimeError, match="num_tasks \\* P"):
        torch.ops.fastmtl.gramian_cuda([_meta(3), _meta(3), _meta(3)], 2)
    with pytest.raises(RuntimeError, match="every entry is None"):
        torch.ops.fastmtl.weighted_sum_cuda([None, None], 2, _meta(2))


@needs_ext
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_opcheck_on_meta(name):
    K = 2
    t = [_meta(3, 5), None, _meta(7), _meta(3, 5), _meta(2, 2), None]
    w = _meta(K)
    args = {"gramian_cuda": (t, K), "weighted_sum_cuda": (t, K, w),
            "weighted_sum_cuda_out": (t, K, w, [_meta(3, 5), _meta(7), _meta(2, 2)])}[name]
    result = torch.library.opcheck(getattr(torch.ops.fastmtl, name).default, args)
    assert all(v == "SUCCESS" for v in result.values()), result


@needs_ext
def test_compile_fullgraph_traces_ops_on_meta():
    def f(a, b, c, w, o1, o2):
        G = torch.ops.fastmtl.gramian_cuda([a, b, None, c], 2)
        d = torch.ops.fastmtl.weighted_sum_cuda([a, b, None, c], 2, w)
        torch.ops.fastmtl.weighted_sum_cuda_out([a, b, None, c], 2, w, [o1, o2])
        return G * 2, d + 1

    torch._dynamo.reset()
    G, d = torch.compile(f, fullgraph=True, backend="aot_eager")(
        _meta(3, 5), _meta(7), _meta(7), _meta(2), _meta(3, 5), _meta(7))
    assert G.shape == (2, 2) and d.shape == (32,)


@needs_ext
def test_inductor_lowers_the_mutating_op():
    """Inductor compiles the out= op (auto-functionalised, then re-inplaced); the run then reaches
    the CPU kernel, whose error proves the compiled graph called the op."""

    def f(a, b, w, o):
        torch.ops.fastmtl.weighted_sum_cuda_out([a, b], 2, w, [o])
        return o + 1

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    with pytest.raises(RuntimeError, match="CUDA tensors only"):
        compiled(torch.ones(5), torch.ones(5), torch.ones(2), torch.zeros(5))


@needs_ext
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_cpu_tensors_raise_clear_error(name):
    x = torch.ones(4)
    args = {"gramian_cuda": ([x], 1), "weighted_sum_cuda": ([x], 1, torch.ones(1)),
            "weighted_sum_cuda_out": ([x], 1, torch.ones(1), [torch.zeros(4)])}[name]
    with pytest.raises(RuntimeError, match="runs on CUDA tensors only"):
        getattr(torch.ops.fastmtl, name)(*args)


def test_split_flat_views():
    shapes = (torch.Size([3, 5]), None, torch.Size([7]), torch.Size([16]), torch.Size([]))
    flat = torch.arange(16 + 0 + 16 + 16 + 16, dtype=torch.float32)
    parts = fcuda.split_flat(flat, shapes)
    assert parts[1] is None
    assert torch.equal(parts[0].reshape(-1), torch.arange(15.0))
    assert torch.equal(parts[2], torch.arange(16.0, 23.0))
    assert torch.equal(parts[3], torch.arange(32.0, 48.0))
    assert parts[4].shape == () and parts[4].item() == 48.0
    assert all(p is None or p.data_ptr() >= flat.data_ptr() for p in parts)  # views, no copies
    single = fcuda.split_flat(torch.arange(48.0), (torch.Size([37]),))
    assert single[0].shape == (37,)


def test_backend_registered_with_reasons():
    b = get_backend("cuda")
    assert b.priority == 20 and b.devices == ("cuda",) and b.deterministic
    # The hot-path primitives, and the K×K solvers of fastmtl.solvers (one kernel launch per solve).
    assert set(b.implementations) == {"gramian", "weighted_sum", "min_norm_simplex", "project_dual_cone",
                                      "cagrad_simplex_weights", "nash_weights", "symmetric_eigh",
                                      "project_conflicts", "vaccine", "imtl_g_weights", "aligned_mtl_weights"}
    if _GPU_REASON is not None:
        assert b.unavailable_reason() == _GPU_REASON
        with pytest.raises(RuntimeError, match="backend 'cuda'"):
            fastmtl.gramian(torch.randn(2, 5), backend="cuda")


def test_warns_once_when_cuda_available_but_extension_missing(monkeypatch):
    from fastmtl.ops import cuda_backend

    monkeypatch.setattr(fcuda, "extension_loaded", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.warns(RuntimeWarning, match="CUDA extension is not"):
        cuda_backend._warn_if_missing()


def test_info_runs():
    res = subprocess.run([sys.executable, "-m", "fastmtl.info"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "backends" in res.stdout and "cuda" in res.stdout and "reference" in res.stdout
    assert "CUDA extension fastmtl._C" in res.stdout


# ---- GPU: equivalence with the float64 reference ---------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
KS = [1, 2, 3, 5, 8, 13, 16, 20, 40]


def _sizes(seed: int, count: int = 300):
    """Hundreds of small parameters plus chunk-boundary cases (4096 = one chunk, 8192, 4097, 1)."""
    g = torch.Generator().manual_seed(seed)
    sizes = []
    for _ in range(count):
        kind = int(torch.randint(0, 4, (1,), generator=g))
        n = int(torch.randint(1, 700, (1,), generator=g))
        sizes.append((n,) if kind == 0 else (n // 7 + 1, 7) if kind == 1 else (3, n % 11 + 1, 5) if kind == 2 else (n,))
    sizes += [(4096,), (8192,), (4097,), (1,), (3, 4099), (16,), (17,)]
    return sizes


def _drops(K: int, P: int, seed: int):
    g = torch.Generator().manual_seed(seed + 7)
    drops = set()
    for p in range(P):
        if K > 1 and float(torch.rand(1, generator=g)) < 0.2:
            drops.add((int(torch.randint(0, K, (1,), generator=g)), p))
    return drops


def _to64(grads):
    if isinstance(grads, torch.Tensor):
        return grads.double()
    return [[None if t is None else t.double() for t in row] for row in grads]


def _gram_tol(G64: torch.Tensor, dtype: torch.dtype, n: int) -> torch.Tensor:
    d = torch.sqrt(torch.diagonal(G64).clamp_min(0))
    eps = 1e-13 if dtype == torch.float64 else 2e-6
    return eps * (1 + math.log2(max(n, 2)) / 8) * d[:, None] * d[None, :] + 1e-30


def _check_gram(grads, dtype):
    tg = canonicalize(grads)
    G = fcuda.gramian_tg(tg)
    assert G.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    G64 = gramian_ref(canonicalize(_to64(grads)))
    err = (G.double() - G64).abs()
    tol = _gram_tol(G64, dtype, tg.total_numel)
    assert bool((err <= tol).all()), f"max err {err.max().item():.3e}, tol {tol.min().item():.3e}"
    assert torch.equal(G, G.T)
    G2 = fcuda.gramian_tg(tg)
    assert torch.equal(G, G2), "not bitwise repeatable"
    return G


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", KS)
def test_gramian_params_vs_float64(K, dtype):
    sizes = _sizes(K)
    D = sum(int(torch.Size(s).numel()) for s in sizes)
    J = make_jacobian("gauss", K, D, seed=K).to(dtype).cuda()
    grads = split_params(J, sizes, drop=_drops(K, len(sizes), K))
    _check_gram(grads, dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 2, 3, 8, 16, 40])
@pytest.mark.parametrize("D", [1, 15, 4096, 100_003])
def test_gramian_matrix_odd_D(K, D, dtype):
    J = make_jacobian("scaled", K, D, seed=1).to(dtype).cuda()
    _check_gram(J, dtype)


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("offset", [0, 1, 3, 8])
def test_views_inside_nan_buffers(offset, dtype):
    """Inputs are views into NaN-filled buffers (aligned or not): nothing outside them is read."""
    K, sizes = 4, [(5, 3), (129,), (4097,), (1,), (64, 3)]
    n_total = sum(int(torch.Size(s).numel()) for s in sizes)
    J = make_jacobian("conflict", K, n_total, seed=3).to(dtype).cuda()
    buf = torch.full((K, n_total + 8 * len(sizes) + offset + 8), float("nan"), dtype=dtype, device="cuda")
    grads, start, pos = [[] for _ in range(K)], 0, offset
    for s in sizes:
        n = int(torch.Size(s).numel())
        for k in range(K):
            view = buf[k, pos:pos + n]
            view.copy_(J[k, start:start + n])
            grads[k].append(view.view(s))
        start, pos = start + n, pos + n + 5  # NaN gaps between parameters
    G = _check_gram(grads, dtype)
    assert torch.isfinite(G).all()
    lam = torch.randn(K, dtype=torch.float64, generator=torch.Generator().manual_seed(offset)).cuda()
    parts = fcuda.weighted_sum_tg(canonicalize(grads), lam)
    assert all(torch.isfinite(p).all() for p in parts)
    _check_weighted_sum(grads, lam, dtype)


def _abs(grads):
    if isinstance(grads, torch.Tensor):
        return grads.abs()
    return [[None if t is None else t.abs() for t in row] for row in grads]


def _check_weighted_sum(grads, lam, dtype, out=None):
    """Compare with the float64 reference; the tolerance scales with Σ_k |λ_k| |g_k| elementwise."""
    tg = canonicalize(grads)
    got = fcuda.weighted_sum_tg(tg, lam, out)
    ref = weighted_sum_ref(canonicalize(_to64(grads)), lam.double())
    scale = weighted_sum_ref(canonicalize(_abs(_to64(grads))), lam.double().abs())
    for p, (g, r, s) in enumerate(zip(got, ref, scale)):
        if r is None:
            assert g is None or out is not None
            continue
        out_dtype = g.dtype
        eps = {torch.float64: 1e-14, torch.float32: 2e-6}.get(out_dtype, torch.finfo(out_dtype).eps)
        if dtype != torch.float64 and out_dtype == torch.float64:
            eps = 2e-6  # float32 accumulation
        tol = eps * s + torch.finfo(out_dtype).tiny  # the floor covers subnormal outputs
        err = (g.double() - r).abs()
        assert g.shape == r.shape
        assert bool((err <= tol).all()), f"parameter {p}: max err {err.max().item():.3e}"
    again = fcuda.weighted_sum_tg(tg, lam, None)
    fresh = fcuda.weighted_sum_tg(tg, lam, None)
    for a, b in zip(again, fresh):
        assert (a is None and b is None) or torch.equal(a, b), "not bitwise repeatable"
    return got


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", KS)
def test_weighted_sum_params_vs_float64(K, dtype):
    sizes = _sizes(K + 100, count=200)
    D = sum(int(torch.Size(s).numel()) for s in sizes)
    J = make_jacobian("gauss", K, D, seed=K).to(dtype).cuda()
    grads = split_params(J, sizes, drop=_drops(K, len(sizes), K + 1))
    lam = torch.randn(K, dtype=torch.float64, generator=torch.Generator().manual_seed(K)).cuda()
    _check_weighted_sum(grads, lam, dtype)


@gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [1, 15, 4096, 100_003])
def test_weighted_sum_matrix_odd_D(D, dtype):
    J = make_jacobian("aligned", 3, D, seed=2).to(dtype).cuda()
    lam = torch.tensor([0.5, -1.25, 2.0], device="cuda")
    got = fastmtl.weighted_sum(J, lam, backend="cuda")
    assert got.shape == (D,) and got.dtype == dtype
    _check_weighted_sum(J, lam, dtype)


@gpu
def test_missing_column_and_non_contiguous_inputs():
    K = 3
    a = [torch.randn(6, 4, device="cuda").t() for _ in range(K)]  # transposed: copied, or read in place by the Gram
    b = [None] * K  # no task touches parameter 1
    c = [torch.randn(9, device="cuda") if k != 1 else None for k in range(K)]
    grads = [[a[k], b[k], c[k]] for k in range(K)]
    _check_gram(grads, torch.float32)
    lam = torch.tensor([1.0, 2.0, -1.0], device="cuda")
    parts = _check_weighted_sum(grads, lam, torch.float32)
    assert parts[1] is None and parts[0].shape == (4, 6)


@gpu
@pytest.mark.parametrize("grad_dtype", [torch.float32, torch.bfloat16])
def test_out_into_grad(grad_dtype):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(s, device="cuda")) for s in [(33, 7), (5,), (4096,), (1,)]]
    K = 4
    grads = [[torch.randn(p.shape, device="cuda").to(grad_dtype) for p in params] for _ in range(K)]
    lam = torch.rand(K, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).cuda()
    for p in params:
        p.grad = torch.full_like(p, float("nan"))
    targets = [p.grad for p in params]
    ptrs = [t.data_ptr() for t in targets]
    d = fastmtl.weighted_sum(grads, lam, out=targets, backend="cuda")
    assert [t.data_ptr() for t in d] == ptrs and [p.grad.data_ptr() for p in params] == ptrs
    _check_weighted_sum(grads, lam, grad_dtype, out=[p.grad for p in params])
    fresh = fastmtl.weighted_sum(grads, lam, backend="cuda")
    for p, f in zip(params, fresh):
        if grad_dtype == torch.float32:
            assert torch.equal(p.grad, f)  # same kernel, same order
        else:
            torch.testing.assert_close(p.grad, f.float(), rtol=1e-2, atol=1e-2)


@gpu
def test_out_in_place_over_an_input_and_strided_out():
    K = 3
    grads = [[torch.randn(1000, device="cuda"), torch.randn(8, 5, device="cuda")] for _ in range(K)]
    lam = torch.tensor([0.25, 0.5, 2.0], device="cuda")
    expected = fastmtl.weighted_sum([[t.clone() for t in row] for row in grads], lam, backend="cuda")
    strided = torch.empty(5, 8, device="cuda").t()  # non-contiguous out: staged, then copied back
    out = [grads[0][0], strided]  # out[0] is task 0's own gradient: elementwise in place
    fastmtl.weighted_sum(grads, lam, out=out, backend="cuda")
    assert torch.equal(grads[0][0], expected[0]) and torch.equal(strided, expected[1])
    buffer = torch.randn(1100, device="cuda")
    entries = [buffer[:1000]] + [torch.randn(1000, device="cuda") for _ in range(K - 1)]  # P = 1
    with pytest.raises(RuntimeError, match="partially overlaps"):
        torch.ops.fastmtl.weighted_sum_cuda_out(entries, K, lam, [buffer[50:1050]])


@gpu
def test_table_cache_hits_and_is_keyed_on_addresses():
    fcuda.table_cache_clear()
    grads = [[torch.randn(100, device="cuda"), torch.randn(7, device="cuda")] for _ in range(2)]
    G1 = fastmtl.gramian(grads, backend="cuda")
    G2 = fastmtl.gramian(grads, backend="cuda")
    stats = fcuda.table_cache_stats()
    assert stats["hits"] >= 1 and stats["misses"] >= 1
    moved = [[t.clone() for t in row] for row in grads]  # new addresses: a new table, same values
    assert torch.equal(fastmtl.gramian(moved, backend="cuda"), G1) and torch.equal(G1, G2)
    for row in moved:
        row[0].mul_(2)
    G3 = fastmtl.gramian(moved, backend="cuda")
    assert not torch.equal(G3, G1)


@gpu
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_opcheck_on_cuda(name):
    K = 3
    t = [torch.randn(3, 5, device="cuda"), None, torch.randn(4097, device="cuda"),
         torch.randn(3, 5, device="cuda"), torch.randn(2, 2, device="cuda"), torch.randn(4097, device="cuda"),
         None, torch.randn(2, 2, device="cuda"), torch.randn(4097, device="cuda")]
    w = torch.randn(K, device="cuda")
    args = {"gramian_cuda": (t, K), "weighted_sum_cuda": (t, K, w),
            "weighted_sum_cuda_out": (t, K, w, [torch.empty(3, 5, device="cuda"), torch.empty(2, 2, device="cuda"),
                                               torch.empty(4097, device="cuda")])}[name]
    torch.library.opcheck(getattr(torch.ops.fastmtl, name).default, args)


@gpu
def test_cuda_graph_capture_of_combine():
    torch.manual_seed(0)
    static_J = torch.randn(4, 100_003, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fastmtl.combine(static_J, method="upgrad", backend="cuda")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_d = fastmtl.combine(static_J, method="upgrad", backend="cuda")
    fcuda.table_cache_clear()  # replays must not depend on cached tables
    for seed in range(3):
        torch.manual_seed(seed + 1)
        static_J.copy_(torch.randn_like(static_J))
        graph.replay()
        torch.cuda.synchronize()
        expected = fastmtl.combine(static_J.clone(), method="upgrad", backend="cuda")
        torch.testing.assert_close(static_d, expected, rtol=1e-5, atol=1e-6)


@gpu
def test_compile_fullgraph_on_cuda():
    def f(a, b, c, w, o1, o2):
        G = torch.ops.fastmtl.gramian_cuda([a, b, None, c], 2)
        d = torch.ops.fastmtl.weighted_sum_cuda([a, b, None, c], 2, w)
        torch.ops.fastmtl.weighted_sum_cuda_out([a, b, None, c], 2, w, [o1, o2])
        return G * 2, d + 1

    def args():
        torch.manual_seed(0)
        return (torch.randn(3, 5, device="cuda"), torch.randn(7, device="cuda"), torch.randn(7, device="cuda"),
                torch.randn(2, device="cuda"), torch.zeros(3, 5, device="cuda"), torch.zeros(7, device="cuda"))

    eager_args, compiled_args = args(), args()
    expected = f(*eager_args)
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True)(*compiled_args)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)
    torch.testing.assert_close(compiled_args[4], eager_args[4])
    torch.testing.assert_close(compiled_args[5], eager_args[5])


@gpu
def test_combine_compiles_fullgraph_with_cuda_backend():
    J = torch.randn(3, 1000, device="cuda")

    def step(J):
        return fastmtl.combine(J, method="upgrad", backend="cuda")

    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(step, fullgraph=True)(J), step(J), rtol=1e-5, atol=1e-6)


@gpu
def test_automatic_selection_prefers_cuda_also_in_deterministic_mode():
    J = torch.randn(3, 777, device="cuda")
    _, info = fastmtl.combine(J, method="mean", return_info=True)
    assert info.backend == "cuda"
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _, info = fastmtl.combine(J, method="mean", return_info=True)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert info.backend == "cuda"
