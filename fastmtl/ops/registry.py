"""Backend registry: one place that knows which implementation of a primitive may run where.

A backend declares the devices and dtypes it handles, whether it is deterministic, an availability
probe, and per-primitive implementations. Selection for one call, first match wins:

1. an explicit ``backend=`` argument;
2. the innermost :func:`use_backend` context;
3. the ``FASTMTL_BACKEND`` environment variable (read once, at first use);
4. automatic: the available backend of highest priority (cuda > triton > cpu > reference) that supports
   the inputs.

An explicit request (1–3) that cannot run raises ``RuntimeError`` listing every backend's reasons;
automatic selection never fails because the reference runs everywhere. Under
``torch.use_deterministic_algorithms(True)`` automatic selection skips backends that are not
bitwise deterministic. Automatic choices are cached per :func:`selection_key` (primitive, kind of
operand, device type, dtype, K, determinism) and the cache is cleared whenever a backend or an
implementation is registered: a call pays a dictionary look-up, not a selection.

Besides the hot-path primitives over task gradients (``gramian``, ``weighted_sum``, ...), backends
implement the K×K solver primitives of :mod:`fastmtl.solvers`, which see only the Gram matrix: they
are selected by :func:`solver_implementation` from a :class:`GramOperand` (device, dtype, K). There
a request (2–3) for a backend that has no such solver, or cannot run it on G, falls back to the
automatic choice instead of raising, and the choice is cached per (solver, device type, dtype, K,
request, determinism), so a solve pays a dictionary look-up, not a selection.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Union

import torch

from ..gradients import TaskGradients


@dataclass(frozen=True)
class GramOperand:
    """What selection needs to know about a call that sees only a K×K Gram matrix (a solver).

    A backend's ``dtypes`` (those of task gradients) do not apply to it: its ``extra_reasons`` say
    which Gram matrices its solvers take.
    """

    device: torch.device
    dtype: torch.dtype
    num_tasks: int


# What a primitive's selection looks at: the task gradients, or only the Gram matrix.
Operand = Union[TaskGradients, GramOperand]


@dataclass
class Backend:
    """One family of implementations (reference, triton, cuda)."""

    name: str
    priority: int
    devices: tuple
    dtypes: tuple
    deterministic: bool
    probe: Callable[[], Optional[str]]  # returns None when usable, else why not
    implementations: Dict[str, Callable] = field(default_factory=dict)
    # Input-dependent limits. Hazard: it may look at nothing of the operand that selection_key
    # leaves out (automatic choices are cached under that key).
    extra_reasons: Optional[Callable[[Operand], List[str]]] = None
    # Devices on which automatic selection may pick this backend (default: all of ``devices``).
    # The Triton interpreter runs on CPU tensors but is far slower than the reference there, so
    # it is used on CPU only when asked for explicitly.
    automatic_devices: Optional[tuple] = None
    _probe_result: object = field(default=..., repr=False)

    @property
    def primitives(self) -> List[str]:
        """Names of the primitives this backend implements."""
        return sorted(self.implementations)

    def unavailable_reason(self) -> Optional[str]:
        if self._probe_result is ...:
            try:
                self._probe_result = self.probe()
            except Exception as exc:  # a broken optional dependency must not break imports
                self._probe_result = f"availability probe failed: {exc!r}"
        return self._probe_result

    def not_supported_reasons(self, primitive: str, tg: Optional[Operand]) -> List[str]:
        reasons = []
        why = self.unavailable_reason()
        if why is not None:
            reasons.append(why)
        if primitive not in self.implementations:
            reasons.append(f"no {primitive} implementation")
        if tg is not None:
            if tg.device.type not in self.devices:
                reasons.append(f"runs on {'/'.join(self.devices)} tensors, got {tg.device.type}")
            # The dtypes are those of task gradients; a solver's own limits on G come from extra_reasons.
            if tg.dtype not in self.dtypes and not isinstance(tg, GramOperand):
                reasons.append(f"does not handle dtype {tg.dtype}")
            if self.extra_reasons is not None and not reasons:
                reasons.extend(self.extra_reasons(tg))
        return reasons


_BACKENDS: Dict[str, Backend] = {}
_BY_PRIORITY: List[Backend] = []  # _BACKENDS' values, best first (kept in step by register_backend)
_CONTEXT_STACK: List[str] = []
_ENV_CHOICE: List[Optional[str]] = []
# (solver, device type, dtype, K, request, deterministic-only) -> implementation.
_SOLVER_CHOICE: Dict[tuple, Callable] = {}
# Automatic choices: selection_key(primitive, operand, deterministic-only) -> backend.
_AUTO_CHOICE: Dict[tuple, "Backend"] = {}


def _clear_choices() -> None:
    _SOLVER_CHOICE.clear()
    _AUTO_CHOICE.clear()


def selection_key(primitive: str, tg: Operand, deterministic_only: bool) -> tuple:
    """Everything automatic selection may depend on. A backend's ``extra_reasons`` must look at
    nothing else of the operand: its device type, dtype, number of tasks, and whether it is only a
    Gram matrix (the choice is cached under this key)."""
    return (primitive, isinstance(tg, GramOperand), tg.device.type, tg.dtype, tg.num_tasks, deterministic_only)


def register_backend(backend: Backend) -> Backend:
    _BACKENDS[backend.name] = backend
    _BY_PRIORITY[:] = sorted(_BACKENDS.values(), key=lambda b: -b.priority)
    _clear_choices()
    return backend


def unregister_backend(name: str) -> Backend:
    """Remove the backend ``name`` (e.g. one registered for a test); returns it."""
    backend = _BACKENDS.pop(name)
    _BY_PRIORITY[:] = sorted(_BACKENDS.values(), key=lambda b: -b.priority)
    _clear_choices()
    return backend


def register_implementation(backend_name: str, primitive: str, fn: Callable) -> None:
    _BACKENDS[backend_name].implementations[primitive] = fn
    _clear_choices()


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {sorted(_BACKENDS)}") from None


def backends() -> List[Backend]:
    """Every registered backend, best (highest priority) first."""
    return list(_BY_PRIORITY)


def available_backends() -> List[str]:
    """Names of the backends whose availability probe passes on this machine, best first."""
    return [b.name for b in backends() if b.unavailable_reason() is None]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run the enclosed ``combine``/``gramian``/``weighted_sum`` calls on backend ``name``."""
    get_backend(name)
    _CONTEXT_STACK.append(name)
    try:
        yield
    finally:
        _CONTEXT_STACK.pop()


