"""The ``torch.distributed`` calls fastmtl makes, and clear errors instead of hangs when they fail.

:func:`resolve_group` and :func:`all_reduce_sum` are what the sharded paths (:mod:`fastmtl.distributed`
and the methods with their own collectives) share. Two mechanisms handle faults:

* :func:`collective` wraps every ``torch.distributed`` call fastmtl makes. When the backend raises
  (gloo: a peer closed its connection because it died, or the process group's timeout expired
  because a rank raised before the collective or never called it), the error is re-raised, same
  type, with the collective's name, this rank, and what usually causes it. With NCCL, errors are
  asynchronous: the watchdog aborts the communicator after the process group's timeout.

* With ``check_finite=True`` (the opt-in "validate my inputs, I accept a synchronisation" switch),
  every rank first puts a fixed-size **signature** of its call into one ``all_gather``
  (:data:`SLOTS` int64 values per rank): K, the number of parameters, layout, dtype, Gram size,
  which optional pieces ride in the buffer, the generator state size, the method and the
  parameter shapes beyond the sharded first dimension. This costs **one extra collective of
  ``world × SLOTS`` int64 and one host read** per call (with NCCL, a device synchronisation before
  the main ``all_reduce``), on top of the one read that the non-finite check already does. It is
  needed *before* the main ``all_reduce`` because that buffer's length depends on K: gloo aborts
  the process on a length mismatch (``terminate`` from C++, not catchable) and NCCL hangs or
  reduces garbage. A rank whose local validation or local work raises still joins this
  ``all_gather`` with a failure status and its message, so every rank raises at once instead of
  waiting for the timeout. Without ``check_finite`` none of this runs: the hot path is unchanged.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

SLOTS = 32
_MSG_SLOTS = 20  # 160 bytes of the failing rank's message
_LAYOUTS = ("matrix", "vectors", "params")
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ERRORS = (None, ValueError, TypeError, RuntimeError)
# Slot, and how a value reads in a message (``rank r has ... where rank 0 has ...``).
_FIELDS = {
    1: lambda v: f"K = {v} task gradients",
    2: lambda v: f"{v} parameters",
    3: lambda v: f"the {_LAYOUTS[v] if 0 <= v < 3 else '?'!s} layout",
    4: lambda v: f"dtype {str(_DTYPES[v]).replace('torch.', '') if 0 <= v < 4 else '?'}",
    5: lambda v: f"a Gram matrix of side {v}" if v else "no Gram matrix",
    6: lambda v: "optional pieces " + (", ".join(n for b, n in _FLAG_NAMES if v >> b & 1) or "none"),
    7: lambda v: f"a generator state of {v} bytes",
    10: lambda v: f"D = {v} coordinates",
}
# Fingerprints: only "differs" can be said (this rank's own value goes into the message's tail).
_FINGERPRINTS = {8: "a different method", 9: "other parameter shapes (after the first, sharded, dimension; "
                                            "all dimensions for ddp_combine)"}
_FLAG_NAMES = ((0, "Gram"), (1, "losses"), (2, "random state"), (3, "reference gradient"))


def resolve_group(process_group: Any):
    """The ``ProcessGroup`` behind ``process_group`` (a group, or a 1-D ``DeviceMesh``)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("process_group was given but torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group() first")
    if hasattr(process_group, "get_group") and hasattr(process_group, "ndim"):  # a DeviceMesh
        if process_group.ndim != 1:
            raise ValueError(f"process_group is a {process_group.ndim}-D DeviceMesh; pass the group of the "
                             "dimension the gradients are sharded over, e.g. mesh.get_group('shard') for HSDP")
        return process_group.get_group()
    return process_group


def group_position(process_group: Any) -> Tuple[int, int]:
    """``(rank, world size)`` of this process in ``process_group`` (a group or a 1-D mesh)."""
    group = resolve_group(process_group)
    return dist.get_rank(group), dist.get_world_size(group)


def all_reduce_sum(values: torch.Tensor, process_group: Any, what: str) -> torch.Tensor:
    """``values`` summed over the ranks (in float64), through the fault-reporting :func:`collective`."""
    group = resolve_group(process_group)
    buf = values.to(torch.float64).contiguous()
    collective(what, group, dist.all_reduce, buf, op=dist.ReduceOp.SUM, group=group)
    return buf


def collective(what: str, group, fn: Callable, /, *args: Any, **kwargs: Any):
    """``fn(*args, **kwargs)`` (a ``torch.distributed`` call); a backend error comes back naming
    the collective, this rank and the usual causes (same exception type, chained)."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as exc:
        try:
            where = f"rank {dist.get_rank(group)} of {dist.get_world_size(group)}"
        except Exception:  # the group itself is gone
            where = "this rank"
        msg = (f"fastmtl: the {what} failed on {where}: {exc}\nA rank that died, raised before reaching this "
               "collective, or called it with other arguments (K, method, optional arguments) leaves the other "
               "ranks here until the process group's timeout; the first error in the ranks' logs is the cause. "
               "check_finite=True also checks that the ranks' inputs agree (one more small collective).")
        try:
            new = type(exc)(msg)
        except Exception:
            new = RuntimeError(msg)
        raise new from exc


def exchange_device(group, hint: Optional[torch.device]) -> torch.device:
    """A device the group's backend can all-gather on (CPU for gloo, CUDA for NCCL)."""
    backend = str(dist.get_backend(group)).lower()
    if backend == "gloo":
        return torch.device("cpu")
    if hint is not None and (hint.type != "cpu" or "gloo" in backend or "nccl" not in backend):
        return hint
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _fingerprint(value: Any) -> int:
    return zlib.crc32(repr(value).encode())


