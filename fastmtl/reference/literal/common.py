"""Helpers the literal oracles share: float64 conversion, exact small simplex problems.

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import itertools
import math

import torch

__all__ = ["as64", "vdot", "task_rows", "rms_row_norm", "gram_literal", "combine_rows", "simplex_candidates", "to_simplex", "min_norm_weights"]


def as64(J) -> torch.Tensor:
    J = torch.as_tensor(J).detach().to(device="cpu", dtype=torch.float64)
    if J.dim() != 2:
        raise ValueError(f"J must be a [K, D] matrix, got shape {tuple(J.shape)}")
    if J.shape[0] < 1:
        raise ValueError("J must have at least one row (K ≥ 1)")
    return J


def vdot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b))


def task_rows(J: torch.Tensor):
    return [J[i].clone() for i in range(J.shape[0])]


def rms_row_norm(J: torch.Tensor) -> float:
    K = J.shape[0]
    return math.sqrt(sum(vdot(J[i], J[i]) for i in range(K)) / K)


def gram_literal(J) -> torch.Tensor:
    """``G[i, j] = ⟨g_i, g_j⟩`` by explicit pairwise dot products (float64, exactly symmetric)."""
    J = as64(J)
    K = J.shape[0]
    G = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in range(i, K):
            G[i, j] = G[j, i] = vdot(J[i], J[j])
    return G


def combine_rows(J: torch.Tensor, w) -> torch.Tensor:
    """``Σ_i w_i g_i`` accumulated row by row."""
    d = torch.zeros(J.shape[1], dtype=torch.float64)
    for i in range(J.shape[0]):
        wi = float(w[i])
        if wi != 0.0:
            d += wi * J[i]
    return d


def simplex_candidates(Q, rhs_linear=None, *, allowed=None, max_size=None):
    """Solutions of the equality-constrained KKT systems of every support of the simplex.

    For each non-empty support ``S`` (a subset of ``allowed``, default all of ``0..K-1``, of at
    most ``max_size`` elements) this solves

        [Q_SS  1] [x_S]   [b_S]
        [1ᵀ    0] [ ν ] = [ c ]

    for the right-hand sides ``(b, c) = (0, 1)`` and, when ``rhs_linear`` (a ``[K]`` vector ``a``)
    is given, ``(b, c) = (−a, 0)``. Returns ``(supports, X0, X1)`` with ``supports`` a boolean
    ``[M, K]`` array and ``X0``/``X1`` ``[M, K]`` arrays (zero outside the support; ``X1`` is None
    without ``rhs_linear``). Singular systems are solved in the least-squares sense; callers only
    use the candidates to build *feasible* points and keep the one of least objective, so an
    inaccurate candidate can never be selected over the exact optimum.
    """
    import numpy as np

    Q = np.asarray(Q, dtype=np.float64)
    K = Q.shape[0]
    allowed = list(range(K)) if allowed is None else [int(i) for i in allowed]
    max_size = len(allowed) if max_size is None else min(int(max_size), len(allowed))
    supports, X0s, X1s = [], [], []
    if max_size < 1:
        empty = np.zeros((0, K))
        return np.zeros((0, K), dtype=bool), empty, (empty if rhs_linear is not None else None)
    for size in range(1, max_size + 1):
        subsets = np.array(list(itertools.combinations(allowed, size)), dtype=np.int64)
        M = subsets.shape[0]
        A = np.zeros((M, size + 1, size + 1))
        A[:, :size, :size] = Q[subsets[:, :, None], subsets[:, None, :]]
        A[:, :size, size] = 1.0
        A[:, size, :size] = 1.0
        B = np.zeros((M, size + 1, 2))
        B[:, size, 0] = 1.0
        if rhs_linear is not None:
            a = np.asarray(rhs_linear, dtype=np.float64)
            B[:, :size, 1] = -a[subsets]
        try:
            X = np.linalg.solve(A, B)
        except np.linalg.LinAlgError:        # an exactly singular system in the batch
            X = np.linalg.pinv(A) @ B
        bad = ~np.isfinite(X).all(axis=(1, 2))
        if bad.any():
            X[bad] = np.linalg.pinv(A[bad]) @ B[bad]
        mask = np.zeros((M, K), dtype=bool)
        mask[np.arange(M)[:, None], subsets] = True
        full0 = np.zeros((M, K))
        full0[np.arange(M)[:, None], subsets] = X[:, :size, 0]
        supports.append(mask)
        X0s.append(full0)
        if rhs_linear is not None:
            full1 = np.zeros((M, K))
            full1[np.arange(M)[:, None], subsets] = X[:, :size, 1]
            X1s.append(full1)
    supports = np.concatenate(supports)
    X0 = np.concatenate(X0s)
    X1 = np.concatenate(X1s) if rhs_linear is not None else None
    return supports, X0, X1


def to_simplex(W):
    """Clip rows at 0 and renormalise to sum 1; rows that vanish become NaN (discarded)."""
    import numpy as np

    W = np.clip(W, 0.0, None)
    s = W.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = W / s
    out[~(s[:, 0] > 0)] = np.nan
    return out


def min_norm_weights(Q, rank=None):
    """Exact ``argmin_{w ∈ Δ} wᵀ Q w`` by support enumeration (Q PSD, any rank).

    With ``rank`` (the rank of the points), supports are limited to ``rank + 1`` points: an optimal
    point of the hull is a convex combination of affinely independent points (Carathéodory).
    """
    import numpy as np

    Q = np.asarray(Q, dtype=np.float64)
    K = Q.shape[0]
    scale = np.trace(Q) / K
    Qn = Q / scale if scale > 0 else Q
    # A zero point makes the minimum 0 (attained at its vertex, a candidate below); an optimal
    # support never needs it otherwise, and leaving it out avoids singular systems.
    nonzero = [i for i in range(K) if Qn[i, i] > 0]
    _, X0, _ = simplex_candidates(Qn, allowed=nonzero, max_size=None if rank is None else rank + 1)
    W = np.concatenate([to_simplex(X0), np.eye(K), np.full((1, K), 1.0 / K)])
    W = W[np.isfinite(W).all(axis=1)]
    obj = np.einsum("mi,ij,mj->m", W, Qn, W)
    return W[int(np.argmin(obj))]
