"""Paper-form ("literal") algorithms: slow, float64 test oracles for the Gram-space methods.

Every function here transcribes one paper's algorithm as it is written, on the task gradient
*vectors* (the rows ``g_i`` of ``J``, shape ``[K, D]``), with explicit Python loops over tasks
wherever the paper has them. Nothing here is meant to be fast, to run on a GPU or to be traced:
these functions exist so that the fast Gram-space methods of :mod:`fastmtl.methods`
(``G = J Jᵀ → λ → d = Jᵀλ``) can be checked against an independent transcription.

Conventions shared by all functions:

* ``J`` is converted to a float64 CPU tensor; the returned direction ``d`` is a float64 ``[D]``
  tensor (the combined update direction, descent convention: ``θ ← θ − η d``).
* Small convex sub-problems (CAGrad's dual, MGDA's min-norm point, the dual-cone projections of
  UPGrad / DualProj) are solved *exactly* (support enumeration, or quadprog on the primal problem
  in ``R^D``), never with an iteration-count-limited solver, so that the oracle is accurate to
  ~1e-8 relative or better.
* numpy / scipy / quadprog are imported inside the functions that need them.
"""

from __future__ import annotations

import itertools
import math
import torch

__all__ = [
    "pcgrad_literal",
    "wpcgrad_literal",
    "cagrad_literal",
    "mgda_literal",
    "imtl_g_literal",
    "upgrad_literal",
    "dualproj_literal",
    "aligned_mtl_literal",
    "hydalearn_literal",
    "gcosim_literal",
    "gram_literal",
    "simplex_candidates",
]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------

def _as64(J) -> torch.Tensor:
    J = torch.as_tensor(J).detach().to(device="cpu", dtype=torch.float64)
    if J.dim() != 2:
        raise ValueError(f"J must be a [K, D] matrix, got shape {tuple(J.shape)}")
    if J.shape[0] < 1:
        raise ValueError("J must have at least one row (K ≥ 1)")
    return J


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b))


def _rows(J: torch.Tensor):
    return [J[i].clone() for i in range(J.shape[0])]


def _rms_row_norm(J: torch.Tensor) -> float:
    K = J.shape[0]
    return math.sqrt(sum(_dot(J[i], J[i]) for i in range(K)) / K)


def gram_literal(J) -> torch.Tensor:
    """``G[i, j] = ⟨g_i, g_j⟩`` by explicit pairwise dot products (float64, exactly symmetric)."""
    J = _as64(J)
    K = J.shape[0]
    G = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in range(i, K):
            G[i, j] = G[j, i] = _dot(J[i], J[j])
    return G


def _combine(J: torch.Tensor, w) -> torch.Tensor:
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


def _to_simplex(W):
    """Clip rows at 0 and renormalise to sum 1; rows that vanish become NaN (discarded)."""
    import numpy as np

    W = np.clip(W, 0.0, None)
    s = W.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = W / s
    out[~(s[:, 0] > 0)] = np.nan
    return out


def _min_norm_weights(Q, rank=None):
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
    W = np.concatenate([_to_simplex(X0), np.eye(K), np.full((1, K), 1.0 / K)])
    W = W[np.isfinite(W).all(axis=1)]
    obj = np.einsum("mi,ij,mj->m", W, Qn, W)
    return W[int(np.argmin(obj))]


# ------------------------------------------------------------------------------------------------
# PCGrad and weighted PCGrad
# ------------------------------------------------------------------------------------------------

