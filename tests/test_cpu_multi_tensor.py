"""The compiled CPU multi-tensor kernels (``cpu`` backend) against the float64 reference."""

import pytest
import torch

import fastmtl
from fastmtl import cpu_ops
from fastmtl.gradients import canonicalize, canonicalize_out
from fastmtl.ops import select
from fastmtl.reference.primitives import gramian_ref, weighted_sum_ref
from _per_param import per_param

pytestmark = pytest.mark.skipif(cpu_ops.unavailable_reason() is not None,
                                reason=f"CPU kernels unavailable: {cpu_ops.unavailable_reason()}")

LOW = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}


def as64(rows):
    return [[None if t is None else t.double() for t in row] for row in rows]


def gram_bound(G64, dtype, n):
    # fp32 accumulation within 16384-element chunks (fp64 for fp64 inputs): a few eps_acc · n_chunk · |g_i||g_j|.
    eps = LOW[torch.float64] if dtype == torch.float64 else LOW[torch.float32]
    d = G64.diagonal().clamp_min(0).sqrt()
    return 4 * eps * min(n, 16384) ** 0.5 * torch.outer(d, d) + 1e-300


SIZES = [1, 7, 300, 17, 16384 + 5, 2, 999, 40000 + 3] + [11, 3, 65] * 70  # 218 parameters


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_gramian_per_parameter_matches_float64_reference(dtype):
    K = 5
    missing = {(0, 1), (2, 4), (3, 4), (1, 7), (4, 100)}
    rows = per_param(K, SIZES, dtype, seed=1, missing=missing)
    tg = canonicalize(rows)
    assert select("gramian", tg).name == "cpu"
    G = fastmtl.gramian(rows, backend="cpu")
    G64 = gramian_ref(canonicalize(as64(rows)))
    assert G.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and G.shape == (K, K)
    assert torch.equal(G, G.T)
    err = (G.double() - G64).abs()
    assert (err <= gram_bound(G64, dtype, max(SIZES))).all(), err.max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", ["matrix", "vectors"])
