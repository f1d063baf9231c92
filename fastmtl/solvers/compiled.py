"""The compiled K×K solvers of ``fastmtl._C``: availability, fake kernels and thin wrappers.

``csrc/solver_ops.cpp`` defines nine ops (CPU kernels; ``csrc/solver_ops_cuda.cpp`` adds CUDA
kernels when the extension was built with nvcc), transcriptions of the reference solvers of this
package with the same algorithms and iteration counts, in float64:

* ``solver_min_norm(G, iterations)`` — :func:`fastmtl.solvers.min_norm.min_norm_simplex`;
* ``solver_dual_cone(G, targets, iterations, norm_eps, reg_eps)`` —
  :func:`fastmtl.solvers.dual_cone.project_dual_cone`;
* ``solver_cagrad(G, c, iterations)`` — :func:`fastmtl.solvers.cagrad.cagrad_simplex_weights`;
* ``solver_nash(G, init, iterations)`` — :func:`fastmtl.solvers.nash.nash_weights`;
* ``solver_eigh(G, sweeps)`` — :func:`fastmtl.solvers.jacobi.symmetric_eigh_reference`;
* ``solver_pcgrad(G, orders, eps)`` — :func:`fastmtl.solvers.projection.project_conflicts`;
* ``solver_gradvac(G, targets, orders, beta, eps)`` — :func:`fastmtl.solvers.projection.vaccine`;
* ``solver_imtl_g(G, sweeps, eps)`` — :func:`fastmtl.solvers.eigen_weights.imtl_g_weights`;
* ``solver_aligned_mtl(G, scale_mode, sweeps, eps)`` —
  :func:`fastmtl.solvers.eigen_weights.aligned_mtl_weights`.

G is ``[..., K, K]`` with ``1 ≤ K ≤ MAX_K``, results are float64 on G's device. On CPU tensors a
solve runs on the calling thread (a batch is spread over intra-op threads); on CUDA tensors it is
one kernel launch on the current stream (one block per solve), with no host synchronisation. A G
with a NaN or ±Inf entry gives NaN results. PCGrad's and GradVac's ``orders`` (``[K, K − 1]``,
integer, on G's device) are shared by the batch; an index outside ``[0, K)`` raises on CPU tensors
and gives NaN on CUDA tensors (checking it there would read the tensor back to the host). The fake kernels registered here give shapes and
dtypes without running anything (``torch.compile``, meta tensors).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

#: Largest K of the compiled solvers (kMaxK in csrc/solvers/common.h).
MAX_K = 64
OP_NAMES = ("solver_min_norm", "solver_dual_cone", "solver_cagrad", "solver_nash", "solver_eigh", "solver_pcgrad",
            "solver_gradvac", "solver_imtl_g", "solver_aligned_mtl")
#: Floating dtypes the ops read natively (others are converted to float64 inside the op).
NATIVE_DTYPES = (torch.float32, torch.float64)

_LOAD_ERROR: Optional[str] = None
_FAKE_ERROR: Optional[str] = None
_DEVICE_REASONS: dict = {}

try:
    from .. import _C  # noqa: F401  (loading the library registers torch.ops.fastmtl.solver_*)
except Exception as exc:  # ImportError, or OSError for a library built against another torch
    _C = None
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def _registered() -> bool:
    return _C is not None and all(hasattr(torch.ops.fastmtl, name) for name in OP_NAMES)


def unavailable_reason(device_type: str) -> Optional[str]:
    """``None`` when the compiled solvers run on tensors of ``device_type`` ("cpu", "cuda"), else why not."""
    if device_type not in _DEVICE_REASONS:
        _DEVICE_REASONS[device_type] = _probe(device_type)
    return _DEVICE_REASONS[device_type]


def _probe(device_type: str) -> Optional[str]:
    if _C is None:
        return f"fastmtl._C is not loaded ({_LOAD_ERROR})"
    if not _registered():
        return "fastmtl._C was built without the compiled solvers"
    if _FAKE_ERROR is not None:
        return f"fake kernels could not be registered: {_FAKE_ERROR}"
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return f"no compiled solvers for {device_type} tensors"
    missing = [n for n in OP_NAMES if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastmtl::{n}", key)]
    if missing:
        return (f"fastmtl._C has no {key} kernels of the solvers (built without its "
                f"{'CUDA part' if key == 'CUDA' else 'CPU part'})")
    return None


def limit_reasons(K: int, dtype: torch.dtype) -> list:
    """Input limits of the compiled solvers (empty when they apply)."""
    reasons = []
    if K > MAX_K:
        reasons.append(f"compiled solvers handle K ≤ {MAX_K}, got {K}")
    if not dtype.is_floating_point:
        reasons.append(f"compiled solvers need a floating G, got {dtype}")
    return reasons


# ---- fake (meta) kernels ------------------------------------------------------------------------


def _register_fakes() -> None:
    def f64(G, shape):
        return G.new_empty(shape, dtype=torch.float64)

    @torch.library.register_fake("fastmtl::solver_min_norm")
    def _min_norm_fake(G, iterations):
        return f64(G, G.shape[:-1])

    @torch.library.register_fake("fastmtl::solver_dual_cone")
    def _dual_cone_fake(G, targets, iterations, norm_eps, reg_eps):
        return f64(G, G.shape[:-2] + (targets.shape[-2], G.shape[-1]))

    @torch.library.register_fake("fastmtl::solver_cagrad")
    def _cagrad_fake(G, c, iterations):
        return f64(G, G.shape[:-1]), f64(G, G.shape[:-1])

    @torch.library.register_fake("fastmtl::solver_nash")
    def _nash_fake(G, init, iterations):
        return f64(G, G.shape[:-1])

    @torch.library.register_fake("fastmtl::solver_eigh")
    def _eigh_fake(G, sweeps):
        return f64(G, G.shape[:-1]), f64(G, G.shape)

    @torch.library.register_fake("fastmtl::solver_pcgrad")
    def _pcgrad_fake(G, orders, eps):
        return f64(G, G.shape)

    @torch.library.register_fake("fastmtl::solver_gradvac")
    def _gradvac_fake(G, targets, orders, beta, eps):
        return f64(G, G.shape[:-1]), f64(G, G.shape)

    @torch.library.register_fake("fastmtl::solver_imtl_g")
    def _imtl_g_fake(G, sweeps, eps):
        return f64(G, G.shape[:-1])

    @torch.library.register_fake("fastmtl::solver_aligned_mtl")
    def _aligned_mtl_fake(G, scale_mode, sweeps, eps):
        return f64(G, G.shape[:-1])


if _registered():
    try:
        _register_fakes()
    except Exception as exc:  # an incompatible torch.library: reported by the probe, never on import
        _FAKE_ERROR = f"{type(exc).__name__}: {exc}"


# ---- wrappers with the reference solvers' signatures ---------------------------------------------

if _registered():
    _min_norm_op = torch.ops.fastmtl.solver_min_norm.default
    _dual_cone_op = torch.ops.fastmtl.solver_dual_cone.default
    _cagrad_op = torch.ops.fastmtl.solver_cagrad.default
    _nash_op = torch.ops.fastmtl.solver_nash.default
    _eigh_op = torch.ops.fastmtl.solver_eigh.default
    _pcgrad_op = torch.ops.fastmtl.solver_pcgrad.default
    _gradvac_op = torch.ops.fastmtl.solver_gradvac.default
    _imtl_g_op = torch.ops.fastmtl.solver_imtl_g.default
    _aligned_mtl_op = torch.ops.fastmtl.solver_aligned_mtl.default


def min_norm_simplex(G: Tensor, iterations: int) -> Tensor:
    return _min_norm_op(G, iterations)


def project_dual_cone(G: Tensor, targets: Tensor, iterations: int, norm_eps: float, reg_eps: float) -> Tensor:
    batch, tbatch = G.shape[:-2], targets.shape[:-2]
    if tbatch and tbatch != batch:
        # The op takes shared targets [T, K] or one set per solve; other shapes broadcast here.
        shape = torch.broadcast_shapes(batch, tbatch)
        G = G.expand(shape + G.shape[-2:])
        targets = targets.expand(shape + targets.shape[-2:])
    return _dual_cone_op(G, targets, iterations, float(norm_eps), float(reg_eps))


def cagrad_simplex_weights(G: Tensor, c: float, iterations: int) -> tuple[Tensor, Tensor]:
    return _cagrad_op(G, float(c), iterations)


def nash_weights(G: Tensor, iterations: int, init: Optional[Tensor]) -> Tensor:
    if init is not None and init.dim() > 1 and init.shape[:-1] != G.shape[:-2]:
        shape = torch.broadcast_shapes(G.shape[:-2], init.shape[:-1])
        G = G.expand(shape + G.shape[-2:])
        init = init.expand(shape + init.shape[-1:])
    return _nash_op(G, init, iterations)


def symmetric_eigh(G: Tensor, sweeps: int) -> tuple[Tensor, Tensor]:
    return _eigh_op(G, sweeps)


def project_conflicts(G: Tensor, orders: Tensor, eps: float) -> Tensor:
    return _pcgrad_op(G, orders, float(eps))


def vaccine(G: Tensor, targets: Tensor, orders: Tensor, beta: float, eps: float) -> tuple[Tensor, Tensor]:
    if targets.dim() > 2 and targets.shape[:-2] != G.shape[:-2]:
        # The op takes shared targets [K, K] or one set per solve; other shapes broadcast here.
        shape = torch.broadcast_shapes(G.shape[:-2], targets.shape[:-2])
        G = G.expand(shape + G.shape[-2:])
        targets = targets.expand(shape + targets.shape[-2:])
    return _gradvac_op(G, targets, orders, float(beta), float(eps))


def imtl_g_weights(G: Tensor, sweeps: int, eps: float) -> Tensor:
    return _imtl_g_op(G, sweeps, eps)


def aligned_mtl_weights(G: Tensor, scale_mode: str, sweeps: int, eps: float) -> Tensor:
    return _aligned_mtl_op(G, scale_mode, sweeps, eps)


#: The wrappers above by the backend registry's primitive names: what the ``cpu`` and ``cuda``
#: backends register (each with its own availability probe).
IMPLEMENTATIONS = {"min_norm_simplex": min_norm_simplex, "project_dual_cone": project_dual_cone,
                   "cagrad_simplex_weights": cagrad_simplex_weights, "nash_weights": nash_weights,
                   "symmetric_eigh": symmetric_eigh, "project_conflicts": project_conflicts, "vaccine": vaccine,
                   "imtl_g_weights": imtl_g_weights, "aligned_mtl_weights": aligned_mtl_weights}


def solve_reasons(device_type: str, num_tasks: int, dtype: torch.dtype) -> list:
    """Why the compiled solvers cannot take a K×K problem on ``device_type`` (empty when they can)."""
    why = unavailable_reason(device_type)
    return ([why] if why else []) + limit_reasons(num_tasks, dtype)
