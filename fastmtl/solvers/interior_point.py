"""Mehrotra primal-dual interior-point kernel for tiny convex QPs, batched and sync-free.

Solves, for every leading batch index,

    min_x ½ xᵀQx + cᵀx   s.t.  x ≥ 0            ("orthant")
    min_x ½ xᵀQx + cᵀx   s.t.  x ≥ 0, 1ᵀx = 1   ("simplex")

with Q symmetric positive semi-definite and of order-one scale (trace ≈ 1). Every routine runs a
fixed number of iterations with tensor-only control flow (``torch.where``, ``amin``, ``argmin`` and
gathers; ``cholesky_ex`` / ``solve_ex``, which never raise or synchronise), so it works unchanged on
any device, inside CUDA graphs and under ``torch.compile(fullgraph=True)``.

Each iteration is one Mehrotra predictor-corrector step on the Newton system

    (Q + diag(z/x)) Δx − Δy·1 = −r_d + r_c/x,     1ᵀΔx = −r_p,     Δz = (r_c − z∘Δx)/x

(``r_d = Qx + c − z − y·1`` the dual residual, ``r_p = 1ᵀx − 1`` the primal one), followed by a
*support polish*: the equality-constrained KKT system restricted to the estimated support
``S = {x_i > z_i}`` is solved directly and replaces the iterate when it is feasible and not worse.
Once the support is identified this makes the answer exact to rounding, which removes the slow tail
of the interior-point path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "symmetric64",
    "trace_normalized",
    "mehrotra_qp",
    "support_kkt_matrix",
    "support_polish",
    "max_step",
    "newton_direction",
    "quad_form",
    "matvec",
    "subset_masks",
]


def symmetric64(G: Tensor) -> Tensor:
    """``(G + Gᵀ)/2`` in float64 on G's device (a Gram accumulated in low precision or by a
    non-symmetric GEMM is symmetric only up to rounding)."""
    G = G.to(torch.float64)
    return 0.5 * (G + G.transpose(-1, -2))


def trace_normalized(G: Tensor) -> tuple[Tensor, Tensor]:
    """``(Ĝ, tr G)`` with ``Ĝ = G/tr(G)``, or ``Ĝ = G`` where the trace is not positive.

    Trace normalisation makes every downstream tolerance relative to ``‖J‖_F²`` and leaves the
    minimisers of the scale-invariant problems unchanged.
    """
    tr = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)
    pos = (tr > 0).unsqueeze(-1).unsqueeze(-1)
    scale = torch.where(pos, tr.unsqueeze(-1).unsqueeze(-1), 1.0)
    return G / scale, tr


def matvec(A: Tensor, x: Tensor) -> Tensor:
    """``A @ x`` for batched matrices ``[..., n, n]`` and vectors ``[..., n]``."""
    return (A @ x.unsqueeze(-1)).squeeze(-1)


def quad_form(A: Tensor, x: Tensor) -> Tensor:
    """``xᵀAx`` over the last dimension(s), batched."""
    return (matvec(A, x) * x).sum(-1)


def max_step(v: Tensor, dv: Tensor) -> Tensor:
    """Largest ``t ≥ 0`` keeping ``v + t·dv ≥ 0`` (``inf`` when no component decreases)."""
    neg = dv < 0
    # The denominator is replaced outside the mask so that no 0/0 is ever formed (harmless in the
    # forward pass, but it would poison gradients and trip anomaly detection).
    ratio = torch.where(neg, -v / torch.where(neg, dv, -torch.ones_like(dv)), math.inf)
    return ratio.amin(-1)


def subset_masks(K: int, device: torch.device | str | None = None) -> Tensor:
    """All ``2^K − 1`` non-empty subsets of ``{0..K−1}`` as a boolean ``[2^K − 1, K]`` tensor."""
    idx = torch.arange(1, 2**K, device=device)
    bits = torch.arange(K, device=device)
    return ((idx.unsqueeze(-1) >> bits) & 1).bool()


def support_kkt_matrix(Q: Tensor, S: Tensor, *, simplex: bool) -> Tensor:
    """KKT matrix of ``min ½xᵀQx + cᵀx`` restricted to the support ``S`` (boolean ``[..., K]``).

    Rows and columns outside ``S`` are replaced by identity rows, so a right-hand side that is 0
    there yields ``x_i = 0`` for ``i ∉ S``. With ``simplex=True`` the bordered matrix
    ``[[Q_SS, 1_S], [1_Sᵀ, 0]]`` of size ``K+1`` is returned (last unknown: the multiplier of
    ``1ᵀx = 1``). ``Q`` may broadcast against ``S`` (e.g. ``[..., 1, K, K]`` with ``[P, K]``).
    """
    Sf = S.to(Q.dtype)
    A = Q * (Sf.unsqueeze(-1) * Sf.unsqueeze(-2)) + torch.diag_embed(1.0 - Sf)
    if not simplex:
        return A
    col = Sf.unsqueeze(-1).expand(A.shape[:-1] + (1,))
    top = torch.cat([A, col], dim=-1)
    bottom = torch.cat([Sf.expand(A.shape[:-1]).unsqueeze(-2),
                        torch.zeros(A.shape[:-2] + (1, 1), dtype=Q.dtype, device=Q.device)], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def newton_direction(L: Tensor, x: Tensor, z: Tensor, r_d: Tensor, r_p: Tensor | None,
                     r_c: Tensor, m1: Tensor | None):
    """One primal-dual Newton direction for the complementarity target ``r_c``.

    ``L`` is the Cholesky factor of ``M = Q + diag(z/x) (+ δI)``; for the simplex, ``m1 = M⁻¹1``
    and ``r_p`` is the primal residual. Returns ``(Δx, Δy, Δz)`` (``Δy`` is ``None`` on the orthant).
    """
    h = -r_d + r_c / x
    Mh = torch.cholesky_solve(h.unsqueeze(-1), L).squeeze(-1)
    if m1 is None:
        dx, dy = Mh, None
    else:
        # 1ᵀM⁻¹1 > 0 whenever the factorisation succeeded (M is positive definite).
        dy = (-r_p - Mh.sum(-1)) / m1.sum(-1)
        dx = Mh + m1 * dy.unsqueeze(-1)
    dz = (r_c - z * dx) / x
    return dx, dy, dz


def _qp_objective(Q: Tensor, c: Tensor, x: Tensor) -> Tensor:
    return 0.5 * quad_form(Q, x) + (c * x).sum(-1)


def support_polish(Q: Tensor, c: Tensor, x: Tensor, z: Tensor, *, simplex: bool) -> Tensor:
    """Crossover step: solve the KKT system on ``S = {x_i > z_i}`` and keep it when it helps.

    The candidate is accepted when it is finite, non-negative (to ``1e-12`` relative, then clamped)
    and its objective does not exceed that of the iterate (renormalised onto the simplex in the
    simplex case). A wrong support or a singular restricted system therefore never makes the answer
    worse: the comparison is between two feasible points.
    """
    K = x.shape[-1]
    S = x > z
    if simplex:
        x_it = x / x.sum(-1, keepdim=True)
        rhs = torch.cat([torch.where(S, -c, 0.0),
                         torch.ones(x.shape[:-1] + (1,), dtype=x.dtype, device=x.device)], dim=-1)
    else:
        x_it = x
        rhs = torch.where(S, -c, 0.0)
    A = support_kkt_matrix(Q, S, simplex=simplex)
    sol, info = torch.linalg.solve_ex(A, rhs.unsqueeze(-1))
    xp = sol.squeeze(-1)[..., :K]
    tol = 1e-12 * torch.clamp(xp.abs().amax(-1), min=1.0)
    ok = (info == 0) & torch.isfinite(xp).all(-1) & (xp >= -tol.unsqueeze(-1)).all(-1)
    xp = torch.where(ok.unsqueeze(-1), xp, x_it).clamp(min=0.0)
    if simplex:
        total = xp.sum(-1, keepdim=True)
        ok = ok & (total.squeeze(-1) > 0)
        xp = torch.where(ok.unsqueeze(-1), xp / torch.where(total > 0, total, 1.0), x_it)
    take = ok & (_qp_objective(Q, c, xp) <= _qp_objective(Q, c, x_it))
    return torch.where(take.unsqueeze(-1), xp, x_it)


def mehrotra_qp(Q: Tensor, c: Tensor, *, simplex: bool, iterations: int,
                polish: bool = True) -> tuple[Tensor, Tensor]:
    """Mehrotra predictor-corrector interior point for ``min ½xᵀQx + cᵀx`` on the orthant/simplex.

    Args:
        Q: ``[..., K, K]`` symmetric PSD (float64 recommended), trace of order one.
        c: ``[..., K]``.
        simplex: add the constraint ``1ᵀx = 1``.
        iterations: fixed number of predictor-corrector steps (no early exit).
        polish: finish with :func:`support_polish`.

    Returns:
        ``(x, z)``: the primal solution (exactly feasible when polished) and the final dual slacks
        (useful as a warm start or to read the support).

    Start: simplex ``x = 1/K``, ``y = min(Qx + c) − 1/K``, ``z = Qx + c − y`` (dual feasible with
    ``z ≥ 1/K``); orthant ``x = 1``, ``z = max(Qx + c, 0) + 1``. Steps use a fraction 0.99 of the
    distance to the boundary; a step is skipped (length 0) wherever the factorisation failed or
    the direction is not finite, so a singular or degenerate batch entry never contaminates the
    iterate with NaN.
    """
    dtype, device = Q.dtype, Q.device
    K = Q.shape[-1]
    finfo = torch.finfo(dtype)
    eps = finfo.eps
    floor = math.sqrt(finfo.tiny)  # keeps x, z > 0 so that z/x and r_c/x stay finite
    delta = 1e3 * eps              # shift that keeps M numerically positive definite
    mu_min = (10.0 * eps) ** 2     # centring floor: the path stops short of exact complementarity
    batch = torch.broadcast_shapes(Q.shape[:-2], c.shape[:-1])
    Q = Q.expand(batch + (K, K))
    c = c.expand(batch + (K,))
    eye = torch.eye(K, dtype=dtype, device=device)
    ones = torch.ones(batch + (K,), dtype=dtype, device=device)

    if simplex:
        x = ones / K
        g = matvec(Q, x) + c
        y = g.amin(-1) - 1.0 / K
        z = g - y.unsqueeze(-1)
    else:
        x = ones
        z = torch.clamp(matvec(Q, x) + c, min=0.0) + 1.0
        y = None

    for _ in range(iterations):
        r_d = matvec(Q, x) + c - z
        if simplex:
            r_d = r_d - y.unsqueeze(-1)
            r_p = x.sum(-1) - 1.0
        else:
            r_p = None
        mu = (x * z).sum(-1) / K
        M = Q + torch.diag_embed(z / x) + delta * eye
        L, info = torch.linalg.cholesky_ex(M)
        ok = info == 0

        # Predictor (affine scaling). On the simplex, M⁻¹1 is solved in the same call.
        rc_a = -x * z
        h_a = -r_d + rc_a / x
        if simplex:
            sol = torch.cholesky_solve(torch.stack([h_a, ones], dim=-1), L)
            Mh, m1 = sol[..., 0], sol[..., 1]
            dy_a = (-r_p - Mh.sum(-1)) / m1.sum(-1)
            dx_a = Mh + m1 * dy_a.unsqueeze(-1)
        else:
            m1 = None
            dx_a = torch.cholesky_solve(h_a.unsqueeze(-1), L).squeeze(-1)
        dz_a = (rc_a - z * dx_a) / x
        a_a = torch.clamp(torch.minimum(max_step(x, dx_a), max_step(z, dz_a)), max=1.0)
        a_a = torch.nan_to_num(a_a, nan=0.0).unsqueeze(-1)
        mu_a = ((x + a_a * dx_a) * (z + a_a * dz_a)).sum(-1) / K
        sigma = torch.nan_to_num(torch.clamp(mu_a / mu, min=0.0, max=1.0), nan=1.0) ** 3

        # Corrector with the second-order term and the centring target.
        target = torch.clamp(sigma * mu, min=mu_min).unsqueeze(-1)
        rc = -x * z - torch.nan_to_num(dx_a * dz_a) + target
        dx, dy, dz = newton_direction(L, x, z, r_d, r_p, rc, m1)

        alpha = torch.clamp(0.99 * torch.minimum(max_step(x, dx), max_step(z, dz)), max=1.0)
        valid = ok & torch.isfinite(dx).all(-1) & torch.isfinite(dz).all(-1) & torch.isfinite(alpha)
        if simplex:
            valid = valid & torch.isfinite(dy)
        alpha = torch.where(valid, alpha, 0.0)
        vmask = valid.unsqueeze(-1)
        # Zero the direction too: 0·NaN would still be NaN.
        x = torch.clamp(x + alpha.unsqueeze(-1) * torch.where(vmask, dx, 0.0), min=floor)
        z = torch.clamp(z + alpha.unsqueeze(-1) * torch.where(vmask, dz, 0.0), min=floor)
        if simplex:
            y = y + alpha * torch.where(valid, dy, 0.0)

    if polish:
        x = support_polish(Q, c, x, z, simplex=simplex)
    elif simplex:
        x = x / x.sum(-1, keepdim=True)
    return x, z
