"""Non-finite entries and missing task gradients in the Gram matrix: every backend pairs exactly as
the reference does.

A task that does not touch a parameter (``None``) takes no part in that parameter's products, so
an Inf/NaN in another task's gradient of it must not reach their pair: ``G[i, j]`` is the sum over
the parameters that *both* tasks have. Reading the missing entry as zeros and multiplying through
gives ``0 · Inf = NaN`` instead. The expected matrix is built here with explicit loops in float64;
finite entries are compared with a float32 tolerance, non-finite ones must match exactly (same
Inf sign, NaN in the same places).
"""

import pytest
import torch

import fastmtl
from fastmtl import cuda as fcuda

K = 4
SHAPES = [(3, 5), (7,), (40,), (2, 3)]


def _grads(device, poison, dtype=torch.float32):
    """K×P gradients: task 1 misses parameter 0, task 3 misses parameters 0 and 2; ``poison`` is a
    list of ``(task, parameter, flat index, value)`` written into present entries."""
    g = torch.Generator().manual_seed(7)
    missing = {(1, 0), (3, 0), (3, 2)}
    grads = [[None if (k, p) in missing else torch.randn(s, generator=g, dtype=torch.float64)
              for p, s in enumerate(SHAPES)] for k in range(K)]
    for k, p, i, v in poison:
        grads[k][p].view(-1)[i] = v
    return [[None if t is None else t.to(device=device, dtype=dtype) for t in row] for row in grads]


def _literal(grads):
    """``G[i, j] = Σ_{p : both present} Σ_e g_i[p][e] · g_j[p][e]`` in float64, by loops."""
    n = len(grads)
    G = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            for p in range(len(SHAPES)):
                a, b = grads[i][p], grads[j][p]
                if a is not None and b is not None:
                    G[i, j] += (a.double().cpu().reshape(-1) * b.double().cpu().reshape(-1)).sum()
    return G


def _assert_pairs_like(G, expected):
    G = G.double().cpu()
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isnan(G), torch.isnan(expected)), (G, expected)
    assert torch.equal(torch.isposinf(G), torch.isposinf(expected)), (G, expected)
    assert torch.equal(torch.isneginf(G), torch.isneginf(expected)), (G, expected)
    torch.testing.assert_close(G[finite], expected[finite], rtol=1e-5, atol=1e-5)


POISONS = {
    # Inf in task 0's parameter 0 (tasks 1 and 3 miss it): pairs (0, 1) and (0, 3) stay finite.
    "inf": [(0, 0, 4, float("inf"))],
    # NaN in task 2's parameter 2 (task 3 misses it), -Inf in task 1's parameter 1 (all have it).
    "nan_and_neginf": [(2, 2, 33, float("nan")), (1, 1, 0, float("-inf"))],
}


def test_literal_expectation_has_finite_pairs_with_missing_tasks():
    """The expectation itself: the pairs of the poisoned task with the tasks that miss the
    poisoned parameter are finite (the case the kernels got wrong), the others are not."""
    G = _literal(_grads("cpu", POISONS["inf"]))
    assert torch.isfinite(G[0, 1]) and torch.isfinite(G[0, 3]) and torch.isfinite(G[1, 3])
    assert torch.isposinf(G[0, 0]) and not torch.isfinite(G[0, 2])


@pytest.mark.parametrize("case", sorted(POISONS))
def test_reference(case):
    grads = _grads("cpu", POISONS[case])
    _assert_pairs_like(fastmtl.gramian(grads, backend="reference"), _literal(grads))


def _triton_device():
    try:
        from fastmtl.triton import tables
    except Exception as exc:  # triton missing or broken
        pytest.skip(f"Triton unavailable: {exc}")
    if tables.interpreter_active():
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("Triton kernels need a CUDA device or TRITON_INTERPRET=1")


@pytest.mark.parametrize("block", [16, None], ids=["block16", "default_block"])
@pytest.mark.parametrize("case", sorted(POISONS))
def test_triton(case, block):
    from fastmtl.gradients import canonicalize
    from fastmtl.triton.gramian import gramian_triton

    grads = _grads(_triton_device(), POISONS[case])
    _assert_pairs_like(gramian_triton(canonicalize(grads), block=block), _literal(grads))


_GPU_REASON = fcuda.unavailable_reason()


@pytest.mark.gpu
@pytest.mark.skipif(_GPU_REASON is not None, reason=f"cuda backend unavailable: {_GPU_REASON}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("case", sorted(POISONS))
def test_cuda(case, dtype):
    """The CUDA kernel: flagged parameters (a task misses them) go through its masked kernel; a
    run without missing entries checks that the plain kernel is unchanged (equal to the
    reference's pairing too)."""
    grads = _grads("cuda", POISONS[case], dtype)
    _assert_pairs_like(fastmtl.gramian(grads, backend="cuda"), _literal(grads))
    # Many tasks (tiled kernel, K > 16) with the same missing pattern repeated.
    wide = [row for _ in range(5) for row in grads]
    expected = _literal(grads).repeat(5, 5)
    _assert_pairs_like(fastmtl.gramian(wide, backend="cuda"), expected)
    # Bitwise repeatable with both kernels in play.
    assert torch.equal(fastmtl.gramian(grads, backend="cuda").nan_to_num(),
                       fastmtl.gramian(grads, backend="cuda").nan_to_num())
