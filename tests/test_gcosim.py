"""GCosSim (Du et al. 2018, unweighted; the SLGrad repository's baseline) against its literal oracle."""

import pytest
import torch

import fastmtl
from fastmtl.reference.literal import gcosim_literal


@pytest.mark.parametrize("K,main", [(2, 0), (4, 0), (5, 2)])
def test_gcosim_matches_literal(K, main):
    g = torch.Generator().manual_seed(K * 10 + main)
    for _ in range(5):
        J = torch.randn(K, 37, generator=g, dtype=torch.float64)
        got = fastmtl.combine(J, "gcosim", main_task=main)
        assert torch.allclose(got.to(torch.float64), gcosim_literal(J, main_task=main), atol=1e-10)


def test_gcosim_gates_conflicting_auxiliaries():
    main = torch.tensor([1.0, 0.0, 0.0])
    helpful = torch.tensor([1.0, 1.0, 0.0])    # cos > 0: kept
    conflicting = torch.tensor([-1.0, 0.0, 2.0])  # cos < 0: dropped
    orthogonal = torch.tensor([0.0, 0.0, 3.0])  # cos = 0: kept (≥ 0, as the SLGrad code)
    J = torch.stack([main, helpful, conflicting, orthogonal]).double()
    d = fastmtl.combine(J, "gcosim")
    assert torch.allclose(d, (main + helpful + orthogonal).double())
    info = fastmtl.combine(J, "gcosim", return_info=True)[1]
    assert info.weights.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_gcosim_bad_main_task():
    with pytest.raises(ValueError):
        fastmtl.methods.make_method("gcosim", {"main_task": -1})
    with pytest.raises(ValueError):
        fastmtl.combine(torch.randn(2, 3), "gcosim", main_task=5)
