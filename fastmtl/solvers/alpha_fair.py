"""FairGrad's α-fair weights on the device: ``G w = w^{-1/α}``, ``w > 0``, fixed iterations."""

from __future__ import annotations

import torch
from torch import Tensor

from .interior_point import matvec, symmetric64
from .min_norm import min_norm_simplex

__all__ = ["alpha_fair_weights", "default_alpha_fair_iterations", "NO_SOLUTION_TOL"]

_HALVINGS = 10  # trial steps 1, ½, …, 2^-9, plus the damped step 1/(1+λ) and 0

#: The input counts as Pareto-stationary (no solution) when the min-norm point of the convex hull
#: of the gradients has ``‖d*‖² ≤ NO_SOLUTION_TOL · max_i ‖g_i‖²``.
NO_SOLUTION_TOL = 1e-12


def default_alpha_fair_iterations(K: int) -> int:
    """Default Newton iterations for K tasks (see the accuracy notes of :func:`alpha_fair_weights`)."""
    if K <= 8:
        return 24
    if K <= 32:
        return 28
    return 32


def _utility(y: Tensor, alpha: float) -> Tensor:
    """α-fair utility ``U(y) = y^{1−α}/(1−α)`` (``log y`` for ``α = 1``); ``y > 0`` assumed."""
    return torch.log(y) if alpha == 1.0 else y.pow(1.0 - alpha) / (1.0 - alpha)


