"""UPGrad and DualProj: projections onto the dual cone of the task gradients, solved exactly.

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import itertools
import math

import torch

from .common import as64, combine_rows, gram_literal, vdot

__all__ = ["project_dual_cone_enumerated", "project_dual_cone", "preference_vector", "upgrad_literal", "dualproj_literal"]


def project_dual_cone_enumerated(J: torch.Tensor, T) -> list:
    """Projections of ``x_n = Jᵀ T[n]`` onto ``{y : J y ≥ 0}`` by enumerating active sets (any rank).

    At the projection ``y*`` the KKT conditions give ``x − y* ∈ span{g_i : i ∈ A}`` and
    ``g_iᵀy* = 0`` on the active set ``A``, so ``y* = P_A x``, the orthogonal projection of ``x``
    onto the null space of ``J_A``. Every subset ``A`` of at most ``rank(J)`` tasks yields a
    candidate (larger subsets repeat a span); ``y*`` is the feasible candidate closest to ``x``.
    Candidates are computed in coefficient form (``P_A x = Jᵀ(t − E_A c_A)``, ``c_A = G_AA⁺ J_A x``)
    and the results are formed on the vectors. Used where quadprog rejects degenerate constraints.
    """
    import numpy as np

    K = J.shape[0]
    G = gram_literal(J).numpy()
    T = np.atleast_2d(np.asarray(T, dtype=np.float64))                  # [n, K]
    n = T.shape[0]
    norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
    JX = G @ T.T                                                        # [K, n]: J x_n
    nx = np.sqrt(np.clip(np.einsum("nk,kn->n", T, JX), 0.0, None))
    tol = 1e-9 * norms[:, None] * nx[None, :]                           # [K, n]
    rank = int(torch.linalg.matrix_rank(J))
    best = T.copy()
    best_dist = np.where(np.all(JX >= 0, axis=0), 0.0, np.inf)
    for size in range(1, rank + 1):
        subsets = np.array(list(itertools.combinations(range(K), size)), dtype=np.int64)
        GAA = G[subsets[:, :, None], subsets[:, None, :]]                # [M, s, s]
        rhs = JX[subsets]                                               # [M, s, n]
        c = np.linalg.pinv(GAA, rcond=1e-13, hermitian=True) @ rhs      # [M, s, n]
        GcolA = G[:, subsets].transpose(1, 0, 2)                        # [M, K, s]
        JY = JX[None] - GcolA @ c                                       # [M, K, n]
        dist = np.einsum("msn,msn->mn", rhs, c)                         # ‖x − P_A x‖²
        feasible = np.all(JY >= -tol[None], axis=1)                     # [M, n]
        dist = np.where(feasible, dist, np.inf)
        m = np.argmin(dist, axis=0)                                     # [n]
        for k in range(n):
            if dist[m[k], k] < best_dist[k]:
                best_dist[k] = dist[m[k], k]
                coeff = T[k].copy()
                np.subtract.at(coeff, subsets[m[k]], c[m[k], :, k])
                best[k] = coeff
    if not np.all(np.isfinite(best_dist)):
        raise RuntimeError("dual-cone projection: no feasible active set found")
    return [combine_rows(J, best[k]) for k in range(n)]


def project_dual_cone(J: torch.Tensor, T) -> list:
    """Euclidean projections of ``x_n = Jᵀ T[n] = Σ_i T[n, i] g_i`` onto ``{y ∈ R^D : J y ≥ 0}``.

    Primal QP ``min ½‖y‖² − xᵀy  s.t.  ĝ_iᵀ y ≥ 0`` solved by quadprog in float64, with the
    constraint rows normalised to unit length (the feasible set is unchanged) and exactly-zero rows
    dropped (their constraint is ``0 ≥ 0``). quadprog rejects degenerate constraint sets (e.g.
    ``g_2 = −g_1``, whose cone has an empty interior); those targets fall back to the exact
    active-set enumeration of :func:`project_dual_cone_enumerated`.
    """
    import numpy as np
    import quadprog

    rows = []
    for i in range(J.shape[0]):
        n = math.sqrt(vdot(J[i], J[i]))
        if n > 0.0:
            rows.append((J[i] / n).numpy())
    out, failed = [], []
    for k, t in enumerate(T):
        x = combine_rows(J, t)
        if not rows:
            out.append(x)
            continue
        xn = x.numpy().astype(np.float64)
        C = np.ascontiguousarray(np.stack(rows, axis=1))   # [D, m]: constraints Cᵀ y ≥ 0
        if np.all(C.T @ xn >= 0):
            out.append(x)
            continue
        try:
            y = quadprog.solve_qp(np.eye(xn.shape[0]), xn, C, np.zeros(C.shape[1]), 0)[0]
            out.append(torch.from_numpy(np.asarray(y, dtype=np.float64).copy()))
        except ValueError:
            out.append(None)
            failed.append(k)
    if failed:
        fixed = project_dual_cone_enumerated(J, [list(T[k]) for k in failed])
        for k, y in zip(failed, fixed):
            out[k] = y
    return out


def preference_vector(pref, K: int):
    if pref is None:
        return [1.0 / K] * K
    p = [float(v) for v in torch.as_tensor(pref, dtype=torch.float64).flatten()]
    if len(p) != K:
        raise ValueError(f"pref must have {K} entries, got {len(p)}")
    return p


def upgrad_literal(J, pref=None) -> torch.Tensor:
    """UPGrad, Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (arXiv 2406.16232).

    Test oracle: project every task gradient onto the dual cone ``{x : J x ≥ 0}`` by solving the
    primal QP ``min ‖x − g_i‖²  s.t.  J x ≥ 0`` exactly (quadprog, float64, no regularisation),
    then ``d = Σ_i pref_i · proj(g_i)`` with ``pref`` defaulting to ``1/K``.
    """
    J = as64(J)
    K = J.shape[0]
    p = preference_vector(pref, K)
    d = torch.zeros(J.shape[1], dtype=torch.float64)
    targets = [[1.0 if k == i else 0.0 for k in range(K)] for i in range(K)]
    for i, y in enumerate(project_dual_cone(J, targets)):
        if p[i] != 0.0:
            d += p[i] * y
    return d


def dualproj_literal(J, pref=None) -> torch.Tensor:
    """DualProj, Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (arXiv 2406.16232).

    Test oracle: the projection of the preference-weighted sum ``Σ_i pref_i g_i`` (``pref``
    defaults to ``1/K``, i.e. the mean gradient) onto the dual cone ``{x : J x ≥ 0}``, from the
    primal QP solved exactly (quadprog, float64, no regularisation).
    """
    J = as64(J)
    K = J.shape[0]
    return project_dual_cone(J, [preference_vector(pref, K)])[0]
