"""Priority-constrained descent (PCD), as TorchJD 0.18 defines it.

See :mod:`fastmtl.reference.literal` for the conventions every oracle follows.
"""

from __future__ import annotations

import math

import torch

from .common import as64, vdot

__all__ = ["pcd_literal"]


def pcd_literal(Js, tau=0.02, beta: float = 0.999, eps: float = 1e-8, *, zero_tol: float = 1e-12):
    """PCD over successive calls (TorchJD 0.18's ``PCD``, "Not All Objectives Are Born Equal:
    Priority-Constrained Descent for Hierarchical Multi-Objective Optimization", TMLR 2026).

    Test oracle on the vectors, one direction per ``J`` in ``Js`` (row 0: the primary task): the
    EMA ``v ← βv + (1−β)‖g_i‖²`` (from 0), bias-corrected by ``1 − β^t``, gives the scales
    ``s_i = 1/sqrt(v̂_i + eps)`` (0 where that is infinite) and ``g̃_i = s_i g_i``; the primal
    quadratic program in ``R^D``, ``min ½‖d − g̃_0‖²`` s.t. ``g̃_jᵀd ≥ τ_j‖g̃_j‖²`` (``j ≥ 1``),
    is solved by quadprog (Goldfarb–Idnani); secondaries with ``g̃_j = 0`` have a constraint
    that always holds and are left out. Infeasible constraints (quadprog: "constraints are
    inconsistent") give ``d̃ = g̃_0``. ``d = d̃·‖g_0‖/‖d̃‖``; ``d = 0`` when ``g_0 = 0`` or
    ``‖d̃‖ ≤ zero_tol·max_i ‖g̃_i‖``. Returns the list of directions.
    """
    import numpy as np
    import quadprog

    out = []
    ema = None
    for t, J in enumerate(Js, start=1):
        J = as64(J)
        K = J.shape[0]
        taus = [float(tau)] * (K - 1) if isinstance(tau, (int, float)) else [float(x) for x in tau]
        sq = [vdot(J[i], J[i]) for i in range(K)]
        ema = [0.0] * K if ema is None else ema
        ema = [beta * e + (1.0 - beta) * q for e, q in zip(ema, sq)]
        scales = []
        for e in ema:
            den = math.sqrt(e / (1.0 - beta ** t) + eps)
            scales.append(1.0 / den if den > 0 else 0.0)
        gt = [(scales[i] * J[i]).numpy() for i in range(K)]
        if sq[0] == 0.0:
            out.append(torch.zeros(J.shape[1], dtype=torch.float64))
            continue
        rows = [j for j in range(1, K) if float(gt[j] @ gt[j]) > 0.0]
        d_tilde = gt[0].copy()
        if rows:
            C = np.stack([gt[j] for j in rows], axis=1)
            b = np.array([taus[j - 1] * float(gt[j] @ gt[j]) for j in rows])
            try:
                d_tilde = quadprog.solve_qp(np.eye(J.shape[1]), gt[0], C, b, 0)[0]
            except ValueError as exc:
                if "inconsistent" not in str(exc):
                    raise
        norm = float(np.linalg.norm(d_tilde))
        top = max(float(np.linalg.norm(g)) for g in gt)
        if norm <= zero_tol * top:
            out.append(torch.zeros(J.shape[1], dtype=torch.float64))
            continue
        out.append(torch.from_numpy(d_tilde * (math.sqrt(sq[0]) / norm)))
    return out
