"""Combination methods, one file per method (or family), and the name → class registry.

Every module of this package is imported here, so a method is added by one file whose class
carries ``@register_method``; its class is then reachable as ``fastmtl.methods.<ClassName>`` and by
name through ``combine(..., method=name)``. See docs/architecture.md.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Context, Direction, DirectionMethod, GramMethod, Method
from .registry import METHODS, make_method, method_class, register_method

# Infrastructure modules hold no method; everything else is imported for its registrations.
_INFRASTRUCTURE = {"base", "registry", "common", "state", "sharded_state", "ordering", "row_buffers", "loss_scales"}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name not in _INFRASTRUCTURE:
        importlib.import_module(f"{__name__}.{_info.name}")
for _cls in METHODS.values():
    globals()[_cls.__name__] = _cls

__all__ = ["Method", "GramMethod", "DirectionMethod", "Context", "Direction", "METHODS", "register_method",
           "make_method", "method_class"] + sorted(cls.__name__ for cls in METHODS.values())