def pcgrad_literal(J, orders, *, eps: float = 1e-8, reduction: str = "sum") -> torch.Tensor:
    """PCGrad, Algorithm 1 of Yu et al., "Gradient Surgery for Multi-Task Learning" (NeurIPS 2020).

    Test oracle. For every task ``i``: ``p_i = g_i``; then for each other task ``j`` in the order
    ``orders[i]`` (a ``[K, K-1]`` long tensor), if ``⟨p_i, g_j⟩ < 0`` project ``p_i`` onto the
    normal plane of the *original* ``g_j``:
    ``p_i ← p_i − ⟨p_i, g_j⟩ / (‖g_j‖² + eps) · g_j``. Zero gradients ``g_j`` are skipped.
    ``d = Σ_i p_i`` (``reduction="sum"``, the paper) or the mean (``"mean"``).
    """
    J = _as64(J)
    K = J.shape[0]
    orders = torch.as_tensor(orders, dtype=torch.long).cpu()
    if tuple(orders.shape) != (K, K - 1):
        raise ValueError(f"orders must have shape ({K}, {K - 1}), got {tuple(orders.shape)}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    g = _rows(J)
    sq = [_dot(g[j], g[j]) for j in range(K)]
    projected = []
    for i in range(K):
        p = g[i].clone()
        for j in orders[i].tolist():
            if j == i:
                raise ValueError(f"orders[{i}] must list the other tasks only")
            if sq[j] == 0.0:
                continue
            s = _dot(p, g[j])
            if s < 0.0:
                p = p - (s / (sq[j] + eps)) * g[j]
        projected.append(p)
    d = torch.zeros(J.shape[1], dtype=torch.float64)
    for p in projected:
        d += p
    return d / K if reduction == "mean" else d


def wpcgrad_literal(J, order, *, project_against: str = "modified", eps: float = 1e-8) -> torch.Tensor:
    """Weighted PCGrad (probabilistic projection), Bohn et al., "Task Weighting through Gradient
    Projection for Multitask Learning" (ICONIP 2024) — priority-ordered one-sided projection.

    Test oracle of fastmtl's *reconstruction* of the paper's Algorithm 2 (no reference code exists):
    ``order`` is a permutation (``[K]`` long tensor) of the tasks from the highest to the lowest
    sampled priority. The first task's gradient stays intact; every following gradient ``x = g_{π_r}``
    is projected, in order ``s = 1..r−1``, against the already processed higher-priority vectors
    ``p̂_{π_s}`` (``project_against="modified"``) or against the original ``g_{π_s}``
    (``"original"``) whenever ``⟨x, ·⟩ < 0``: ``x ← x − ⟨x, v⟩ / (‖v‖² + eps) · v``; vectors with
    ``‖v‖² == 0`` are skipped. ``d = Σ_r p̂_{π_r}``.
    """
    J = _as64(J)
    K = J.shape[0]
    order = torch.as_tensor(order, dtype=torch.long).cpu().tolist()
    if sorted(order) != list(range(K)):
        raise ValueError(f"order must be a permutation of range({K}), got {order}")
    if project_against not in ("modified", "original"):
        raise ValueError(f"project_against must be 'modified' or 'original', got {project_against!r}")
    g = _rows(J)
    processed = []  # p̂ of the tasks already visited, highest priority first
    for r, task in enumerate(order):
        x = g[task].clone()
        for s in range(r):
            v = processed[s] if project_against == "modified" else g[order[s]]
            vv = _dot(v, v)
            if vv == 0.0:
                continue
            dot = _dot(x, v)
            if dot < 0.0:
                x = x - (dot / (vv + eps)) * v
        processed.append(x)
    d = torch.zeros(J.shape[1], dtype=torch.float64)
    for p in processed:
        d += p
    return d


# ------------------------------------------------------------------------------------------------
# CAGrad
# ------------------------------------------------------------------------------------------------

def _cagrad_weights(G, c: float, rank=None):
    """Exact ``w* = argmin_{w∈Δ} aᵀw + r·sqrt(wᵀGw)``, ``a = G·1/K``, ``r = c·sqrt(1ᵀG1)/K``.

    Returns ``(w*, F(w*))`` on the trace-normalised Gram (scale-free: w* does not depend on the
    scale of G). On a support S the KKT conditions with ``y = t·w`` (``t = r / ‖g_w‖``) read
    ``G_SS y − ν1 = −a_S``, ``1ᵀy = t``, ``yᵀG_SS y = r²``: linear in (y, ν) for fixed t, so
    ``y = y_a + t·y_b`` and t is a root of a quadratic. Every support's roots are turned into
    feasible simplex points and the one of least objective is kept, together with the vertices,
    the uniform point and the min-norm point (which attains F = 0 when 0 is in the hull).
    """
    import numpy as np

    G = np.asarray(G, dtype=np.float64)
    K = G.shape[0]
    scale = np.trace(G) / K
    Gn = G / scale if scale > 0 else G
    u = np.full(K, 1.0 / K)
    a = Gn @ u
    r = c * math.sqrt(max(float(u @ Gn @ u), 0.0))

    def objective(W):
        quad = np.einsum("mi,ij,mj->m", W, Gn, W)
        return W @ a + r * np.sqrt(np.clip(quad, 0.0, None))

    # Zero gradients never help when F* < 0 (moving weight onto them scales F towards 0); their
    # vertices (F = 0) are candidates below.
    nonzero = [i for i in range(K) if Gn[i, i] > 0]
    max_size = None if rank is None else rank + 1      # Carathéodory, as in _min_norm_weights
    supports, Yb, Ya = simplex_candidates(Gn, rhs_linear=a, allowed=nonzero, max_size=max_size)
    # Yb solves the (0, 1) right-hand side, Ya the (−a, 0) one
    alpha = np.einsum("mi,ij,mj->m", Yb, Gn, Yb)
    beta = np.einsum("mi,ij,mj->m", Ya, Gn, Yb)
    gamma = np.einsum("mi,ij,mj->m", Ya, Gn, Ya) - r * r
    cands = []
    with np.errstate(invalid="ignore", divide="ignore"):
        disc = np.sqrt(np.clip(beta * beta - alpha * gamma, 0.0, None))
        for sign in (1.0, -1.0):
            t = (-beta + sign * disc) / alpha
            t = np.where(np.abs(alpha) > 1e-300, t, -gamma / (2 * beta))
            ok = np.isfinite(t) & (t > 0)
            Y = Ya[ok] + t[ok, None] * Yb[ok]
            cands.append(_to_simplex(Y))
    cands.append(np.eye(K))
    cands.append(u[None, :])
    cands.append(_min_norm_weights(Gn, rank)[None, :])
    W = np.concatenate(cands)
    W = W[np.isfinite(W).all(axis=1)]
    F = objective(W)
    best = int(np.argmin(F))
    return W[best], float(F[best])


def cagrad_literal(J, c: float = 0.5, *, rescale: int = 1, multiply_by_k: bool = True) -> torch.Tensor:
    """CAGrad, Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning" (NeurIPS 2021).

    Test oracle following the official image-to-image code: ``g0 = (1/K) Σ g_i``; the dual
    ``w* = argmin_{w∈Δ} ⟨g_w, g0⟩ + c‖g0‖·‖g_w‖`` (``g_w = Σ w_i g_i``) is solved exactly (support
    enumeration, no iterative solver); ``d = g0 + c‖g0‖ / ‖g_w*‖ · g_w*``, then divided by
    ``1 + c²`` (``rescale=1``) or ``1 + c`` (``rescale=2``), not rescaled for ``rescale=0``, and
    multiplied by K when ``multiply_by_k`` (the official NYUv2 / Cityscapes write-back).

    Degenerate case (0 in the convex hull and no hull point at an angle > arccos(−c) with g0, so
    the minimiser has ``g_w* = 0`` and the primal direction is not unique): when
    ``‖g_w*‖ ≤ 1e-8 · rms_i ‖g_i‖``, ``d = g0`` before rescaling and ×K.
    """
    J = _as64(J)
    K = J.shape[0]
    if rescale not in (0, 1, 2):
        raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}")
    if c < 0:
        raise ValueError(f"c must be finite and ≥ 0, got {c}")
    g = _rows(J)
    g0 = torch.zeros(J.shape[1], dtype=torch.float64)
    for gi in g:
        g0 += gi
    g0 /= K
    radius = c * math.sqrt(_dot(g0, g0))
    rms = _rms_row_norm(J)
    d = g0.clone()
    if radius > 0.0 and rms > 0.0:
        w, _ = _cagrad_weights(gram_literal(J).numpy(), c, int(torch.linalg.matrix_rank(J)))
        gw = _combine(J, w)
        ngw = math.sqrt(_dot(gw, gw))
        if ngw > 1e-8 * rms:
            d = g0 + (radius / ngw) * gw
    if rescale == 1:
        d = d / (1.0 + c * c)
    elif rescale == 2:
        d = d / (1.0 + c)
    if multiply_by_k:
        d = d * K
    return d


