"""What every registered method must do, driven by ``tests/method_catalogue.py``.

* the catalogue and the registry list the same methods (a new method without an entry fails here);
* one call on each input family gives a finite direction of the input's shape and dtype, and
  ``d = Σ λ_k g_k`` wherever λ is reported;
* the matrix and per-parameter layouts (with a ``None`` entry) give the same direction;
* the direction agrees with the method's literal oracle;
* ``info.backend`` names the backend that produced the direction, for every backend that can run
  on CPU tensors here (the reference, fastmtl._C's CPU kernels, Triton under its interpreter).
"""

from __future__ import annotations

import pytest
import torch

import fastmtl
from fastmtl.methods import METHODS, make_method
from fastmtl.ops import available_backends, get_backend

from _families import make_jacobian, split_params
from method_catalogue import CATALOGUE, call_inputs

NAMES = sorted(CATALOGUE)
FAMILIES = ("gauss", "conflict", "scaled", "zero")


def test_catalogue_lists_every_registered_method():
    assert sorted(METHODS) == NAMES, (sorted(set(METHODS) - set(CATALOGUE)), sorted(set(CATALOGUE) - set(METHODS)))
    for name, entry in CATALOGUE.items():
        assert (entry.oracle is None) == bool(entry.elsewhere), f"{name}: an oracle, or where its oracle test lives"
        assert not entry.needs_losses or METHODS[name].uses_losses, name
        assert entry.needs_reference == METHODS[name].uses_reference, name


def _rel(d, ref, J):
    floor = 1e-3 * float(J.pow(2).sum(1).mean().sqrt()) or 1e-300
    return float((d - ref).norm()) / max(float(ref.norm()), floor)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("K", [2, 3, 5])
@pytest.mark.parametrize("name", NAMES)
def test_one_call_is_finite_and_matches_the_oracle(name, K, family):
    J = make_jacobian(family, K, 61, seed=3)
    kwargs, call = call_inputs(name, J, seed=K)
    entry = CATALOGUE[name]
    if K < getattr(make_method(name, dict(entry.hyper)), "min_tasks", 1):  # outside the method's domain
        with pytest.raises(ValueError, match="needs at least"):
            fastmtl.combine(J, name, **kwargs)
        return
    d, info = fastmtl.combine(J, name, return_info=True, **kwargs)
    assert d.shape == J.shape[1:] and d.dtype == J.dtype and torch.isfinite(d).all()
    if info.weights is not None:
        scale = float(J.norm(dim=1).max() * info.weights.abs().max()) + 1e-300
        assert float((d - J.T @ info.weights.to(J)).abs().max()) <= 1e-12 * scale
    if entry.oracle is not None and family not in entry.oracle_skips:
        assert _rel(d, entry.oracle(J, call), J) < entry.tol


@pytest.mark.parametrize("name", NAMES)
def test_matrix_and_per_parameter_layouts_agree(name):
    K, sizes = 3, [(4, 5), (7,), (3, 2, 2)]
    J = make_jacobian("conflict", K, 39, seed=8)
    J[1, 20:27] = 0  # task 1 does not touch parameter 1: given as None below
    kwargs, _ = call_inputs(name, J, seed=1)
    d_flat = fastmtl.combine(J, name, **kwargs)
    params = split_params(J, sizes, drop={(1, 1)})
    kwargs, _ = call_inputs(name, J, seed=1)
    if "reference" in kwargs:
        kwargs["reference"] = [t for t in split_params(kwargs["reference"][None], sizes)[0]]
    d_params = fastmtl.combine(params, name, **kwargs)
    flat = torch.cat([t.reshape(-1) for t in d_params])
    assert _rel(flat, d_flat, J) < 1e-10


def _backends():
    usable = [b for b in ("reference", "cpu", "triton") if b in available_backends()]
    return usable or ["reference"]


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("name", NAMES)
def test_info_backend_is_the_one_that_ran(name, backend):
    J = make_jacobian("gauss", 3, 64, seed=2, dtype=torch.float32)
    kwargs, _ = call_inputs(name, J, seed=0)
    entry = CATALOGUE[name]
    if entry.primitive not in get_backend(backend).implementations:  # an explicit request that cannot run
        with pytest.raises(RuntimeError, match=f"cannot run {entry.primitive}"):
            fastmtl.combine(J, name, backend=backend, **kwargs)
        return
    _, info = fastmtl.combine(J, name, backend=backend, return_info=True, **kwargs)
    assert info.backend == ("reference" if entry.plain_torch_direction else backend)
