"""What every combination method is: hyper-parameters in the constructor, ``weights(G, ...) → λ``."""

from __future__ import annotations

from typing import ClassVar, Optional

import torch


class Method:
    """A multi-task gradient combination method in Gram space.

    Subclasses implement :meth:`weights`, which maps the K×K Gram matrix ``G = J Jᵀ`` (and, where
    the method uses them, the task losses and a random generator) to combination coefficients
    ``λ`` such that the combined direction is ``d = Jᵀ λ = Σ_k λ_k g_k``. Everything runs on
    ``G``'s device with fixed iteration counts and no host synchronisation.

    Class attributes tell :func:`fastmtl.combine` what to prepare:

    * ``requires_gram``: the method reads ``G`` (loss-only methods skip the Gram pass);
    * ``uses_losses``: ``losses`` are read (every method accepts and may ignore them);
    * ``uses_reference``: the method needs dot products ``⟨v, g_k⟩`` with an external
      reference vector ``self.reference`` (passed to :meth:`weights` as ``reference_dots``);
    * ``stateful``: instances keep state across steps; keep the instance and pass it as
      ``method=instance``;
    * ``gram_free_direction``: the method is not "Gram → λ → Jᵀλ" (GradDrop's elementwise masks,
      DB-MTL's combination of a state buffer, per-block methods); it overrides
      :meth:`direction` and receives the validated gradients themselves;
    * ``uses_generator``: the method may draw random numbers (default ``True``, the safe
      assumption: sharded ``combine`` then shares rank 0's generator state); deterministic methods
      say ``False``;
    * ``shard_local``: a ``gram_free_direction`` method that is elementwise, so it runs on each
      rank's gradient shard unchanged.
    """

    name: ClassVar[str] = ""
    requires_gram: ClassVar[bool] = True
    uses_losses: ClassVar[bool] = False
    uses_reference: ClassVar[bool] = False
    stateful: ClassVar[bool] = False

    gram_free_direction: ClassVar[bool] = False
    uses_generator: ClassVar[bool] = True
    shard_local: ClassVar[bool] = False

    reference = None
    # Instance attributes that carry state across steps (see fastmtl/methods/state.py).
    _state_attrs: ClassVar[tuple] = ()

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

    def direction(self, tg, *, losses: Optional[torch.Tensor] = None,
                  generator: Optional[torch.Generator] = None, out=None, backend: Optional[str] = None):
        """For ``gram_free_direction`` methods: ``(parts, weights_or_None, gram_or_None)``.

        ``tg`` is a :class:`fastmtl.gradients.TaskGradients`; ``parts`` is one tensor per parameter
        (``None`` where no task has a gradient), written into ``out[p]`` when ``out`` is given.
        Use :func:`fastmtl.ops.gramian_of` / :func:`fastmtl.ops.weighted_sum_of` for the passes so
        that backend selection applies.
        """
        raise NotImplementedError

    def weights(self, G: Optional[torch.Tensor], *, losses: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None,
                reference_dots: Optional[torch.Tensor] = None, num_tasks: Optional[int] = None,
                device: Optional[torch.device] = None) -> torch.Tensor:
        """λ (float64, ``[K]``) on ``G``'s device — or on ``device`` for loss-only methods called
        with ``G = None`` (``num_tasks`` gives K then)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                           if not k.startswith("_") and not isinstance(v, torch.Tensor))
        return f"{type(self).__name__}({params})"


def symmetric64(G: torch.Tensor) -> torch.Tensor:
    """``G`` in float64, symmetrised: accumulated Grams can be asymmetric at the rounding level."""
    G = G.to(torch.float64)
    return 0.5 * (G + G.T)


def check_positive(name: str, value: float, *, allow_zero: bool = True) -> float:
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")) or value < 0 or (value == 0 and not allow_zero):
        bound = "finite and ≥ 0" if allow_zero else "finite and > 0"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_main_task(main_task: int, K: int) -> int:
    if not isinstance(main_task, int) or isinstance(main_task, bool):
        raise TypeError(f"main_task must be an int, got {type(main_task).__name__}")
    if not 0 <= main_task < K:
        raise ValueError(f"main_task={main_task} is out of range for K={K} tasks")
    return main_task