# ------------------------------------------------------------------------------------------------
# MGDA
# ------------------------------------------------------------------------------------------------

def mgda_literal(J, *, normalization: str = "none", losses=None) -> torch.Tensor:
    """MGDA, Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization" (NeurIPS 2018).

    Test oracle: the min-norm point of the convex hull of the normalised gradients ``g_i / γ_i``
    (``γ_i = 1`` for ``"none"``, ``‖g_i‖`` for ``"l2"``, ``ℓ_i`` for ``"loss"``, ``ℓ_i·‖g_i‖`` for
    ``"loss+"``), solved exactly by support enumeration; the weights ``w*`` (``Σ w* = 1``) are then
    applied to the *unnormalised* gradients, as in the official training code:
    ``d = Σ_i w*_i g_i``. A zero gradient under ``"l2"``/``"loss+"`` normalisation is kept as the
    zero vector (its normalised point is 0).
    """
    import numpy as np

    J = _as64(J)
    K = J.shape[0]
    if normalization not in ("none", "l2", "loss", "loss+"):
        raise ValueError(f"unknown normalization {normalization!r}")
    g = _rows(J)
    norms = [math.sqrt(_dot(gi, gi)) for gi in g]
    if normalization in ("loss", "loss+"):
        if losses is None:
            raise ValueError(f"normalization={normalization!r} needs losses")
        ell = [float(x) for x in torch.as_tensor(losses, dtype=torch.float64).flatten()]
        if len(ell) != K:
            raise ValueError(f"losses must have {K} entries, got {len(ell)}")
        if any(not (x > 0) for x in ell):
            raise ValueError("loss normalisation needs positive losses")
    if normalization == "none":
        gamma = [1.0] * K
    elif normalization == "l2":
        gamma = norms
    elif normalization == "loss":
        gamma = ell
    else:
        gamma = [ell[i] * norms[i] for i in range(K)]
    normalised = [g[i] / gamma[i] if gamma[i] > 0 else torch.zeros_like(g[i]) for i in range(K)]
    Gt = gram_literal(torch.stack(normalised)).numpy()
    if not np.any(np.diag(Gt) > 0):
        w = np.full(K, 1.0 / K)
    else:
        w = _min_norm_weights(Gt, int(torch.linalg.matrix_rank(J)))
    return _combine(J, w)


# ------------------------------------------------------------------------------------------------
# IMTL-G
# ------------------------------------------------------------------------------------------------

def imtl_g_literal(J) -> torch.Tensor:
    """IMTL-G, Liu et al., "Towards Impartial Multi-task Learning" (ICLR 2021), closed form.

    Test oracle: ``d = Σ α_i g_i`` with ``Σ α = 1`` and equal projections ``⟨d, u_i⟩`` on every
    unit gradient ``u_i = g_i / ‖g_i‖``: with ``D = [g_0 − g_k]_{k≥1}`` and
    ``U = [u_0 − u_k]_{k≥1}`` (rows), ``α_{1:} = (g_0 Uᵀ)(D Uᵀ)⁻¹``, ``α_0 = 1 − Σ α_{1:}``.
    ``K = 1`` returns ``g_0``. Requires linearly independent, non-zero gradients (``D Uᵀ``
    invertible); a zero gradient raises ``ValueError``.
    """
    J = _as64(J)
    K = J.shape[0]
    g = _rows(J)
    if K == 1:
        return g[0].clone()
    norms = [math.sqrt(_dot(gi, gi)) for gi in g]
    if any(n == 0.0 for n in norms):
        raise ValueError("IMTL-G's closed form needs non-zero gradients")
    u = [g[i] / norms[i] for i in range(K)]
    Dm = torch.stack([g[0] - g[k] for k in range(1, K)])
    Um = torch.stack([u[0] - u[k] for k in range(1, K)])
    DU = torch.zeros(K - 1, K - 1, dtype=torch.float64)
    for a in range(K - 1):
        for b in range(K - 1):
            DU[a, b] = _dot(Dm[a], Um[b])
    gU = torch.tensor([_dot(g[0], Um[b]) for b in range(K - 1)], dtype=torch.float64)
    # row vector times inverse: α_{1:} DU = g0Uᵀ  ⇔  DUᵀ α_{1:}ᵀ = (g0Uᵀ)ᵀ
    alpha_rest = torch.linalg.solve(DU.T, gU)
    alpha = torch.cat([(1.0 - alpha_rest.sum()).reshape(1), alpha_rest])
    return _combine(J, alpha)


