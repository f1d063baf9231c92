"""PCD — priority-constrained descent, as TorchJD 0.18 defines it (``torchjd.aggregation.PCD``:
"Not All Objectives Are Born Equal: Priority-Constrained Descent for Hierarchical Multi-Objective
Optimization", TMLR 2026, arXiv 2606.29521)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .base import GramMethod
from .common import check_num_tasks, symmetric64
from .registry import register_method
from ..solvers.interior_point import mehrotra_qp

#: A secondary constraint counts as met when violated by at most this fraction of ``max_i ‖g̃_i‖²``.
FEASIBILITY_TOL = 1e-6


@register_method
class PCD(GramMethod):
    """Follow the primary gradient as closely as possible, guaranteeing each secondary task progress.

    Task 0 is the primary objective. With normalised gradients ``g̃_i = s_i g_i``,
    ``s_i = 1/sqrt(v̂_i + eps)`` (``v̂_i`` the bias-corrected EMA of ``‖g_i‖²`` over the calls,
    decay ``beta``):

        ``d̃ = argmin_d ½‖d − g̃_0‖²``  s.t.  ``g̃_jᵀd ≥ τ_j ‖g̃_j‖²`` for every secondary ``j ≥ 1``,

    and ``d = d̃ · ‖g_0‖/‖d̃‖``: the output has the primary gradient's norm. By the KKT conditions
    ``d̃ = g̃_0 + Σ_j μ_j g̃_j`` with ``μ ≥ 0`` the minimiser of the dual
    ``½μᵀG̃_{SS}μ − bᵀμ``, ``b_j = τ_j G̃_jj − G̃_j0``, over ``μ ≥ 0`` (``G̃`` the normalised Gram, S
    the secondaries): solved on the device by the fixed-iteration interior point of
    :func:`fastmtl.solvers.mehrotra_qp` with its support polish (TorchJD: Goldfarb–Idnani active
    set on the CPU; same minimiser). ``λ = [1, μ]·s·‖g_0‖/‖d̃‖``.

    Special cases (TorchJD's): ``g_0 = 0`` gives ``λ = 0``; infeasible constraints (possible for
    K ≥ 3, e.g. two opposite secondaries) drop them all, ``d = g_0`` — detected here, without
    branching, as a dual solution whose constraints are still violated by more than
    ``FEASIBILITY_TOL·max_i G̃_ii``; ``d̃ = 0`` up to the rounding of the Gram
    (``‖d̃‖² ≤ 10·eps_G·(Σ|w_i|‖g̃_i‖)²``, ``eps_G`` the Gram's machine epsilon) gives ``λ = 0``.

    Args:
        tau: the guaranteed fraction ``τ ∈ [0, 1]`` of normalised first-order progress, one float
            for every secondary task or a sequence of K − 1 values (default 0.02).
        beta: EMA decay in ``[0, 1)`` (default 0.999).
        eps: added to ``v̂`` before the inverse square root, ≥ 0 (default 1e-8).
        iterations: interior-point iterations (default 24).

    Scale: ``‖d‖ = ‖g_0‖``. Not symmetric in the tasks: **task 0 is the primary**.
    State: the EMA of the squared gradient norms (float64 ``[K]``) and the step count (a float64
    scalar tensor, so that a compiled step does not specialise on it); both are
    updated on every call, also when ``g_0 = 0``. :meth:`reset` clears them (TorchJD also clears
    them when K changes; here a stateful instance keeps one K). A non-finite Gram reaches the
    method as zeros (the pipeline's NaN policy, λ = NaN) and so enters the EMA as zero norms,
    where TorchJD leaves the EMA unchanged.
    """

    uses_generator = False
    head_weighting = "sum"  # TorchJD's mtl_backward: heads get their own task's gradient
    stateful = True
    _state_attrs = ("_sq_norm_ema", "_steps")

    name = "pcd"

    def __init__(self, tau: Union[float, Sequence[float]] = 0.02, beta: float = 0.999, eps: float = 1e-8,
                 iterations: int = 24):
        if isinstance(tau, (int, float)) and not isinstance(tau, bool):
            tau_f = float(tau)
            if not 0.0 <= tau_f <= 1.0:
                raise ValueError(f"tau must be in [0, 1], got {tau}")
            self.tau: Union[float, tuple] = tau_f
        else:
            try:
                t = torch.as_tensor(tau, dtype=torch.float64).detach()
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"tau must be a float or a sequence of floats, got {type(tau).__name__}") from None
            if t.dim() != 1:
                raise ValueError(f"tau must be a float or a 1-D sequence (one value per secondary task), got shape "
                                 f"{tuple(t.shape)}")
            if not bool(((t >= 0) & (t <= 1)).all()):
                raise ValueError("tau must be in [0, 1]")
            self.tau = tuple(float(x) for x in t.cpu().tolist())
        beta = float(beta)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta}")
        self.beta = beta
        eps = float(eps)
        if not eps >= 0.0 or eps == float("inf"):
            raise ValueError(f"eps must be finite and ≥ 0, got {eps}")
        self.eps = eps
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"iterations must be an int ≥ 1, got {iterations!r}")
        self.iterations = iterations
        self.reset()

    def reset(self) -> None:
        """Clear the moving average of the squared gradient norms."""
        self._sq_norm_ema: Optional[torch.Tensor] = None
        # A tensor, not a Python int: a compiled step would otherwise specialise on (and recompile
        # for) every value of the count.
        self._steps: Optional[torch.Tensor] = None

    def _taus(self, K: int, device) -> torch.Tensor:
        if isinstance(self.tau, tuple):
            if len(self.tau) != K - 1:
                raise ValueError(f"tau has {len(self.tau)} entries for K={K} tasks (one per secondary task: K − 1)")
            return torch.tensor(self.tau, dtype=torch.float64, device=device)
        return torch.full((K - 1,), self.tau, dtype=torch.float64, device=device)

    def _scales(self, sq: torch.Tensor) -> torch.Tensor:
        K = sq.shape[0]
        check_num_tasks("PCD", None if self._sq_norm_ema is None else self._sq_norm_ema.shape[0], K)
        ema = torch.zeros_like(sq) if self._sq_norm_ema is None else self._sq_norm_ema.to(sq.device)
        steps = torch.zeros((), dtype=sq.dtype, device=sq.device) if self._steps is None else self._steps.to(sq.device)
        ema = self.beta * ema + (1.0 - self.beta) * sq
        steps = steps + 1.0
        self._sq_norm_ema, self._steps = ema, steps
        den = torch.sqrt(ema / (1.0 - torch.pow(self.beta, steps)) + self.eps)
        # A zero average means the gradient was always zero: its scale does not matter (0 avoids 1/0).
        return torch.where(den > 0, 1.0 / torch.where(den > 0, den, 1.0), 0.0)

    def weights(self, G, ctx):
        precision = 10.0 * torch.finfo(G.dtype).eps
        G = symmetric64(G)
        K = G.shape[0]
        taus = self._taus(K, G.device)
        sq = torch.diagonal(G)
        s = self._scales(sq)
        Gn = G * (s[:, None] * s[None, :])
        w = torch.cat([torch.ones(1, dtype=G.dtype, device=G.device), _multipliers(Gn, taus, self.iterations)])
        dsq = w @ Gn @ w
        magnitude = (w.abs() @ torch.sqrt(torch.diagonal(Gn).clamp_min(0.0))) ** 2
        ok = (sq[0] > 0) & (dsq > precision * magnitude)
        factor = torch.sqrt(sq[0] / torch.where(ok, dsq, 1.0))
        return torch.where(ok, w * s * factor, torch.zeros_like(w))


def _multipliers(Gn: torch.Tensor, taus: torch.Tensor, iterations: int) -> torch.Tensor:
    """``μ ≥ 0`` of PCD's dual for the normalised Gram ``Gn`` (row/column 0: the primary task);
    zeros when the constraints cannot all be met."""
    K = Gn.shape[0]
    if K == 1:
        return Gn.new_zeros(0)
    Gs = Gn[1:, 1:]
    b = taus * torch.diagonal(Gs) - Gn[1:, 0]
    scale = torch.diagonal(Gn).amax().clamp_min(torch.finfo(Gn.dtype).tiny)
    mu, _ = mehrotra_qp(Gs / scale, -b / scale, simplex=False, iterations=iterations, polish=True)
    slack = Gs @ mu - b
    feasible = (slack >= -FEASIBILITY_TOL * scale).all() & torch.isfinite(mu).all()
    return torch.where(feasible, mu, torch.zeros_like(mu))