def _env_backend() -> Optional[str]:
    if not _ENV_CHOICE:
        value = os.environ.get("FASTMTL_BACKEND", "").strip().lower()
        _ENV_CHOICE.append(value or None)
    return _ENV_CHOICE[0]


def requested_backend(explicit: Optional[str]) -> Optional[tuple]:
    """``(name, source)`` of the backend requested for this call, or ``None`` for automatic."""
    if explicit is not None:
        return explicit, "backend= argument"
    if _CONTEXT_STACK:
        return _CONTEXT_STACK[-1], "use_backend() context"
    env = _env_backend()
    if env is not None and env != "auto":
        return env, "FASTMTL_BACKEND environment variable"
    return None


def select(primitive: str, tg: Operand, explicit: Optional[str] = None, *, fallback: bool = False) -> Backend:
    """The backend that runs ``primitive`` on ``tg`` (see the module docstring for the rules).

    With ``fallback=True`` a requested backend that cannot run the call gives way to the automatic
    choice instead of raising (the solvers' rule).
    """
    request = requested_backend(explicit)
    if request is not None:
        name, source = request
        backend = get_backend(name)
        reasons = backend.not_supported_reasons(primitive, tg)
        if not reasons:
            return backend
        if not fallback:
            report = "; ".join(f"{b.name}: {', '.join(b.not_supported_reasons(primitive, tg)) or 'ok'}"
                               for b in backends())
            raise RuntimeError(f"backend {name!r} (from the {source}) cannot run {primitive} on these inputs: "
                               f"{', '.join(reasons)}. Every backend: {report}")
    deterministic_only = torch.are_deterministic_algorithms_enabled()
    key = selection_key(primitive, tg, deterministic_only)
    cached = _AUTO_CHOICE.get(key)
    if cached is not None:
        return cached
    _AUTO_CHOICE[key] = chosen = _automatic(primitive, tg, deterministic_only)
    return chosen


def _automatic(primitive: str, tg: Operand, deterministic_only: bool) -> Backend:
    for backend in _BY_PRIORITY:
        if deterministic_only and not backend.deterministic:
            continue
        auto_devices = backend.automatic_devices if backend.automatic_devices is not None else backend.devices
        if tg.device.type not in auto_devices:
            continue
        if not backend.not_supported_reasons(primitive, tg):
            return backend
    raise RuntimeError(f"no backend can run {primitive}; this is a bug: the reference runs everywhere")


def solver_implementation(primitive: str, G: torch.Tensor) -> Callable:
    """The implementation of the K×K solver ``primitive`` for the Gram matrix ``G`` (cached).

    The compiled solver where ``fastmtl._C`` has it for G's device, else the reference;
    ``use_backend("reference")`` / ``FASTMTL_BACKEND=reference`` force the reference, and a request
    for a backend without this solver (e.g. ``triton``) uses the automatic choice.
    """
    request = _CONTEXT_STACK[-1] if _CONTEXT_STACK else _env_backend()
    key = (primitive, G.device.type, G.dtype, G.shape[-1], request, torch.are_deterministic_algorithms_enabled())
    impl = _SOLVER_CHOICE.get(key)
    if impl is None:
        operand = GramOperand(device=G.device, dtype=G.dtype, num_tasks=G.shape[-1])
        impl = select(primitive, operand, fallback=True).implementations[primitive]
        _SOLVER_CHOICE[key] = impl
    return impl
