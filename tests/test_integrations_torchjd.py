"""fastmtl.integrations.torchjd: fastmtl methods inside TorchJD 0.18's autojac, and TorchJD weightings
inside fastmtl, compared with TorchJD's own aggregators on seeded inputs."""

from __future__ import annotations

import pytest
import torch

import fastmtl

A = pytest.importorskip("torchjd.aggregation")
autojac = pytest.importorskip("torchjd.autojac")
from torchjd import Stateful  # noqa: E402

from fastmtl.integrations import torchjd as tj  # noqa: E402


def jacobian(K, D=57, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(K, D, generator=g, dtype=torch.float64)
    J[1] -= 1.5 * J[0]                                    # a conflicting pair
    J *= torch.logspace(-1, 1, K, dtype=torch.float64)[:, None]
    return J.to(dtype)


def rel(a, b):
    return float((a - b).norm() / b.norm())


# fastmtl name, hyper-parameters, TorchJD aggregator, factor: fastmtl's direction = factor(K) × TorchJD's
SAME_DIRECTION = [
    ("upgrad", {}, lambda: A.UPGrad(), lambda K: 1, 1e-9),
    ("dualproj", {}, lambda: A.DualProj(), lambda K: 1, 1e-9),
    ("imtl_g", {}, lambda: A.IMTLG(), lambda K: 1, 1e-10),
    ("aligned_mtl", {}, lambda: A.AlignedMTL(), lambda K: K, 1e-10),
    ("mean", {}, lambda: A.Mean(), lambda K: 1, 1e-14),
    ("sum", {}, lambda: A.Sum(), lambda K: 1, 1e-14),
    ("config", {}, lambda: A.ConFIG(), lambda K: 1, 1e-10),
    # TorchJD's CAGrad is the official d = g0 + c‖g0‖/‖gw‖·gw without rescaling; its conic solver
    # stops at about 1e-4.
    ("cagrad", dict(c=0.5, rescale=0, multiply_by_k=False), lambda: A.CAGrad(c=0.5), lambda K: 1, 1e-3),
]


@pytest.mark.parametrize("name,hp,make_peer,factor,tol", SAME_DIRECTION, ids=[c[0] for c in SAME_DIRECTION])
@pytest.mark.parametrize("K", [2, 3, 5])
def test_aggregator_matches_torchjd(name, hp, make_peer, factor, tol, K):
    J = jacobian(K, seed=K)
    ours = tj.aggregator(name, **hp)(J)
    peer = make_peer()(J)
    assert rel(ours, factor(K) * peer) < tol
    assert isinstance(tj.aggregator(name, **hp), A.GramianWeightedAggregator)


@pytest.mark.parametrize("name,hp,peer", [("pcgrad", {"eps": 0.0}, lambda: A.PCGrad()),
                                          ("gradvac", {}, lambda: A.GradVac()), ("mgda", {}, lambda: A.MGDA())])
def test_aggregator_matches_torchjd_two_tasks(name, hp, peer):
    # With two tasks the random visiting orders of PCGrad / GradVac coincide, and TorchJD's
    # Frank-Wolfe MGDA reaches the exact minimum-norm point in one line search. (TorchJD's PCGrad
    # divides by ‖g_j‖² without the official 1e-8.)
    J = jacobian(2, seed=3)
    assert rel(tj.aggregator(name, **hp)(J), peer()(J)) < 1e-10


def test_mgda_no_worse_than_torchjd_frank_wolfe():
    # K ≥ 3: TorchJD stops Frank-Wolfe at ε = 1e-3, fastmtl solves exactly; both minimise ‖Σ λ_k g_k‖
    # over the simplex, so fastmtl's direction is the shorter one and satisfies the optimality
    # conditions (G λ)_k ≥ λᵀGλ for every k.
    for seed in range(3):
        J = jacobian(5, seed=seed)
        w = tj.aggregator("mgda")
        ours, peer = w(J), A.MGDA()(J)
        assert float(ours.norm()) <= float(peer.norm()) * (1 + 1e-9)
        lam = w.gramian_weighting(J @ J.T)
        assert abs(float(lam.sum()) - 1) < 1e-12 and float(lam.min()) >= 0
        Glam = (J @ J.T) @ lam
        assert float((Glam - lam @ Glam).min()) > -1e-9 * float(Glam.abs().max())


def test_weighting_matches_torchjd_weighting():
    J = jacobian(4, seed=1)
    G = J @ J.T
    torch.testing.assert_close(tj.weighting("upgrad")(G), A.UPGradWeighting()(G), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(tj.weighting("imtl_g")(G), A.IMTLGWeighting()(G), rtol=1e-9, atol=1e-12)
    w = tj.weighting("mean")(G.float())
    assert w.dtype == torch.float32 and torch.equal(w, torch.full((4,), 0.25))


def _two_layer(seed=0):
    torch.manual_seed(seed)
    trunk = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 6))
    heads = torch.nn.ModuleList([torch.nn.Linear(6, 1) for _ in range(3)])
    x = torch.randn(16, 5)
    y = torch.randn(16, 3)
    return trunk, heads, x, y