# ------------------------------------------------------------------------------------------------
# UPGrad / DualProj
# ------------------------------------------------------------------------------------------------

def _project_dual_cone_enumerated(J: torch.Tensor, T) -> list:
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
    return [_combine(J, best[k]) for k in range(n)]


def _project_dual_cone(J: torch.Tensor, T) -> list:
    """Euclidean projections of ``x_n = Jᵀ T[n] = Σ_i T[n, i] g_i`` onto ``{y ∈ R^D : J y ≥ 0}``.

    Primal QP ``min ½‖y‖² − xᵀy  s.t.  ĝ_iᵀ y ≥ 0`` solved by quadprog in float64, with the
    constraint rows normalised to unit length (the feasible set is unchanged) and exactly-zero rows
    dropped (their constraint is ``0 ≥ 0``). quadprog rejects degenerate constraint sets (e.g.
    ``g_2 = −g_1``, whose cone has an empty interior); those targets fall back to the exact
    active-set enumeration of :func:`_project_dual_cone_enumerated`.
    """
    import numpy as np
    import quadprog

    rows = []
    for i in range(J.shape[0]):
        n = math.sqrt(_dot(J[i], J[i]))
        if n > 0.0:
            rows.append((J[i] / n).numpy())
    out, failed = [], []
    for k, t in enumerate(T):
        x = _combine(J, t)
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
        fixed = _project_dual_cone_enumerated(J, [list(T[k]) for k in failed])
        for k, y in zip(failed, fixed):
            out[k] = y
    return out


def _pref(pref, K: int):
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
    J = _as64(J)
    K = J.shape[0]
    p = _pref(pref, K)
    d = torch.zeros(J.shape[1], dtype=torch.float64)
    targets = [[1.0 if k == i else 0.0 for k in range(K)] for i in range(K)]
    for i, y in enumerate(_project_dual_cone(J, targets)):
        if p[i] != 0.0:
            d += p[i] * y
    return d


def dualproj_literal(J, pref=None) -> torch.Tensor:
    """DualProj, Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization" (arXiv 2406.16232).

    Test oracle: the projection of the preference-weighted sum ``Σ_i pref_i g_i`` (``pref``
    defaults to ``1/K``, i.e. the mean gradient) onto the dual cone ``{x : J x ≥ 0}``, from the
    primal QP solved exactly (quadprog, float64, no regularisation).
    """
    J = _as64(J)
    K = J.shape[0]
    return _project_dual_cone(J, [_pref(pref, K)])[0]


# ------------------------------------------------------------------------------------------------
# Aligned-MTL
# ------------------------------------------------------------------------------------------------

def aligned_mtl_literal(J, *, scale_mode: str = "min") -> torch.Tensor:
    """Aligned-MTL, Senushkin et al., "Independent Component Alignment for Multi-Task Learning"
    (CVPR 2023), Algorithm 1.

    Test oracle: eigendecomposition of ``G = J Jᵀ`` (obtained from the SVD ``J = U S Vᵀ``: the
    eigenvalues are ``s²`` with eigenvectors ``U``, i.e. the same decomposition without squaring
    the condition number), keeping the eigenpairs with ``λ > λ_max · K · eps_float64`` (rank r);
    balance matrix ``B = σ · V_r Λ_r^{-1/2} V_rᵀ`` with ``σ = sqrt(λ_min)`` (``"min"``),
    ``sqrt(median λ)`` (``"median"``, lower median as ``torch.median``) or ``sqrt(mean λ)``
    (``"rmse"``) over the kept eigenvalues; aligned gradients ``J' = B J``; ``d = Σ_i J'_i``
    (the official scale: TorchJD's aggregator is ``d / K``). Rank 0 gives ``d = Σ_i g_i``.
    """
    J = _as64(J)
    K = J.shape[0]
    if scale_mode not in ("min", "median", "rmse"):
        raise ValueError(f"unknown scale_mode {scale_mode!r}")
    U, S, _ = torch.linalg.svd(J, full_matrices=False)
    lam = S * S                                   # eigenvalues of G, descending
    lam_max = float(lam.max()) if lam.numel() else 0.0
    tol = lam_max * K * torch.finfo(torch.float64).eps
    keep = [k for k in range(lam.numel()) if float(lam[k]) > tol]
    if not keep:
        return _combine(J, [1.0] * K)
    lam_r = lam[keep]
    V_r = U[:, keep]
    if scale_mode == "min":
        sigma2 = float(lam_r.min())
    elif scale_mode == "median":
        sigma2 = float(torch.median(lam_r))
    else:
        sigma2 = float(lam_r.mean())
    B = math.sqrt(sigma2) * (V_r @ torch.diag(lam_r.rsqrt()) @ V_r.T)
    aligned = [_combine(J, B[i]) for i in range(K)]          # rows of B J
    d = torch.zeros(J.shape[1], dtype=torch.float64)
    for row in aligned:
        d += row
    return d


