"""The fixed-sweep Jacobi eigen-solver (``fastmtl.solvers.symmetric_eigh``: compiled, and its
PyTorch reference) against ``torch.linalg.eigh`` in float64, and the methods that use it."""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl import solvers
from fastmtl.methods import Context, make_method
from fastmtl.solvers import compiled
from fastmtl.solvers.jacobi import default_jacobi_sweeps, round_robin_pairs, symmetric_eigh_reference

from _families import FAMILIES, make_jacobian

KS = (1, 2, 3, 4, 5, 7, 8, 12, 16, 24, 32, 48, 64)
_COMPILED = compiled.unavailable_reason("cpu") is None


def spectra(K: int):
    """Gram matrices of every family, plus spectra with repeated eigenvalues (multiplicity K/2 and
    K/3, zero included) and a tight cluster."""
    out = [(f, make_jacobian(f, K, max(2 * K, 20), seed=s)) for f in FAMILIES for s in (0, 1)]
    cases = [(f"{f}/{i}", J @ J.T) for i, (f, J) in enumerate(out)]
    g = torch.Generator().manual_seed(K)
    for name, ev in (("mult2", [float(i % 2) for i in range(K)]), ("mult3", [float(i % 3) for i in range(K)]),
                     ("cluster", [1.0 + 1e-9 * i for i in range(K)])):
        Q, _ = torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64))
        cases.append((name, Q @ torch.diag(torch.tensor(ev, dtype=torch.float64)) @ Q.T))
    return cases


def errors(G, w, V):
    """Max errors: eigenvalues vs eigh and reconstruction (relative to ‖G‖₂), orthogonality."""
    ref = torch.linalg.eigvalsh(G)
    scale = max(float(ref.abs().max()), 1e-300)
    e_val = float((w - ref).abs().max()) / scale
    e_rec = float((V @ torch.diag(w) @ V.T - G).abs().max()) / scale
    e_orth = float((V.T @ V - torch.eye(G.shape[0], dtype=torch.float64)).abs().max())
    return e_val, e_rec, e_orth


def implementations():
    impls = [("reference", lambda G: symmetric_eigh_reference(G))]
    if _COMPILED:
        impls.append(("compiled", lambda G: compiled.symmetric_eigh(G, default_jacobi_sweeps(G.shape[-1]))))
    return impls


@pytest.mark.parametrize("K", KS)
def test_matches_torch_eigh_on_every_family(K):
    impls = implementations()
    if K > 16:  # the reference is hundreds of small ops per round; the compiled solver covers large K
        impls = impls[1:] or impls
    for name, fn in impls:
        for case, G in spectra(K):
            w, V = fn(G)
            assert w.dtype == torch.float64 and V.shape == (K, K)
            assert bool((w[1:] >= w[:-1]).all()), (name, case, "not ascending")
            e_val, e_rec, e_orth = errors(G, w, V)
            assert max(e_val, e_rec, e_orth) <= 1e-13 * max(1, K / 8), (name, K, case, e_val, e_rec, e_orth)


@pytest.mark.parametrize("scale", [1e-20, 1e20])
def test_extreme_scales(scale):
    for K in (3, 8, 16):
        J = make_jacobian("scaled", K, 40, seed=1) * scale
        G = J @ J.T
        for name, fn in implementations():
            w, V = fn(G)
            e_val, e_rec, e_orth = errors(G, w, V)
            assert max(e_val, e_rec, e_orth) <= 1e-13, (name, K, scale)


def test_schedule_visits_every_pair_once_per_sweep():
    for K in range(1, 12):
        seen = []
        for ps, qs in round_robin_pairs(K):
            assert len(set(ps) | set(qs)) == 2 * len(ps)  # disjoint pairs within a round
            seen += list(zip(ps, qs))
        assert sorted(seen) == [(p, q) for p in range(K) for q in range(p + 1, K)]


def test_compiled_and_reference_agree_and_batches():
    if not _COMPILED:
        pytest.skip(f"compiled solvers unavailable: {compiled.unavailable_reason('cpu')}")
    G = torch.stack([G for _, G in spectra(6)])
    w, V = solvers.symmetric_eigh(G)
    with fastmtl.use_backend("reference"):
        w_ref, V_ref = solvers.symmetric_eigh(G)
    torch.testing.assert_close(w, w_ref, rtol=0, atol=1e-13 * float(G.abs().max()))
    recon = V_ref @ torch.diag_embed(w_ref) @ V_ref.transpose(-1, -2)
    torch.testing.assert_close(recon, 0.5 * (G + G.transpose(-1, -2)), rtol=0, atol=1e-12 * float(G.abs().max()))


def test_non_finite_input_gives_non_finite_output():
    G = torch.eye(4, dtype=torch.float64)
    G[1, 2] = G[2, 1] = float("nan")
    for name, fn in implementations():
        w, V = fn(G)
        assert not torch.isfinite(w).all(), name


def test_reference_traces_with_fullgraph():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    G = make_jacobian("gauss", 3, 10, seed=2)
    G = G @ G.T
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(lambda G: symmetric_eigh_reference(G), fullgraph=True, backend=counter)
    w, V = fn(G)
    w_e, V_e = symmetric_eigh_reference(G)
    torch.testing.assert_close(w, w_e, rtol=0, atol=1e-14)
    assert counter.frame_count == 1


@pytest.mark.parametrize("method", ["imtl_g", "aligned_mtl", "config"])
@pytest.mark.parametrize("K", [2, 3, 5, 8])
def test_methods_agree_with_lapack_eigh(method, K, monkeypatch):
    """IMTL-G, Aligned-MTL and ConFIG with the Jacobi solver (compiled where available) against the
    same formulas with torch.linalg.eigh (LAPACK), on every family: the combined directions agree."""
    import fastmtl.methods.config as cf
    from fastmtl.solvers import eigen_weights

    lapack = {"imtl_g": lambda G: eigen_weights.imtl_g_weights(G, eigh=torch.linalg.eigh),
              "aligned_mtl": lambda G: eigen_weights.aligned_mtl_weights(G, eigh=torch.linalg.eigh)}
    for fam in FAMILIES:
        J = make_jacobian(fam, K, 30, seed=4)
        G = J @ J.T
        ctx = Context(num_tasks=K, device=G.device)
        lam = make_method(method, {}).weights(G, ctx)
        if method in lapack:
            lam_ref = lapack[method](G)
        else:
            with monkeypatch.context() as m:
                m.setattr(cf, "symmetric_eigh", lambda A: torch.linalg.eigh(A))
                lam_ref = make_method(method, {}).weights(G, ctx)
        d, d_ref = J.T @ lam, J.T @ lam_ref
        rms = float(J.norm(dim=1).pow(2).mean().sqrt())
        err = float((d - d_ref).norm()) / max(float(d_ref.norm()), 1e-3 * rms)
        assert err <= 1e-8, (method, K, fam, err)