def alpha_fair_weights(G: Tensor, alpha: float, *, iterations: int | None = None) -> Tensor:
    """α-fair weights (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024).

    Solves ``(G w)_i = w_i^{-1/α}`` for ``w > 0``: the stationarity condition of FairGrad's
    α-fair utility maximisation under the ansatz ``d = Σ_i w_i g_i`` (``α = 1`` is Nash-MTL's
    ``w_i (Gw)_i = 1``). Tasks whose gradient is numerically zero (``G_ii ≤ 1e-12·max_j G_jj``)
    have no solution (``0 = w_i^{-1/α}``): they are dead, get ``w_i = 0`` and are left out.

    Args:
        G: Gram matrices ``[..., K, K]``, any float dtype and device.
        alpha: the fairness parameter, finite and > 0.
        iterations: Newton iterations (default :func:`default_alpha_fair_iterations`).

    Returns:
        ``w`` as ``[..., K]`` float64 on G's device.

    Algorithm. With ``y = Jd`` (each task's first-order progress ``g_iᵀd``) the system reads
    ``w = y^{-α}``, ``d = Jᵀw``: it is the maximiser of the concave
    ``Φ(z) = Σ_i U((Gz)_i) − ½ zᵀGz`` (``d = Jᵀz``, ``U(y) = y^{1−α}/(1−α)``, ``log y`` for
    ``α = 1``) over ``Gz > 0``. Working with ``y`` instead of ``w`` matters: for large α the
    solution's weights span tens of decades (``w = y^{-α}``) while ``y`` spans a few. The steps:

    * scale: ``Ĝ = G/s²`` (``s`` the largest gradient norm; dead tasks become decoupled identity
      rows); the answer for G is ``s^{-2α/(α+1)}`` times the one for Ĝ;
    * start: ``z = t·w_mgda``, the min-norm weights of :func:`min_norm_simplex` (whose point
      satisfies ``g_iᵀd ≥ ‖d‖² > 0`` for every task, so the start is strictly feasible), with the
      exact maximiser ``t`` of Φ along that ray. A min-norm ``‖d*‖² ≤ NO_SOLUTION_TOL·max ‖g_i‖²``
      means 0 is (numerically) in the convex hull: a Pareto-stationary input, where no direction
      improves every task and the system has no solution; ``w = 0`` is returned then;
    * Newton on Φ: with ``D = diag(α y^{-α-1})`` the system ``(ĜDĜ + Ĝ)Δz = Ĝ(y^{-α} − z)`` is
      solved by ``Δz = D^{½} M⁻¹ D^{-½}(y^{-α} − z)``, ``M = D^{½}ĜD^{½} + I ≥ I`` (always
      factorisable, also for singular Ĝ); a parallel line search over
      ``t ∈ {1, ½, …, 2⁻⁹, 1/(1+λ), 0}`` keeps the feasible candidate of largest Φ, and once the
      Newton decrement ``λ < 1/4`` the full step is taken without comparing Φ, whose increase is
      then below its own rounding (as in :func:`fastmtl.solvers.nash_weights`);
    * ``w = y^{-α}`` from the final ``y = Ĝz``.

    Accuracy, measured as ``‖Jᵀ(w − w*)‖/‖Jᵀw*‖`` against a 120-iteration run on the test families
    (Gaussian, conflicting, aligned, rank-deficient, zero rows, norms spread over four decades),
    float64: at the default iterations ≤ 1e-11 for α ∈ [0.5, 10] and K ≤ 16, 1e-7 at K = 32; the
    official least-squares root, where it converges, agrees to 1e-13. Small α converges more
    slowly where the norms differ (α = 0.2: ≤ 1e-12 up to K = 8 but 2e-2 at K = 16): raise
    ``iterations`` there. For such α the exact root can also have ``y_i = g_iᵀd`` below the
    Gram's rounding (``|y_i| ≪ eps·max G_jj``); then no float64 method resolves ``w_i``.
    """
    alpha = float(alpha)
    Gs = symmetric64(G)
    K = Gs.shape[-1]
    if iterations is None:
        iterations = default_alpha_fair_iterations(K)
    dtype, device = Gs.dtype, Gs.device
    eye = torch.eye(K, dtype=dtype, device=device)

    diag = torch.diagonal(Gs, dim1=-2, dim2=-1)
    top = diag.amax(-1, keepdim=True)
    dead = diag <= 1e-12 * top  # also true for every task of an all-zero G
    s2 = torch.where(top > 0, top, 1.0)
    Gh = torch.where(dead.unsqueeze(-1) | dead.unsqueeze(-2), eye, Gs / s2.unsqueeze(-1))

    w0 = min_norm_simplex(Gh)
    y0 = matvec(Gh, w0)
    q0 = (w0 * y0).sum(-1)
    live_any = (~dead).any(-1)
    # Dead tasks are identity rows: their coordinates are positive whatever the live ones do.
    solvable = live_any & (q0 > NO_SOLUTION_TOL) & (y0 > 0).all(-1)
    y0 = torch.where(solvable.unsqueeze(-1), y0, 1.0)
    q0 = torch.where(solvable, q0, 1.0)
    w0 = torch.where(solvable.unsqueeze(-1), w0, 1.0)
    ray = (y0.pow(1.0 - alpha).sum(-1) / q0).pow(1.0 / (1.0 + alpha))
    z = w0 * ray.unsqueeze(-1)

    def phi(zc):
        yc = matvec(Gh.unsqueeze(-3), zc)
        ok = (yc > 0).all(-1)
        val = _utility(torch.where(yc > 0, yc, 1.0), alpha).sum(-1) - 0.5 * (zc * yc).sum(-1)
        return torch.where(ok & torch.isfinite(val), val, -torch.inf)

    t_fixed = 2.0 ** -torch.arange(_HALVINGS, dtype=dtype, device=device)
    for _ in range(iterations):
        y = matvec(Gh, z).clamp(min=torch.finfo(dtype).tiny)
        w = y.pow(-alpha)
        dh = torch.sqrt(alpha * w / y)
        M = dh.unsqueeze(-1) * Gh * dh.unsqueeze(-2) + eye
        L, info = torch.linalg.cholesky_ex(M)
        step = dh * torch.cholesky_solve(((w - z) / dh).unsqueeze(-1), L).squeeze(-1)
        lam = torch.sqrt((matvec(Gh, w - z) * step).sum(-1).clamp(min=0.0))
        t = torch.cat([t_fixed.expand(lam.shape + (_HALVINGS,)), (1.0 / (1.0 + lam)).unsqueeze(-1),
                       torch.zeros_like(lam).unsqueeze(-1)], dim=-1)
        cand = z.unsqueeze(-2) + t.unsqueeze(-1) * step.unsqueeze(-2)
        val = torch.where((info == 0).unsqueeze(-1), phi(cand), -torch.inf)
        j = val.argmax(-1, keepdim=True)
        new = torch.gather(cand, -2, j.unsqueeze(-1).expand(j.shape + (K,))).squeeze(-2)
        full = z + step
        quad = (lam < 0.25) & (info == 0) & torch.isfinite(full).all(-1) & (matvec(Gh, full) > 0).all(-1)
        new = torch.where(quad.unsqueeze(-1), full, new)
        keep = (quad | torch.isfinite(torch.gather(val, -1, j)).squeeze(-1)) & torch.isfinite(new).all(-1)
        z = torch.where(keep.unsqueeze(-1), new, z)

    y = matvec(Gh, z)
    w = torch.where(y > 0, y, 1.0).pow(-alpha) * s2.pow(-alpha / (alpha + 1.0))
    return torch.where(dead | ~solvable.unsqueeze(-1), 0.0, w)
