"""fastmtl methods as TorchJD 0.18 aggregators and weightings.

TorchJD's autojac engine stores each task's Jacobian in the parameters' ``.jac`` fields
(``torchjd.autojac.backward`` or ``mtl_backward``) and an ``Aggregator`` turns them into ``.grad``
(``torchjd.autojac.jac_to_grad``). Any fastmtl method can be that aggregator::

    from torchjd.autojac import backward, jac_to_grad
    from fastmtl.integrations.torchjd import aggregator

    A = aggregator("upgrad")                     # or "cagrad", c=0.4; or a kept method instance
    backward(losses)                             # fills p.jac for every parameter
    weights = jac_to_grad(model.parameters(), A) # p.grad; returns λ (TorchJD's convention)

For a Gram-space method the aggregator is a TorchJD ``GramianWeightedAggregator``: its
``gramian_weighting`` (also :func:`weighting`, usable with TorchJD's autogram engine) maps the
Gramian to fastmtl's λ, so ``jac_to_grad(..., optimize_gramian_computation=True)`` works too. With
the default ``jac_to_grad`` TorchJD concatenates the Jacobians; the aggregator then forms G and
``Σ λ_k g_k`` with fastmtl's kernels. Methods that are not one combination of the task gradients
(GradDrop, DB-MTL, per-parameter GradVac) become a plain ``Aggregator`` that calls
:func:`fastmtl.combine`.

Differences from a TorchJD aggregator, by design:

* λ is computed by fastmtl's method, so it follows fastmtl's scale convention (see the README's
  "Coming from TorchJD / LibMTL" table: e.g. ``aligned_mtl`` is K × TorchJD's ``AlignedMTL``);
* the aggregation is not differentiable (the input is detached), like TorchJD's UPGrad or CAGrad;
* random methods draw from the ``generator`` given here (TorchJD's draw from the global RNG);
* methods that read the task losses (FAMO, DWA, GradNorm, ...) get them from
  :meth:`FastMTLWeighting.set_losses`, called before each aggregation; TorchJD never passes losses;
* a stateful method keeps its state in the wrapper's ``method`` attribute; ``reset()`` (TorchJD's
  ``Stateful`` interface) restores the state it had when the wrapper was built.

The reverse direction, a TorchJD weighting as a fastmtl method, is :func:`from_weighting`.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

import torch

try:
    from torchjd import Stateful
    from torchjd.aggregation import Aggregator, GramianWeightedAggregator, Weighting
    from torchjd.linalg import PSDMatrix
except ImportError as exc:  # pragma: no cover - exercised only without TorchJD
    raise ImportError("fastmtl.integrations.torchjd needs TorchJD ≥ 0.18 (pip install 'torchjd>=0.18', or "
                      "fastmtl's 'bench' extra)") from exc

import fastmtl
from fastmtl.methods import Context, Method, make_method

from .torchjd_method import TorchJDWeighting, from_weighting

__all__ = ["aggregator", "weighting", "FastMTLWeighting", "FastMTLAggregator", "FastMTLCombineAggregator",
           "TorchJDWeighting", "from_weighting"]


def _build(method: Any, hyperparameters: dict) -> Method:
    m = make_method(method, hyperparameters)
    if getattr(m, "uses_reference", False) and getattr(m, "reference", None) is not None:
        raise TypeError(f"method {m.name!r} has a reference gradient, whose dot products a TorchJD aggregator "
                        "cannot form (it only sees the Jacobian): use fastmtl.combine or fastmtl.backward")
    return m


def _losses_vector(losses: Any) -> Optional[torch.Tensor]:
    if losses is None:
        return None
    if isinstance(losses, torch.Tensor):
        return losses.detach().reshape(-1).to(torch.float64)
    return torch.stack([l.detach().reshape(()).to(torch.float64) if isinstance(l, torch.Tensor)
                        else torch.tensor(float(l), dtype=torch.float64) for l in losses])


class _MethodHolder:
    """The fastmtl method, its generator, the losses of the current step and the reset snapshot."""

    def _hold(self, m: Method, generator: Optional[torch.Generator]) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.method = m
        self.generator = generator
        self.losses: Optional[torch.Tensor] = None
        self._initial = copy.deepcopy(m) if m.stateful else None

    def set_losses(self, losses: Any) -> None:
        """The K task losses of the current step, for methods that read them (``None`` clears them).

        Call it before each aggregation; they are detached and kept until replaced.
        """
        self.losses = _losses_vector(losses)

    def reset(self) -> None:
        """Restore the method's state (and its task count) to what it was when this wrapper was built."""
        if self._initial is not None:
            self.method = copy.deepcopy(self._initial)

    def _check_num_tasks(self, K: int) -> None:
        # A stateful method raises for another K (reset() forgets the K it saw).
        self.method.check_num_tasks(K)
        if self.losses is not None and self.losses.shape[0] != K:
            raise ValueError(f"set_losses() was given {self.losses.shape[0]} losses but the Jacobian has {K} rows")


