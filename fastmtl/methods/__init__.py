"""Combination methods, one file per method (or family), and the name → class registry."""

from __future__ import annotations

import difflib
from typing import Dict, Type

from .base import Method
from .simple import Mean, Sum
from .pcgrad import PCGrad
from .wpcgrad import WeightedPCGrad
from .cagrad import CAGrad
from .mgda import MGDA
from .imtl_g import IMTLG
from .upgrad import DualProj, UPGrad
from .aligned_mtl import AlignedMTL
from .hydalearn import HydaLearn
from .nash_mtl import NashMTL
from .gradvac import GradVac
from .config import ConFIG
from .db_mtl import DBMTL
from .olaux import OLAUX
from .gradnorm import GradNorm
from .gemtl import GeMTL
from .loss_weighting import DWA, RLW, UW
from .famo import FAMO
from .slgrad import SLGrad
from .graddrop import GradDrop
from .gcosim import GCosSim

METHODS: Dict[str, Type[Method]] = {}


def register_method(cls: Type[Method]) -> Type[Method]:
    """Make ``cls`` reachable as ``combine(..., method=cls.name)``."""
    METHODS[cls.name] = cls
    return cls


for _cls in (Mean, Sum, PCGrad, WeightedPCGrad, CAGrad, MGDA, IMTLG, UPGrad, DualProj, AlignedMTL, HydaLearn, SLGrad,
             NashMTL, GradVac, ConFIG, DBMTL, OLAUX, GradNorm, GeMTL, UW, DWA, RLW, FAMO, GradDrop, GCosSim):
    register_method(_cls)


def make_method(method, hyperparameters: dict) -> Method:
    """A method instance from a name (plus hyper-parameters) or an existing instance."""
    if isinstance(method, Method):
        if hyperparameters:
            raise TypeError(f"hyper-parameters {sorted(hyperparameters)} were given with a method instance; "
                            "set them in its constructor")
        return method
    if isinstance(method, type) and issubclass(method, Method):
        return method(**hyperparameters)
    if not isinstance(method, str):
        raise TypeError(f"method must be a name or a fastmtl.methods.Method instance, got {type(method).__name__}")
    key = method.lower().replace("-", "_")
    if key not in METHODS:
        close = difflib.get_close_matches(key, list(METHODS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown method {method!r}{hint or '.'} Known methods: {', '.join(sorted(METHODS))}")
    cls = METHODS[key]
    try:
        return cls(**hyperparameters)
    except TypeError as exc:
        raise TypeError(f"bad hyper-parameters for method {key!r}: {exc}") from None


__all__ = ["Method", "METHODS", "register_method", "make_method", "Mean", "Sum", "PCGrad",
           "WeightedPCGrad", "CAGrad", "MGDA", "IMTLG", "UPGrad", "DualProj", "AlignedMTL", "HydaLearn", "SLGrad",
           "NashMTL", "GradVac", "ConFIG", "DBMTL", "OLAUX", "GradNorm", "GeMTL", "UW", "DWA", "RLW", "FAMO", "GradDrop",
           "GCosSim"]
