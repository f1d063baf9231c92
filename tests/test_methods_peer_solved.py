"""FairGrad and PCD: the two methods of ``test_methods_peer.py``'s family with an on-device solver.

FairGrad's α-fair weights are checked against the official code's root finding
(``scipy.optimize.least_squares`` on the same Gram, tight and default tolerances), against its
closed cases (α = 1 is Nash-MTL's system, K = 1 and the scaling law are explicit), and PCD against
its primal quadratic program solved by quadprog over several calls (the EMA of the norms).
"""

from __future__ import annotations

import math

import pytest
import torch

import fastmtl
from fastmtl.methods import PCD, FairGrad
from fastmtl.reference import literal as L
from fastmtl.solvers import nash_weights
from fastmtl.solvers.alpha_fair import alpha_fair_weights

from _families import FAMILIES, make_jacobian

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SCALES = (1e-10, 1e-5, 1.0, 1e5, 1e10)
RAW = {"multiply_by_k": False, "max_norm": 0.0}  # TorchJD's scale: the raw weights w



def err(d: torch.Tensor, ref: torch.Tensor, J: torch.Tensor) -> float:
    rms = J.pow(2).sum(1).mean().sqrt()
    floor = float(1e-3 * rms) if float(rms) > 0 else 1e-300
    return float((d - ref).norm() / max(float(ref.norm()), floor))


def run(J, method, **kw):
    d, info = fastmtl.combine(J, method=method, return_info=True, **kw)
    assert torch.isfinite(d).all() and torch.isfinite(info.weights).all()
    return d, info