def signature(tg, method, *, gram_side: int, share_losses: bool, state_bytes: int, exact: bool,
              uses_reference: bool = False) -> List[int]:
    """This rank's call, as :data:`SLOTS` int64 values (status 0). ``exact``: the ranks hold the
    same coordinates (DDP), so D and every shape must agree; otherwise (shards) only the
    dimensions after the first."""
    if exact:
        shapes = tuple(None if s is None else tuple(s) for s in tg.shapes)
    elif tg.layout == "params":
        shapes = tuple(None if s is None else (len(s),) + tuple(s[1:]) for s in tg.shapes)
    else:
        shapes = ()
    flags = (gram_side > 0) | (share_losses << 1) | ((state_bytes > 0) << 2) | (uses_reference << 3)
    sig = [0, tg.num_tasks, tg.num_params, _LAYOUTS.index(tg.layout), _DTYPES.index(tg.dtype), gram_side,
           int(flags), state_bytes, _fingerprint(method.name or type(method).__name__), _fingerprint(shapes),
           tg.total_numel if exact else 0]
    return sig + [0] * (SLOTS - len(sig))


def _failure_signature(exc: BaseException) -> List[int]:
    code = next((i for i, cls in enumerate(_ERRORS) if cls is not None and isinstance(exc, cls)), 3)
    text = f"{type(exc).__name__}: {exc}".encode()[: 8 * _MSG_SLOTS]
    text = text + b"\0" * (8 * _MSG_SLOTS - len(text))
    words = [int.from_bytes(text[i:i + 8], "little", signed=True) for i in range(0, len(text), 8)]
    sig = [1] + [0] * (SLOTS - 1 - _MSG_SLOTS - 1) + [code] + words
    assert len(sig) == SLOTS
    return sig


def _message(row: Sequence[int]) -> str:
    raw = b"".join(int(w).to_bytes(8, "little", signed=True) for w in row[SLOTS - _MSG_SLOTS:])
    return raw.rstrip(b"\0").decode(errors="replace")


def _all_gather(group, sig: List[int], device: torch.device, what: str) -> List[List[int]]:
    world = dist.get_world_size(group)
    mine = torch.tensor(sig, dtype=torch.int64, device=device)
    table = torch.empty(world * SLOTS, dtype=torch.int64, device=device)
    collective(f"input check of {what} (all_gather)", group, dist.all_gather_into_tensor, table, mine, group=group)
    return table.view(world, SLOTS).cpu().tolist()


def check_agreement(group, sig: List[int], device: torch.device, what: str, describe_local: str = "") -> None:
    """All-gather the signatures; raise the same error on every rank if one rank failed locally or
    the ranks' calls disagree (each offending rank named with its value and rank 0's)."""
    rows = _all_gather(group, sig, device, what)
    world = len(rows)
    failed = [r for r, row in enumerate(rows) if row[0] == 1]
    if failed:
        code = max(rows[r][SLOTS - _MSG_SLOTS - 1] for r in failed)
        cls = _ERRORS[code] if 0 < code < len(_ERRORS) else RuntimeError
        causes = "; ".join(f"rank {r} of {world}: {_message(rows[r])}" for r in failed)
        raise cls(f"{what}: {len(failed)} of {world} ranks failed before the collective, so no rank continues "
                  f"({causes})")
    diffs = []
    for r, row in enumerate(rows[1:], start=1):
        for slot, fmt in _FIELDS.items():
            if row[slot] != rows[0][slot]:
                diffs.append(f"rank {r} has {fmt(row[slot])} where rank 0 has {fmt(rows[0][slot])}")
        for slot, what_differs in _FINGERPRINTS.items():
            if row[slot] != rows[0][slot]:
                diffs.append(f"rank {r} has {what_differs} than rank 0")
    if diffs:
        local = f" (this rank: {describe_local})" if describe_local else ""
        raise ValueError(f"{what}: the ranks' inputs disagree: " + "; ".join(diffs) + local + ". Every rank must "
                         "pass the same K, parameters (its shard of each), dtype, method and optional arguments")


def report_failure(group, exc: BaseException, device: Optional[torch.device] = None, what: str = "") -> None:
    """Join the signature all-gather with a failure status and ``exc``'s message, so that the other
    ranks raise at once; the caller re-raises ``exc``. Errors of the exchange itself are dropped
    (the original exception is the one that matters here)."""
    try:
        group = resolve_group(group)  # a group or a 1-D DeviceMesh
        _all_gather(group, _failure_signature(exc), exchange_device(group, device), what)
    except Exception:
        pass