def test_flat_layouts_match_reference(dtype, layout):
    K, D = 3, 3 * 16384 + 77
    J = torch.randn(K, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    grads = J if layout == "matrix" else list(J.clone())
    G = fastmtl.gramian(grads, backend="cpu")
    G64 = J.double() @ J.double().T
    assert ((G.double() - G64).abs() <= gram_bound(G64, dtype, D)).all()
    lam = torch.tensor([0.5, -1.25, 2.0])
    d = fastmtl.weighted_sum(grads, lam, backend="cpu")
    d64 = lam.double() @ J.double()
    assert d.dtype == dtype
    # One rounding to the output dtype on top of an fp32 (fp64) accumulation.
    tol = LOW[dtype] * d64.abs() + 8 * LOW[torch.float32 if dtype != torch.float64 else dtype] * J.double().abs().sum(0) * 2
    assert ((d.double() - d64).abs() <= tol).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_weighted_sum_per_parameter_none_and_out_into_grad(dtype):
    K = 4
    sizes = SIZES[:40]
    missing = {(0, 0), (1, 0), (2, 0), (3, 0), (1, 5), (3, 7)}  # parameter 0: no task at all
    rows = per_param(K, sizes, dtype, seed=3, missing=missing)
    lam = torch.tensor([1.0, -0.5, 0.25, 3.0])
    tg = canonicalize(rows)
    assert select("weighted_sum", tg).name == "cpu"
    expected = weighted_sum_ref(canonicalize(as64(rows)), lam.double())
    got = fastmtl.weighted_sum(rows, lam, backend="cpu")
    assert got[0] is None
    for p in range(1, len(sizes)):
        assert got[p].shape == rows[2][p].shape and got[p].dtype == dtype
        bound = 2 * LOW[dtype] * expected[p].abs() + 1e-6 * LOW[dtype] ** 0.5 * (1 if dtype != torch.float64 else 0)
        assert ((got[p].double() - expected[p]).abs() <= bound + 4 * LOW[torch.float32] * 5).all(), p
    # out= into .grad buffers of another dtype (float32) and, for parameter 3, into task 2's own
    # gradient (an exact alias is allowed: every block is read before it is written).
    grads_out = [None] + [torch.full(s.shape, 7.0, dtype=torch.float32) for s in got[1:]]
    targets = list(grads_out)
    ref_targets = [None if t is None else t.clone() for t in targets]
    weighted_sum_ref(canonicalize(rows), lam, canonicalize_out(ref_targets, canonicalize(rows)))
    res = fastmtl.weighted_sum(rows, lam, out=targets, backend="cpu")
    assert all(a is b for a, b in zip(res, targets))
    for p in range(1, len(sizes)):
        torch.testing.assert_close(targets[p], ref_targets[p], rtol=4 * LOW[torch.float32], atol=1e-6)
    alias_rows = per_param(K, sizes[:6], dtype, seed=4)
    want = weighted_sum_ref(canonicalize(alias_rows), lam)
    out = [torch.empty_like(t) for t in alias_rows[0]]
    out[3] = alias_rows[2][3]
    fastmtl.weighted_sum(alias_rows, lam, out=out, backend="cpu")
    for p in range(6):
        torch.testing.assert_close(out[p], want[p], rtol=2 * LOW[dtype], atol=2 * LOW[dtype])


def test_partial_overlap_is_rejected_by_the_op():
    base = torch.randn(100)
    a, b = base[:50], base[50:]
    out = base[25:75]  # straddles both inputs
    with pytest.raises(RuntimeError, match="overlaps"):
        torch.ops.fastmtl.weighted_sum_cpu_out([a, b], 2, torch.ones(2), [out])
    # out[1] is exactly parameter 0's input: an alias of another parameter's gradient.
    with pytest.raises(RuntimeError, match="overlaps task 0's gradient of parameter 0"):
        torch.ops.fastmtl.weighted_sum_cpu_out([a, torch.ones(50)], 1, torch.ones(1), [torch.empty(50), a])
    # Exactly its own input is allowed.
    c = torch.ones(50)
    torch.ops.fastmtl.weighted_sum_cpu_out([c, c.clone()], 2, torch.tensor([2.0, 1.0]), [c])
    assert torch.equal(c, torch.full((50,), 3.0))
    two = torch.empty(60)
    with pytest.raises(RuntimeError, match=r"out\[1\] overlaps out\[0\]|out\[0\] overlaps out\[1\]"):
        torch.ops.fastmtl.weighted_sum_cpu_out([torch.ones(50), torch.ones(30)], 1, torch.ones(1),
                                               [two[:50], two[30:]])


def test_result_does_not_depend_on_the_thread_count():
    rows = per_param(6, [70001, 5, 16384 * 9 + 1, 3] * 3, torch.bfloat16, seed=5, missing={(1, 2)})
    lam = torch.linspace(-1, 1, 6)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((fastmtl.gramian(rows, backend="cpu"), fastmtl.weighted_sum(rows, lam, backend="cpu")))
    finally:
        torch.set_num_threads(before)
    for G, d in results[1:]:
        assert torch.equal(G, results[0][0])
        assert all(torch.equal(x, y) for x, y in zip(d, results[0][1]))


def test_missing_task_takes_no_part_even_with_nonfinite_values():
    x = torch.tensor([1.0, 2.0, float("inf")])
    G = fastmtl.gramian([[x, torch.ones(2)], [None, torch.ones(2)]], backend="cpu")
    assert torch.isinf(G[0, 0]) and torch.equal(G[1, 1], torch.tensor(2.0)) and torch.equal(G[0, 1], torch.tensor(2.0))


def test_packed_small_parameters_keep_missing_tasks_out():
    # Small parameters every task holds are packed into shared blocks; one that a task lacks is not,
    # so that task's product with an Inf elsewhere stays absent (no 0 * Inf).
    g = torch.Generator().manual_seed(3)
    small = [[torch.randn(n, generator=g) for n in (5, 50, 3, 200, 7)] for _ in range(3)]
    small[0][2] = torch.tensor([1.0, float("inf"), 2.0])
    small[1][2] = None
    G = fastmtl.gramian(small, backend="cpu")
    assert torch.isfinite(G[1, :]).all() and torch.isfinite(G[:, 1]).all()
    assert torch.isinf(G[0, 0]) and not torch.isfinite(G[0, 2])
    finite = [[t for p, t in enumerate(row) if p != 2] for row in small]
    G64 = gramian_ref(canonicalize(as64(finite)))
    assert (fastmtl.gramian(finite, backend="cpu").double() - G64).abs().max() <= 1e-5 * G64.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_every_pair_rounds_the_same_in_four_wide_and_single_products(dtype):
    # The kernel takes the products of a row with four others in one pass and the rest one at a
    # time; which pairs go which way depends on the task order. Each product must round exactly
    # as a single one, so permuting the tasks permutes the Gram matrix bit for bit.
    K = 7
    rows = per_param(K, [5, 300, 40000 + 3, 11, 65, 2] * 4, dtype, seed=9, missing={(2, 1)})
    G = fastmtl.gramian(rows, backend="cpu")
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        perm = torch.randperm(K, generator=gen)
        Gp = fastmtl.gramian([rows[i] for i in perm.tolist()], backend="cpu")
        assert torch.equal(Gp, G[perm][:, perm])


def test_non_contiguous_inputs_and_automatic_choice():
    J = torch.randn(6, 4000, dtype=torch.float32)[::2, ::3]  # strided rows
    rows = [[J[k].view(-1)[:1000].reshape(10, 100).T] for k in range(3)]
    torch.testing.assert_close(fastmtl.gramian(rows, backend="cpu"), fastmtl.gramian(rows, backend="reference"))
    lam = torch.tensor([1.0, 2.0, -1.0])
    torch.testing.assert_close(fastmtl.weighted_sum(rows, lam, backend="cpu")[0],
                               fastmtl.weighted_sum(rows, lam, backend="reference")[0])
    M = torch.randn(3, 100)
    # The kernels outrun BLAS's GEMM and GEMV on a flat matrix too.
    assert select("gramian", canonicalize(M)).name == "cpu"
    assert select("gramian", canonicalize(list(M))).name == "cpu"
    assert select("weighted_sum", canonicalize(M)).name == "cpu"
    assert select("gramian", canonicalize(M.double())).name == "cpu"
    assert select("weighted_sum", canonicalize(M.bfloat16())).name == "cpu"


def test_opcheck():
    rows = per_param(3, [5, 33, 1, 4], torch.float32, seed=6, missing={(1, 1), (0, 3), (1, 3), (2, 3)})
    flat = [t for row in rows for t in row]
    lam = torch.tensor([0.3, -1.0, 2.0])
    torch.library.opcheck(torch.ops.fastmtl.gramian_cpu.default, (flat, 3))
    torch.library.opcheck(torch.ops.fastmtl.weighted_sum_cpu.default, (flat, 3, lam))
    out = [torch.empty(5), torch.empty(33), torch.empty(1), torch.empty(4)]
    torch.library.opcheck(torch.ops.fastmtl.weighted_sum_cpu_out.default, (flat, 3, lam, out))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_of_any_floating_dtype_and_layout_round_as_their_conversion(dtype):
    # The kernel reads the K weights in place and converts them itself: the result must be what the
    # converted weights give, for every floating dtype, shape and stride the op accepts.
    rows = per_param(3, [5, 33, 1, 70], dtype, seed=4, missing={(1, 2)})
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    base = torch.tensor([0.1, -1.3, 2.7], dtype=torch.float64)
    variants = [base, base.float(), base.half(), base.bfloat16(),
                torch.stack([base, base]).T[:, 0], base.repeat_interleave(2)[::2]]
    for w in variants:
        expected = fastmtl.weighted_sum(rows, w.reshape(-1).contiguous().to(acc), backend="cpu")
        got = fastmtl.weighted_sum(rows, w, backend="cpu")
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), (w.dtype, w.shape, w.stride())
