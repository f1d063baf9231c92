"""Input canonicalisation and validation: every accepted form, and clear errors for bad input."""

import pytest
import torch

import fastmtl
from fastmtl.gradients import canonicalize


def test_matrix_layout_keeps_views():
    J = torch.randn(3, 10)
    tg = canonicalize(J)
    assert tg.layout == "matrix" and tg.num_tasks == 3 and tg.numels == (10,)
    assert tg.entries[1][0].data_ptr() == J[1].data_ptr()  # a view, not a copy


def test_vectors_and_params_layouts():
    vs = [torch.randn(7) for _ in range(4)]
    tg = canonicalize(vs)
    assert tg.layout == "vectors" and tg.num_tasks == 4
    params = [[torch.randn(2, 3), None], [torch.randn(2, 3), torch.randn(5)]]
    tg = canonicalize(params)
    assert tg.layout == "params" and tg.shapes == (torch.Size([2, 3]), torch.Size([5]))
    assert tg.present(1) == [1]


@pytest.mark.parametrize("grads, exc, words", [
    (torch.randn(0, 5), ValueError, "K = 0"),
    ([], ValueError, "K = 0"),
    (torch.randn(5), ValueError, "2-D"),
    ([torch.randn(3), torch.randn(4)], ValueError, "task 1"),
    ([[torch.randn(3)], [torch.randn(3), torch.randn(2)]], ValueError, "task 1: has 2 parameter"),
    ([[torch.randn(3)], [torch.randn(4)]], ValueError, "task 1, parameter 0"),
    ([torch.randn(3), torch.randn(3, dtype=torch.float64)], TypeError, "dtype"),
    ([torch.ones(3, dtype=torch.int64)], TypeError, "dtype torch.int64"),
    ([torch.ones(3, dtype=torch.complex64)], TypeError, "complex64"),
    ([torch.randn(3, requires_grad=True)], ValueError, "requires grad"),
    ([torch.randn(3).to_sparse()], TypeError, "sparse"),
    ([[None], [None]], ValueError, "every task gradient is None"),
    ("abc", TypeError, "grads must be"),
    ([[torch.randn(2), 3.0]], TypeError, "task 0, parameter 1"),
])
def test_bad_input_errors(grads, exc, words):
    with pytest.raises(exc, match=words):
        fastmtl.combine(grads, method="mean")


def test_meta_device_mismatch_error():
    with pytest.raises(ValueError, match="task 1.*one device"):
        fastmtl.combine([torch.randn(3), torch.empty(3, device="meta")])


def test_losses_validation():
    J = torch.randn(3, 8)
    with pytest.raises(ValueError, match="losses has 2 entries"):
        fastmtl.combine(J, method="mean", losses=[1.0, 2.0])
    with pytest.raises(TypeError, match="losses must be"):
        fastmtl.combine(J, method="mean", losses="bad")


def test_check_finite_names_tasks():
    J = torch.randn(4, 8)
    J[2, 3] = float("nan")
    J[3, 0] = float("inf")
    with pytest.raises(ValueError, match="task 2, task 3"):
        fastmtl.combine(J, method="mean", check_finite=True)
    params = [[torch.randn(2), torch.randn(3)], [torch.randn(2), torch.tensor([1.0, float("nan"), 0.0])]]
    with pytest.raises(ValueError, match=r"task 1 \(parameter 1\)"):
        fastmtl.combine(params, method="mean", check_finite=True)


def test_out_validation():
    J = torch.randn(3, 8)
    with pytest.raises(ValueError, match="shape"):
        fastmtl.combine(J, method="mean", out=torch.empty(7))
    params = [[torch.randn(2), torch.randn(3)]] * 2
    with pytest.raises(TypeError, match="sequence of 2"):
        fastmtl.combine(params, method="mean", out=[torch.empty(2)])
