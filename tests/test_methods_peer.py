"""Constant, Krum, trimmed mean and IMTL (the methods TorchJD and LibMTL users look for by name).

Each is checked against its literal oracle of :mod:`fastmtl.reference.literal` beyond the one call
of the catalogue (options, several steps), on the edge cases (K = 1, zero rows, rank-deficient
Grams, scales 1e-10…1e10 in float64), and for clear errors on bad hyper-parameters. FairGrad and
PCD: ``test_methods_peer_solved.py``. Error measure as in ``test_methods_more.py``.
"""

from __future__ import annotations

import math

import pytest
import torch

import fastmtl
from fastmtl.methods import IMTL, IMTLG, Constant, Krum, TrimmedMean
from fastmtl.reference import literal as L

from _families import FAMILIES, make_jacobian, split_params

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SCALES = (1e-10, 1e-5, 1.0, 1e5, 1e10)



def err(d: torch.Tensor, ref: torch.Tensor, J: torch.Tensor) -> float:
    rms = J.pow(2).sum(1).mean().sqrt()
    floor = float(1e-3 * rms) if float(rms) > 0 else 1e-300
    return float((d - ref).norm() / max(float(ref.norm()), floor))


def run(J, method, **kw):
    d, info = fastmtl.combine(J, method=method, return_info=True, **kw)
    assert torch.isfinite(d).all()
    return d, info


# ------------------------------------------------------------------------------------------------
# Constant
# ------------------------------------------------------------------------------------------------

