"""The name → class registry of methods: ``@register_method`` on a class makes it a ``combine`` name."""

from __future__ import annotations

import difflib
from typing import Any, Dict, Type

from .base import DirectionMethod, GramMethod, Method

METHODS: Dict[str, Type[Method]] = {}


def register_method(cls: Type[Method]) -> Type[Method]:
    """Class decorator: make ``cls`` reachable as ``combine(..., method=cls.name)``.

    The class must subclass :class:`GramMethod` or :class:`DirectionMethod`, have a lowercase
    ``name`` not taken by another class, and declare its head convention.
    """
    if not (issubclass(cls, GramMethod) or issubclass(cls, DirectionMethod)):
        raise TypeError(f"{cls.__name__} must subclass GramMethod or DirectionMethod")
    name = cls.__dict__.get("name")
    if not name or name != name.lower() or "-" in name:
        raise ValueError(f"{cls.__name__} needs its own lowercase registry name (class attribute `name`)")
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"method name {name!r} is taken by {METHODS[name].__name__}")
    if cls.head_weighting not in ("weighted", "sum"):
        raise ValueError(f"{cls.__name__}.head_weighting must be 'weighted' or 'sum', got {cls.head_weighting!r}")
    METHODS[name] = cls
    return cls


def normalize_name(name: str) -> str:
    return name.lower().replace("-", "_")


def method_class(name: str) -> Type[Method]:
    """The registered class for ``name`` (case and ``-``/``_`` insensitive); ``ValueError`` with close matches."""
    if not isinstance(name, str):
        raise TypeError(f"method must be a name or a fastmtl.methods.Method instance, got {type(name).__name__}")
    key = normalize_name(name)
    if key not in METHODS:
        close = difflib.get_close_matches(key, list(METHODS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"unknown method {name!r}{hint or '.'} Known methods: {', '.join(sorted(METHODS))}")
    return METHODS[key]


def make_method(method: Any, hyperparameters: dict) -> Method:
    """A method instance from a name or class (plus hyper-parameters), or an existing instance."""
    if isinstance(method, Method):
        if hyperparameters:
            raise TypeError(f"hyper-parameters {sorted(hyperparameters)} were given with a method instance; "
                            "set them in its constructor")
        return method
    if isinstance(method, type) and issubclass(method, Method):
        return method(**hyperparameters)
    cls = method_class(method)
    try:
        return cls(**hyperparameters)
    except TypeError as exc:
        raise TypeError(f"bad hyper-parameters for method {cls.name!r}: {exc}") from None
