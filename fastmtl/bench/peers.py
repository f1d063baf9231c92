"""Peer implementations measured in the same run: TorchJD's aggregators, when installed."""

from __future__ import annotations

from typing import Callable, Dict, Optional


def torchjd_aggregators() -> Dict[str, Callable]:
    """``{fastmtl method name: TorchJD aggregator}`` for the methods both provide.

    Empty when TorchJD (the ``bench`` extra) is missing; an aggregator whose optional solver
    dependency is missing is left out.
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
    }
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
