"""Problems over the simplex of task weights, solved exactly: CAGrad's dual, MGDA's min-norm point.

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import math

import torch

from .common import as64, combine_rows, gram_literal, min_norm_weights, rms_row_norm, simplex_candidates, task_rows, to_simplex, vdot

__all__ = ["cagrad_weights", "cagrad_literal", "mgda_literal"]


def cagrad_weights(G, c: float, rank=None):
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
    max_size = None if rank is None else rank + 1      # Carathéodory, as in min_norm_weights
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
            cands.append(to_simplex(Y))
    cands.append(np.eye(K))
    cands.append(u[None, :])
    cands.append(min_norm_weights(Gn, rank)[None, :])
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
    J = as64(J)
    K = J.shape[0]
    if rescale not in (0, 1, 2):
        raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}")
    if c < 0:
        raise ValueError(f"c must be finite and ≥ 0, got {c}")
    g = task_rows(J)
    g0 = torch.zeros(J.shape[1], dtype=torch.float64)
    for gi in g:
        g0 += gi
    g0 /= K
    radius = c * math.sqrt(vdot(g0, g0))
    rms = rms_row_norm(J)
    d = g0.clone()
    if radius > 0.0 and rms > 0.0:
        w, _ = cagrad_weights(gram_literal(J).numpy(), c, int(torch.linalg.matrix_rank(J)))
        gw = combine_rows(J, w)
        ngw = math.sqrt(vdot(gw, gw))
        if ngw > 1e-8 * rms:
            d = g0 + (radius / ngw) * gw
    if rescale == 1:
        d = d / (1.0 + c * c)
    elif rescale == 2:
        d = d / (1.0 + c)
    if multiply_by_k:
        d = d * K
    return d


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

    J = as64(J)
    K = J.shape[0]
    if normalization not in ("none", "l2", "loss", "loss+"):
        raise ValueError(f"unknown normalization {normalization!r}")
    g = task_rows(J)
    norms = [math.sqrt(vdot(gi, gi)) for gi in g]
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
        w = min_norm_weights(Gt, int(torch.linalg.matrix_rank(J)))
    return combine_rows(J, w)
