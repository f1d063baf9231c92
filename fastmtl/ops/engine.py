"""The primitives over one call's task gradients, bound to the call's backend and output buffers.

Methods never pick a backend: the pipeline hands a :class:`fastmtl.methods.DirectionMethod` an
``Engine``, whose operations select the backend for the call's inputs (explicit ``backend=`` →
``use_backend`` → ``FASTMTL_BACKEND`` → automatic, see :mod:`fastmtl.ops.registry`) and record
which backend ran, so ``CombineInfo.backend`` names the one that produced the direction.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..gradients import TaskGradients
from .registry import select


class Engine:
    """``gramian``, ``weighted_sum``, ``graddrop``, ``dots`` and ``restrict`` over ``tg``.

    ``targets`` are the call's output buffers (one per parameter, ``None`` entries allowed) or
    ``None``: the direction-producing operations write into them. A restricted engine shares its
    parent's record.
    """

    def __init__(self, tg: TaskGradients, backend: Optional[str] = None, targets: Optional[tuple] = None,
                 record: Optional[Dict[str, str]] = None):
        self.tg = tg
        self.backend = backend
        self.targets = targets
        self._record = {} if record is None else record

    @property
    def direction_backend(self) -> Optional[str]:
        """The backend of the last operation that produced (part of) the direction, if any."""
        return self._record.get("direction")

    def _run(self, primitive: str, role: str, *args):
        chosen = select(primitive, self.tg, self.backend)
        self._record[role] = chosen.name
        return chosen.implementations[primitive](self.tg, *args)

    def gramian(self) -> torch.Tensor:
        """``G = J Jᵀ`` (float32 accumulation, float64 for float64 gradients)."""
        return self._run("gramian", "gramian")

    def weighted_sum(self, weights: torch.Tensor) -> List[Optional[torch.Tensor]]:
        """``Σ_k weights[k]·g_k`` per parameter, written into the targets when there are any."""
        return self._run("weighted_sum", "direction", weights, self.targets)

    def graddrop(self, seed: int, offset: int, leak: Optional[torch.Tensor], eps: float) -> List[Optional[torch.Tensor]]:
        """GradDrop's masked sum (see :mod:`fastmtl.reference.graddrop`), into the targets."""
        return self._run("graddrop", "direction", seed, offset, leak, eps, self.targets)

    def dots(self, reference: tuple) -> torch.Tensor:
        """``⟨g_k, v⟩`` for every task ``k`` (``[K]``), ``v`` given as P per-parameter entries.

        Only the reference implements it (one pass, a K-vector out); it runs there whatever the
        call's backend, which still forms the direction."""
        chosen = select("dots", self.tg, "reference")
        self._record["dots"] = chosen.name
        return chosen.implementations["dots"](self.tg, reference)

    def restrict(self, params: Sequence[int]) -> "Engine":
        """The engine over the parameters ``params`` only (views; their targets)."""
        params = list(params)
        targets = None if self.targets is None else tuple(self.targets[p] for p in params)
        return Engine(self.tg.restrict(params), self.backend, targets, self._record)
