"""PCGrad's and GradVac's compiled projection rounds (``solver_pcgrad``, ``solver_gradvac``) against
the float64 reference of :mod:`fastmtl.solvers.projection`, on the same random task orders; their
dispatch, NaN policy, repeatability, input checks and torch.library registration.

Agreement is measured on the combined directions (``d = Jᵀλ``, and each projected gradient
``p_i = Jᵀ C_i`` for PCGrad) with the error of tests/test_compiled_solvers.py.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import fastmtl
from fastmtl import solvers
from fastmtl.methods import METHODS
from fastmtl.methods.ordering import random_task_orders
from fastmtl.ops import registry
from fastmtl.solvers import compiled
from fastmtl.solvers import projection as ref

from _families import make_jacobian
from test_compiled_solvers import batch, check

_CPU_REASON = compiled.unavailable_reason("cpu")
pytestmark = [pytest.mark.skipif(_CPU_REASON is not None, reason=f"compiled solvers unavailable: {_CPU_REASON}"),
              pytest.mark.usefixtures("one_intra_op_thread")]

KS = (1, 2, 3, 4, 5, 8, 9, 16, 33, 64)
TOL = 1e-9


def orders_for(K: int, seed: int = 0) -> torch.Tensor:
    return random_task_orders(K, generator=torch.Generator().manual_seed(seed))


def random_targets(n: int, K: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, K, K, generator=g, dtype=torch.float64) * 1.8 - 0.9


@pytest.mark.parametrize("K", KS)
def test_pcgrad_matches_reference(K):
    cases, G = batch(K)  # every family of tests/_families.py at scales 1e-20, 1, 1e20
    for seed in range(2):
        orders = orders_for(K, seed)
        C = compiled.project_conflicts(G, orders, 1e-8)
        C_ref = ref.project_conflicts(G, orders, 1e-8)
        assert C.dtype == torch.float64 and C.shape == G.shape
        assert torch.isfinite(C).all()
        check("pcgrad λ", cases, C.sum(-2), C_ref.sum(-2), tol=TOL)
        for i in range(K):
            check(f"pcgrad p_{i}", cases, C[:, i], C_ref[:, i], tol=TOL)


@pytest.mark.parametrize("K", KS)
def test_gradvac_matches_reference(K):
    cases, G = batch(K)
    orders = orders_for(K)
    for phi in (torch.zeros(len(cases), K, K, dtype=torch.float64), random_targets(len(cases), K)):
        lam, new = compiled.vaccine(G, phi, orders, 0.5, 1e-8)
        lam_ref, new_ref = ref.vaccine(G, phi, orders, 0.5, 1e-8)
        assert lam.shape == (len(cases), K) and new.shape == G.shape
        assert torch.isfinite(lam).all() and torch.isfinite(new).all()
        check("gradvac λ", cases, lam, lam_ref, tol=TOL)
        torch.testing.assert_close(new, new_ref, rtol=0, atol=1e-9)
        assert (new.abs() <= 1).all()


def test_gradvac_state_carried_over_many_steps_matches_reference():
    """Targets fed back for several steps (the EMA the method keeps), fresh orders each step."""
    K = 6
    cases, G = batch(K)
    phi = phi_ref = torch.zeros(len(cases), K, K, dtype=torch.float64)
    for step in range(8):
        orders = orders_for(K, step)
        lam, phi = compiled.vaccine(G, phi, orders, 0.3, 1e-8)
        lam_ref, phi_ref = ref.vaccine(G, phi_ref, orders, 0.3, 1e-8)
        check(f"gradvac step {step}", cases, lam, lam_ref, tol=TOL)
        torch.testing.assert_close(phi, phi_ref, rtol=0, atol=1e-9)


def test_pcgrad_literal_projection_on_the_gradients():
    """The Gram form against PCGrad's vector form (Yu et al. 2020, Alg. 1) run on J itself."""
    K, D = 5, 12
    J = make_jacobian("conflict", K, D, seed=11)
    orders = orders_for(K, 3)
    P = J.clone()
    for i in range(K):
        for j in orders[i].tolist():
            s = float(P[i] @ J[j])
            if s < 0:
                P[i] = P[i] - s / (float(J[j] @ J[j]) + 1e-8) * J[j]
    C = compiled.project_conflicts(J @ J.T, orders, 1e-8)
    torch.testing.assert_close(C @ J, P, rtol=1e-12, atol=1e-12)


def test_aligned_gradients_are_left_alone_and_duplicates_opposed_cancel():
    J = make_jacobian("aligned", 4, 20, seed=2)
    G = J @ J.T
    assert (G > 0).all()
    orders = orders_for(4)
    assert torch.equal(compiled.project_conflicts(G, orders, 1e-8), torch.eye(4, dtype=torch.float64))
    lam, _ = compiled.vaccine(G, torch.zeros(4, 4, dtype=torch.float64), orders, 0.5, 1e-8)
    assert torch.equal(lam, torch.ones(4, dtype=torch.float64))  # cos ≥ 0 = target: nothing added