def test_constant_uses_the_weights_as_given():
    J = make_jacobian("conflict", 3, 40, seed=1)
    w = [0.5, -2.0, 3.25]
    d, info = run(J, "constant", weights=w)
    assert torch.equal(info.weights, torch.tensor(w, dtype=torch.float64))
    torch.testing.assert_close(d, J.T @ torch.tensor(w, dtype=torch.float64), rtol=1e-15, atol=1e-15)
    d2 = fastmtl.combine(J, Constant(torch.tensor(w)))  # a tensor works too
    torch.testing.assert_close(d2, d, rtol=0, atol=0)
    assert Constant(w).task_weights == tuple(w)
    d1 = fastmtl.combine(J, "constant")                  # default: every weight 1
    torch.testing.assert_close(d1, J.sum(0), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("bad,exc,msg", [
    ([1.0, float("nan")], ValueError, "weights must be finite"),
    ([[1.0, 2.0]], TypeError, "sequence of numbers"),
    (torch.ones(2, 2), ValueError, r"non-empty 1-D sequence, got shape \(2, 2\)"),
    ([], ValueError, "non-empty 1-D"),
    ("ab", TypeError, "sequence of numbers"),
    ([1.0, "x"], TypeError, "sequence of numbers"),
])
def test_constant_bad_weights(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        fastmtl.combine(torch.ones(2, 3), "constant", weights=bad)


def test_constant_wrong_number_of_tasks():
    with pytest.raises(ValueError, match="weights has 3 entries for K=2 tasks"):
        fastmtl.combine(torch.ones(2, 3), "constant", weights=[1.0, 2.0, 3.0])


# ------------------------------------------------------------------------------------------------
# Krum
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("K,f,m", [(3, 0, 1), (5, 1, 1), (5, 2, 3), (8, 2, 2), (8, 5, 1), (8, 0, 8)])
@pytest.mark.parametrize("family", FAMILIES)
def test_krum_matches_literal(family, K, f, m, squared):
    J = make_jacobian(family, K, 57, seed=K + f)
    d, info = run(J, "krum", n_byzantine=f, n_selected=m, squared=squared)
    assert err(d, L.krum_literal(J, f, m, squared=squared), J) < 1e-12
    lam = info.weights
    assert int((lam > 0).sum()) == m and float(lam.sum()) == pytest.approx(1.0, abs=1e-15)


def test_krum_rejects_the_outliers():
    g = torch.Generator().manual_seed(0)
    honest = torch.randn(1, 30, generator=g, dtype=torch.float64) + 0.01 * torch.randn(5, 30, generator=g,
                                                                                        dtype=torch.float64)
    byzantine = 100.0 * torch.randn(2, 30, generator=g, dtype=torch.float64)
    J = torch.cat([byzantine[:1], honest, byzantine[1:]])
    _, info = run(J, "krum", n_byzantine=2, n_selected=3)
    assert info.weights[0] == 0 and info.weights[-1] == 0
    for s in SCALES:  # the selection is scale-free
        _, i_s = run(J * s, "krum", n_byzantine=2, n_selected=3)
        assert torch.equal(i_s.weights, info.weights), s


def test_krum_edge_cases():
    J = make_jacobian("gauss", 4, 20, seed=2)
    dup = torch.stack([J[0], J[0], J[1], J[2]])  # a duplicated gradient: a tie goes to the lower index
    _, info = run(dup, "krum")
    assert info.weights.tolist() == [1.0, 0.0, 0.0, 0.0]
    low = make_jacobian("lowrank", 6, 20, seed=2)  # rank 3: distances from a rank-deficient Gram
    d, _ = run(low, "krum", n_byzantine=1, n_selected=2)
    assert err(d, L.krum_literal(low, 1, 2), low) < 1e-10
    z = make_jacobian("zero", 5, 20, seed=2)
    d, _ = run(z, "krum", n_byzantine=1)
    assert err(d, L.krum_literal(z, 1), z) < 1e-12
    d32, _ = run(J.float(), "krum")          # float32 Gram: the same choice on a generic input
    assert err(d32.double(), L.krum_literal(J), J) < 1e-6


@pytest.mark.parametrize("kw,K,exc,msg", [
    ({}, 2, ValueError, r"krum with n_byzantine=0 needs at least n_byzantine \+ 3 = 3 task gradients, got K=2"),
    ({}, 1, ValueError, "got K=1"),
    ({"n_byzantine": 2}, 4, ValueError, "= 5 task gradients, got K=4"),
    ({"n_selected": 5}, 4, ValueError, "n_selected=5 needs at least that many task gradients, got K=4"),
    ({"n_byzantine": -1}, 4, ValueError, "n_byzantine must be ≥ 0, got -1"),
    ({"n_selected": 0}, 4, ValueError, "n_selected must be ≥ 1, got 0"),
    ({"n_byzantine": 1.5}, 4, TypeError, "n_byzantine must be an int, got float"),
    ({"n_selected": True}, 4, TypeError, "n_selected must be an int, got bool"),
])
def test_krum_errors(kw, K, exc, msg):
    with pytest.raises(exc, match=msg):
        fastmtl.combine(torch.ones(K, 3), "krum", **kw)


def test_krum_direct_class():
    m = Krum(n_byzantine=1, n_selected=2, squared=True)
    assert (m.n_byzantine, m.n_selected, m.squared) == (1, 2, True) and m.head_weighting == "sum"
    assert m.min_tasks == 4 and Krum(n_selected=7).min_tasks == 7


# ------------------------------------------------------------------------------------------------
# Trimmed mean
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K,t", [(1, 0), (2, 0), (3, 1), (5, 1), (5, 2), (8, 3)])
@pytest.mark.parametrize("family", FAMILIES)
def test_trimmed_mean_matches_literal(family, K, t):
    J = make_jacobian(family, K, 53, seed=K)
    d, info = run(J, "trimmed_mean", trim_number=t)
    assert info.weights is None and info.backend == "reference"
    torch.testing.assert_close(d, L.trimmed_mean_literal(J, t), rtol=1e-13, atol=1e-15)


def test_trimmed_mean_per_parameter_layout_and_out():
    K, sizes = 5, [(3, 4), (7,), (2, 2, 2)]
    J = make_jacobian("conflict", K, 27, seed=4)
    J[2, 12:19] = 0  # task 2 does not touch parameter 1: given as None, counted as zeros
    grads = split_params(J, sizes, drop={(2, 1)})
    out = [torch.full(s, 7.0, dtype=torch.float64) for s in sizes]
    d = fastmtl.combine(grads, "trimmed_mean", trim_number=2, out=out)
    assert all(a is b for a, b in zip(d, out))
    flat = torch.cat([x.reshape(-1) for x in d])
    torch.testing.assert_close(flat, L.trimmed_mean_literal(J, 2), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_trimmed_mean_low_precision(dtype):
    J = make_jacobian("gauss", 6, 301, seed=5).to(dtype)
    d = fastmtl.combine(J, "trimmed_mean", trim_number=2)
    assert d.dtype == dtype
    ref = L.trimmed_mean_literal(J.double(), 2)  # the values given, averaged exactly
    torch.testing.assert_close(d.double(), ref, rtol=0, atol=float(torch.finfo(dtype).eps) * 4)


def test_trimmed_mean_outliers_do_not_cancel_the_kept_values():
    J = make_jacobian("gauss", 7, 50, seed=6).float()
    J[0] = 3e37
    J[6, ::2] = -3e37
    J[6, 1::2] = float("inf")
    d = fastmtl.combine(J, "trimmed_mean", trim_number=2)
    ref = L.trimmed_mean_literal(J.double(), 2)
    torch.testing.assert_close(d.double(), ref, rtol=1e-6, atol=1e-7)  # float32: rounding of the kept sum only


def test_trimmed_mean_nan_poisons_only_its_coordinate():
    J = make_jacobian("gauss", 5, 20, seed=7)
    J[3, 4] = float("nan")
    d = fastmtl.combine(J, "trimmed_mean", trim_number=2)
    assert torch.isnan(d).nonzero().flatten().tolist() == [4]
    torch.testing.assert_close(d, L.trimmed_mean_literal(J, 2), equal_nan=True, rtol=1e-13, atol=1e-15)


def test_trimmed_mean_scales():
    J = make_jacobian("conflict", 5, 30, seed=8)
    d1 = fastmtl.combine(J, "trimmed_mean", trim_number=1)
    for s in SCALES:
        ds = fastmtl.combine(J * s, "trimmed_mean", trim_number=1)
        torch.testing.assert_close(ds / s, d1, rtol=1e-13, atol=0)


@pytest.mark.parametrize("kw,K,exc,msg", [
    ({"trim_number": 1}, 2, ValueError, r"trimmed_mean with trim_number=1 needs at least 2·trim_number \+ 1 = 3 task "
                                        "gradients, got K=2"),
    ({"trim_number": -1}, 3, ValueError, "trim_number must be ≥ 0, got -1"),
    ({"trim_number": 1.0}, 3, TypeError, "trim_number must be an int, got float"),
])
def test_trimmed_mean_errors(kw, K, exc, msg):
    out = torch.full((3,), 7.0)
    with pytest.raises(exc, match=msg):
        fastmtl.combine(torch.ones(K, 3), "trimmed_mean", out=out, **kw)
    assert torch.equal(out, torch.full((3,), 7.0))


def test_trimmed_mean_declares_elementwise():
    assert TrimmedMean.shard_local and TrimmedMean().head_weighting == "sum"
    assert TrimmedMean(2).min_tasks == 5


# ------------------------------------------------------------------------------------------------
# IMTL (IMTL-G with IMTL-L's loss scales)
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("K", [1, 2, 3, 5])
@pytest.mark.parametrize("family", ("gauss", "conflict", "scaled", "lowrank", "zero"))
def test_imtl_at_zero_scales_is_imtl_g(family, K):
    J = make_jacobian(family, K, 61, seed=9)
    _, i1 = run(J, "imtl")
    _, i2 = run(J, "imtl_g")
    torch.testing.assert_close(i1.weights, i2.weights, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_imtl_with_learned_scales_matches_literal(K):
    """Five steps with the built-in SGD step on s: directions and scales as the literal IMTL."""
    Js = [make_jacobian("conflict", K, 61, seed=20 + t) for t in range(5)]
    g = torch.Generator().manual_seed(K)
    ls = [0.2 + 3.0 * torch.rand(K, generator=g, dtype=torch.float64) for _ in Js]
    m = IMTL(lr=0.3)
    refs, s_ref = L.imtl_literal(Js, ls, lr=0.3)
    for J, l, ref in zip(Js, ls, refs):
        d, info = run(J, m, losses=l)
        assert err(d, ref, J) < 1e-10
    torch.testing.assert_close(m.s.detach(), torch.tensor(s_ref, dtype=torch.float64), rtol=1e-13, atol=1e-14)


def test_imtl_weights_are_alpha_times_scales():
    J = make_jacobian("gauss", 3, 61, seed=10)
    m = IMTL(num_tasks=3)
    with torch.no_grad():
        m.s.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    d, info = run(J, m)
    e = torch.exp(m.s.detach())
    alpha = IMTLG().weights(J @ J.T * (e[:, None] * e[None, :]), fastmtl.methods.Context(3, J.device))
    torch.testing.assert_close(info.weights, alpha * e, rtol=1e-12, atol=1e-14)
    unit = J / J.norm(dim=1, keepdim=True)   # IMTL-G: equal projections on every unit gradient
    proj = unit @ d
    assert float(proj.max() - proj.min()) < 1e-10 * float(proj.abs().max())


def test_imtl_loss_term_trains_the_scales_to_the_paper_fixed_point():
    m = IMTL(num_tasks=2)
    assert m.parameters() == [m.s]
    opt = torch.optim.SGD(m.parameters(), lr=0.2)
    losses = torch.tensor([0.5, 4.0], dtype=torch.float64)
    term = m.loss_term(losses)
    term.backward()
    torch.testing.assert_close(m.s.grad, torch.exp(m.s.detach()) * losses - 1.0)  # ∂/∂s (e^s ℓ − s)
    for _ in range(300):
        opt.zero_grad()
        m.loss_term(losses).backward()
        opt.step()
    torch.testing.assert_close(m.s.detach(), -torch.log(losses), rtol=1e-6, atol=1e-6)  # e^s ℓ = 1


def test_imtl_in_backward_gives_heads_their_plain_gradients():
    torch.manual_seed(0)
    trunk = torch.nn.Linear(3, 4)
    heads = torch.nn.ModuleList(torch.nn.Linear(4, 1) for _ in range(2))
    x = torch.randn(5, 3)
    h = trunk(x)
    losses = [heads[k](h).pow(2).mean() * (k + 1) for k in range(2)]
    m = IMTL(num_tasks=2)
    fastmtl.backward(losses, trunk, m, head_params=heads)
    for k in range(2):
        ref = torch.autograd.grad(heads[k](trunk(x)).pow(2).mean() * (k + 1), heads[k].weight)[0]
        torch.testing.assert_close(heads[k].weight.grad, ref)


def test_imtl_scales_and_edge_cases():
    J = make_jacobian("conflict", 4, 50, seed=11)
    _, i1 = run(J, "imtl")
    for s in SCALES:
        _, i_s = run(J * s, "imtl")
        torch.testing.assert_close(i_s.weights, i1.weights, rtol=1e-9, atol=1e-12)
    d, _ = run(J[:1], "imtl")
    torch.testing.assert_close(d, J[0], rtol=1e-14, atol=0)
    d, info = run(torch.zeros(3, 10, dtype=torch.float64), "imtl")
    assert torch.equal(d, torch.zeros(10, dtype=torch.float64))


@pytest.mark.parametrize("kw,exc,msg", [
    ({"lr": 0.1}, ValueError, r"imtl with lr= updates s from the task losses: combine\(..., losses=...\)"),
    ({"lr": -0.1}, ValueError, "lr must be finite and > 0, got -0.1"),
    ({"init": math.inf}, ValueError, "init must be finite, got inf"),
    ({"num_tasks": 0}, ValueError, "num_tasks must be None or an int ≥ 1, got 0"),
])
def test_imtl_errors(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        fastmtl.combine(torch.ones(2, 3), "imtl", **kw)


def test_imtl_other_number_of_tasks():
    m = IMTL(num_tasks=3)
    with pytest.raises(ValueError, match="holds state for 3 tasks but was called with K=2"):
        fastmtl.combine(torch.ones(2, 3), m)
    with pytest.raises(RuntimeError, match="does not exist yet"):
        IMTL().loss_term([1.0, 2.0])
