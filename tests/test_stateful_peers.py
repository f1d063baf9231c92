"""The stateful methods TorchJD 0.18 also has, against TorchJD on seeded inputs over several steps:
MoDo, SDMGrad, CR-MOGM and ExcessMTL (the documented scale factor where the scales differ)."""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl.methods import CRMOGM, ExcessMTL, MoDo, SDMGrad

from _families import make_jacobian

agg = pytest.importorskip("torchjd.aggregation")

STEPS = 8


def _steps(K, family="conflict"):
    return [make_jacobian(family, K, 40, seed=11 * t + 1) for t in range(STEPS)]


def _agree(ours: torch.Tensor, theirs: torch.Tensor, J: torch.Tensor, scale: float = 1.0):
    """λ within 1e-6, and the directions: cosine ≥ 0.9999, norm ratio within 1e-4 of ``scale``."""
    torch.testing.assert_close(ours, scale * theirs, rtol=1e-6, atol=1e-9)
    d, e = J.T @ ours, J.T @ theirs
    cos = float(d @ e / (d.norm() * e.norm()))
    assert cos >= 0.9999 and abs(float(d.norm() / e.norm()) - scale) <= 1e-4 * scale


@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("family", ["conflict", "scaled"])
def test_modo_and_sdmgrad_equal_torchjd_weightings(K, family):
    for ours, theirs in ((MoDo(), agg.MoDoWeighting(gamma=0.1, rho=0.1)), (SDMGrad(), agg.SDMGradWeighting())):
        for J in _steps(K, family):
            lam = fastmtl.combine(J, ours, return_info=True)[1].weights
            _agree(lam, theirs(J @ J.T), J)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_cr_mogm_equals_torchjd_over_upgrad(K):
    ours = CRMOGM(base="upgrad", alpha=0.8)
    theirs = agg.CRMOGMWeighting(agg.UPGradWeighting(), alpha=0.8)
    for J in _steps(K):
        lam = fastmtl.combine(J, ours, return_info=True)[1].weights
        _agree(lam, theirs(J @ J.T), J)


@pytest.mark.parametrize("K", [2, 3, 5])
def test_excess_mtl_is_torchjd_with_one_warmup_step_times_k(K):
    """TorchJD starts at 1/K and, by default, steps on its first call; with ``n_warmup_steps=1``
    it takes the official first-call baseline, and its weights are fastmtl's divided by K (it
    adds 1e-7 to the baseline, fastmtl guards a zero baseline instead)."""
    ours = ExcessMTL(robust_step_size=0.5)
    theirs = agg.ExcessMTLWeighting(robust_step_size=0.5, n_warmup_steps=1)
    for J in _steps(K, "scaled"):
        lam = fastmtl.combine(J, ours, return_info=True)[1].weights
        _agree(lam, theirs(J), J, scale=float(K))
    assert not torch.allclose(lam, torch.ones(K, dtype=torch.float64))  # the weights did move