# ------------------------------------------------------------------------------------------------
# HydaLearn (first order)
# ------------------------------------------------------------------------------------------------

def hydalearn_literal(J, *, main_task: int = 0, reference=None, normalize: str = "sum",
                      fallback: str = "main") -> torch.Tensor:
    """HydaLearn, Verboven et al., "HydaLearn: Highly Dynamic Task Weighting for Multi-task
    Learning with Auxiliary Tasks" (Applied Intelligence 2023), first-order gain rule.

    Test oracle of fastmtl's reconstruction: the main-task gain of task k is
    ``δ_k = ⟨v, g_k⟩`` with ``v = g_main`` (or the given ``reference`` vector). Weights follow
    the ratio rule ``w_i / w_j = δ_i / δ_j`` on the clipped gains ``δ⁺ = max(δ, 0)``:
    ``normalize="sum"``: ``w_k = δ⁺_k / Σ δ⁺``; ``normalize="main"``: ``w_main = 1``,
    ``w_k = δ⁺_k / δ_main`` (requires ``δ_main > 0``). When ``Σ δ⁺ == 0`` (or, for ``"main"``,
    ``δ_main ≤ 0``) the fallback applies: ``"main"`` → ``w = e_main``, ``"zero"`` → ``w = 0``.
    ``d = Σ_k w_k g_k``.
    """
    J = _as64(J)
    K = J.shape[0]
    if not (isinstance(main_task, int) and 0 <= main_task < K):
        raise ValueError(f"main_task={main_task!r} is out of range for K={K}")
    if normalize not in ("sum", "main"):
        raise ValueError(f"normalize must be 'sum' or 'main', got {normalize!r}")
    if fallback not in ("main", "zero"):
        raise ValueError(f"fallback must be 'main' or 'zero', got {fallback!r}")
    g = _rows(J)
    v = g[main_task] if reference is None else _as64(torch.as_tensor(reference).reshape(1, -1))[0]
    if v.shape[0] != J.shape[1]:
        raise ValueError("reference must have D entries")
    delta = [_dot(v, g[k]) for k in range(K)]
    pos = [max(x, 0.0) for x in delta]
    total = sum(pos)
    w = [0.0] * K
    use_fallback = total == 0.0 or (normalize == "main" and not delta[main_task] > 0.0)
    if use_fallback:
        if fallback == "main":
            w[main_task] = 1.0
    elif normalize == "sum":
        for k in range(K):
            w[k] = pos[k] / total
    else:
        for k in range(K):
            w[k] = 1.0 if k == main_task else pos[k] / delta[main_task]
    return _combine(J, w)


# ------------------------------------------------------------------------------------------------
# Nash-MTL, GradVac, ConFIG, DB-MTL, OL-AUX, GradNorm, GeMTL, FAMO
# ------------------------------------------------------------------------------------------------

__all__ += [
    "nash_mtl_literal",
    "gradvac_literal",
    "config_literal",
    "db_mtl_literal",
    "olaux_literal",
    "gradnorm_literal",
    "gemtl_literal",
    "famo_literal",
]


def nash_mtl_literal(J, *, zero_tol: float = 1e-12):
    """Nash-MTL bargaining weights, Navon et al., "Multi-Task Learning as a Bargaining Game"
    (ICML 2022): ``α > 0`` with ``α_i ⟨g_i, Σ_j α_j g_j⟩ = 1`` for every task.

    Test oracle. Tasks with ``‖g_i‖² ≤ zero_tol · max_j ‖g_j‖²`` get ``α_i = 0`` and are left out.
    For the others, with unit vectors ``u_i = g_i/‖g_i‖``, ``β = ‖g‖∘α`` is the minimiser of the
    strictly convex ``½‖Σ β_i u_i‖² − Σ log β_i`` (its stationarity condition is the bargaining
    condition), solved as a convex program with cvxpy (Clarabel, on the vectors in ``R^D``) and
    refined by three Newton steps on ``β∘(Cβ) = 1`` in numpy. Returns ``α`` as a float64 ``[K]``
    tensor, or ``None`` when no solution exists (0 in the convex hull of the gradients: the convex
    program is unbounded).
    """
    import cvxpy as cp
    import numpy as np

    J = _as64(J)
    K = J.shape[0]
    sq = [_dot(J[i], J[i]) for i in range(K)]
    top = max(sq)
    live = [i for i in range(K) if top > 0 and sq[i] > zero_tol * top]
    alpha = np.zeros(K)
    if not live:
        return torch.from_numpy(alpha)
    norms = np.array([math.sqrt(sq[i]) for i in live])
    U = np.stack([(J[i] / math.sqrt(sq[i])).numpy() for i in live])        # live unit gradients
    beta = cp.Variable(len(live))
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(U.T @ beta) - cp.sum(cp.log(beta))))
    try:
        problem.solve(solver=cp.CLARABEL)
    except cp.error.SolverError:
        return None
    if problem.status not in ("optimal", "optimal_inaccurate") or beta.value is None:
        return None
    b = np.asarray(beta.value, dtype=np.float64)
    C = U @ U.T
    if not np.all(np.isfinite(b)):
        return None
    for _ in range(3):                       # Newton on F(β) = β∘(Cβ) − 1
        Cb = C @ b
        F = b * Cb - 1.0
        Jac = np.diag(Cb) + b[:, None] * C
        try:
            b = b - np.linalg.solve(Jac, F)
        except np.linalg.LinAlgError:        # singular: the convex program had no true minimiser
            return None
    if not (np.all(np.isfinite(b)) and np.all(b > 0) and np.max(np.abs(b * (C @ b) - 1.0)) < 1e-8):
        return None
    alpha[live] = b / norms
    return torch.from_numpy(alpha)