class FastMTLWeighting(_MethodHolder, Weighting[PSDMatrix]):
    """A TorchJD ``Weighting`` on the Gramian whose weights are a fastmtl method's λ.

    ``weighting(G)`` returns λ (``[K]``, in G's dtype, on G's device) such that the aggregation is
    ``Σ_k λ_k g_k``. The method's on-device solver runs on G; nothing is differentiated.
    A non-finite G gives NaN weights (fastmtl's policy: never a plausible wrong direction).
    """

    def __init__(self, method: Any = "upgrad", *, generator: Optional[torch.Generator] = None,
                 **hyperparameters: Any):
        Weighting.__init__(self)
        m = _build(method, hyperparameters)
        if m.computes_direction:
            raise TypeError(f"method {m.name!r} is not a weighting of the task gradients (its direction is not "
                            "Σ λ_k g_k): use fastmtl.integrations.torchjd.aggregator, which runs it on the Jacobian")
        self._hold(m, generator)

    def forward(self, gramian: torch.Tensor, /) -> torch.Tensor:
        if gramian.dim() != 2 or gramian.shape[0] != gramian.shape[1]:
            raise ValueError(f"the Gramian must be a square matrix, got shape {tuple(gramian.shape)}")
        K = gramian.shape[0]
        if K == 0:
            raise ValueError("the Gramian has K = 0 tasks")
        self._check_num_tasks(K)
        G = gramian.detach()
        finite = torch.isfinite(G).all()
        G = torch.where(finite, G, torch.zeros((), dtype=G.dtype, device=G.device))
        losses = None if self.losses is None else self.losses.to(G.device)
        ctx = Context(num_tasks=K, device=G.device, losses=losses, generator=self.generator)
        lam = self.method.weights(G if self.method.requires_gram else None, ctx)
        self.method.record_num_tasks(K)
        if self.method.requires_gram:
            lam = torch.where(finite, lam, torch.full_like(lam, float("nan")))
        return lam.to(dtype=gramian.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method!r})"

    def __str__(self) -> str:
        return f"FastMTL[{self.method.name}]"


class _StatefulFastMTLWeighting(FastMTLWeighting, Stateful):
    """:class:`FastMTLWeighting` for a stateful method (TorchJD's ``Stateful``: has ``reset()``)."""

    reset = _MethodHolder.reset


