"""``out=`` buffers that share memory with the inputs or with each other (fastmtl/out_buffers.py).

Only ``out[p]`` being exactly one of parameter ``p``'s gradients (an in-place update) is allowed;
everything else that overlaps is rejected before anything is written.
"""

import pytest
import torch

import fastmtl
from fastmtl.out_buffers import byte_span

SHAPES = [(3, 4), (5,), (2, 3)]
NUMELS = [12, 5, 6]


def _grads(K=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(K)]


def _expected(grads, method="upgrad"):
    return fastmtl.combine([[t.clone() for t in row] for row in grads], method)


def _outs_in(buf, offset=0):
    """One out view per parameter, packed in ``buf`` from ``offset`` on."""
    outs, start = [], offset
    for s, n in zip(SHAPES, NUMELS):
        outs.append(buf[start:start + n].view(s))
        start += n
    return outs


def test_out_overlapping_another_parameters_gradient_is_rejected():
    grads = _grads()
    flat = torch.randn(sum(NUMELS) + 5)
    grads[1][2] = flat[7:13].view(SHAPES[2])  # task 1's gradient of parameter 2 ...
    outs = [torch.empty(SHAPES[0]), flat[:5], torch.empty(SHAPES[2])]  # ... and out[1] end-to-end
    assert byte_span(outs[1])[1] <= byte_span(grads[1][2])[0]  # adjacent, not overlapping: fine
    fastmtl.combine(grads, "upgrad", out=outs)

    outs[1] = flat[3:8]  # now its last element is grads[1][2]'s first one
    before = flat.clone()
    with pytest.raises(ValueError, match=r"out\[1\] overlaps task 1's gradient of parameter 2 in memory"):
        fastmtl.combine(grads, "upgrad", out=outs)
    assert torch.equal(flat, before)  # rejected before anything was written


def test_partial_overlap_with_own_parameter_is_rejected():
    grads = _grads()
    buf = torch.randn(13)
    grads[2][0] = buf[:12].view(3, 4)
    with pytest.raises(ValueError, match=r"out\[0\] partially overlaps task 2's gradient of parameter 0"):
        fastmtl.weighted_sum(grads, torch.ones(3), out=[buf[1:].view(3, 4), torch.empty(5), torch.empty(2, 3)])
    # A transposed view at the same address: same memory, other element order.
    sq = [[torch.randn(3, 3)] for _ in range(2)]
    with pytest.raises(ValueError, match=r"out\[0\] partially overlaps task 0's gradient"):
        fastmtl.weighted_sum(sq, torch.ones(2), out=[sq[0][0].t()])


def test_exactly_in_place_is_allowed():
    grads = _grads()
    expected = _expected(grads)
    outs = [grads[0][0], grads[1][1], grads[2][2]]  # each parameter over one of its own gradients
    d = fastmtl.combine(grads, "upgrad", out=outs)
    assert all(a is b for a, b in zip(d, outs))
    for a, b in zip(d, expected):
        torch.testing.assert_close(a, b)


def test_out_buffers_overlapping_each_other_are_rejected():
    grads = _grads()
    buf = torch.zeros(sum(NUMELS))
    fastmtl.combine(grads, "mean", out=_outs_in(buf))  # disjoint views of one buffer: fine
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in _expected(grads, "mean")]), buf)
    outs = _outs_in(buf)
    outs[2] = buf[15:21].view(2, 3)  # two elements shared with out[1] = buf[12:17]
    with pytest.raises(ValueError, match=r"out\[1\] and out\[2\] overlap in memory"):
        fastmtl.combine(grads, "mean", out=outs)
    same = torch.empty(5)
    with pytest.raises(ValueError, match=r"out\[0\] and out\[1\] overlap"):
        fastmtl.weighted_sum([[torch.randn(5), torch.randn(5)]], torch.ones(1), out=[same, same])


def test_matrix_layout():
    J = torch.randn(3, 8)
    expected = fastmtl.combine(J.clone(), "upgrad")
    torch.testing.assert_close(fastmtl.combine(J, "upgrad", out=J[1]), expected)  # row 1 in place
    J = torch.randn(3, 8)
    with pytest.raises(ValueError, match=r"out partially overlaps task 0's gradient"):
        fastmtl.combine(J, "upgrad", out=J.view(-1)[4:12])  # straddles rows 0 and 1


def test_interleaved_views_are_conservatively_rejected():
    """Extents are compared, not element sets: documented as conservative."""
    buf = torch.randn(10)
    grads = [[buf[1::2]], [torch.randn(5)]]
    with pytest.raises(ValueError, match="interleaved"):
        fastmtl.weighted_sum(grads, torch.ones(2), out=[buf[0::2]])


def test_unwritten_and_empty_outs_are_ignored():
    grads = [[torch.randn(4), None, torch.zeros(0)] for _ in range(2)]
    buf = torch.zeros(4)
    # Parameter 1 has no gradient: its out is left untouched, so it may alias anything.
    d = fastmtl.weighted_sum(grads, torch.ones(2), out=[buf, grads[0][0], torch.zeros(0)])
    torch.testing.assert_close(d[0], grads[0][0] + grads[1][0])