def gradvac_literal(J, orders, targets, *, beta: float = 0.5, eps: float = 1e-8, blocks=None):
    """GradVac, Wang et al., "Gradient Vaccine" (ICLR 2021), in LibMTL's form (one step).

    Test oracle. For every task ``i``: ``p_i = g_i``; for each other task ``j`` in ``orders[i]``
    and each parameter block ``k`` (``blocks``: a list of ``(start, end)`` column ranges; default
    one block, the whole vector), with ``φ = ⟨p_i, g_j⟩ / (‖p_i‖‖g_j‖ + eps)`` on block ``k`` and
    the target ``φ̂ = targets[k, i, j]``: if ``φ < φ̂`` (and ``g_j ≠ 0`` on the block),
    ``p_i += g_j · ‖p_i‖(φ̂√(1−φ²) − φ√(1−φ̂²)) / (‖g_j‖√(1−φ̂²) + eps)`` on the block; then
    ``targets[k, i, j] ← (1−β)φ̂ + βφ``. ``d = Σ_i p_i``.

    ``targets`` is ``[K, K]`` (one block) or ``[B, K, K]``. Returns ``(d, new_targets)`` with the
    targets in the shape given.
    """
    J = _as64(J)
    K, D = J.shape
    orders = torch.as_tensor(orders, dtype=torch.long).cpu()
    T = torch.as_tensor(targets, dtype=torch.float64).cpu().clone()
    squeeze = T.dim() == 2
    if squeeze:
        T = T[None]
    blocks = [(0, D)] if blocks is None else [(int(s), int(e)) for s, e in blocks]
    if T.shape[0] != len(blocks):
        raise ValueError("one target matrix per block is needed")
    g = _rows(J)
    projected = []
    for i in range(K):
        p = g[i].clone()
        for j in orders[i].tolist():
            for k, (s, e) in enumerate(blocks):
                pi, gj = p[s:e], g[j][s:e]
                pn = math.sqrt(max(_dot(pi, pi), 0.0))
                gn = math.sqrt(_dot(gj, gj))
                den = pn * gn + eps
                phi = _dot(pi, gj) / den if den > 0 else 0.0
                tgt = float(T[k, i, j])
                if phi < tgt and gn > 0:
                    s_phi = math.sqrt(max(1.0 - phi * phi, 0.0))
                    s_tgt = math.sqrt(max(1.0 - tgt * tgt, 0.0))
                    w = pn * (tgt * s_phi - phi * s_tgt) / (gn * s_tgt + eps)
                    p[s:e] = pi + w * gj
                T[k, i, j] = (1.0 - beta) * tgt + beta * phi
        projected.append(p)
    d = torch.zeros(D, dtype=torch.float64)
    for p in projected:
        d += p
    return d, (T[0] if squeeze else T)


def config_literal(J, pref=None) -> torch.Tensor:
    """ConFIG, Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed
    Neural Networks" (ICLR 2025), with the official ``EqualWeight`` / ``ProjectionLength`` models.

    Test oracle: unit vectors ``u_i = g_i/‖g_i‖`` (zero rows stay zero), ``x`` = the minimum-norm
    least-squares solution of ``U x = w`` (``w = 1`` or ``pref``) by ``torch.linalg.lstsq``
    (``gelsd``), ``x̂ = x/‖x‖``, ``d = (Σ_i ⟨g_i, x̂⟩) x̂``; ``d = 0`` when ``x = 0``.
    """
    J = _as64(J)
    K, D = J.shape
    U = torch.zeros_like(J)
    for i in range(K):
        n = math.sqrt(_dot(J[i], J[i]))
        if n > 0:
            U[i] = J[i] / n
    w = torch.ones(K, dtype=torch.float64) if pref is None else torch.as_tensor(pref, dtype=torch.float64)
    x = torch.linalg.lstsq(U, w[:, None], driver="gelsd").solution[:, 0]
    xn = math.sqrt(_dot(x, x))
    if xn == 0.0:
        return torch.zeros(D, dtype=torch.float64)
    xhat = x / xn
    length = sum(_dot(J[i], xhat) for i in range(K))
    return length * xhat