def test_zero_gram_and_zero_rows():
    for K in (1, 3, 9):
        G = torch.zeros(K, K, dtype=torch.float64)
        orders = orders_for(K)
        eye = torch.eye(K, dtype=torch.float64)
        assert torch.equal(compiled.project_conflicts(G, orders, 1e-8), eye)
        lam, phi = compiled.vaccine(G, torch.zeros(K, K, dtype=torch.float64), orders, 0.5, 1e-8)
        lam_ref, phi_ref = ref.vaccine(G, torch.zeros(K, K, dtype=torch.float64), orders, 0.5, 1e-8)
        assert torch.equal(lam, torch.ones(K, dtype=torch.float64)) and torch.equal(lam, lam_ref)
        assert torch.equal(phi, phi_ref)


# ---- batching, repeatability, dtypes --------------------------------------------------------------


def test_batched_equals_single_bitwise_repeatable_and_thread_count_independent():
    cases, G = batch(5)
    G4 = G.reshape(3, -1, 5, 5)  # two leading dimensions
    orders = orders_for(5)
    phi = random_targets(len(cases), 5).reshape(G4.shape)
    outs = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outs[threads] = (compiled.project_conflicts(G4, orders, 1e-8), *compiled.vaccine(G4, phi, orders, 0.5, 1e-8))
    torch.set_num_threads(1)
    for a, b in zip(outs[1], outs[2]):
        assert torch.equal(a, b)
    again = (compiled.project_conflicts(G4, orders, 1e-8), *compiled.vaccine(G4, phi, orders, 0.5, 1e-8))
    for a, b in zip(again, outs[1]):
        assert torch.equal(a, b)
    flat = G4.reshape(-1, 5, 5)
    assert torch.equal(compiled.project_conflicts(flat[7], orders, 1e-8), outs[1][0].reshape(-1, 5, 5)[7])
    lam7, phi7 = compiled.vaccine(flat[7], phi.reshape(-1, 5, 5)[7], orders, 0.5, 1e-8)
    assert torch.equal(lam7, outs[1][1].reshape(-1, 5)[7]) and torch.equal(phi7, outs[1][2].reshape(-1, 5, 5)[7])