class FastMTLAggregator(GramianWeightedAggregator):
    """A TorchJD ``GramianWeightedAggregator`` whose Gramian and weighted sum are fastmtl's kernels.

    ``gramian_weighting`` is the :class:`FastMTLWeighting`; called on a Jacobian matrix, the
    aggregator forms ``G`` with :func:`fastmtl.gramian` and ``Σ λ_k g_k`` with
    :func:`fastmtl.weighted_sum` (on ``backend``, default automatic).
    """

    gramian_weighting: FastMTLWeighting

    def __init__(self, weighting: FastMTLWeighting, *, backend: Optional[str] = None):
        if not isinstance(weighting, FastMTLWeighting):
            raise TypeError(f"weighting must be a FastMTLWeighting, got {type(weighting).__name__}")
        super().__init__(weighting)
        self.backend = backend
        # TorchJD's jac_to_grad hooks self.weighting to report the weights: keep it a Weighting,
        # composed with fastmtl's Gram pass instead of TorchJD's compute_gramian.
        self.weighting = weighting << self._gramian

    @property
    def method(self) -> Method:
        return self.gramian_weighting.method

    def set_losses(self, losses: Any) -> None:
        """See :meth:`FastMTLWeighting.set_losses`."""
        self.gramian_weighting.set_losses(losses)

    def _gramian(self, matrix: torch.Tensor) -> torch.Tensor:
        return fastmtl.gramian(matrix.detach(), backend=self.backend)

    def _combine(self, matrix: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return fastmtl.weighted_sum(matrix.detach(), weights.to(device=matrix.device), backend=self.backend)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method!r})"

    def __str__(self) -> str:
        return f"FastMTL[{self.method.name}]"


class _StatefulFastMTLAggregator(FastMTLAggregator, Stateful):
    def reset(self) -> None:
        self.gramian_weighting.reset()


class FastMTLCombineAggregator(_MethodHolder, Aggregator):
    """A TorchJD ``Aggregator`` that calls :func:`fastmtl.combine` on the Jacobian.

    For methods whose direction is not ``Σ λ_k g_k`` (GradDrop's sign masks, DB-MTL's buffer,
    per-parameter GradVac): TorchJD gets the direction, and ``jac_to_grad`` returns no weights.
    """

    def __init__(self, method: Any, *, generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
                 **hyperparameters: Any):
        Aggregator.__init__(self)
        self._hold(_build(method, hyperparameters), generator)
        self.backend = backend

    def forward(self, matrix: torch.Tensor, /) -> torch.Tensor:
        if self.losses is not None and self.losses.shape[0] != matrix.shape[0]:
            raise ValueError(f"set_losses() was given {self.losses.shape[0]} losses but the Jacobian has "
                             f"{matrix.shape[0]} rows")
        losses = None if self.losses is None else self.losses.to(matrix.device)
        return fastmtl.combine(matrix.detach(), self.method, losses=losses, generator=self.generator,
                               backend=self.backend)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.method!r})"

    def __str__(self) -> str:
        return f"FastMTL[{self.method.name}]"


class _StatefulFastMTLCombineAggregator(FastMTLCombineAggregator, Stateful):
    reset = _MethodHolder.reset


def weighting(method: Any = "upgrad", *, generator: Optional[torch.Generator] = None,
              **hyperparameters: Any) -> FastMTLWeighting:
    """A TorchJD ``Weighting[PSDMatrix]`` (Gramian → weights) backed by a fastmtl method.

    ``method`` is a registry name (built with ``hyperparameters``), a method class, or a method
    instance (kept: its state lives on). For TorchJD's autogram engine or any code that calls a
    Gramian weighting. Raises ``TypeError`` for methods that are not a weighting (GradDrop, ...).
    """
    m = _build(method, hyperparameters)
    cls = _StatefulFastMTLWeighting if m.stateful else FastMTLWeighting
    return cls(m, generator=generator)


def aggregator(method: Any = "upgrad", *, generator: Optional[torch.Generator] = None, backend: Optional[str] = None,
               **hyperparameters: Any) -> Aggregator:
    """A TorchJD ``Aggregator`` backed by a fastmtl method, for ``torchjd.autojac.jac_to_grad``.

    A :class:`FastMTLAggregator` (a ``GramianWeightedAggregator``) for Gram-space and loss-weighting
    methods, a :class:`FastMTLCombineAggregator` for the others. Stateful methods give an aggregator
    that is also TorchJD's ``Stateful``. ``backend`` selects fastmtl's kernels (default automatic).
    """
    m = _build(method, hyperparameters)
    if m.computes_direction:
        cls = _StatefulFastMTLCombineAggregator if m.stateful else FastMTLCombineAggregator
        return cls(m, generator=generator, backend=backend)
    w = weighting(m, generator=generator)
    cls = _StatefulFastMTLAggregator if m.stateful else FastMTLAggregator
    return cls(w, backend=backend)