def _losses(trunk, heads, x, y):
    h = trunk(x)
    return [torch.nn.functional.mse_loss(head(h).squeeze(-1), y[:, k]) for k, head in enumerate(heads)]


@pytest.mark.parametrize("optimize_gramian", [False, True])
def test_jac_to_grad_with_fastmtl_aggregator(optimize_gramian):
    trunk, heads, x, y = _two_layer()
    params = list(trunk.parameters())

    autojac.backward(_losses(trunk, heads, x, y), inputs=params)
    peer_w = autojac.jac_to_grad(params, A.UPGrad(), optimize_gramian_computation=optimize_gramian)
    peer = [p.grad.clone() for p in params]
    trunk.zero_grad(set_to_none=True)

    autojac.backward(_losses(trunk, heads, x, y), inputs=params)
    ours_w = autojac.jac_to_grad(params, tj.aggregator("upgrad"), optimize_gramian_computation=optimize_gramian)
    assert ours_w is not None and ours_w.shape == (3,)
    torch.testing.assert_close(ours_w, peer_w, rtol=1e-4, atol=1e-6)
    for a, b in zip(params, peer):
        assert a.grad.dtype == b.dtype
        torch.testing.assert_close(a.grad, b, rtol=1e-4, atol=1e-6)

    # The same step through fastmtl itself.
    grads = [torch.autograd.grad(l, params, retain_graph=True) for l in _losses(trunk, heads, x, y)]
    d, info = fastmtl.combine(grads, method="upgrad", return_info=True)
    torch.testing.assert_close(ours_w, info.weights.float(), rtol=1e-5, atol=1e-7)
    for a, b in zip(params, d):
        torch.testing.assert_close(a.grad, b, rtol=1e-5, atol=1e-7)


def test_mtl_backward_with_fastmtl_aggregator_equals_fastmtl_backward():
    trunk, heads, x, y = _two_layer(seed=1)
    shared = list(trunk.parameters())
    h = trunk(x)
    losses = [torch.nn.functional.mse_loss(head(h).squeeze(-1), y[:, k]) for k, head in enumerate(heads)]
    autojac.mtl_backward(losses, features=h, tasks_params=[list(hd.parameters()) for hd in heads],
                         shared_params=shared)
    autojac.jac_to_grad(shared, tj.aggregator("dualproj"))
    via_torchjd = [p.grad.clone() for p in (*shared, *heads.parameters())]

    trunk.zero_grad(set_to_none=True)
    heads.zero_grad(set_to_none=True)
    fastmtl.backward(_losses(trunk, heads, x, y), shared, "dualproj", head_params=heads)
    via_fastmtl = [p.grad for p in (*shared, *heads.parameters())]
    for a, b in zip(via_torchjd, via_fastmtl):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_gram_free_methods_run_on_the_jacobian():
    J = jacobian(3, seed=2).float()
    agg = tj.aggregator("graddrop", generator=torch.Generator().manual_seed(5))
    assert isinstance(agg, tj.FastMTLCombineAggregator)
    expected = fastmtl.combine(J, method="graddrop", generator=torch.Generator().manual_seed(5))
    assert torch.equal(agg(J), expected)
    with pytest.raises(TypeError, match="not a weighting"):
        tj.weighting("graddrop")


def test_stateful_methods_are_torchjd_stateful_and_reset():
    J1, J2 = jacobian(3, seed=4), jacobian(3, seed=5)
    agg = tj.aggregator("nash_mtl")
    assert isinstance(agg, Stateful) and not isinstance(tj.aggregator("upgrad"), Stateful)
    first = agg(J1)
    agg(J2)
    agg.reset()
    assert torch.equal(agg(J1), first)
    with pytest.raises(ValueError, match="saw 3 tasks before, now 2"):
        agg(J1[:2])
    agg.reset()
    agg(J1[:2])

    # An instance passed in is the one that runs (its state is the user's).
    m = fastmtl.methods.GradVac()
    agg = tj.aggregator(m, generator=torch.Generator().manual_seed(0))
    assert agg.method is m and m.state_dict()["phi"] is None
    agg(J1)
    assert m.state_dict()["phi"].shape[-2:] == (3, 3)


def test_loss_reading_methods_take_losses_from_set_losses():
    J = jacobian(3, seed=6)
    losses = torch.tensor([1.0, 2.0, 4.0])
    agg = tj.aggregator("mgda", normalization="loss")
    with pytest.raises(ValueError):
        agg(J)                                           # no losses given
    agg.set_losses(losses)
    expected = fastmtl.combine(J, method="mgda", normalization="loss", losses=losses)
    torch.testing.assert_close(agg(J), expected, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="2 losses but the Jacobian has 3 rows"):
        agg.set_losses(losses[:2])
        agg(J)


