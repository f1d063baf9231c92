"""The compiled K×K solvers on CUDA tensors: one launch per solve, against the host solvers, no host
synchronisation, CUDA graph capture (every test here needs a CUDA device and is marked ``gpu``)."""

from __future__ import annotations

import math

import pytest
import torch

from fastmtl import solvers
from fastmtl.solvers import compiled
from fastmtl.solvers import nash as nash_ref
from fastmtl.methods.ordering import random_task_orders

from _families import make_jacobian
from test_compiled_solvers import batch, check

_GPU_REASON = compiled.unavailable_reason("cuda") if torch.cuda.is_available() else "no CUDA device is available"


def gpu(fn):
    return pytest.mark.gpu(pytest.mark.skipif(_GPU_REASON is not None, reason=f"cuda backend unavailable: {_GPU_REASON}")(fn))


@gpu
@pytest.mark.parametrize("K", (1, 2, 5, 8, 9, 11, 16, 64))
def test_cuda_matches_cpu(K):
    cases, G = batch(K)
    Gd = G.cuda()
    eye = torch.eye(K, dtype=torch.float64)
    its = default_its = nash_ref.default_nash_iterations(K)
    pairs = [(compiled.min_norm_simplex(Gd, 30), compiled.min_norm_simplex(G, 30)),
             (compiled.project_dual_cone(Gd, eye.cuda(), 16, 1e-4, 1e-4).mean(-2),
              compiled.project_dual_cone(G, eye, 16, 1e-4, 1e-4).mean(-2)),
             (compiled.cagrad_simplex_weights(Gd, 0.5, 60)[1], compiled.cagrad_simplex_weights(G, 0.5, 60)[1]),
             (compiled.nash_weights(Gd, its, None), compiled.nash_weights(G, default_its, None))]
    for dev, host in pairs:
        assert dev.device.type == "cuda" and dev.dtype == torch.float64
        check("cuda vs cpu", cases, dev.cpu(), host, tol=1e-9)
    w, V = compiled.symmetric_eigh(Gd, solvers.jacobi.default_jacobi_sweeps(K))
    w_h, _ = compiled.symmetric_eigh(G, solvers.jacobi.default_jacobi_sweeps(K))
    scale = G.abs().amax((-2, -1)).unsqueeze(-1)
    assert ((w.cpu() - w_h).abs() <= 1e-12 * scale).all()
    recon = V @ torch.diag_embed(w) @ V.transpose(-1, -2)
    assert ((recon.cpu() - G).abs() <= 1e-12 * scale.unsqueeze(-1)).all()
    torch.testing.assert_close(compiled.min_norm_simplex(Gd.float(), 30).cpu(),
                               compiled.min_norm_simplex(G.float(), 30), rtol=1e-9, atol=1e-12)
    sweeps = solvers.jacobi.default_jacobi_sweeps(K)
    check("imtl_g cuda vs cpu", cases, compiled.imtl_g_weights(Gd, sweeps, 2.220446049250313e-16).cpu(),
          compiled.imtl_g_weights(G, sweeps, 2.220446049250313e-16), tol=1e-9)
    for mode in ("min", "median", "rmse"):
        for dev_G, host_G, eps in ((Gd, G, 2.220446049250313e-16), (Gd.float(), G.float(), 1.1920928955078125e-07)):
            check(f"aligned_mtl {mode} cuda vs cpu", cases,
                  compiled.aligned_mtl_weights(dev_G, mode, sweeps, eps).cpu(),
                  compiled.aligned_mtl_weights(host_G, mode, sweeps, eps), tol=1e-9)