def db_mtl_literal(J_steps, loss_steps, *, beta: float = 0.9, sigma: float = 0.0, eps: float = 1e-8) -> list:
    """DB-MTL, Lin et al., "Dual-Balancing for Multi-Task Learning" (arXiv 2308.12029), LibMTL form.

    Test oracle over several steps ``t = 1, 2, …`` (one ``[K, D]`` matrix and K losses per step):
    ``ĝ_i = g_i / (ℓ_i + eps)`` (gradient of ``log(ℓ_i + eps)``),
    ``M_i ← ĝ_i + (β / t^σ)(M_i − ĝ_i)`` (``M`` starts at 0),
    ``α_i = max_j ‖M_j‖ / (‖M_i‖ + eps)``, ``d_t = Σ_i α_i M_i``. Returns the list of ``d_t``.
    """
    out = []
    M = None
    for t, (J, losses) in enumerate(zip(J_steps, loss_steps), start=1):
        J = _as64(J)
        K = J.shape[0]
        losses = [float(v) for v in torch.as_tensor(losses, dtype=torch.float64).reshape(-1)]
        if M is None:
            M = [torch.zeros(J.shape[1], dtype=torch.float64) for _ in range(K)]
        c = beta / (t ** sigma)
        for i in range(K):
            g_hat = J[i] / (losses[i] + eps)
            M[i] = g_hat + c * (M[i] - g_hat)
        norms = [math.sqrt(_dot(M[i], M[i])) for i in range(K)]
        top = max(norms)
        d = torch.zeros(J.shape[1], dtype=torch.float64)
        for i in range(K):
            d += (top / (norms[i] + eps)) * M[i]
        out.append(d)
    return out


def olaux_literal(J_steps, *, main_task: int = 0, horizon: int = 5, lr: float = 0.1, model_lr: float = 0.01,
                  init_weight: float = 1.0, nonnegative: bool = False, optimizer: str = "sgd") -> list:
    """OL-AUX, Lin et al., "Adaptive Auxiliary Task Weighting for Reinforcement Learning"
    (NeurIPS 2019), Algorithm 1 with the first-order weight gradient.

    Test oracle over several steps: ``d_t = g_main + Σ_{k≠main} w_k g_k`` with the current weights;
    ``acc_k += ⟨g_main, g_k⟩``; every ``horizon`` steps the weight gradient ``−model_lr · acc`` is
    applied by ``torch.optim.SGD(lr)`` (or ``torch.optim.Adam(lr)``) to the auxiliary weights,
    ``acc`` is cleared, and with ``nonnegative`` the weights are clamped at 0. Returns the list of
    ``d_t``.
    """
    out = []
    w = acc = opt = None
    count = 0
    for J in J_steps:
        J = _as64(J)
        K = J.shape[0]
        if w is None:
            w = torch.nn.Parameter(torch.full((K,), float(init_weight), dtype=torch.float64))
            acc = [0.0] * K
            opt = (torch.optim.SGD([w], lr=lr) if optimizer == "sgd" else torch.optim.Adam([w], lr=lr))
        coeffs = [1.0 if k == main_task else float(w.detach()[k]) for k in range(K)]
        out.append(_combine(J, coeffs))
        for k in range(K):
            if k != main_task:
                acc[k] += _dot(J[main_task], J[k])
        count += 1
        if count == horizon:
            grad = torch.tensor([0.0 if k == main_task else -model_lr * acc[k] for k in range(K)],
                                dtype=torch.float64)
            opt.zero_grad()
            w.grad = grad
            opt.step()
            with torch.no_grad():
                w[main_task] = 1.0
                if nonnegative:
                    w.clamp_(min=0.0)
            acc = [0.0] * K
            count = 0
    return out


def gradnorm_literal(J_steps, loss_steps, *, alpha: float = 1.5, lr: float = 0.01, variant: str = "paper",
                     optimizer: str = "sgd", columns=None, initial_losses=None) -> list:
    """GradNorm, Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
    Multitask Networks" (ICML 2018), with autograd on the GradNorm loss.

    Test oracle over several steps. Weights ``w`` (``variant="paper"``: a parameter, init 1;
    ``"libmtl"``: ``w = K·softmax(s)`` with logits ``s``, init 0). Per step, with ``W`` the
    columns ``columns = (start, end)`` (default all): ``G_i = ‖w_i g_i^W‖``, the target
    ``mean_j G_j · r_i^α`` with ``r_i = (ℓ_i/ℓ_i(0)) / mean_j(ℓ_j/ℓ_j(0))`` is *detached*,
    ``L_grad = Σ_i |G_i − target_i|`` is differentiated by autograd and one ``torch.optim`` step
    (SGD or Adam, ``lr``) is taken; the paper variant then renormalises ``w ← K w/Σw`` (or resets
    ``w = 1`` when ``Σw ≤ 0``, fastmtl's documented guard). The
    direction of the step is ``d_t = Σ_i w_i(t) g_i`` with the weights before the update.
    ``ℓ(0)`` is ``initial_losses`` or the first step's losses. Returns the list of ``d_t``.
    """
    out = []
    param = opt = l0 = None
    for J, losses in zip(J_steps, loss_steps):
        J = _as64(J)
        K, D = J.shape
        s, e = (0, D) if columns is None else columns
        losses = torch.as_tensor(losses, dtype=torch.float64).reshape(-1).clone()
        if param is None:
            init = 1.0 if variant == "paper" else 0.0
            param = torch.nn.Parameter(torch.full((K,), init, dtype=torch.float64))
            opt = torch.optim.SGD([param], lr=lr) if optimizer == "sgd" else torch.optim.Adam([param], lr=lr)
            l0 = losses.clone() if initial_losses is None else torch.as_tensor(initial_losses, dtype=torch.float64)
        w = param if variant == "paper" else K * torch.softmax(param, 0)
        out.append(_combine(J, [float(v) for v in w.detach()]))
        Gw = torch.stack([torch.linalg.vector_norm(w[i] * J[i, s:e]) for i in range(K)])
        ratio = losses / l0
        r = ratio / ratio.mean()
        target = (Gw.mean() * r ** alpha).detach()
        L_grad = (Gw - target).abs().sum()
        opt.zero_grad()
        L_grad.backward()
        opt.step()
        if variant == "paper":
            with torch.no_grad():
                total = float(param.sum())
                if total > 0:
                    param.mul_(K / total)
                else:                        # fastmtl's guard: a non-positive sum resets to 1
                    param.fill_(1.0)
    return out


