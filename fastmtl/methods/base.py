"""The two method contracts, and the per-call context both receive.

* :class:`GramMethod` — ``weights(G, ctx) → λ``: the direction is ``d = Σ_k λ_k g_k``. The
  pipeline (:mod:`fastmtl.pipeline`) forms ``G`` (locally, or all-reduced over a process group),
  calls :meth:`GramMethod.weights`, and forms the weighted sum. Almost every method is one.
* :class:`DirectionMethod` — ``direction(engine, ctx) → Direction``: methods that need the
  gradients themselves (GradDrop's elementwise masks, DB-MTL's buffers, per-parameter GradVac,
  SLGrad's dot products with a reference). ``engine`` (:class:`fastmtl.ops.Engine`) offers the
  primitives already bound to the call's backend and output buffers, and records what ran.

Everything a call brings that is neither a hyper-parameter nor state — losses, the random
generator, the reference gradient and its dot products, the process group — travels in the
:class:`Context`, never on the instance.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, List, NamedTuple, Optional, Sequence

import torch


class Context(NamedTuple):
    """What one call gives a method besides ``G`` (or the engine).

    Attributes:
        num_tasks: K.
        device: the gradients' device (λ lives there).
        losses: the K task losses, float64 ``[K]`` on ``device``, or ``None``.
        generator: the ``torch.Generator`` for random choices, or ``None`` (default generator).
        reference_dots: ``⟨v, g_k⟩`` (``[K]``) with the call's reference gradient ``v`` (HydaLearn),
            computed in the Gram pass; ``None`` without a reference.
        reference: the reference gradient itself as P per-parameter entries (DirectionMethods that
            read it, SLGrad), or ``None``.
        process_group: the ``torch.distributed`` group of a sharded call (DirectionMethods that
            declare ``sharded_direction``), or ``None``.
    """

    num_tasks: int
    device: torch.device
    losses: Optional[torch.Tensor] = None
    generator: Optional[torch.Generator] = None
    reference_dots: Optional[torch.Tensor] = None
    reference: Optional[tuple] = None
    process_group: Any = None
    # A NamedTuple, not a frozen dataclass: built on every call, it must cost next to nothing.


@dataclass
class Direction:
    """What :meth:`DirectionMethod.direction` returns.

    ``parts``: one tensor per parameter (``None`` where no task has a gradient), written into the
    call's output buffers when it has them; ``weights``: λ when the direction is ``Σ λ_k g_k``
    (``None`` otherwise); ``gram``: a Gram matrix the method formed anyway (this rank's partial one
    when sharded), reused for ``return_info``.
    """

    parts: List[Optional[torch.Tensor]]
    weights: Optional[torch.Tensor] = None
    gram: Optional[torch.Tensor] = None


class Method:
    """What every method declares; subclass :class:`GramMethod` or :class:`DirectionMethod`.

    Class attributes tell the pipeline what to prepare:

    * ``name``: the registry name (``combine(..., method=name)``);
    * ``requires_gram``: the method reads ``G`` (loss-only weightings say ``False`` and skip the pass);
    * ``uses_losses``: ``losses`` are read (every method accepts them and may ignore them);
    * ``uses_reference``: the method reads a reference gradient (``combine(..., reference=v)``);
    * ``stateful``: instances keep state across steps; keep the instance, pass ``method=instance``;
    * ``uses_generator``: the method may draw random numbers (default ``True``, the safe
      assumption: sharded ``combine`` then shares rank 0's generator state);
    * ``shard_local``: a DirectionMethod that is elementwise, so it runs on each rank's shard unchanged;
    * ``sharded_direction``: a DirectionMethod that runs its own small collectives under a process group;
    * ``head_weighting``: what :func:`fastmtl.backward` gives task-specific (head) parameters:
      ``"weighted"`` (``∇ Σ λ_k ℓ_k``, loss weightings) or ``"sum"`` (``∇ Σ ℓ_k``, the plain
      per-task gradients of gradient-surgery methods, following their reference implementations).
    """

    name: ClassVar[str] = ""
    reference = None  # deprecated: a reference gradient given to the constructor (see the call's ``reference``)
    requires_gram: ClassVar[bool] = True
    uses_losses: ClassVar[bool] = False
    uses_reference: ClassVar[bool] = False
    stateful: ClassVar[bool] = False
    uses_generator: ClassVar[bool] = True
    shard_local: ClassVar[bool] = False
    sharded_direction: ClassVar[bool] = False
    head_weighting: ClassVar[str] = "weighted"

    # Instance attributes that carry state across steps (see fastmtl/methods/state.py).
    _state_attrs: ClassVar[tuple] = ()

    @property
    def computes_direction(self) -> bool:
        """Whether the pipeline calls :meth:`DirectionMethod.direction` (else ``weights``)."""
        return False

    @property
    def gram_params(self) -> Optional[Sequence[int]]:
        """Indices of the parameters whose Gram :meth:`GramMethod.weights` reads (``None``: all of
        them); the direction still combines every parameter."""
        return None

    def check_num_tasks(self, num_tasks: int) -> None:
        """A stateful instance serves one number of tasks (its state is per task): another K raises
        ``ValueError`` before anything changes."""
        seen = getattr(self, "_fastmtl_num_tasks", None) if self.stateful else None
        if seen is not None and seen != num_tasks:
            raise ValueError(f"this {type(self).__name__} instance saw {seen} tasks before, now {num_tasks}; a "
                             "stateful method keeps per-task state: create a new instance for a different number "
                             "of tasks")

    def record_num_tasks(self, num_tasks: int) -> None:
        """After a successful call: remember K on a stateful instance (checkpointed with its state)."""
        if self.stateful:
            self._fastmtl_num_tasks = num_tasks

    def state_dict(self) -> dict:
        """The method's state across steps, ``torch.nn.Module``-style (tensors and plain values).

        Keys: ``"_method"`` (registry name), ``"_version"`` and one key per state attribute
        (stateless methods: the two metadata keys only). Tensors share storage with the live
        state: ``torch.save`` the dict before the next step. Loads with
        ``torch.load(..., weights_only=True)``. A random ``generator`` passed to ``combine`` is the
        caller's: save ``generator.get_state()`` in the same checkpoint.
        """
        from .state import STATE_VERSION, collect
        return {"_method": self.name, "_version": STATE_VERSION, **collect(self)}

    def load_state_dict(self, state: dict, strict: bool = True):
        """Restore :meth:`state_dict` output; returns ``(missing_keys, unexpected_keys)``.

        Raises ``ValueError`` naming the method and key on another method's state, a shape
        (number of tasks / parameters) or dtype different from the state this instance already
        holds, or a value of the wrong kind; ``KeyError`` on missing/unexpected keys when
        ``strict``. Loaded tensors are cloned and stay on the device ``torch.load`` put them on,
        except where the instance already holds a tensor for the key (copied in place).
        """
        from .state import load
        return load(self, state, strict)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                           if not k.startswith("_") and not isinstance(v, torch.Tensor))
        return f"{type(self).__name__}({params})"


class GramMethod(Method):
    """A method in Gram space: ``λ = weights(G, ctx)`` and ``d = Σ_k λ_k g_k``.

    ``weights`` maps the K×K Gram matrix ``G = J Jᵀ`` (``None`` for methods with
    ``requires_gram = False``) and the call's :class:`Context` to λ (float64, ``[K]``, on
    ``ctx.device``), updating the instance's own state for stateful methods. Everything runs on the
    device with fixed iteration counts and no host synchronisation.

    Calling ``weights`` with the keyword arguments of earlier versions (``losses=``,
    ``generator=``, ``reference_dots=``, ``num_tasks=``, ``device=``) instead of a context still
    works and emits a ``DeprecationWarning``.
    """

    def weights(self, G: Optional[torch.Tensor], ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("weights")
        if fn is not None and not getattr(fn, "_accepts_legacy_keywords", False):
            cls.weights = _accept_legacy_keywords(fn)


class DirectionMethod(Method):
    """A method that needs the gradients themselves: ``direction(engine, ctx) → Direction``.

    ``engine`` offers ``gramian()``, ``weighted_sum(λ)``, ``graddrop(...)``, ``dots(v)``,
    ``restrict(params)`` and ``targets`` (the call's output buffers), all bound to the backend
    chosen for the call; see :class:`fastmtl.ops.Engine`.
    """

    requires_gram: ClassVar[bool] = False

    @property
    def computes_direction(self) -> bool:
        return True

    def direction(self, engine, ctx: Context) -> Direction:
        raise NotImplementedError


_LEGACY = ("losses", "generator", "reference_dots", "num_tasks", "device")


def _accept_legacy_keywords(fn):
    """``weights(G, ctx)``, also callable as ``weights(G, losses=..., num_tasks=..., ...)`` (deprecated)."""

    @functools.wraps(fn)
    def weights(self, G, ctx=None, **legacy):
        if ctx is None:
            unknown = sorted(set(legacy) - set(_LEGACY))
            if unknown:
                raise TypeError(f"{type(self).__name__}.weights() got unexpected keyword arguments {unknown}")
            warnings.warn(f"{type(self).__name__}.weights(G, losses=..., ...) is deprecated: pass a "
                          "fastmtl.methods.Context as the second argument", DeprecationWarning, stacklevel=2)
            ctx = context_from_keywords(G, **legacy)
        elif legacy:
            raise TypeError("pass either a Context or keyword arguments to weights(), not both")
        return fn(self, G, ctx)

    weights._accepts_legacy_keywords = True
    return weights


def context_from_keywords(G: Optional[torch.Tensor], *, losses=None, generator=None, reference_dots=None,
                          num_tasks: Optional[int] = None, device=None) -> Context:
    """A :class:`Context` from loose arguments; K and the device come from ``G`` when it is given."""
    if G is not None:
        num_tasks, device = G.shape[0], G.device
    elif num_tasks is None:
        raise ValueError("the number of tasks is unknown: pass G or num_tasks")
    elif device is None:
        device = losses.device if isinstance(losses, torch.Tensor) else torch.device("cpu")
    if losses is not None and not isinstance(losses, torch.Tensor):
        losses = torch.as_tensor(losses, dtype=torch.float64)
    return Context(num_tasks=int(num_tasks), device=torch.device(device), losses=losses, generator=generator,
                   reference_dots=reference_dots)
