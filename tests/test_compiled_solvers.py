"""The compiled K×K solvers (``fastmtl._C``) against the float64 reference solvers of
``fastmtl.solvers`` and the literal oracles of tests/test_solvers.py; their dispatch, fake kernels,
NaN policy, repeatability and the device path.

Agreement is measured where it is defined, on the combined direction ``d = Jᵀλ`` (several λ give
the same d when gradients are duplicated, zero or rank-deficient), with the error of
tests/test_solvers.py: ``‖d − d_ref‖ / max(‖d_ref‖, 1e-3·rms‖g_i‖)``.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

import fastmtl
from fastmtl import solvers
from fastmtl.ops import registry
from fastmtl.solvers import cagrad as cagrad_ref
from fastmtl.solvers import compiled
from fastmtl.solvers import dual_cone as dual_cone_ref
from fastmtl.solvers import min_norm as min_norm_ref
from fastmtl.solvers import nash as nash_ref
from fastmtl.solvers.jacobi import symmetric_eigh_reference

from _families import FAMILIES, make_jacobian

_CPU_REASON = compiled.unavailable_reason("cpu")
pytestmark = [pytest.mark.skipif(_CPU_REASON is not None, reason=f"compiled solvers unavailable: {_CPU_REASON}"),
              pytest.mark.usefixtures("one_intra_op_thread")]

KS = (1, 2, 3, 4, 5, 8, 9, 11, 16, 32, 64)
SCALES = (1e-20, 1.0, 1e20)
TOL = 1e-9


def jacobians(K: int):
    """Every family of tests/_families.py at three gradient scales (1e-20, 1, 1e20)."""
    out = []
    for fam in FAMILIES:
        J = make_jacobian(fam, K, max(2 * K, 24), seed=3)
        for s in SCALES:
            out.append((f"{fam}@{s:g}", J * s))
    return out


def d_error(J: torch.Tensor, lam: torch.Tensor, lam_ref: torch.Tensor) -> float:
    """``‖Jᵀ(λ − λ_ref)‖ / max(‖Jᵀλ_ref‖, 1e-3·rms‖g_i‖)``, computed on J rescaled to unit rms."""
    rms = J.norm(dim=1).pow(2).mean().sqrt()
    Jn = J / rms if rms > 0 else J
    d, d_ref = Jn.T @ lam, Jn.T @ lam_ref
    return float((d - d_ref).norm() / max(float(d_ref.norm()), 1e-3))


def batch(K: int):
    cases = jacobians(K)
    G = torch.stack([J @ J.T for _, J in cases])
    return cases, G


def check(name, cases, lam, lam_ref, tol=TOL):
    bad = [(case, e) for (case, J), a, b in zip(cases, lam, lam_ref) if not (e := d_error(J, a, b)) <= tol]
    assert not bad, f"{name}: {bad}"


# ---- agreement with the reference solvers -------------------------------------------------------


@pytest.mark.parametrize("K", KS)
def test_min_norm_matches_reference(K):
    cases, G = batch(K)
    w = compiled.min_norm_simplex(G, 30)
    assert w.dtype == torch.float64 and w.shape == (len(cases), K)
    assert torch.isfinite(w).all() and (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(len(cases), dtype=torch.float64), rtol=0, atol=1e-12)
    check("mgda", cases, w, min_norm_ref.min_norm_simplex(G))


@pytest.mark.parametrize("K", KS)
def test_dual_cone_matches_reference(K):
    cases, G = batch(K)
    eye = torch.eye(K, dtype=torch.float64)
    its = 18 if K > 32 else 16
    V = compiled.project_dual_cone(G, eye, its, 1e-4, 1e-4)
    V_ref = dual_cone_ref.project_dual_cone(G, eye, iterations=its)
    assert V.shape == (len(cases), K, K)
    check("upgrad", cases, V.mean(-2), V_ref.mean(-2))
    p = torch.full((1, K), 1.0 / K, dtype=torch.float64)
    v = compiled.project_dual_cone(G, p, 12, 1e-4, 1e-4)[:, 0]
    check("dualproj", cases, v, dual_cone_ref.project_dual_cone(G, p, iterations=12)[:, 0])


@pytest.mark.parametrize("K", KS)
def test_cagrad_matches_reference(K):
    cases, G = batch(K)
    w, lam = compiled.cagrad_simplex_weights(G, 0.5, 60)
    w_ref, lam_ref = cagrad_ref.cagrad_simplex_weights(G, 0.5)
    check("cagrad", cases, lam, lam_ref)
    assert torch.isfinite(w).all() and (w >= 0).all()


@pytest.mark.parametrize("K", KS)
def test_nash_matches_reference(K):
    cases, G = batch(K)
    its = nash_ref.default_nash_iterations(K)
    alpha = compiled.nash_weights(G, its, None)
    alpha_ref = nash_ref.nash_weights(G)
    # Where no solution exists (0 in the convex hull: zero rows, rank-deficient sets) both iterate
    # towards infinity in a way that is not meant to agree; compare where the reference converged.
    ok = [bool((a * (g @ a) - 1).abs().max() < 1e-6) or bool((a == 0).any()) for g, a in zip(G, alpha_ref)]
    sel = [i for i, o in enumerate(ok) if o]
    check("nash", [cases[i] for i in sel], alpha[sel], alpha_ref[sel], tol=1e-7)
    warm = alpha_ref * 1.3
    check("nash warm", [cases[i] for i in sel], compiled.nash_weights(G, its, warm)[sel],
          nash_ref.nash_weights(G, init=warm)[sel], tol=1e-7)


@pytest.mark.parametrize("K", (1, 2, 3, 5, 8, 16, 33, 64))
def test_eigh_matches_reference(K):
    _, G = batch(K)
    sweeps = solvers.jacobi.default_jacobi_sweeps(K)
    w, V = compiled.symmetric_eigh(G, sweeps)
    w_ref, V_ref = symmetric_eigh_reference(G)
    scale = G.abs().amax((-2, -1), keepdim=True).squeeze(-1)
    assert ((w - w_ref).abs() <= 1e-12 * scale).all()
    eye = torch.eye(K, dtype=torch.float64)
    for X in (V, V_ref):
        recon = X @ torch.diag_embed(w) @ X.transpose(-1, -2)
        assert ((recon - G).abs() <= 1e-12 * scale.unsqueeze(-1)).all()
        assert ((X.transpose(-1, -2) @ X - eye).abs() <= 1e-12).all()
    # Eigenvectors of well separated eigenvalues agree up to sign (those of a cluster are any
    # basis of its eigenspace).
    gaps = torch.full_like(w, math.inf)
    if K > 1:
        d = (w[..., 1:] - w[..., :-1]).abs()
        gaps[..., 1:] = d
        gaps[..., :-1] = torch.minimum(gaps[..., :-1], d)
    separated = gaps > 1e-6 * scale
    cos = (V * V_ref).sum(-2).abs()
    assert ((cos - 1).abs()[separated] <= 1e-9).all()


def test_literal_oracles_through_both_backends():
    """tests/test_solvers.py's oracles (exact enumeration, quadprog) on its adversarial families, with
    the public functions on the compiled and on the reference path."""
    import test_solvers as ts

    for backend in (None, "reference"):
        ctx = fastmtl.use_backend(backend) if backend else contextlib.nullcontext()
        with ctx:
            for K in (2, 3, 8):
                cs = ts.cases(K)
                G = ts.G_batch(cs)
                ts.check_errors("mgda", K, cs, solvers.min_norm_simplex(G).numpy(),
                                lambda f, s, J, K=K: ts.ref_mgda(f, K, s), {})
                _, lam = solvers.cagrad_simplex_weights(G, 0.5)
                ts.check_errors("cagrad", K, cs, lam.numpy(), lambda f, s, J, K=K: ts.ref_cagrad(f, K, s, 0.5)[0], {})


# ---- dispatch -----------------------------------------------------------------------------------


def _impl(name, G):
    return registry.solver_implementation(name, G)


def test_dispatch_compiled_reference_and_fallbacks():
    G = torch.eye(4, dtype=torch.float64)
    names = ("min_norm_simplex", "project_dual_cone", "cagrad_simplex_weights", "nash_weights", "symmetric_eigh",
             "imtl_g_weights", "aligned_mtl_weights")
    cpu = registry.get_backend("cpu")
    ref = registry.get_backend("reference")
    for n in names:
        assert _impl(n, G) is cpu.implementations[n]
        with fastmtl.use_backend("reference"):
            assert _impl(n, G) is ref.implementations[n]
        with fastmtl.use_backend("triton"):  # no solvers there: the automatic choice
            assert _impl(n, G) is cpu.implementations[n]
        assert _impl(n, torch.eye(compiled.MAX_K + 1, dtype=torch.float64)) is ref.implementations[n]
        assert _impl(n, torch.eye(4, dtype=torch.float32)) is cpu.implementations[n]
        assert _impl(n, torch.eye(4, dtype=torch.int64)) is ref.implementations[n]


def test_environment_variable_forces_reference(monkeypatch):
    G = torch.eye(3, dtype=torch.float64)
    monkeypatch.setattr(registry, "_ENV_CHOICE", ["reference"])
    assert _impl("min_norm_simplex", G) is registry.get_backend("reference").implementations["min_norm_simplex"]
    monkeypatch.setattr(registry, "_ENV_CHOICE", [None])
    assert _impl("min_norm_simplex", G) is registry.get_backend("cpu").implementations["min_norm_simplex"]


def test_public_functions_agree_between_backends():
    J = make_jacobian("conflict", 6, 40, seed=1)
    G = J @ J.T
    eye = torch.eye(6, dtype=torch.float64)
    fns = [lambda: solvers.min_norm_simplex(G), lambda: solvers.project_dual_cone(G, eye),
           lambda: solvers.cagrad_simplex_weights(G, 0.4)[1], lambda: solvers.nash_weights(G),
           lambda: solvers.symmetric_eigh(G)[0], lambda: solvers.imtl_g_weights(G),
           lambda: solvers.aligned_mtl_weights(G, scale_mode="median")]
    for fn in fns:
        fast = fn()
        with fastmtl.use_backend("reference"):
            slow = fn()
        torch.testing.assert_close(fast, slow, rtol=1e-9, atol=1e-12)


def test_cagrad_tensor_radius_uses_reference():
    J = make_jacobian("gauss", 3, 20, seed=2)
    G = torch.stack([J @ J.T] * 2)
    c = torch.tensor([0.2, 0.8], dtype=torch.float64)
    _, lam = solvers.cagrad_simplex_weights(G, c)
    for i in range(2):
        torch.testing.assert_close(lam[i], solvers.cagrad_simplex_weights(G[i], float(c[i]))[1], rtol=1e-9, atol=0)


# ---- batching, broadcasting, dtypes, repeatability ------------------------------------------------


def test_batched_equals_single_bitwise_and_thread_count_independent():
    cases, G = batch(5)
    G4 = G.reshape(3, -1, 5, 5)  # two leading dimensions
    eye = torch.eye(5, dtype=torch.float64)
    outs = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outs[threads] = (compiled.min_norm_simplex(G4, 30), compiled.project_dual_cone(G4, eye, 16, 1e-4, 1e-4),
                         compiled.cagrad_simplex_weights(G4, 0.5, 60)[1], compiled.nash_weights(G4, 10, None),
                         compiled.symmetric_eigh(G4, 8)[1], compiled.imtl_g_weights(G4, 8, 1e-7),
                         compiled.aligned_mtl_weights(G4, "rmse", 8, 1e-7))
    torch.set_num_threads(1)
    for a, b in zip(outs[1], outs[2]):
        assert torch.equal(a, b)
    single = compiled.project_dual_cone(G[7], eye, 16, 1e-4, 1e-4)
    assert torch.equal(outs[1][1].reshape(-1, 5, 5)[7], single)
    again = compiled.project_dual_cone(G4, eye, 16, 1e-4, 1e-4)
    assert torch.equal(again, outs[1][1])


def test_target_and_init_broadcasting():
    cases, G = batch(4)
    targets = torch.eye(4, dtype=torch.float64).expand(len(cases), 4, 4)
    torch.testing.assert_close(compiled.project_dual_cone(G, targets, 16, 1e-4, 1e-4),
                               compiled.project_dual_cone(G, targets[0], 16, 1e-4, 1e-4), rtol=0, atol=0)
    # targets with more leading dimensions than G broadcast G
    many = torch.eye(4, dtype=torch.float64).expand(2, 4, 4) * torch.tensor([1.0, 3.0]).double()[:, None, None]
    V = solvers.project_dual_cone(G[0], many)
    assert V.shape == (2, 4, 4)
    torch.testing.assert_close(V[1], 3.0 * V[0], rtol=1e-12, atol=1e-15)
    init = torch.ones(4, dtype=torch.float32)
    torch.testing.assert_close(compiled.nash_weights(G, 10, init),
                               compiled.nash_weights(G, 10, init.double().expand(len(cases), 4)), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_gram_matches_reference_on_the_same_values(dtype):
    J = make_jacobian("gauss", 5, 30, seed=4)
    G = (J @ J.T).to(dtype)
    torch.testing.assert_close(solvers.min_norm_simplex(G), min_norm_ref.min_norm_simplex(G), rtol=1e-9, atol=1e-12)
    eye = torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(solvers.project_dual_cone(G, eye), dual_cone_ref.project_dual_cone(G, eye),
                               rtol=1e-9, atol=1e-12)


# ---- non-finite input: NaN, never a hang ----------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gram_gives_nan_for_that_solve_only(bad):
    cases, G = batch(4)
    G = G[:3].clone()
    G[1, 0, 2] = bad
    eye = torch.eye(4, dtype=torch.float64)
    outs = [compiled.min_norm_simplex(G, 30), compiled.project_dual_cone(G, eye, 16, 1e-4, 1e-4),
            *compiled.cagrad_simplex_weights(G, 0.5, 60), compiled.nash_weights(G, 10, None),
            *compiled.symmetric_eigh(G, 5), compiled.imtl_g_weights(G, 5, 1e-7),
            compiled.aligned_mtl_weights(G, "min", 5, 1e-7)]
    for out in outs:
        assert torch.isnan(out[1]).all()
        assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()
    big = torch.full((12, 12), bad, dtype=torch.float64)  # interior-point and barrier paths
    assert torch.isnan(compiled.min_norm_simplex(big, 30)).all()
    assert torch.isnan(compiled.cagrad_simplex_weights(big, 0.5, 60)[1]).all()


def test_non_finite_warm_start_entries_fall_back_like_the_reference():
    J = make_jacobian("gauss", 4, 20, seed=5)
    G = J @ J.T
    init = torch.tensor([1.0, float("nan"), -2.0, float("inf")], dtype=torch.float64)
    torch.testing.assert_close(compiled.nash_weights(G, 10, init), nash_ref.nash_weights(G, init=init),
                               rtol=1e-9, atol=0)


def test_all_zero_gram_matches_reference():
    for K in (1, 3, 9, 12):
        G = torch.zeros(K, K, dtype=torch.float64)
        eye = torch.eye(K, dtype=torch.float64)
        for fast, slow in ((compiled.min_norm_simplex(G, 30), min_norm_ref.min_norm_simplex(G)),
                           (compiled.project_dual_cone(G, eye, 16, 1e-4, 1e-4), dual_cone_ref.project_dual_cone(G, eye)),
                           (compiled.cagrad_simplex_weights(G, 0.5, 60)[1], cagrad_ref.cagrad_simplex_weights(G, 0.5)[1]),
                           (compiled.nash_weights(G, 10, None), nash_ref.nash_weights(G, iterations=10))):
            torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)


# ---- bad input --------------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
    ops = torch.ops.fastmtl
    with pytest.raises(RuntimeError, match="square"):
        ops.solver_min_norm(torch.zeros(3, 4, dtype=torch.float64), 30)
    with pytest.raises(RuntimeError, match="1 <= K <= 64"):
        ops.solver_min_norm(torch.zeros(65, 65, dtype=torch.float64), 30)
    with pytest.raises(RuntimeError, match="1 <= K <= 64"):
        ops.solver_eigh(torch.zeros(0, 0, dtype=torch.float64), 3)
    with pytest.raises(RuntimeError, match="floating"):
        ops.solver_nash(torch.zeros(3, 3, dtype=torch.int64), None, 5)
    with pytest.raises(RuntimeError, match="targets must end with"):
        ops.solver_dual_cone(torch.eye(3, dtype=torch.float64), torch.eye(4, dtype=torch.float64), 16, 1e-4, 1e-4)
    with pytest.raises(RuntimeError, match="iterations must be in"):
        ops.solver_cagrad(torch.eye(3, dtype=torch.float64), 0.5, -1)
    # The public functions hand K > 64 to the reference instead of failing.
    assert solvers.min_norm_simplex(torch.eye(65, dtype=torch.float64)).shape == (65,)


# ---- torch.library: schemas, fake kernels, opcheck, torch.compile ---------------------------------


def _op_samples():
    J = make_jacobian("conflict", 5, 20, seed=6)
    G = J @ J.T
    Gb = torch.stack([G, 2.0 * G])
    eye = torch.eye(5, dtype=torch.float64)
    ops = torch.ops.fastmtl
    return [(ops.solver_min_norm.default, (G, 30)), (ops.solver_min_norm.default, (Gb.float(), 30)),
            (ops.solver_dual_cone.default, (Gb, eye, 16, 1e-4, 1e-4)),
            (ops.solver_dual_cone.default, (G, eye[:1], 12, 1e-4, 1e-4)),
            (ops.solver_cagrad.default, (G, 0.5, 60)), (ops.solver_cagrad.default, (torch.eye(11).double(), 0.5, 20)),
            (ops.solver_nash.default, (Gb, None, 10)), (ops.solver_nash.default, (G, torch.ones(5).double(), 10)),
            (ops.solver_eigh.default, (Gb, 8)), (ops.solver_imtl_g.default, (Gb, 8, 2.220446049250313e-16)),
            (ops.solver_imtl_g.default, (G.float(), 8, 1.1920928955078125e-07)),
            (ops.solver_aligned_mtl.default, (Gb, "min", 8, 2.220446049250313e-16)),
            (ops.solver_aligned_mtl.default, (Gb.float(), "median", 8, 1.1920928955078125e-07)),
            (ops.solver_aligned_mtl.default, (G, "rmse", 8, 2.220446049250313e-16))]


def test_schemas_are_pt2_compliant():
    for name in compiled.OP_NAMES:
        op = getattr(torch.ops.fastmtl, name).default
        assert torch.Tag.pt2_compliant_tag in op.tags


@pytest.mark.parametrize("i", range(14))
def test_opcheck(i):
    op, args = _op_samples()[i]
    torch.library.opcheck(op, args)


def test_fake_kernels_on_meta():
    G = torch.empty(2, 3, 7, 7, device="meta")
    assert torch.ops.fastmtl.solver_min_norm(G, 30).shape == (2, 3, 7)
    V = torch.ops.fastmtl.solver_dual_cone(G, torch.empty(4, 7, device="meta"), 16, 1e-4, 1e-4)
    assert V.shape == (2, 3, 4, 7) and V.dtype == torch.float64
    w, V = torch.ops.fastmtl.solver_eigh(G, 5)
    assert w.shape == (2, 3, 7) and V.shape == (2, 3, 7, 7)
    for lam in (torch.ops.fastmtl.solver_imtl_g(G, 5, 1e-7), torch.ops.fastmtl.solver_aligned_mtl(G, "min", 5, 1e-7)):
        assert lam.shape == (2, 3, 7) and lam.dtype == torch.float64


def test_public_solvers_trace_with_fullgraph():
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    J = make_jacobian("conflict", 4, 30, seed=7)
    G = J @ J.T
    eye = torch.eye(4, dtype=torch.float64)
    orders = torch.tensor([[1, 2, 3], [3, 0, 2], [0, 3, 1], [2, 1, 0]])

    def step(G):
        w = solvers.min_norm_simplex(G)
        V = solvers.project_dual_cone(G, eye)
        _, lam = solvers.cagrad_simplex_weights(G, 0.5)
        alpha = solvers.nash_weights(G)
        evals, evecs = solvers.symmetric_eigh(G)
        C = solvers.project_conflicts(G, orders)
        lam_vac, targets = solvers.vaccine(G, 0.5 * eye, orders)
        imtl, aligned = solvers.imtl_g_weights(G), solvers.aligned_mtl_weights(G, scale_mode="rmse")
        return w, V, lam, alpha, evals, evecs, C, lam_vac, targets, imtl, aligned

    counter = CompileCounterWithBackend("aot_eager")
    compiled_step = torch.compile(step, fullgraph=True, backend=counter)
    for a, b in zip(compiled_step(G), step(G)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert counter.frame_count == 1
    names = {str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert {f"fastmtl.{n}.default" for n in compiled.OP_NAMES} <= names, names