def test_non_finite_jacobian_gives_nan_not_a_plausible_direction():
    J = jacobian(3, seed=7)
    J[0, 3] = float("nan")
    assert torch.isnan(tj.aggregator("upgrad")(J)).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown method"):
        tj.aggregator("upgrd")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        tj.aggregator("pcgrad", generator=0)
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="reference gradient"):
        tj.aggregator("hydalearn", reference=[torch.zeros(3)])
    with pytest.raises(ValueError, match="square"):
        tj.weighting("upgrad")(torch.zeros(2, 3))


# ------------------------------------------------------------------------------------------------
# The reverse: TorchJD weightings as fastmtl methods
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make,peer", [
    (lambda: A.UPGradWeighting(), lambda: A.UPGrad()),
    (lambda: A.KrumWeighting(n_byzantine=1, n_selected=2), lambda: A.Krum(n_byzantine=1, n_selected=2)),
    (lambda: A.FairGradWeighting(alpha=1.0), lambda: A.FairGrad(alpha=1.0)),
    (lambda: A.IMTLGWeighting(), lambda: A.IMTLG()),
])
def test_torchjd_weighting_as_fastmtl_method(make, peer):
    J = jacobian(5, seed=8)
    m = tj.from_weighting(make())
    d, info = fastmtl.combine(J, method=m, return_info=True)
    assert info.weights.dtype == torch.float64
    assert rel(d, peer()(J)) < 1e-8
    # Per-parameter gradients, read in place.
    parts = [[row[:20].reshape(4, 5), row[20:]] for row in J]
    d_parts = fastmtl.combine(parts, method=m)
    assert rel(torch.cat([d_parts[0].reshape(-1), d_parts[1]]), d) < 1e-12


def test_torchjd_weighting_accepts_a_gramian_aggregator():
    J = jacobian(3, seed=9)
    assert rel(fastmtl.combine(J, method=tj.from_weighting(A.DualProj())), A.DualProj()(J)) < 1e-9


def test_torchjd_weighting_in_fastmtl_backward_matches_mtl_backward():
    trunk, heads, x, y = _two_layer(seed=2)
    shared = list(trunk.parameters())
    h = trunk(x)
    losses = [torch.nn.functional.mse_loss(head(h).squeeze(-1), y[:, k]) for k, head in enumerate(heads)]
    autojac.mtl_backward(losses, features=h, tasks_params=[list(hd.parameters()) for hd in heads],
                         shared_params=shared)
    autojac.jac_to_grad(shared, A.UPGrad())
    expected = [p.grad.clone() for p in (*shared, *heads.parameters())]
    trunk.zero_grad(set_to_none=True)
    heads.zero_grad(set_to_none=True)
    fastmtl.backward(_losses(trunk, heads, x, y), shared, tj.from_weighting(A.UPGradWeighting()), head_params=heads)
    for a, b in zip(expected, [p.grad for p in (*shared, *heads.parameters())]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_stateful_torchjd_weighting():
    J = jacobian(2, seed=10)
    m = tj.from_weighting(A.GradVacWeighting())
    peer = A.GradVac()
    assert m.stateful
    for _ in range(3):                                   # the EMA targets evolve the same way
        assert rel(fastmtl.combine(J, method=m), peer(J)) < 1e-8
        J = J + 0.3 * jacobian(2, seed=11)
    with pytest.raises(ValueError, match="saw 2 tasks before, now 3"):
        fastmtl.combine(jacobian(3), method=m)
    with pytest.raises(NotImplementedError, match="checkpoint method.weighting"):
        m.state_dict()
    m.reset()
    fastmtl.combine(jacobian(3), method=m)
    stateless = tj.from_weighting(A.UPGradWeighting())
    assert not stateless.stateful and stateless.state_dict()["_method"] == "torchjd"


def test_matrix_weightings_are_rejected():
    for w in (A.MeanWeighting(), A.RandomWeighting(), A.MoDoWeighting()):
        with pytest.raises(TypeError, match="weights the Jacobian matrix itself"):
            tj.from_weighting(w)
    with pytest.raises(TypeError, match="must be a TorchJD Weighting"):
        tj.from_weighting(A.Mean())
    with pytest.raises(TypeError, match="must be a TorchJD Weighting"):
        tj.from_weighting("upgrad")
    # A wrapper declares nothing itself: its wrapped weighting decides.
    m = tj.from_weighting(A.CRMOGMWeighting(A.UPGradWeighting(), alpha=0.0))
    J = jacobian(3, seed=12)
    assert rel(fastmtl.combine(J, method=m), A.UPGrad()(J)) < 1e-9
    with pytest.raises(TypeError, match="weights the Jacobian matrix itself"):
        tj.from_weighting(A.CRMOGMWeighting(A.MeanWeighting()))