@gpu
def test_cuda_solves_do_not_synchronise_and_capture_in_a_graph():
    K = 8
    J = make_jacobian("conflict", K, 40, seed=8).cuda()
    G = J @ J.T
    eye = torch.eye(K, dtype=torch.float64, device="cuda")

    orders = random_task_orders(K, generator=torch.Generator().manual_seed(0), device="cuda")
    targets = torch.full((K, K), 0.3, dtype=torch.float64, device="cuda")

    def solve(G):
        return (solvers.min_norm_simplex(G), solvers.project_dual_cone(G, eye), solvers.cagrad_simplex_weights(G, 0.5)[1],
                solvers.nash_weights(G), solvers.symmetric_eigh(G)[0], solvers.project_conflicts(G, orders),
                *solvers.vaccine(G, targets, orders), solvers.imtl_g_weights(G),
                solvers.aligned_mtl_weights(G, scale_mode="median"))

    eager = solve(G)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        solve(G)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    static = G.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        solve(static)  # warm-up on the capture stream
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = solve(static)
    J2 = make_jacobian("gauss", K, 40, seed=9).cuda()
    static.copy_(J2 @ J2.T)
    graph.replay()
    expected = solve(J2 @ J2.T)
    for a, b in zip(captured, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    static.copy_(G)
    graph.replay()
    for a, b in zip(captured, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@gpu
def test_cuda_scratch_path_and_batches():
    # K = 64 UPGrad and CAGrad do not fit in shared memory: their workspace is global scratch.
    cases, G = batch(64)
    G = G[:4]
    Gd = G.cuda()
    eye = torch.eye(64, dtype=torch.float64)
    a = compiled.project_dual_cone(Gd, eye.cuda(), 18, 1e-4, 1e-4).cpu()
    b = compiled.project_dual_cone(G, eye, 18, 1e-4, 1e-4)
    check("upgrad K=64 cuda", cases[:4], a.mean(-2), b.mean(-2), tol=1e-9)
    c = compiled.cagrad_simplex_weights(Gd, 0.5, 60)[1].cpu()
    check("cagrad K=64 cuda", cases[:4], c, compiled.cagrad_simplex_weights(G, 0.5, 60)[1], tol=1e-9)
    assert math.isfinite(float(c.sum()))


@gpu
@pytest.mark.parametrize("K", (1, 2, 5, 8, 33, 64))
def test_cuda_projection_rounds_match_cpu(K):
    # K = 64: the workspace is global scratch; K > 32: two warps of rows.
    cases, G = batch(K)
    orders = random_task_orders(K, generator=torch.Generator().manual_seed(1))
    targets = torch.rand(len(cases), K, K, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5
    C = compiled.project_conflicts(G.cuda(), orders.cuda(), 1e-8).cpu()
    C_h = compiled.project_conflicts(G, orders, 1e-8)
    check("pcgrad cuda vs cpu", cases, C.sum(-2), C_h.sum(-2), tol=1e-9)
    lam, phi = compiled.vaccine(G.cuda(), targets.cuda(), orders.cuda(), 0.5, 1e-8)
    lam_h, phi_h = compiled.vaccine(G, targets, orders, 0.5, 1e-8)
    check("gradvac cuda vs cpu", cases, lam.cpu(), lam_h, tol=1e-9)
    torch.testing.assert_close(phi.cpu(), phi_h, rtol=0, atol=1e-9)
    torch.testing.assert_close(compiled.project_conflicts(G.cuda().float(), orders.cuda(), 1e-8).cpu(),
                               compiled.project_conflicts(G.float(), orders, 1e-8), rtol=1e-9, atol=1e-12)


@gpu
def test_cuda_projection_orders_out_of_range_give_nan():
    G = torch.eye(3, dtype=torch.float64, device="cuda")
    bad = torch.tensor([[1, 2], [0, 5], [0, 1]], device="cuda")
    assert torch.isnan(compiled.project_conflicts(G, bad, 1e-8)).all()
    lam, phi = compiled.vaccine(G, torch.zeros(3, 3, dtype=torch.float64, device="cuda"), bad, 0.5, 1e-8)
    assert torch.isnan(lam).all() and torch.isnan(phi).all()
