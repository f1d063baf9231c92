"""State of methods that run under ``combine(..., process_group=pg)`` with their own collectives.

DB-MTL keeps a ``K × numel`` buffer per parameter: under a process group each rank buffers *its
shard* of the gradients, so its state is rank-local. Per-parameter GradVac's targets are identical
on every rank (the block Grams are all-reduced), but they are checkpointed the same way so that
both methods follow one rule.

Layout (``torch.distributed.checkpoint`` friendly): on rank ``r`` of a group of ``W`` ranks,

    {"_method": name, "_version": 1, "world_size": W, "shard<r>": <bytes>}

``shard<r>`` holds this rank's whole state (the keys of the unsharded state dict), serialised
with ``torch.save`` and read back with ``torch.load(weights_only=True)``. The per-rank key makes
DCP save every rank's shard (DCP keeps one copy of a key that every rank has, treating it as
replicated), and a ``bytes`` value is loaded without a pre-allocated tensor, so the template for
``dcp.load`` comes from a fresh instance: ``m.state_dict(process_group=pg)`` (placeholders for
this rank's shard). The shard is not resharded: loading on another world size raises, either in
:func:`load` (fewer ranks: ``ValueError`` naming both sizes) or inside ``dcp.load`` (more ranks:
DCP's own ``Missing key in checkpoint state_dict: ….shard<r>`` for the ranks it has no shard for).
"""

from __future__ import annotations

import io
from typing import Any, Dict, Optional

import torch

from ..collectives import group_position
from .state import STATE_VERSION, collect, load as load_flat


def record(method: Any, process_group: Any) -> None:
    """Note the group layout on ``method`` at a sharded call (the first fixes it)."""
    pos = group_position(process_group)
    held = getattr(method, "_shard", None)
    name = method.name
    if held is None:
        if getattr(method, "_has_unsharded_state", lambda: False)():
            raise ValueError(f"this {name} instance holds state from calls without process_group; create a new "
                             "instance for sharded gradients")
        method._shard = pos
    elif held != pos:
        raise ValueError(f"this {name} instance ran as rank {held[0]} of {held[1]}, now as rank {pos[0]} of "
                         f"{pos[1]}; use one instance per process group")


def state_dict(method: Any, process_group: Any = None) -> Optional[Dict[str, Any]]:
    """The sharded state dict of ``method``, or ``None`` when it is not sharded (plain layout)."""
    pos = getattr(method, "_shard", None)
    if process_group is not None:
        given = group_position(process_group)
        if pos is not None and pos != given:
            raise ValueError(f"this {method.name} instance ran as rank {pos[0]} of {pos[1]}, but state_dict was "
                             f"asked for rank {given[0]} of {given[1]}")
        pos = given
    if pos is None:
        return None
    rank, world = pos
    buf = io.BytesIO()
    torch.save(collect(method), buf)
    return {"_method": method.name, "_version": STATE_VERSION, "world_size": world, f"shard{rank}": buf.getvalue()}


def is_sharded(state: Any) -> bool:
    return isinstance(state, dict) and "world_size" in state


def load(method: Any, state: Dict[str, Any], process_group: Any = None, strict: bool = True):
    """Restore a state dict written by :func:`state_dict` on the same rank of the same world size."""
    name = method.name
    pos = getattr(method, "_shard", None)
    if process_group is not None:
        pos = group_position(process_group)
    if pos is None:
        raise ValueError(f"this {name} state dict was saved under a process group of {state['world_size']} ranks: "
                         "pass process_group= to load_state_dict")
    rank, world = pos
    saved_method = state.get("_method")
    if saved_method is not None and saved_method != name:
        raise ValueError(f"this state dict belongs to method {saved_method!r}, not {name!r}")
    saved = state["world_size"]
    if saved != world:
        raise ValueError(f"{name} state key 'world_size': saved on {saved} ranks, loading on {world}; its "
                         "state is sharded like the gradients and is not resharded: load on the same world size")
    key = f"shard{rank}"
    blob = state.get(key)
    if not isinstance(blob, (bytes, bytearray)):
        others = sorted(k for k in state if k.startswith("shard"))
        raise KeyError(f"{name}.load_state_dict: no shard for rank {rank} (key {key!r}; the state dict holds "
                       f"{others}): pass each rank the state dict it saved (dcp.load fills it in place)")
    flat = torch.load(io.BytesIO(bytes(blob)), weights_only=True)
    extra = {k: v for k, v in state.items() if k not in ("_method", "_version", "world_size", key)}
    result = load_flat(method, {"_method": name, "_version": state.get("_version"), **flat, **extra}, strict)
    method._shard = pos
    return result