# ------------------------------------------------------------------------------------------------
# FairGrad
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("K", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("family", FAMILIES)
def test_fairgrad_matches_the_official_root_finding(family, K, alpha):
    J = make_jacobian(family, K, 67, seed=K)
    d, info = run(J, "fairgrad", alpha=alpha, **RAW)
    w_ref = L.fairgrad_weights_literal(J, alpha)
    if w_ref is None:  # Pareto-stationary (lowrank with K ≥ 3 can contain 0 in its hull): no root
        assert torch.equal(info.weights, torch.zeros(K, dtype=torch.float64))
        return
    assert err(d, J.T @ w_ref, J) < 1e-9
    w = info.weights
    live = J.pow(2).sum(1) > 1e-12 * J.pow(2).sum(1).max()
    assert torch.all(w[~live] == 0) and torch.all(w[live] > 0)
    if bool(live.any()):
        rhs = w[live].pow(-1.0 / alpha)      # the defining system G w = w^{-1/α} on the live tasks
        lhs = (J @ (J.T @ w))[live]
        assert float(((lhs - rhs) / rhs).abs().max()) < 1e-8


@pytest.mark.parametrize("alpha", [1.0, 2.0])
@pytest.mark.parametrize("family", ("gauss", "conflict", "scaled"))
def test_fairgrad_agrees_with_least_squares_at_its_default_tolerances(family, alpha):
    """The official call as it runs (scipy's default 1e-8 tolerances) lands within its own tolerance."""
    J = make_jacobian(family, 4, 67, seed=3)
    d, _ = run(J, "fairgrad", alpha=alpha, **RAW)
    w_official = L.fairgrad_weights_literal(J, alpha, official_tolerances=True)
    assert err(d, J.T @ w_official, J) < 1e-5


def test_fairgrad_official_scale_and_clip():
    J = make_jacobian("conflict", 3, 67, seed=4)
    for max_norm in (1.0, 1e3, 0.0):
        d, _ = run(J, "fairgrad", alpha=2.0, max_norm=max_norm)
        assert err(d, L.fairgrad_literal(J, 2.0, max_norm=max_norm), J) < 1e-9
        if max_norm:
            assert float(d.norm()) <= max_norm * (1 + 1e-12)
    d_raw, _ = run(J, "fairgrad", alpha=2.0, **RAW)
    d_k, _ = run(J, "fairgrad", alpha=2.0, max_norm=0.0)
    torch.testing.assert_close(d_k, 3 * d_raw, rtol=1e-14, atol=1e-15 * float(d_k.abs().max()))


@pytest.mark.parametrize("K", [1, 2, 4, 8])
@pytest.mark.parametrize("family", ("gauss", "conflict", "scaled", "zero"))
def test_fairgrad_alpha_one_is_the_nash_system(family, K):
    J = make_jacobian(family, K, 67, seed=5)
    G = J @ J.T
    torch.testing.assert_close(alpha_fair_weights(G, 1.0), nash_weights(G), rtol=1e-9, atol=1e-12)


def test_fairgrad_closed_cases():
    g = make_jacobian("gauss", 1, 30, seed=6)
    for alpha in (0.5, 1.0, 3.0):  # K = 1: ‖g‖² w = w^{-1/α}
        _, info = run(g, "fairgrad", alpha=alpha, **RAW)
        expected = float(g.pow(2).sum()) ** (-alpha / (alpha + 1))
        assert float(info.weights[0]) == pytest.approx(expected, rel=1e-12)
    J = make_jacobian("conflict", 4, 30, seed=6)
    _, info = run(J, "fairgrad", alpha=0.0, **RAW)  # α = 0: linear scalarisation, uniform weights
    assert torch.equal(info.weights, torch.full((4,), 0.25, dtype=torch.float64))
    opposite = torch.stack([J[0], -2.0 * J[0], J[1] - J[1]])  # 0 in the hull: no root, λ = 0
    d, info = run(opposite, "fairgrad")
    assert torch.equal(info.weights, torch.zeros(3, dtype=torch.float64)) and torch.equal(d, torch.zeros(30,
                                                                                            dtype=torch.float64))
    d, info = run(torch.zeros(3, 5, dtype=torch.float64), "fairgrad")
    assert torch.equal(info.weights, torch.zeros(3, dtype=torch.float64))


def test_fairgrad_zero_row_leaves_the_others_unchanged():
    J = make_jacobian("gauss", 4, 40, seed=7)
    Jz = torch.cat([J[:2], torch.zeros(1, 40, dtype=torch.float64), J[2:]])
    _, i = run(J, "fairgrad", alpha=2.0, **RAW)
    _, iz = run(Jz, "fairgrad", alpha=2.0, **RAW)
    assert float(iz.weights[2]) == 0.0
    torch.testing.assert_close(iz.weights[[0, 1, 3, 4]], i.weights, rtol=1e-10, atol=0)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
def test_fairgrad_scaling_law(alpha):
    """g → c·g gives w → c^{-2α/(α+1)}·w (λ = w: no clip, no ×K), at every scale in float64."""
    J = make_jacobian("conflict", 4, 50, seed=8)
    _, i1 = run(J, "fairgrad", alpha=alpha, **RAW)
    for c in SCALES:
        _, ic = run(J * c, "fairgrad", alpha=alpha, **RAW)
        torch.testing.assert_close(ic.weights, i1.weights * c ** (-2 * alpha / (alpha + 1)), rtol=1e-9, atol=0)


def test_fairgrad_float32_gram():
    J = make_jacobian("conflict", 5, 301, seed=9)
    d32, _ = run(J.float(), "fairgrad", alpha=2.0, **RAW)
    d64, _ = run(J, "fairgrad", alpha=2.0, **RAW)
    assert err(d32.double(), d64, J) < 1e-4


@pytest.mark.parametrize("kw,exc,msg", [
    ({"alpha": -1.0}, ValueError, "alpha must be finite and ≥ 0, got -1.0"),
    ({"alpha": math.nan}, ValueError, "alpha must be finite and ≥ 0, got nan"),
    ({"alpha": math.inf}, ValueError, "alpha must be finite and ≥ 0, got inf"),
    ({"max_norm": -1.0}, ValueError, "max_norm must be finite and ≥ 0, got -1.0"),
    ({"iterations": 0}, ValueError, "iterations must be None or an int ≥ 1, got 0"),
])
def test_fairgrad_errors(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        fastmtl.combine(torch.ones(2, 3), "fairgrad", **kw)
    assert FairGrad().head_weighting == "sum" and not FairGrad.stateful


# ------------------------------------------------------------------------------------------------
# PCD
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau,beta", [(0.02, 0.999), (0.3, 0.5), ("vector", 0.9), (0.0, 0.0)])
@pytest.mark.parametrize("K", [1, 2, 3, 5])
@pytest.mark.parametrize("family", ("gauss", "conflict", "scaled", "zero", "lowrank"))
def test_pcd_matches_the_primal_program_over_steps(family, K, tau, beta):
    if tau == "vector":
        tau = [0.05 * (j + 1) for j in range(K - 1)]
    Js = [make_jacobian(family, K, 41, seed=30 + t) * (1.0 + t) for t in range(4)]
    m = PCD(tau=tau, beta=beta)
    refs = L.pcd_literal(Js, tau, beta)
    for J, ref in zip(Js, refs):
        d, _ = run(J, m)
        assert err(d, ref, J) < 1e-7
        if float(ref.norm()) > 0:
            assert float(d.norm()) == pytest.approx(float(J[0].norm()), rel=1e-10)


def test_pcd_guarantees_each_secondary_its_progress():
    """KKT of the program on unit gradients (β = 0, eps = 0: the scales are this call's 1/‖g_i‖):
    ``d̃ = u_0 + Σ μ_j u_j``, ``μ ≥ 0``, ``u_jᵀd̃ ≥ τ`` with equality where ``μ_j > 0``."""
    tau = 0.2
    J = make_jacobian("conflict", 5, 41, seed=40)
    d, info = run(J, PCD(tau=tau, beta=0.0, eps=0.0))
    norms = J.norm(dim=1)
    lam = info.weights
    mu = lam * norms / (lam[0] * norms[0])              # w = [1, μ] in the normalised space
    d_tilde = d / (lam[0] * norms[0])
    slack = (J[1:] / norms[1:, None]) @ d_tilde - tau
    assert float(mu[0]) == pytest.approx(1.0, rel=1e-14)
    assert bool((mu[1:] >= 0).all()) and bool((slack >= -1e-10).all())
    assert float((mu[1:] * slack).abs().max()) < 1e-10
    assert bool((mu[1:] > 0).any())                      # this input does bind a constraint


def test_pcd_special_cases():
    g = make_jacobian("gauss", 3, 41, seed=41)
    a = g[1]
    infeasible = torch.stack([g[0], a, -a])  # two opposite secondaries: the constraints are dropped
    d, _ = run(infeasible, "pcd")
    torch.testing.assert_close(d, g[0], rtol=1e-12, atol=1e-14)
    free = torch.stack([g[0], g[0] + 0.1 * g[2]])  # no constraint binds: d = g_0
    d, _ = run(free, "pcd")
    torch.testing.assert_close(d, g[0], rtol=1e-12, atol=1e-14)
    m = PCD()
    zero_primary = torch.stack([torch.zeros(41, dtype=torch.float64), g[1], g[2]])
    d, info = run(zero_primary, m)
    assert torch.equal(info.weights, torch.zeros(3, dtype=torch.float64))
    assert int(m._steps) == 1 and m._sq_norm_ema[0] == 0  # the EMA advances all the same
    d, _ = run(g[:1], "pcd")  # K = 1: the primary gradient itself
    torch.testing.assert_close(d, g[0], rtol=1e-14, atol=0)


def test_pcd_is_scale_free_without_eps():
    Js = [make_jacobian("conflict", 4, 41, seed=50 + t) for t in range(3)]
    base = [run(J, m)[0] for m in [PCD(eps=0.0)] for J in Js]
    for c in SCALES:
        m = PCD(eps=0.0)
        for J, d1 in zip(Js, base):
            dc, _ = run(J * c, m)
            torch.testing.assert_close(dc / c, d1, rtol=1e-9, atol=1e-12 * float(d1.abs().max()))


def test_pcd_reset_and_other_number_of_tasks():
    m = PCD()
    J = make_jacobian("gauss", 3, 41, seed=60)
    d1, _ = run(J, m)
    run(J * 3, m)
    m.reset()
    d2, _ = run(J, m)
    torch.testing.assert_close(d1, d2, rtol=0, atol=0)
    with pytest.raises(ValueError, match="saw 3 tasks before, now 2"):
        fastmtl.combine(J[:2], m)
    fresh = PCD()
    fresh.load_state_dict(m.state_dict())  # a loaded state keeps its K too
    with pytest.raises(ValueError, match="3 tasks"):
        fastmtl.combine(J[:2], fresh)


@pytest.mark.parametrize("kw,K,exc,msg", [
    ({"tau": 1.5}, 3, ValueError, r"tau must be in \[0, 1\], got 1.5"),
    ({"tau": [0.1, -0.1]}, 3, ValueError, r"tau must be in \[0, 1\]"),
    ({"tau": [0.1]}, 3, ValueError, r"tau has 1 entries for K=3 tasks \(one per secondary task: K − 1\)"),
    ({"tau": [[0.1]]}, 3, ValueError, "tau must be a float or a 1-D sequence"),
    ({"tau": "x"}, 3, TypeError, "tau must be a float or a sequence of floats, got str"),
    ({"beta": 1.0}, 3, ValueError, r"beta must be in \[0, 1\), got 1.0"),
    ({"eps": -1.0}, 3, ValueError, "eps must be finite and ≥ 0, got -1.0"),
    ({"iterations": 0}, 3, ValueError, "iterations must be an int ≥ 1, got 0"),
])
def test_pcd_errors(kw, K, exc, msg):
    with pytest.raises(exc, match=msg):
        fastmtl.combine(torch.ones(K, 3), "pcd", **kw)


# ------------------------------------------------------------------------------------------------
# No host synchronisation: every new method traces as one graph
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("method,hyper", [("constant", {"weights": [1.0, -2.0, 0.5]}), ("krum", {}),
                                          ("trimmed_mean", {"trim_number": 1}),
                                          ("fairgrad", {"alpha": 2.0, "iterations": 6}),
                                          ("pcd", None), ("imtl", None)])
def test_traces_fullgraph(method, hyper):
    """``torch.compile(fullgraph=True)`` of a combine call: one graph (no ``.item()``, no data-dependent
    branch), the eager result, no recompilation once warm (a state that specialised the graph on
    the step count would recompile every call), and for the stateful methods the same state."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from fastmtl.methods import IMTL

    torch._dynamo.reset()
    # Few solver iterations: the graph's size, not the answer's accuracy, is what is compiled here.
    make = {"pcd": lambda: PCD(iterations=6), "imtl": lambda: IMTL(num_tasks=3, lr=0.1)}.get(method)
    ours, ref = (make(), make()) if make else (method, method)
    hp = hyper or {}

    def step(J, losses, m):
        return fastmtl.combine(J, method=m, losses=losses, backend="reference", **hp)

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, backend=counter)
    losses = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    frames = []
    for seed in range(5):
        J = make_jacobian("conflict", 3, 64, seed=seed)
        torch.testing.assert_close(compiled(J, losses, ours), step(J, losses, ref), rtol=1e-10, atol=1e-12)
        frames.append(counter.frame_count)
    # One graph per compilation; the first calls may recompile once each (lazy state, the backend
    # registry's cached probe), later ones never.
    assert frames[0] == 1 and frames[2] == frames[-1] and counter.op_count > 0, frames
    if make:
        for k, v in ref.state_dict().items():
            if isinstance(v, torch.Tensor):
                torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-12, atol=1e-14)
            else:
                assert ours.state_dict()[k] == v, k
