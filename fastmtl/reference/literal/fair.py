"""α-fair allocation: FairGrad (Ban & Ji, ICML 2024).

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import math

import torch

from .common import as64, combine_rows, gram_literal, min_norm_weights, vdot

__all__ = ["fairgrad_weights_literal", "fairgrad_literal"]


def _relative_residual(A, x, alpha):
    import numpy as np

    rhs = np.power(x, -1.0 / alpha)
    return float(np.max(np.abs(A @ x - rhs) / rhs))


def _newton_polish(A, x, alpha, steps: int = 30):
    """Newton on ``F(x) = A x − x^{-1/α}``, each step kept only if it lowers the relative residual."""
    import numpy as np

    best = _relative_residual(A, x, alpha)
    for _ in range(steps):
        r = A @ x - np.power(x, -1.0 / alpha)
        jac = A + np.diag(np.power(x, -1.0 / alpha - 1.0) / alpha)
        cand = x - np.linalg.solve(jac, r)
        if not np.all(cand > 0):
            break
        res = _relative_residual(A, cand, alpha)
        if not res < best:
            break
        x, best = cand, res
    return x, best


def _convex_program_weights(Jl, alpha):
    """``w = y^{-α}`` at the maximiser of ``Σ U_α(y_i) − ½‖d‖²``, ``y = J d``, by cvxpy (Clarabel)."""
    import cvxpy as cp
    import numpy as np

    Jn = Jl.numpy()
    d = cp.Variable(Jn.shape[1])
    y = Jn @ d
    if alpha == 1.0:
        utility = cp.sum(cp.log(y))
    elif alpha > 1.0:
        utility = -cp.sum(cp.power(y, 1.0 - alpha)) / (alpha - 1.0)
    else:
        utility = cp.sum(cp.power(y, 1.0 - alpha)) / (1.0 - alpha)
    cp.Problem(cp.Maximize(utility - 0.5 * cp.sum_squares(d))).solve(solver=cp.CLARABEL)
    if d.value is None:
        return None
    yv = Jn @ d.value
    return np.power(yv, -alpha) if np.all(yv > 0) else None


def fairgrad_weights_literal(J, alpha: float, *, zero_tol: float = 1e-12, stationary_tol: float = 1e-12,
                             official_tolerances: bool = False):
    """FairGrad's weights: ``w > 0`` with ``(G w)_i = w_i^{-1/α}`` (``G = J Jᵀ``), or ``None``.

    Test oracle following the official code (OptMN-Lab/fairgrad, ``methods/weight_methods.py``):
    ``scipy.optimize.least_squares`` on the residual ``G x − x^{-1/α}`` from ``x = 1/K`` with the
    bounds ``(0, ∞)``; with ``official_tolerances=True`` exactly that (scipy's default 1e-8
    tolerances) and nothing more. Otherwise it runs to ``xtol = ftol = gtol = 1e-15``, and since
    least squares stalls far from the root on hard inputs (large α with gradient norms of
    different orders, where the root's weights span tens of decades), a second candidate comes
    from the convex program FairGrad derives the system from — ``max Σ_i U_α(y_i) − ½‖d‖²``,
    ``y = Jd``, solved on the vectors in ``R^D`` by cvxpy (Clarabel), ``w = y^{-α}``; both are
    polished by Newton steps on the residual (numpy; the second only when the first stays above
    1e-12) and the one of smaller relative residual
    ``max_i |(Gw)_i − w_i^{-1/α}| / w_i^{-1/α}`` is returned. Differences from the official code,
    each where the official code has no answer: tasks with ``‖g_i‖² ≤ zero_tol·max_j ‖g_j‖²``
    (``0 = w^{-1/α}`` has no root) get ``w_i = 0`` and are left out; ``α = 0`` gives ``w = 1/K``
    (TorchJD's convention, linear scalarisation); when 0 is in the convex hull of the live
    gradients (exact min-norm point, ``‖d*‖² ≤ stationary_tol·max ‖g_i‖²``) no root exists and
    ``None`` is returned. Returns ``w`` as a float64 ``[K]`` tensor.
    """
    import numpy as np
    from scipy.optimize import least_squares

    J = as64(J)
    K = J.shape[0]
    if alpha == 0:
        return torch.full((K,), 1.0 / K, dtype=torch.float64)
    sq = [vdot(J[i], J[i]) for i in range(K)]
    top = max(sq)
    live = [i for i in range(K) if top > 0 and sq[i] > zero_tol * top]
    w = np.zeros(K)
    if not live:
        return torch.from_numpy(w)
    A = gram_literal(J[live]).numpy()
    mn = min_norm_weights(A)
    if float(mn @ A @ mn) <= stationary_tol * max(sq):
        return None
    k = len(live)

    def residual(x):
        return A @ x - np.power(x, -1.0 / alpha)

    tol = {} if official_tolerances else {"xtol": 1e-15, "ftol": 1e-15, "gtol": 1e-15, "max_nfev": 100000}
    x = least_squares(residual, np.ones(k) / k, bounds=(0, np.inf), **tol).x
    if not official_tolerances:
        x, best = _newton_polish(A, x, alpha)
        other = _convex_program_weights(J[live], alpha) if best > 1e-12 else None
        if other is not None:
            other, res = _newton_polish(A, other, alpha)
            if res < best:
                x = other
    w[live] = x
    return torch.from_numpy(w)


def fairgrad_literal(J, alpha: float = 1.0, *, max_norm: float = 1.0, multiply_by_k: bool = True,
                     official_tolerances: bool = False) -> torch.Tensor:
    """FairGrad, Ban & Ji, "Fair Resource Allocation in Multi-Task Learning" (ICML 2024).

    Test oracle of the official training step: ``w`` from :func:`fairgrad_weights_literal`,
    ``d = Σ_i w_i g_i``, multiplied by K (the official ``overwrite_grad``: "to match the sum
    loss") when ``multiply_by_k``, then clipped to global norm ``max_norm`` (the official
    ``clip_grad_norm_`` of the shared parameters; 0 disables). No root (0 in the convex hull of
    the gradients) gives ``d = 0``.
    """
    J = as64(J)
    K = J.shape[0]
    w = fairgrad_weights_literal(J, alpha, official_tolerances=official_tolerances)
    if w is None:
        return torch.zeros(J.shape[1], dtype=torch.float64)
    d = combine_rows(J, w)
    if multiply_by_k:
        d = K * d
    norm = math.sqrt(vdot(d, d))
    if max_norm > 0 and norm > max_norm:
        d = d * (max_norm / norm)
    return d
