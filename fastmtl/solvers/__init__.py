"""Fixed-iteration, sync-free solvers for the small K×K problems of Gram-space MTL methods.

Every routine takes Gram matrices ``[..., K, K]`` (batched over leading dimensions, any float
dtype, any device), computes in float64 on that device, uses no host synchronisation and no
data-dependent control flow, and traces under ``torch.compile(fullgraph=True)``.

* :func:`min_norm_simplex` — MGDA, ``min_{w∈Δ} wᵀGw``.
* :func:`project_dual_cone` — UPGrad / DualProj, TorchJD's dual-cone projection problem.
* :func:`cagrad_simplex_weights` — CAGrad's dual, ``min_{w∈Δ} ⟨g_w, g_0⟩ + c‖g_0‖‖g_w‖``.
* :func:`nash_weights` — Nash-MTL, ``α_i (Gα)_i = 1``.
* :func:`mehrotra_qp` — the shared primal-dual interior-point kernel.
"""

from .cagrad import cagrad_simplex_weights
from .dual_cone import project_dual_cone
from .interior_point import mehrotra_qp
from .min_norm import min_norm_simplex
from .nash import nash_weights

__all__ = ["min_norm_simplex", "project_dual_cone", "cagrad_simplex_weights", "nash_weights",
           "mehrotra_qp"]