def gemtl_literal(losses, p: float, *, band: float = 0.1) -> torch.Tensor:
    """GeMTL: the weights ``λ = ∂M_p(ℓ)/∂ℓ`` of the generalized mean of positive losses.

    Test oracle: ``M_p = ((1/K) Σ ℓ_i^p)^{1/p}`` computed directly (not in log space), or the
    geometric mean ``(Π ℓ_i)^{1/K}`` when ``|p| < band``, differentiated by autograd in float64.
    Returns ``λ`` (float64 ``[K]``); the direction is ``Σ λ_i g_i``.
    """
    l = torch.as_tensor(losses, dtype=torch.float64).reshape(-1).clone().requires_grad_(True)
    K = l.shape[0]
    if abs(p) < band:
        M = torch.prod(l) ** (1.0 / K)
    else:
        M = (torch.sum(l ** p) / K) ** (1.0 / p)
    (grad,) = torch.autograd.grad(M, l)
    return grad.detach()


def famo_literal(loss_pairs, *, w_lr: float = 0.025, gamma: float = 1e-3, min_losses=None) -> list:
    """FAMO, Liu et al., "FAMO: Fast Adaptive Multitask Optimization" (NeurIPS 2023), in the form
    of the official code (float64).

    Test oracle over several steps; ``loss_pairs`` is a list of ``(losses, losses_after_step)``.
    Logits ``w`` (init 0) with ``torch.optim.Adam(lr=w_lr, weight_decay=gamma)``. Per step:
    ``z = softmax(w)``, ``D = ℓ − ℓ_min + 1e-8``, ``c = Σ z/D`` (detached); the weights are the
    autograd gradient of ``Σ_i z_i log D_i / c`` with respect to the losses. Then
    ``δ = log D(old) − log D(new)``, the logits gradient is the vector–Jacobian product of
    ``softmax`` with ``δ``, and one Adam step is taken. Returns the list of weight vectors.
    """
    out = []
    w = opt = None
    for losses, new_losses in loss_pairs:
        l = torch.as_tensor(losses, dtype=torch.float64).reshape(-1).clone().requires_grad_(True)
        K = l.shape[0]
        if w is None:
            w = torch.nn.Parameter(torch.zeros(K, dtype=torch.float64))
            opt = torch.optim.Adam([w], lr=w_lr, weight_decay=gamma)
        lmin = torch.zeros(K, dtype=torch.float64) if min_losses is None else torch.as_tensor(
            min_losses, dtype=torch.float64)
        z = torch.softmax(w, -1).detach()
        D = l - lmin + 1e-8
        c = (z / D).sum().detach()
        loss = (D.log() * z / c).sum()
        (lam,) = torch.autograd.grad(loss, l)
        out.append(lam.detach())
        new = torch.as_tensor(new_losses, dtype=torch.float64).reshape(-1)
        delta = (l.detach() - lmin + 1e-8).log() - (new - lmin + 1e-8).log()
        (g,) = torch.autograd.grad(torch.softmax(w, -1), w, grad_outputs=delta)
        opt.zero_grad()
        w.grad = g
        opt.step()
    return out


def gcosim_literal(J, *, main_task: int = 0) -> torch.Tensor:
    """GCosSim, Du et al., "Adapting Auxiliary Losses Using Gradient Similarity" (arXiv 1812.02224),
    unweighted version, per auxiliary task (the rule of the SLGrad repository's ``Gcosim``).

    Test oracle: ``cos_k = ⟨g_main, g_k⟩ / (‖g_main‖ ‖g_k‖)`` by explicit dot products (0 when a
    norm is 0); ``d = g_main + Σ_{k ≠ main, cos_k ≥ 0} g_k``.
    """
    J = _as64(J)
    K = J.shape[0]
    if not (isinstance(main_task, int) and 0 <= main_task < K):
        raise ValueError(f"main_task={main_task!r} is out of range for K={K}")
    g = _rows(J)
    nm = math.sqrt(_dot(g[main_task], g[main_task]))
    w = [0.0] * K
    for k in range(K):
        if k == main_task:
            w[k] = 1.0
            continue
        nk = math.sqrt(_dot(g[k], g[k]))
        cos = _dot(g[main_task], g[k]) / (nm * nk) if nm > 0.0 and nk > 0.0 else 0.0
        w[k] = 1.0 if cos >= 0.0 else 0.0
    return _combine(J, w)
