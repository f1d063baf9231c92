"""SDMGrad — Xiao, Ban, Ji, "Direction-oriented Multi-objective Learning: Simple and Provable
Stochastic Algorithms", NeurIPS 2023 (arXiv 2305.18409)."""

from __future__ import annotations

from typing import Optional

import torch

from ..solvers.simplex_projection import project_simplex
from .base import GramMethod
from .common import check_num_tasks, check_positive
from .registry import register_method


@register_method
class SDMGrad(GramMethod):
    """Stochastic direction-oriented multi-objective gradient (Xiao et al., NeurIPS 2023).

    The weights ``w`` on the simplex solve ``min_w ½‖g_w‖² + λ⟨g_w, g₀⟩`` (``g₀ = Σ w̃_k g_k``, the
    preferred direction, ``w̃ = 1/K`` by default) by ``n_iter`` steps of projected SGD with momentum
    (``torch.optim.SGD(lr, momentum)`` semantics, momentum restarted every call, ``w``
    warm-started from the previous call), on ``Â = A / s²``, ``s = mean_k √max(A_kk, 0)``:

        ``v ← μ v + Â (w + λ w̃)`` (``v = Â(w + λw̃)`` at the first iteration),  ``w ← Π_Δ(w − lr·v)``,

    then ``λ_out = (w + λ w̃)/(1 + λ)`` and ``d = Σ_k λ_out,k g_k``.

    Double sampling: the paper's ``A = J_ξ J_ξ'ᵀ`` pairs two independent minibatches and the
    direction uses a third (``ζ``): ``fastmtl.training.double_sampling_backward([l_ξ, l_ξ', l_ζ],
    shared, sdmgrad)`` (LibMTL's form). ``combine`` / ``fastmtl.backward`` is the single-sample
    form ``A = G`` (sharded under ``process_group`` like any Gram) — which is what the official
    code actually runs: its three gradient buffers are one tensor (``[torch.Tensor(...)] * 3``),
    so ``ξ``, ``ξ'`` and ``ζ`` all hold the last batch.

    Defaults: ``lambda_ = 0.3`` (the authors' experiments and LibMTL; the official class default
    is 0.6), ``n_iter = 20``, ``lr = 10``, ``momentum = 0.5`` (official code and TorchJD; LibMTL
    uses ``lr = 5``), ``eps = 1e-8`` added to ``s²`` (LibMTL and TorchJD; the official code adds
    1e-4 under the square roots instead). ``eps`` makes the inner solve scale-dependent for
    gradients of norm below ~1e-4 (λ stays near its start); ``eps = 0`` is scale-free (an all-zero
    ``A`` then leaves ``w`` where it is). Scale: **Σλ = 1** (LibMTL and TorchJD; the official code
    multiplies the direction by K "to match the sum loss" and clips its norm to 1).

    State: ``w`` (float64 ``[K]``, uniform before the first call). No epoch rule; :meth:`reset`
    returns to uniform. Heads: ``"sum"`` (plain per-task gradients, as the official code and
    LibMTL back-propagate them).

    Args:
        lambda_: pull towards the preferred direction ``g₀`` (≥ 0).
        n_iter: inner projected-SGD iterations (fixed count, on the device).
        lr, momentum: the inner SGD's step size (> 0) and momentum (in [0, 1)).
        pref_vector: ``w̃`` (K non-negative numbers, normalised to sum 1); default uniform.
        eps: added to ``s²`` in the normalisation (≥ 0).
    """

    uses_generator = False

    name = "sdmgrad"
    stateful = True
    head_weighting = "sum"
    #: Reads a cross Gram ``J₁J₂ᵀ`` of two independent samples (fastmtl.training.double_sampling_backward).
    accepts_cross_gram = True
    _state_attrs = ("_w",)

    def __init__(self, lambda_: float = 0.3, n_iter: int = 20, lr: float = 10.0, momentum: float = 0.5,
                 pref_vector=None, eps: float = 1e-8):
        self.lambda_ = check_positive("lambda_", lambda_)
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"n_iter must be an int ≥ 1, got {n_iter!r}")
        self.n_iter = n_iter
        self.lr = check_positive("lr", lr, allow_zero=False)
        self.momentum = check_positive("momentum", momentum)
        if self.momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.eps = check_positive("eps", eps)
        self.pref_vector: Optional[torch.Tensor] = None
        if pref_vector is not None:
            t = torch.as_tensor(pref_vector, dtype=torch.float64).detach().reshape(-1).cpu()
            if t.numel() == 0 or not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or float(t.sum()) <= 0:
                raise ValueError("pref_vector must hold finite non-negative numbers with a positive sum")
            self.pref_vector = t / t.sum()
        self.reset()

    def reset(self) -> None:
        """Back to uniform inner weights."""
        self._w: Optional[torch.Tensor] = None

    @property
    def inner_weights(self) -> Optional[torch.Tensor]:
        """The inner solution ``w`` of the last call (``None`` before the first)."""
        return self._w

    def weights(self, G, ctx):
        # G may be a cross Gram J_ξ J_ξ'ᵀ (not symmetric): used as it is.
        A = G.to(torch.float64)
        K = A.shape[0]
        check_num_tasks("SDMGrad", None if self._w is None else self._w.shape[0], K)
        if self.pref_vector is not None and self.pref_vector.shape[0] != K:
            raise ValueError(f"pref_vector has {self.pref_vector.shape[0]} entries for K={K} tasks")
        pref = (torch.full((K,), 1.0 / K, dtype=torch.float64, device=A.device) if self.pref_vector is None
                else self.pref_vector.to(A.device))
        s2 = torch.sqrt(torch.diagonal(A).clamp_min(0.0)).mean() ** 2 + self.eps
        # s² = 0 only with eps = 0 and A = 0: Â = 0 then (w stays), never 0/0.
        A_hat = A / torch.where(s2 > 0, s2, torch.ones_like(s2))
        w = (torch.full((K,), 1.0 / K, dtype=torch.float64, device=A.device) if self._w is None
             else self._w.to(A.device))
        target = self.lambda_ * pref
        v = None
        for _ in range(self.n_iter):
            grad = A_hat @ (w + target)
            v = grad if v is None else self.momentum * v + grad
            w = project_simplex(w - self.lr * v)
        self._w = w
        return (w + target) / (1.0 + self.lambda_)
