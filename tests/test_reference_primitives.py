"""The reference primitives against dense float64 arithmetic, over every layout and dtype."""

import pytest
import torch

import fastmtl
from _families import make_jacobian, split_params

SIZES = [(3, 5), (1,), (17,), (4, 2, 2), (33,)]
D = sum(int(torch.Size(s).numel()) for s in SIZES)


@pytest.mark.parametrize("K", [1, 2, 5, 16])
def test_gramian_and_weighted_sum_all_layouts(K):
    J = make_jacobian("gauss", K, D, seed=K)
    lam = torch.randn(K, dtype=torch.float64)
    G_exact = J @ J.T
    d_exact = lam @ J
    drop = {(0, 1), (K - 1, 3)} if K > 1 else set()
    Jd = J.clone()
    start = 0
    for p, s in enumerate(SIZES):
        n = int(torch.Size(s).numel())
        for k in range(K):
            if (k, p) in drop:
                Jd[k, start:start + n] = 0
        start += n
    G_drop, d_drop = Jd @ Jd.T, lam @ Jd
    forms = {
        "matrix": (J, G_exact, d_exact),
        "vectors": (list(J), G_exact, d_exact),
        "params": (split_params(J, SIZES), G_exact, d_exact),
        "params_none": (split_params(J, SIZES, drop), G_drop, d_drop),
    }
    for name, (grads, G_ref, d_ref) in forms.items():
        G = fastmtl.gramian(grads, backend="reference")
        assert G.dtype == torch.float64
        torch.testing.assert_close(G, G_ref, rtol=1e-12, atol=1e-12, msg=name)
        d = fastmtl.weighted_sum(grads, lam, backend="reference")
        if name.startswith("params"):
            assert [t.shape for t in d] == [torch.Size(s) for s in SIZES]
            d = torch.cat([t.reshape(-1) for t in d])
        torch.testing.assert_close(d, d_ref, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float16, 1e-5), (torch.bfloat16, 1e-5)])
def test_low_precision_accumulates_in_fp32(dtype, tol):
    J = make_jacobian("gauss", 4, 5000, seed=1).to(dtype)
    exact = J.double() @ J.double().T
    G = fastmtl.gramian(J, backend="reference")
    assert G.dtype == torch.float32
    torch.testing.assert_close(G.double(), exact, rtol=tol, atol=tol * exact.abs().max().item())
    lam = torch.tensor([0.5, -1.0, 2.0, 0.25])
    d = fastmtl.weighted_sum(J, lam, backend="reference")
    assert d.dtype == dtype
    d_exact = lam.double() @ J.double()
    # Output rounding to the input dtype dominates.
    assert (d.double() - d_exact).abs().max() <= 2 * torch.finfo(dtype).eps * d_exact.abs().max() + 1e-6


def test_out_writes_into_grad_buffers():
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(4))]
    grads = [[torch.randn(3, 2), torch.randn(4)], [torch.randn(3, 2), None]]
    for p in params:
        p.grad = torch.full_like(p, 7.0)
    bufs = [p.grad for p in params]
    ptrs = [b.data_ptr() for b in bufs]
    lam = torch.tensor([1.0, 2.0])
    res = fastmtl.weighted_sum(grads, lam, out=bufs)
    assert [b.data_ptr() for b in res] == ptrs
    torch.testing.assert_close(params[0].grad, grads[0][0] + 2 * grads[1][0])
    torch.testing.assert_close(params[1].grad, grads[0][1])


def test_non_contiguous_inputs():
    base = torch.randn(6, 40, dtype=torch.float64)
    J = base[::2, ::3]  # strided rows and columns
    assert not J.is_contiguous()
    torch.testing.assert_close(fastmtl.gramian(J), J @ J.T)
    params = [[base[k, :20].reshape(4, 5).T] for k in range(3)]  # transposed views
    G = fastmtl.gramian(params)
    flat = torch.stack([p[0].reshape(-1) for p in params])
    torch.testing.assert_close(G, flat @ flat.T)


def test_chunked_path_matches(monkeypatch):
    import fastmtl.reference.primitives as prim
    monkeypatch.setattr(prim, "_CHUNK_ELEMENTS", 64)
    J = make_jacobian("gauss", 3, 5001, seed=3).to(torch.bfloat16)
    G = fastmtl.gramian(J)
    torch.testing.assert_close(G.double(), J.double() @ J.double().T, rtol=1e-5, atol=1e-3)
    params = split_params(J.float(), [(2500,), (2501,)])
    torch.testing.assert_close(fastmtl.gramian(params).double(), J.double() @ J.double().T, rtol=1e-5, atol=1e-3)


def test_untouched_parameter_gives_none():
    grads = [[torch.randn(3), None], [torch.randn(3), None]]
    d = fastmtl.combine(grads, method="sum")
    assert d[1] is None
    torch.testing.assert_close(d[0], grads[0][0] + grads[1][0])
