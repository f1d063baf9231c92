"""Fixed-iteration, sync-free solvers for the small K×K problems of Gram-space MTL methods.

Every routine takes Gram matrices ``[..., K, K]`` (batched over leading dimensions, any float
dtype, any device), computes in float64 on that device, uses no host synchronisation and no
data-dependent control flow, and traces under ``torch.compile(fullgraph=True)``.

* :func:`min_norm_simplex` — MGDA, ``min_{w∈Δ} wᵀGw``.
* :func:`project_dual_cone` — UPGrad / DualProj, TorchJD's dual-cone projection problem.
* :func:`cagrad_simplex_weights` — CAGrad's dual, ``min_{w∈Δ} ⟨g_w, g_0⟩ + c‖g_0‖‖g_w‖``.
* :func:`nash_weights` — Nash-MTL, ``α_i (Gα)_i = 1``.
* :func:`symmetric_eigh` — eigenvalues and eigenvectors by fixed-sweep cyclic Jacobi (IMTL-G,
  Aligned-MTL, ConFIG), in place of ``torch.linalg.eigh``, which synchronises on CUDA.
* :func:`project_conflicts` — PCGrad's K − 1 projection rounds (coefficients ``C``).
* :func:`vaccine` — GradVac's K − 1 correction rounds (λ and the new EMA targets).
* :func:`imtl_g_weights`, :func:`aligned_mtl_weights` — IMTL-G's and Aligned-MTL's weights from
  the Jacobi eigen-decomposition, in one call.
* :func:`mehrotra_qp` — the shared primal-dual interior-point kernel (reference only).

The nine solvers above run compiled (``fastmtl._C``: on the host for CPU tensors, one kernel launch
per solve for CUDA tensors) where the extension has them, else as the pure-PyTorch reference of
the modules ``min_norm``, ``dual_cone``, ``cagrad``, ``nash``, ``jacobi``, ``projection``,
``eigen_weights``: see :mod:`fastmtl.solvers.dispatch` and ``fastmtl.use_backend("reference")``.
"""

from .dispatch import (aligned_mtl_weights, cagrad_simplex_weights, imtl_g_weights, min_norm_simplex, nash_weights,
                       project_conflicts, project_dual_cone, symmetric_eigh, vaccine)
from .interior_point import mehrotra_qp

__all__ = ["min_norm_simplex", "project_dual_cone", "cagrad_simplex_weights", "nash_weights", "symmetric_eigh",
           "project_conflicts", "vaccine", "imtl_g_weights", "aligned_mtl_weights", "mehrotra_qp"]
