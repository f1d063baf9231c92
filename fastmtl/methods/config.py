"""ConFIG — Liu, Chu, Thuerey, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
Networks", ICLR 2025 (arXiv 2408.11104)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .base import GramMethod
from .common import check_positive, symmetric64
from .registry import register_method
from ..solvers import symmetric_eigh


@register_method
class ConFIG(GramMethod):
    """Conflict-free update (Liu, Chu, Thuerey, ICLR 2025): equal cosine to every task gradient.

    Paper / official form: with the unit gradients ``U = N⁻¹J`` (``N = diag(‖g_i‖)``; zero
    gradients give zero rows), solve ``U x = w`` in the least-squares, minimum-norm sense
    (``w = 1``, "EqualWeight"; or a preference ``pref``), normalise ``x̂ = x/‖x‖`` and rescale with
    the ``ProjectionLength`` model: ``d = (Σ_i ⟨g_i, x̂⟩) x̂``.

    Gram form (exact): ``x = U⁺w = Uᵀ(UUᵀ)⁺w = Jᵀc`` with ``c = N⁻¹ C⁺ w`` (``C`` the cosine
    matrix), ``‖x‖² = cᵀGc`` and ``Σ_i ⟨g_i, x⟩ = 1ᵀGc``, so ``λ = c · (1ᵀGc)/(cᵀGc)``.
    ``C⁺`` comes from an eigendecomposition of the K×K cosine matrix; eigenvalues below
    ``rcond · λ_max(C)`` are dropped (default 1e-10 for a float64 Gram, 1e-5 for a Gram accumulated
    in float32, about the rounding noise of the cosines; this corresponds to a singular-value cut of
    ``sqrt(rcond)`` on ``U``). Zero gradients get ``λ_i = 0``; if every gradient is zero (or ``x = 0``)
    ``λ = 0``. For K = 2 the official code's "simplified model" (sum of the unit components
    orthogonal to the other gradient) points along the same bisector, so the general formula is
    used for every K.

    Scale: ``‖d‖ = Σ_i ⟨g_i, x̂⟩`` (sum of the projections, the official default length model).
    """

    uses_generator = False

    name = "config"
    head_weighting = "sum"  # the official code: heads get their own task's gradient

    def __init__(self, pref: Optional[Sequence[float]] = None, rcond: Optional[float] = None):
        if pref is not None:
            pr = torch.as_tensor(pref, dtype=torch.float64).reshape(-1)
            if not bool(torch.isfinite(pr).all()):
                raise ValueError("pref must be finite")
            self.pref = pr
        else:
            self.pref = None
        self.rcond = None if rcond is None else check_positive("rcond", rcond)

    def weights(self, G, ctx):
        rcond = self.rcond
        if rcond is None:
            rcond = 1e-10 if G.dtype == torch.float64 else 1e-5
        noise = 64 * torch.finfo(G.dtype).eps  # rounding of C = normalised G, in its own dtype
        G = symmetric64(G)
        K = G.shape[0]
        if self.pref is None:
            w = torch.ones(K, dtype=G.dtype, device=G.device)
        else:
            if self.pref.shape[0] != K:
                raise ValueError(f"pref has {self.pref.shape[0]} entries for K={K} tasks")
            w = self.pref.to(G.device)
        diag = torch.diagonal(G).clamp_min(0.0)
        live = diag > 0
        n = torch.sqrt(torch.where(live, diag, 1.0))
        C = G / (n[:, None] * n[None, :])
        both = live[:, None] & live[None, :]
        C = torch.where(both, C, 0.0)
        evals, V = symmetric_eigh(C)
        cut = rcond * evals[-1].clamp_min(0.0)
        keep = evals > cut
        inv = torch.where(keep, 1.0 / torch.where(keep, evals, 1.0), 0.0)
        # The preference orthogonal to the kept eigenvectors up to rounding (e.g. tasks exactly
        # opposed along one direction, 1 ⟂ the sign pattern): no conflict-free direction exists and
        # the exact c is 0. Rounding-level components must not survive: λ below is invariant to the
        # scale of c and would turn them into an O(1) direction whose sign is chance.
        proj = V.T @ w
        proj = torch.where(proj.abs() > noise * w.abs().sum(), proj, 0.0)
        c = V @ (inv * proj)
        c = torch.where(live, c / n, 0.0)
        Gc = G @ c
        q = c @ Gc
        s = Gc.sum()
        ok = q > 0
        return torch.where(ok, c * (s / torch.where(ok, q, 1.0)), 0.0)
