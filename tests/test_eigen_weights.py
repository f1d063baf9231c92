"""IMTL-G's and Aligned-MTL's weights from the Jacobi eigen-decomposition
(``fastmtl.solvers.imtl_g_weights`` / ``aligned_mtl_weights``): the compiled ops against the
PyTorch reference on every input family, dtype and scale; the methods against their literal oracles
on both paths; the eigenvalue cut-off, rank 0 and the median rule on known spectra; NaN policy,
repeatability, dispatch and argument checks. (Schemas, opcheck, fake kernels and tracing:
tests/test_compiled_solvers.py; the split over a CUDA block: tests/test_solver_teams.py.)
"""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl import solvers
from fastmtl.methods import Context, make_method
from fastmtl.ops import registry
from fastmtl.reference import literal as L
from fastmtl.solvers import compiled
from fastmtl.solvers import eigen_weights as ref
from fastmtl.solvers.jacobi import default_jacobi_sweeps, symmetric_eigh_reference

from _families import FAMILIES, make_jacobian
from test_compiled_solvers import check

_CPU_REASON = compiled.unavailable_reason("cpu")
pytestmark = [pytest.mark.skipif(_CPU_REASON is not None, reason=f"compiled solvers unavailable: {_CPU_REASON}"),
              pytest.mark.usefixtures("one_intra_op_thread")]

KS = (1, 2, 3, 4, 5, 8, 9, 16, 33, 64)
MODES = ("min", "median", "rmse")
EPS64 = torch.finfo(torch.float64).eps
EPS32 = torch.finfo(torch.float32).eps
# Gradient scales per Gram dtype (a float32 Gram of gradients at 1e±20 would overflow / underflow).
SCALES = {torch.float64: (1e-20, 1.0, 1e20), torch.float32: (1e-8, 1.0, 1e8)}


def cases(K: int, dtype=torch.float64):
    """``(names and Jacobians, G [n, K, K] in dtype)`` over every family and scale."""
    out = []
    for fam in FAMILIES:
        J = make_jacobian(fam, K, max(2 * K, 24), seed=5)
        for s in SCALES[dtype]:
            out.append((f"{fam}@{s:g}", J * s))
    return out, torch.stack([(J @ J.T).to(dtype) for _, J in out])


def compiled_imtl_g(G):
    return compiled.imtl_g_weights(G, default_jacobi_sweeps(G.shape[-1]), torch.finfo(G.dtype).eps)


def compiled_aligned(G, mode):
    return compiled.aligned_mtl_weights(G, mode, default_jacobi_sweeps(G.shape[-1]), torch.finfo(G.dtype).eps)


# ---- the compiled ops against the reference ------------------------------------------------------


# float32 up to K = 33 (K = 64 would add seconds of reference Jacobi and no new code path).
@pytest.mark.parametrize("K, dtype", [(K, torch.float64) for K in KS] + [(K, torch.float32) for K in KS if K < 64])
def test_compiled_matches_reference(K, dtype):
    cs, G = cases(K, dtype)
    # One reference decomposition for the four reference formulas (the reference symmetrises G in
    # float64 and runs symmetric_eigh_reference on it: the same call).
    decomposition = symmetric_eigh_reference(G)
    eigh = lambda A: decomposition  # noqa: E731
    lam = compiled_imtl_g(G)
    assert lam.dtype == torch.float64 and lam.shape == (len(cs), K) and torch.isfinite(lam).all()
    lam_ref = ref.imtl_g_weights(G, eigh=eigh)
    check(f"imtl_g {dtype}", cs, lam, lam_ref)
    # λ sums to 1 wherever it is not the degenerate 0, and is 0 exactly where the reference's is.
    zero = lam.abs().amax(-1) == 0
    assert torch.equal(zero, lam_ref.abs().amax(-1) == 0)
    assert ((lam.sum(-1) - 1).abs()[~zero] <= 1e-9).all()
    for mode in MODES:
        lam = compiled_aligned(G, mode)
        assert lam.dtype == torch.float64 and lam.shape == (len(cs), K) and torch.isfinite(lam).all()
        check(f"aligned_mtl {mode} {dtype}", cs, lam, ref.aligned_mtl_weights(G, scale_mode=mode, eigh=eigh))


