"""The public solver functions: each runs the compiled solver where ``fastmtl._C`` has it for G's
device (``fastmtl.solvers.compiled``, K ≤ 64), else the reference solver of this package.

Selection goes through the backend registry (:func:`fastmtl.ops.registry.solver_implementation`):
the "cpu" backend on CPU tensors, "cuda" on CUDA tensors, "reference" everywhere else and as the
fallback. ``fastmtl.use_backend("reference")`` (or ``FASTMTL_BACKEND=reference``) forces the
reference solvers; a request for a backend without solvers (e.g. "triton") leaves the solve to the
automatic choice. The choice is cached, so a call costs a dictionary look-up before the solve.
Both implementations run the same algorithm with the same iteration counts; they agree to rounding
(tests/test_compiled_solvers.py). One difference: for a G with a NaN or ±Inf entry the compiled
solvers return NaN, the reference solvers whatever their arithmetic gives (finite weights in some
cases); ``fastmtl.combine`` never hands a solver a non-finite G (its NaN policy, docs/bad_input.md).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops.registry import register_implementation, solver_implementation
from . import cagrad as _cagrad_ref
from . import dual_cone as _dual_cone_ref
from . import eigen_weights as _eigen_weights_ref
from . import jacobi as _jacobi_ref
from . import min_norm as _min_norm_ref
from . import nash as _nash_ref
from . import projection as _projection_ref
from .nash import default_nash_iterations

__all__ = ["min_norm_simplex", "project_dual_cone", "cagrad_simplex_weights", "nash_weights", "symmetric_eigh",
           "project_conflicts", "vaccine", "imtl_g_weights", "aligned_mtl_weights"]


def _min_norm_reference(G, iterations):
    return _min_norm_ref.min_norm_simplex(G, iterations=iterations)


def _dual_cone_reference(G, targets, iterations, norm_eps, reg_eps):
    return _dual_cone_ref.project_dual_cone(G, targets, iterations=iterations, norm_eps=norm_eps, reg_eps=reg_eps)


def _cagrad_reference(G, c, iterations):
    return _cagrad_ref.cagrad_simplex_weights(G, c, iterations=iterations)


def _nash_reference(G, iterations, init):
    return _nash_ref.nash_weights(G, iterations=iterations, init=init)


def _eigh_reference(G, sweeps):
    return _jacobi_ref.symmetric_eigh_reference(G, sweeps=sweeps)


def _pcgrad_reference(G, orders, eps):
    return _projection_ref.project_conflicts(G, orders, eps)


def _gradvac_reference(G, targets, orders, beta, eps):
    return _projection_ref.vaccine(G, targets, orders, beta, eps)


def _imtl_g_reference(G, sweeps, eps):
    return _eigen_weights_ref.imtl_g_weights(G, eps=eps, sweeps=sweeps)


def _aligned_mtl_reference(G, scale_mode, sweeps, eps):
    return _eigen_weights_ref.aligned_mtl_weights(G, scale_mode=scale_mode, eps=eps, sweeps=sweeps)


REFERENCE = {"min_norm_simplex": _min_norm_reference, "project_dual_cone": _dual_cone_reference,
             "cagrad_simplex_weights": _cagrad_reference, "nash_weights": _nash_reference,
             "symmetric_eigh": _eigh_reference, "project_conflicts": _pcgrad_reference,
             "vaccine": _gradvac_reference, "imtl_g_weights": _imtl_g_reference,
             "aligned_mtl_weights": _aligned_mtl_reference}
for _name, _fn in REFERENCE.items():
    register_implementation("reference", _name, _fn)

_NOTE = """
    Implementation: the compiled solver of ``fastmtl._C`` for G's device where it exists (CPU, and
    CUDA when built with nvcc; K ≤ 64), else the pure-PyTorch reference
    (``{ref}``); ``fastmtl.use_backend("reference")`` forces the reference. Both run this algorithm
    with the same iteration counts and agree to rounding. A G with a NaN or ±Inf entry gives NaN
    from the compiled solver.
