"""Method state in checkpoints: ``state_dict()`` / ``load_state_dict()`` from declared attributes.

A stateful class lists the instance attributes that carry state across steps in
``_state_attrs`` (class attribute, names as stored on the instance). Leading underscores are
dropped in the keys (``_logits`` → ``"logits"``); an attribute holding a nested state object (one
with its own ``_state_attrs``, e.g. :class:`fastmtl.methods.famo.AdamState`) is flattened with a
dotted prefix (``_adam`` → ``"adam.t"``, ``"adam.m"``, ``"adam.v"``). Values are tensors, ``None``,
``int``/``float``/``bool``/``str`` and lists/tuples of those (``torch.Size`` is stored as a tuple),
so ``torch.save`` then ``torch.load(..., weights_only=True)`` restores them.

Every state dict carries ``"_method"`` (the method's registry name) and ``"_version"``
(:data:`STATE_VERSION`); a stateless method's state dict holds these two keys only.

Conventions (those of ``torch.nn.Module``):

* ``state_dict()`` returns detached tensors that share storage with the live state (some methods
  update their buffers in place): ``torch.save`` it, or deep-copy it, before the next step.
* ``load_state_dict()`` **clones** every loaded tensor, and keeps it on the device it was loaded to
  (``torch.load(..., map_location=...)`` decides), except where the instance already holds a
  tensor for that key: then the value is copied into it in place (shape and dtype must match),
  so e.g. UW's ``s`` stays the parameter the optimizer holds, on its device.
* Lazily created state (``None`` before the first step) round-trips as ``None``.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple

import torch

STATE_VERSION = 1
_META = ("_method", "_version")


class LoadResult(NamedTuple):
    missing_keys: List[str]
    unexpected_keys: List[str]


def _key(attr: str) -> str:
    return attr.lstrip("_")


def _encode(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach()
    if isinstance(v, torch.Size):
        return tuple(int(n) for n in v)
    if isinstance(v, (list, tuple)):
        return type(v)(_encode(x) for x in v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise TypeError(f"state value of type {type(v).__name__} is not checkpointable")


def _attrs(obj: Any) -> tuple:
    # The pipeline records the task count on a stateful instance (Method.record_num_tasks): state as well.
    extra = ("_fastmtl_num_tasks",) if getattr(obj, "stateful", False) is True else ()
    return tuple(type(obj)._state_attrs) + extra


def collect(obj: Any, prefix: str = "") -> Dict[str, Any]:
    """The flat ``{key: value}`` of ``obj``'s declared state attributes."""
    out: Dict[str, Any] = {}
    for attr in _attrs(obj):
        v = getattr(obj, attr, None)
        if hasattr(type(v), "_state_attrs"):
            out.update(collect(v, f"{prefix}{_key(attr)}."))
        else:
            out[prefix + _key(attr)] = _encode(v)
    return out


def _kind(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, torch.Tensor):
        return "tensor"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, (list, tuple)):
        return "sequence"
    return type(v).__name__


def _clone(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.detach().clone()
    if isinstance(v, list):
        return [_clone(x) for x in v]
    if isinstance(v, tuple):
        return tuple(_clone(x) for x in v)
    return v


def _assign(obj: Any, attr: str, value: Any, where: str) -> None:
    live = getattr(obj, attr, None)
    lk, vk = _kind(live), _kind(value)
    if lk != "None" and vk != "None" and lk != vk:
        raise ValueError(f"{where}: expected a {lk}, got a {vk}")
    if isinstance(live, torch.Tensor) and isinstance(value, torch.Tensor):
        if live.shape != value.shape:
            raise ValueError(f"{where}: shape {tuple(value.shape)} in the checkpoint, {tuple(live.shape)} in this "
                             "instance (a different number of tasks or parameters?)")
        if live.dtype != value.dtype:
            raise ValueError(f"{where}: dtype {value.dtype} in the checkpoint, {live.dtype} in this instance")
        if isinstance(live, torch.nn.Parameter):  # keep the parameter the optimizer holds
            with torch.no_grad():
                live.copy_(value)
            return
    if isinstance(value, int) and isinstance(live, float):
        value = float(value)
    setattr(obj, attr, _clone(value))


def _load_into(obj: Any, state: Dict[str, Any], prefix: str, name: str, strict: bool, seen: set,
               missing: List[str]) -> None:
    for attr in _attrs(obj):
        v = getattr(obj, attr, None)
        key = prefix + _key(attr)
        if hasattr(type(v), "_state_attrs"):
            _load_into(v, state, key + ".", name, strict, seen, missing)
            continue
        if key not in state:
            missing.append(key)
            continue
        seen.add(key)
        _assign(obj, attr, state[key], f"{name} state key {key!r}")


def load(method: Any, state: Dict[str, Any], strict: bool = True) -> LoadResult:
    """Restore ``method``'s declared state from ``state`` (see the module docstring)."""
    name = method.name or type(method).__name__
    if not isinstance(state, dict):
        raise TypeError(f"{name}.load_state_dict expects a dict, got {type(state).__name__}")
    saved = state.get("_method")
    if saved is not None and saved != method.name:
        raise ValueError(f"this state dict belongs to method {saved!r}, not {name!r}")
    version = state.get("_version")
    if version is not None and (not isinstance(version, int) or version > STATE_VERSION):
        raise ValueError(f"{name} state dict has version {version!r}; this fastmtl reads versions ≤ {STATE_VERSION}")
    missing = [k for k in _META if k not in state]
    seen = set(_META)
    # Validate every key before changing anything: a failed strict load leaves the instance as it was.
    probe = type(method).__new__(type(method))
    probe.__dict__.update({k: v for k, v in vars(method).items()})
    _copy_nested(probe)
    _load_into(probe, state, "", name, strict, seen, missing)
    unexpected = sorted(k for k in state if k not in seen)
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise KeyError(f"{name}.load_state_dict(strict=True): " + "; ".join(parts))
    _load_into(method, state, "", name, strict, set(), [])
    after = getattr(method, "_after_load", None)
    if after is not None:
        after()
    return LoadResult(missing, unexpected)


def _copy_nested(obj: Any) -> None:
    """Give a probe copy its own nested state objects and parameters, so probing mutates nothing."""
    for attr in _attrs(obj):
        v = getattr(obj, attr, None)
        if hasattr(type(v), "_state_attrs"):
            c = type(v).__new__(type(v))
            c.__dict__.update(vars(v))
            setattr(obj, attr, c)
            _copy_nested(c)
        elif isinstance(v, torch.nn.Parameter):
            setattr(obj, attr, torch.empty_like(v.detach()))