def test_float32_gram_uses_the_float32_cut_off():
    # Eigenvalues 1e-8, 1e-3, 1: all kept with float64's eps, 1e-8 cut with float32's (K·eps ≈ 3.6e-7).
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    ev = torch.tensor([1e-8, 1e-3, 1.0], dtype=torch.float64)
    G = Q @ torch.diag(ev) @ Q.T
    for eps, rank in ((EPS64, 3), (EPS32, 2)):
        lam = compiled.aligned_mtl_weights(G, "min", default_jacobi_sweeps(3), eps)
        keep, kept = Q[:, 3 - rank:], ev[3 - rank:]
        expected = kept[0].sqrt() * keep @ (kept.rsqrt() * (keep.T @ torch.ones(3, dtype=torch.float64)))
        torch.testing.assert_close(lam, expected, rtol=1e-6, atol=0)
        torch.testing.assert_close(lam, ref.aligned_mtl_weights(G, eps=eps), rtol=1e-9, atol=0)


# ---- known spectra: the cut-off, rank 0 and the median rule ----------------------------------------


@pytest.mark.parametrize("K", [1, 2, 5, 6, 9])
def test_known_spectra(K):
    """G = Q diag(ev) Qᵀ with r = K − K//3 positive eigenvalues 1..r and K//3 zeros: Aligned-MTL's σ²
    is 1 ("min"), the lower median ⌊(r − 1)/2⌋ + 1 ("median") or (r + 1)/2 ("rmse"); IMTL-G's λ
    is Q_r Λ_r⁻¹ Q_rᵀ n / Σ."""
    g = torch.Generator().manual_seed(K)
    Q, _ = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64))
    zeros = K // 3
    r = K - zeros
    ev = torch.cat([torch.zeros(zeros), torch.arange(1, r + 1)]).to(torch.float64)
    G = Q @ torch.diag(ev) @ Q.T
    Qr, er = Q[:, zeros:], ev[zeros:]
    ones = torch.ones(K, dtype=torch.float64)
    for mode, s2 in (("min", 1.0), ("median", float((r - 1) // 2 + 1)), ("rmse", (r + 1) / 2)):
        expected = s2 ** 0.5 * Qr @ (er.rsqrt() * (Qr.T @ ones))
        torch.testing.assert_close(compiled_aligned(G, mode), expected, rtol=1e-9, atol=1e-12)
    n = torch.diagonal(G).clamp_min(0).sqrt()
    v = Qr @ ((Qr.T @ n) / er)
    torch.testing.assert_close(compiled_imtl_g(G), v / v.sum(), rtol=1e-9, atol=1e-12)


def test_zero_gram_rank_zero():
    for K in (1, 3, 9):
        G = torch.zeros(2, K, K, dtype=torch.float64)
        assert torch.equal(compiled_imtl_g(G), torch.zeros(2, K, dtype=torch.float64))
        assert torch.equal(ref.imtl_g_weights(G), torch.zeros(2, K, dtype=torch.float64))
        for mode in MODES:
            assert torch.equal(compiled_aligned(G, mode), torch.ones(2, K, dtype=torch.float64))
            assert torch.equal(ref.aligned_mtl_weights(G, scale_mode=mode), torch.ones(2, K, dtype=torch.float64))


def test_imtl_g_no_equal_projection_direction_gives_zero():
    # g_1 = −g_0: v ∝ (1, 1)·‖g‖/‖g‖², but G is rank 1 and n lies outside its range: Σv = 0.
    J = torch.tensor([[1.0, 2.0], [-1.0, -2.0]], dtype=torch.float64)
    lam = compiled_imtl_g(J @ J.T)
    assert torch.equal(lam, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(ref.imtl_g_weights(J @ J.T), lam)


# ---- the methods on both paths against their literal oracles ---------------------------------------


def _rel(d, expected, J):
    floor = 1e-3 * float(J.pow(2).sum(1).mean().sqrt())
    return float((d - expected).norm()) / max(float(expected.norm()), floor)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_methods_match_literal_oracles_on_both_paths(K, backend):
    with fastmtl.use_backend(backend):
        for fam in ("gauss", "conflict", "scaled", "aligned"):
            J = make_jacobian(fam, K, 40, seed=7)
            lam = make_method("imtl_g", {}).weights(J @ J.T, Context(num_tasks=K, device=J.device))
            assert _rel(J.T @ lam, L.imtl_g_literal(J), J) < 1e-8, (fam, K)
        for fam in ("gauss", "conflict", "scaled", "aligned", "zero"):
            J = make_jacobian(fam, K, 40, seed=8)
            for mode in MODES:
                lam = make_method("aligned_mtl", {"scale_mode": mode}).weights(J @ J.T, Context(K, J.device))
                assert _rel(J.T @ lam, L.aligned_mtl_literal(J, scale_mode=mode), J) < 1e-8, (fam, K, mode)


def test_methods_run_the_selected_implementation():
    J = make_jacobian("conflict", 6, 30, seed=9)
    G = (J @ J.T).float()
    ctx = Context(num_tasks=6, device=G.device)
    imtl, aligned = make_method("imtl_g", {}), make_method("aligned_mtl", {"scale_mode": "median"})
    assert torch.equal(imtl.weights(G, ctx), compiled_imtl_g(G))
    assert torch.equal(aligned.weights(G, ctx), compiled_aligned(G, "median"))
    with fastmtl.use_backend("reference"):
        assert torch.equal(imtl.weights(G, ctx), ref.imtl_g_weights(G))
        assert torch.equal(aligned.weights(G, ctx), ref.aligned_mtl_weights(G, scale_mode="median"))


# ---- non-finite input, repeatability, arguments ----------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gram_gives_nan_for_that_solve_only(bad, dtype):
    for K in (1, 4, 12):
        _, G = cases(K, dtype)
        G = G[:3].clone()
        G[1, 0, K - 1] = bad
        for lam in (compiled_imtl_g(G), *(compiled_aligned(G, m) for m in MODES)):
            assert torch.isnan(lam[1]).all()
            assert torch.isfinite(lam[0]).all() and torch.isfinite(lam[2]).all()


def test_batched_equals_single_bitwise_and_thread_count_independent():
    _, G = cases(5)
    G4 = G.reshape(3, -1, 5, 5)  # two leading dimensions
    outs = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outs[threads] = [compiled_imtl_g(G4), *(compiled_aligned(G4, m) for m in MODES)]
    torch.set_num_threads(1)
    for a, b in zip(outs[1], outs[2]):
        assert a.shape == (3, len(G) // 3, 5) and torch.equal(a, b)
    flat = [o.reshape(-1, 5) for o in outs[1]]
    for i in (0, 7, len(G) - 1):
        singles = [compiled_imtl_g(G[i]), *(compiled_aligned(G[i], m) for m in MODES)]
        for f, s in zip(flat, singles):
            assert torch.equal(f[i], s)
    again = [compiled_imtl_g(G4), *(compiled_aligned(G4, m) for m in MODES)]
    for a, b in zip(again, outs[1]):
        assert torch.equal(a, b)


def test_dispatch_and_public_defaults():
    G = torch.eye(4, dtype=torch.float32) + 0.5
    for name in ("imtl_g_weights", "aligned_mtl_weights"):
        assert registry.solver_implementation(name, G) is registry.get_backend("cpu").implementations[name]
        big = torch.eye(compiled.MAX_K + 1, dtype=torch.float64)
        assert registry.solver_implementation(name, big) is registry.get_backend("reference").implementations[name]
    # Defaults: the eps of G's dtype and default_jacobi_sweeps(K).
    assert torch.equal(solvers.imtl_g_weights(G), compiled.imtl_g_weights(G, default_jacobi_sweeps(4), EPS32))
    assert torch.equal(solvers.aligned_mtl_weights(G, scale_mode="rmse"),
                       compiled.aligned_mtl_weights(G, "rmse", default_jacobi_sweeps(4), EPS32))
    with fastmtl.use_backend("reference"):
        torch.testing.assert_close(solvers.aligned_mtl_weights(G, scale_mode="median"),
                                   compiled.aligned_mtl_weights(G, "median", default_jacobi_sweeps(4), EPS32),
                                   rtol=1e-12, atol=0)
    assert solvers.imtl_g_weights(torch.eye(65, dtype=torch.float64)).shape == (65,)


def test_bad_arguments_raise_clear_errors():
    G = torch.eye(3, dtype=torch.float64)
    ops = torch.ops.fastmtl
    with pytest.raises(RuntimeError, match="scale_mode must be"):
        ops.solver_aligned_mtl(G, "max", 5, EPS64)
    with pytest.raises(RuntimeError, match="eps must be finite and >= 0"):
        ops.solver_imtl_g(G, 5, -1.0)
    with pytest.raises(RuntimeError, match="sweeps must be in"):
        ops.solver_imtl_g(G, -1, EPS64)
    with pytest.raises(RuntimeError, match="1 <= K <= 64"):
        ops.solver_aligned_mtl(torch.zeros(65, 65, dtype=torch.float64), "min", 5, EPS64)
    for backend in ("cpu", "reference"):
        with fastmtl.use_backend(backend):
            with pytest.raises(ValueError, match="scale_mode"):
                solvers.aligned_mtl_weights(G, scale_mode="max")
            with pytest.raises(ValueError, match="eps"):
                solvers.imtl_g_weights(G, eps=float("nan"))
