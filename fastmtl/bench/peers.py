"""Peer implementations measured in the same run: TorchJD's aggregators, when installed."""

from __future__ import annotations

from typing import Callable, Dict, Optional


def torchjd_aggregators(K: Optional[int] = None) -> Dict[str, Callable]:
    """``{fastmtl method name: TorchJD aggregator}`` for the methods both provide.

    Empty when TorchJD (the ``bench`` extra) is missing; an aggregator whose optional solver
    dependency is missing is left out. ``K`` (the number of tasks) adds the aggregators that need
    it at construction (``NashMTL``).
    """
    try:
        import torchjd.aggregation as agg
    except Exception:
        return {}
    makers = {
        "mean": lambda: agg.Mean(),
        "pcgrad": lambda: agg.PCGrad(),
        "upgrad": lambda: agg.UPGrad(),
        "dualproj": lambda: agg.DualProj(),
        "mgda": lambda: agg.MGDA(),
        "imtl_g": lambda: agg.IMTLG(),
        "aligned_mtl": lambda: agg.AlignedMTL(),
        "cagrad": lambda: agg.CAGrad(c=0.5),
        "graddrop": lambda: agg.GradDrop(),
    }
    if K is not None:
        makers["nash_mtl"] = lambda: agg.NashMTL(n_tasks=K)
    out = {}
    for name, make in makers.items():
        try:
            out[name] = make()
        except Exception:
            continue
    return out


def torchjd_version() -> Optional[str]:
    try:
        import torchjd
        return getattr(torchjd, "__version__", "installed")
    except Exception:
        return None


def libmtl_style_pcgrad(J):
    """PCGrad as the common research implementations write it (LibMTL, Pytorch-PCGrad).

    The task gradients are one ``[K, D]`` matrix and each projection is a full-vector dot product
    and update: O(K²·D) memory traffic instead of fastmtl's two passes. Random order per task,
    self skipped, sum reduction.
    """
    import random

    import torch

    K = J.shape[0]
    norms2 = (J * J).sum(1)
    projected = J.clone()
    for i in range(K):
        others = [j for j in range(K) if j != i]
        random.shuffle(others)
        for j in others:
            dot = projected[i] @ J[j]
            # The data-dependent branch of these implementations: one host sync per pair.
            if dot < 0:
                projected[i] -= dot / (norms2[j] + 1e-8) * J[j]
    return projected.sum(0) if K else torch.zeros_like(J[0])


def libmtl_style_cagrad(J, c: float = 0.5):
    """CAGrad as LibMTL and the official code run it: Gram on the device, SLSQP on the host.

    ``G`` is copied to the CPU every step (a host sync), the simplex problem is solved by
    ``scipy.optimize.minimize`` in float64, and the weights are copied back. LibMTL's scale
    (rescale 1, no ×K).
    """
    import numpy as np
    import torch
    from scipy.optimize import minimize

    K = J.shape[0]
    G = (J @ J.T).double().cpu().numpy()
    b = np.full(K, 1.0 / K)
    gn = np.sqrt(G.mean() + 1e-8)
    ct = c * gn + 1e-8

    def obj(w):
        return float(w @ G @ b + ct * np.sqrt(w @ G @ w + 1e-8))

    res = minimize(obj, b, bounds=[(0, 1)] * K, constraints={"type": "eq", "fun": lambda w: w.sum() - 1})
    w = res.x
    gw_norm = np.sqrt(w @ G @ w + 1e-8)
    coeff = (b + ct / gw_norm * w) / (1 + c ** 2)
    lam = torch.as_tensor(coeff, dtype=J.dtype, device=J.device)
    return lam @ J


LIBMTL_STYLE = {"pcgrad": libmtl_style_pcgrad, "cagrad": libmtl_style_cagrad}