"""


def min_norm_simplex(G: Tensor, *, iterations: int = 30) -> Tensor:
    return solver_implementation("min_norm_simplex", G)(G, iterations)


def project_dual_cone(G: Tensor, targets: Tensor, *, iterations: int = 16, norm_eps: float = 1e-4,
                      reg_eps: float = 1e-4) -> Tensor:
    return solver_implementation("project_dual_cone", G)(G, targets, iterations, norm_eps, reg_eps)


def cagrad_simplex_weights(G: Tensor, c, *, iterations: int = 60) -> tuple[Tensor, Tensor]:
    if isinstance(c, Tensor):  # a per-batch radius: only the reference takes a tensor c
        return _cagrad_reference(G, c, iterations)
    return solver_implementation("cagrad_simplex_weights", G)(G, c, iterations)


def nash_weights(G: Tensor, *, iterations: Optional[int] = None, init: Optional[Tensor] = None) -> Tensor:
    if iterations is None:
        iterations = default_nash_iterations(G.shape[-1])
    return solver_implementation("nash_weights", G)(G, iterations, init)


def symmetric_eigh(G: Tensor, *, sweeps: Optional[int] = None) -> tuple[Tensor, Tensor]:
    if sweeps is None:
        sweeps = _jacobi_ref.default_jacobi_sweeps(G.shape[-1])
    return solver_implementation("symmetric_eigh", G)(G, sweeps)


def project_conflicts(G: Tensor, orders: Tensor, *, eps: float = 1e-8) -> Tensor:
    _projection_ref.check_inputs(G, orders, "project_conflicts")  # ValueError / TypeError on either path
    return solver_implementation("project_conflicts", G)(G, orders, eps)


def vaccine(G: Tensor, targets: Tensor, orders: Tensor, *, beta: float = 0.5, eps: float = 1e-8
            ) -> tuple[Tensor, Tensor]:
    _projection_ref.check_inputs(G, orders, "vaccine")
    return solver_implementation("vaccine", G)(G, targets, orders, beta, eps)


def _eps_and_sweeps(G: Tensor, eps: Optional[float], sweeps: Optional[int]) -> tuple:
    if eps is None:
        eps = torch.finfo(G.dtype).eps
    elif not 0.0 <= eps < float("inf"):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    if sweeps is None:
        sweeps = _jacobi_ref.default_jacobi_sweeps(G.shape[-1])
    return float(eps), sweeps


def imtl_g_weights(G: Tensor, *, eps: Optional[float] = None, sweeps: Optional[int] = None) -> Tensor:
    eps, sweeps = _eps_and_sweeps(G, eps, sweeps)
    return solver_implementation("imtl_g_weights", G)(G, sweeps, eps)


def aligned_mtl_weights(G: Tensor, *, scale_mode: str = "min", eps: Optional[float] = None,
                        sweeps: Optional[int] = None) -> Tensor:
    if scale_mode not in _eigen_weights_ref.SCALE_MODES:  # ValueError on either path
        raise ValueError(f"scale_mode must be one of {_eigen_weights_ref.SCALE_MODES}, got {scale_mode!r}")
    eps, sweeps = _eps_and_sweeps(G, eps, sweeps)
    return solver_implementation("aligned_mtl_weights", G)(G, scale_mode, sweeps, eps)


for _public, _ref in ((min_norm_simplex, _min_norm_ref.min_norm_simplex),
                      (project_dual_cone, _dual_cone_ref.project_dual_cone),
                      (cagrad_simplex_weights, _cagrad_ref.cagrad_simplex_weights),
                      (nash_weights, _nash_ref.nash_weights),
                      (symmetric_eigh, _jacobi_ref.symmetric_eigh_reference),
                      (project_conflicts, _projection_ref.project_conflicts),
                      (vaccine, _projection_ref.vaccine),
                      (imtl_g_weights, _eigen_weights_ref.imtl_g_weights),
                      (aligned_mtl_weights, _eigen_weights_ref.aligned_mtl_weights)):
    _public.__doc__ = (_ref.__doc__ or "") + _NOTE.format(ref=f"{_ref.__module__}.{_ref.__name__}")