def test_shared_and_broadcast_targets():
    cases, G = batch(4)
    orders = orders_for(4)
    phi = random_targets(1, 4)[0]
    shared = compiled.vaccine(G, phi, orders, 0.5, 1e-8)
    per_solve = compiled.vaccine(G, phi.expand(len(cases), 4, 4), orders, 0.5, 1e-8)
    for a, b in zip(shared, per_solve):
        assert torch.equal(a, b)
    # targets with more leading dimensions than G broadcast G (public function, both backends)
    many = torch.stack([phi, -phi])
    lam, new = solvers.vaccine(G[0], many, orders)
    assert lam.shape == (2, 4) and new.shape == (2, 4, 4)
    with fastmtl.use_backend("reference"):
        lam_ref, new_ref = solvers.vaccine(G[0], many, orders)
    torch.testing.assert_close(lam, lam_ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(new, new_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_gram_matches_reference_on_the_same_values(dtype):
    J = make_jacobian("conflict", 5, 30, seed=4)
    G = (J @ J.T).to(dtype)
    orders = orders_for(5)
    torch.testing.assert_close(compiled.project_conflicts(G, orders, 1e-8), ref.project_conflicts(G, orders),
                               rtol=1e-9, atol=1e-12)
    phi = torch.zeros(5, 5, dtype=torch.float64)
    torch.testing.assert_close(compiled.vaccine(G, phi, orders, 0.5, 1e-8)[0], ref.vaccine(G, phi, orders)[0],
                               rtol=1e-9, atol=1e-12)


# ---- non-finite and bad input ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_gram_gives_nan_for_that_solve_only(bad):
    _, G = batch(4)
    G = G[:3].clone()
    G[1, 0, 2] = bad
    orders = orders_for(4)
    C = compiled.project_conflicts(G, orders, 1e-8)
    lam, phi = compiled.vaccine(G, torch.zeros(3, 4, 4, dtype=torch.float64), orders, 0.5, 1e-8)
    for out in (C, lam, phi):
        assert torch.isnan(out[1]).all()
        assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()
    big = torch.full((64, 64), bad, dtype=torch.float64)
    assert torch.isnan(compiled.project_conflicts(big, orders_for(64), 1e-8)).all()


def test_bad_input_raises_clear_errors():
    ops = torch.ops.fastmtl
    G = torch.eye(3, dtype=torch.float64)
    orders = orders_for(3)
    with pytest.raises(RuntimeError, match=r"orders must be \[K, K - 1\]"):
        ops.solver_pcgrad(G, orders[:, :1], 1e-8)
    with pytest.raises(RuntimeError, match="orders must be an integer tensor"):
        ops.solver_pcgrad(G, orders.double(), 1e-8)
    with pytest.raises(RuntimeError, match=r"task indices in \[0, 3\), got 3"):
        ops.solver_gradvac(G, torch.zeros(3, 3, dtype=torch.float64), torch.full((3, 2), 3), 0.5, 1e-8)
    with pytest.raises(RuntimeError, match="targets must end with"):
        ops.solver_gradvac(G, torch.zeros(2, 2, dtype=torch.float64), orders, 0.5, 1e-8)
    with pytest.raises(RuntimeError, match="1 <= K <= 64"):
        ops.solver_pcgrad(torch.eye(65, dtype=torch.float64), orders_for(65), 1e-8)
    for fn in (ref.project_conflicts, solvers.project_conflicts):  # the reference and the public function
        with pytest.raises(ValueError, match=r"orders must be \[K, K - 1\]"):
            fn(G, orders[:2])
        with pytest.raises(TypeError, match="integer"):
            fn(G, orders.float())
    with pytest.raises(ValueError, match="G must be"):
        solvers.vaccine(torch.zeros(3, 4, dtype=torch.float64), torch.zeros(3, 3), orders)
    with pytest.raises(TypeError, match="integer"):
        ref.vaccine(G, torch.zeros(3, 3, dtype=torch.float64), orders.float())
    # The public functions hand K > 64 to the reference instead of failing.
    assert solvers.project_conflicts(torch.eye(65, dtype=torch.float64), orders_for(65)).shape == (65, 65)


# ---- dispatch and the methods -----------------------------------------------------------------------


def test_dispatch_compiled_reference_and_fallbacks():
    cpu = registry.get_backend("cpu")
    reference = registry.get_backend("reference")
    for name in ("project_conflicts", "vaccine"):
        impl = registry.solver_implementation
        assert impl(name, torch.eye(4, dtype=torch.float64)) is cpu.implementations[name]
        assert impl(name, torch.eye(4, dtype=torch.float32)) is cpu.implementations[name]
        with fastmtl.use_backend("reference"):
            assert impl(name, torch.eye(4, dtype=torch.float64)) is reference.implementations[name]
        assert impl(name, torch.eye(compiled.MAX_K + 1, dtype=torch.float64)) is reference.implementations[name]


@pytest.mark.parametrize("method", ["pcgrad", "gradvac"])
def test_methods_agree_between_backends(method):
    """The methods through fastmtl.combine: compiled vs forced reference, same seed, state carried."""
    J = make_jacobian("conflict", 6, 40, seed=9)
    results = {}
    for backend in (None, "reference"):
        m = METHODS[method]()
        gen = torch.Generator().manual_seed(5)
        lams = []
        for _ in range(3):
            with fastmtl.use_backend(backend) if backend else contextlib.nullcontext():
                lams.append(fastmtl.combine(J, m, generator=gen, return_info=True)[1].weights)
        results[backend] = torch.stack(lams)
    torch.testing.assert_close(results[None], results["reference"], rtol=1e-9, atol=1e-12)


# ---- torch.library ---------------------------------------------------------------------------------


def _op_samples():
    J = make_jacobian("conflict", 5, 20, seed=6)
    G = J @ J.T
    Gb = torch.stack([G, 2.0 * G])
    orders = orders_for(5)
    phi = random_targets(2, 5)
    ops = torch.ops.fastmtl
    return [(ops.solver_pcgrad.default, (G, orders, 1e-8)), (ops.solver_pcgrad.default, (Gb.float(), orders, 1e-6)),
            (ops.solver_gradvac.default, (Gb, phi, orders, 0.5, 1e-8)),
            (ops.solver_gradvac.default, (G, phi[0], orders, 0.1, 1e-8))]


@pytest.mark.parametrize("i", range(4))
def test_opcheck(i):
    op, args = _op_samples()[i]
    torch.library.opcheck(op, args)


def test_fake_kernels_on_meta():
    G = torch.empty(2, 3, 7, 7, device="meta")
    orders = torch.empty(7, 6, dtype=torch.long, device="meta")
    assert torch.ops.fastmtl.solver_pcgrad(G, orders, 1e-8).shape == (2, 3, 7, 7)
    lam, phi = torch.ops.fastmtl.solver_gradvac(G, torch.empty(7, 7, device="meta"), orders, 0.5, 1e-8)
    assert lam.shape == (2, 3, 7) and phi.shape == (2, 3, 7, 7) and lam.dtype == torch.float64

