"""The Gram matrix's finiteness guard: the host pass of ``fastmtl._C.finite_guard`` against the tensor
ops that specify it (``fastmtl.ops.finite_guard``), and the cases that must take the tensor ops."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from fastmtl.ops import finite_guard as fg

_C = pytest.importorskip("fastmtl._C")
pytestmark = pytest.mark.skipif(fg._FINITE_GUARD is None, reason="fastmtl._C was built without finite_guard")


def _cases(dtype):
    G = torch.randn(5, 5, dtype=dtype)
    G = G @ G.T
    dots = torch.randn(5, dtype=dtype)
    yield G, None
    yield G, dots
    for bad in (float("nan"), float("inf"), -float("inf")):
        Gb = G.clone()
        Gb[1, 3] = bad
        yield Gb, None
        yield Gb, dots
        db = dots.clone()
        db[4] = bad
        yield G, db
    yield torch.zeros(1, 1, dtype=dtype), None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_host_pass_matches_the_tensor_ops(dtype):
    for G, dots in _cases(dtype):
        found = fg._FINITE_GUARD(G, dots)
        assert found is not None
        g, d, finite = found
        g_ref, d_ref, finite_ref = fg.finite_guard_ops(G, dots)
        assert finite.dtype == torch.bool and finite.shape == () and bool(finite) == bool(finite_ref)
        assert torch.equal(g, g_ref) and g.dtype == G.dtype
        assert (d is None) == (dots is None) and (d is None or torch.equal(d, d_ref))
        if bool(finite):  # the inputs themselves, no copy
            assert g is G and d is dots


def test_other_inputs_take_the_tensor_ops():
    G = torch.randn(4, 4, dtype=torch.float64)
    assert fg._FINITE_GUARD(G[:, ::2], None) is None  # non-contiguous
    assert fg._FINITE_GUARD(G.half(), None) is None
    assert fg._FINITE_GUARD(G, torch.ones(4, dtype=torch.float32)) is None  # dtypes differ
    # Through the public function the answer is the same either way.
    g, d, finite = fg.finite_guard(G[:, ::2].contiguous(), None)
    assert bool(finite) and d is None


def test_fake_tensors_never_reach_the_host_pass():
    with FakeTensorMode() as mode:
        G = mode.from_tensor(torch.eye(3))
        g, d, finite = fg.finite_guard(G, None)
        assert g.shape == (3, 3) and finite.shape == ()
