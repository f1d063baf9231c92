"""Property-based tests (hypothesis) over random structures and values.

Structures: K = 1…6 tasks, 1…4 parameters of random shapes (zero-size ones included), random
``None`` entries; values from seeded families (Gaussian, conflicting, low-rank, zero rows) at
scales 1e-6…1e6. Properties: output structure, finiteness, agreement of the three input layouts,
``d = Jᵀλ``, and method invariants — UPGrad never conflicts (``Jd ≥ −tol``), MGDA's direction is
the min-norm point of the convex hull (``⟨d, g_i⟩ ≥ ‖d‖² − tol``), MGDA and HydaLearn weights lie
on the simplex. Examples are derandomised (the same every run) and bounded so the file runs in
well under a minute.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import fastmtl
from fastmtl.methods import METHODS, DirectionMethod, make_method

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

METHOD_NAMES = sorted(n for n, c in METHODS.items() if not issubclass(c, DirectionMethod))
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def task_gradients(draw, max_tasks=6):
    """``(J, shapes, none)``: a float64 [K, D] matrix (zeros where ``none``), parameter shapes, and the
    (task, parameter) pairs that are None in the per-parameter layout."""
    K = draw(st.integers(1, max_tasks))
    P = draw(st.integers(1, 4))
    shapes = [tuple(draw(st.lists(st.integers(0, 6), min_size=1, max_size=2))) for _ in range(P)]
    none = draw(st.sets(st.tuples(st.integers(0, K - 1), st.integers(0, P - 1)), max_size=K * P))
    numels = [int(torch.Size(s).numel()) for s in shapes]
    if all((k, p) in none or numels[p] == 0 for k in range(K) for p in range(P)):
        none = set()  # at least one present entry (an all-None input is a documented error)
        if sum(numels) == 0:
            shapes[0], numels[0] = (3,), 3
    D = sum(numels)
    seed = draw(st.integers(0, 2**31 - 1))
    family = draw(st.sampled_from(["gauss", "conflict", "lowrank", "zero-rows"]))
    scale = draw(st.sampled_from([1e-6, 1.0, 1e6]))
    g = torch.Generator().manual_seed(seed)
    if family == "gauss":
        J = torch.randn(K, D, generator=g, dtype=torch.float64)
    elif family == "conflict":
        base = torch.randn(D, generator=g, dtype=torch.float64)
        signs = torch.where(torch.rand(K, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
        J = signs[:, None] * base + 0.3 * torch.randn(K, D, generator=g, dtype=torch.float64)
    elif family == "lowrank":
        J = torch.randn(K, 1, generator=g, dtype=torch.float64) @ torch.randn(1, D, generator=g, dtype=torch.float64)
    else:
        J = torch.randn(K, D, generator=g, dtype=torch.float64)
        J[torch.rand(K, generator=g) < 0.4] = 0
    J = J * scale
    start = 0
    for p, n in enumerate(numels):
        for k in range(K):
            if (k, p) in none:
                J[k, start:start + n] = 0
        start += n
    return J, shapes, none


def as_params(J, shapes, none):
    out = []
    for k in range(J.shape[0]):
        row, start = [], 0
        for p, shape in enumerate(shapes):
            n = int(torch.Size(shape).numel())
            row.append(None if (k, p) in none else J[k, start:start + n].reshape(shape).clone())
            start += n
        out.append(row)
    return out


def flatten(d, shapes):
    return torch.cat([torch.zeros(int(torch.Size(s).numel()), dtype=torch.float64) if t is None else t.reshape(-1)
                      for t, s in zip(d, shapes)])


def run(grads, method, K, **kw):
    return fastmtl.combine(grads, method, losses=torch.linspace(0.5, 2.0, K, dtype=torch.float64),
                           generator=torch.Generator().manual_seed(0), return_info=True, **kw)


@pytest.mark.parametrize("method", METHOD_NAMES)
@settings(max_examples=25, **SETTINGS)
@given(data=task_gradients())
def test_structure_finiteness_and_layouts(method, data):
    J, shapes, none = data
    K = J.shape[0]
    params = as_params(J, shapes, none)
    if K < getattr(make_method(method, {}), "min_tasks", 1):  # e.g. Krum: outside its domain, a clear error
        with pytest.raises(ValueError, match="needs at least"):
            run(params, method, K)
        return
    d_par, info = run(params, method, K)
    # Structure: one entry per parameter, None exactly where no task has a gradient.
    assert len(d_par) == len(shapes)
    for p, (t, shape) in enumerate(zip(d_par, shapes)):
        if all((k, p) in none for k in range(K)):
            assert t is None
        else:
            assert t.shape == torch.Size(shape) and t.dtype == torch.float64
    flat = flatten(d_par, shapes)
    assert torch.isfinite(flat).all() and torch.isfinite(info.weights).all()
    size = max(float(J.norm(dim=1).max()), 1e-300)
    # d = Jᵀλ.
    torch.testing.assert_close(flat, info.weights @ J, rtol=1e-9, atol=1e-12 * size * max(1.0, float(
        info.weights.abs().max())))
    # The three layouts agree (the Gram differs only in summation order).
    d_mat, info_mat = run(J, method, K)
    d_vec, _ = run(list(J), method, K)
    scale = size * max(1.0, float(info.weights.abs().max()))
    torch.testing.assert_close(d_vec, d_mat, rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(flat, d_mat, rtol=1e-6, atol=1e-6 * scale)


@settings(max_examples=60, **SETTINGS)
@given(data=task_gradients(max_tasks=8), reg=st.sampled_from([0.0, 1e-4]))
def test_upgrad_never_conflicts(data, reg):
    # norm_eps=0: with the default norm_eps=1e-4, a Gram of trace below 1e-4 is treated as zero
    # (TorchJD's convention) and the guarantee is deliberately dropped for such tiny gradients.
    J, shapes, none = data
    d, info = run(as_params(J, shapes, none), "upgrad", J.shape[0], reg_eps=reg, norm_eps=0.0)
    d = flatten(d, shapes)
    G = J @ J.T
    trace = float(torch.trace(G))
    # KKT of TorchJD's regularised projection: Gλ ≥ −reg_eps·tr(G)·λ, plus the solver's accuracy.
    tol = (reg + 1e-6) * trace * max(1.0, float(info.weights.abs().max())) + 1e-300
    assert float((J @ d).min()) >= -tol, (J @ d, tol)


@settings(max_examples=60, **SETTINGS)
@given(data=task_gradients(max_tasks=8))
def test_mgda_min_norm_and_simplex(data):
    J, shapes, none = data
    d, info = run(as_params(J, shapes, none), "mgda", J.shape[0])
    d = flatten(d, shapes)
    lam = info.weights
    assert float(lam.min()) >= -1e-12 and abs(float(lam.sum()) - 1.0) <= 1e-9
    # Min-norm point of the convex hull: ⟨d, g_i⟩ ≥ ‖d‖² for every task (first-order optimality).
    tol = 1e-6 * float((J * J).sum(1).max()) + 1e-300
    assert float((J @ d).min() - d @ d) >= -tol, (J @ d, d @ d, tol)


@settings(max_examples=60, **SETTINGS)
@given(data=task_gradients(), main=st.integers(0, 5), fallback=st.sampled_from(["main", "zero"]),
       with_reference=st.booleans())
def test_hydalearn_weights_on_the_simplex(data, main, fallback, with_reference):
    J, shapes, none = data
    K = J.shape[0]
    main = main % K
    kw = {}
    if with_reference:
        kw["reference"] = [torch.ones(s, dtype=torch.float64) for s in shapes]
        kw["reference"] = [None if all((k, p) in none for k in range(K)) else r for p, r in enumerate(kw["reference"])]
    _, info = run(as_params(J, shapes, none), "hydalearn", K, main_task=main, fallback=fallback, **kw)
    lam = info.weights
    assert float(lam.min()) >= 0.0
    total = float(lam.sum())
    if fallback == "main":
        assert abs(total - 1.0) <= 1e-12
    else:
        assert abs(total - 1.0) <= 1e-12 or total == 0.0
