"""A TorchJD Gramian weighting run as a fastmtl method, on fastmtl's Gram engine.

``from_weighting(UPGradWeighting())`` is a :class:`fastmtl.methods.Method`: ``fastmtl.combine``
and ``fastmtl.backward`` form ``G = J Jᵀ`` with fastmtl's kernels (per-parameter gradients read in
place, any backend), hand G to the TorchJD weighting, and form
``Σ λ_k g_k`` with fastmtl's kernels again. Any TorchJD ``Weighting[PSDMatrix]`` works, including
weightings that fastmtl does not implement and users' own ones.

What fastmtl guarantees for its own methods does not carry over to the weighting: TorchJD's
solvers may copy G to the host (quadprog, cvxpy), so a step may synchronise with the device, and
random weightings (PCGrad, GradVac) draw from the global torch RNG, not from ``generator``.
"""

from __future__ import annotations

import typing
from typing import Any, Optional

import torch

from torchjd import Stateful
from torchjd.aggregation import GramianWeightedAggregator, Weighting
from torchjd.linalg import Matrix, PSDMatrix

from fastmtl.methods import Context, GramMethod

__all__ = ["TorchJDWeighting", "from_weighting"]


def _declared_input(w: Weighting) -> Optional[type]:
    """The statistic a TorchJD weighting declares it takes: ``PSDMatrix`` (the Gramian), ``Matrix``
    (the Jacobian itself), or ``None`` when its class does not say (a generic wrapper)."""
    for cls in type(w).__mro__:
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Weighting:
                arg = typing.get_args(base)[0]
                if isinstance(arg, type):
                    return PSDMatrix if issubclass(arg, PSDMatrix) else Matrix
    inner = getattr(w, "weighting", None)  # wrappers such as CRMOGMWeighting(weighting)
    return _declared_input(inner) if isinstance(inner, Weighting) and inner is not w else None


class TorchJDWeighting(GramMethod):
    """A TorchJD ``Weighting[PSDMatrix]`` as a fastmtl method: ``λ = weighting(G)``.

    Paper, formula, defaults and scale are the TorchJD weighting's; λ is returned in float64 on
    G's device, and the direction is ``Σ λ_k g_k``. G is symmetrised (``(G + Gᵀ)/2``, in its own
    dtype) before the call: accumulated Grams can be asymmetric at the rounding level and TorchJD's
    solvers assume symmetry. Task heads follow TorchJD's ``mtl_backward``: each head gets its own
    plain task gradient (``head_weighting = "sum"``; ``fastmtl.backward(..., head_weighting=...)``
    overrides it).

    State: the weighting's own. A TorchJD ``Stateful`` weighting (GradVac, PCD, CR-MOGM, ...) makes
    this method stateful; :meth:`reset` calls the weighting's ``reset()``. Its state lives in the
    TorchJD object, so :meth:`state_dict` raises for it: checkpoint the weighting itself
    (``torch.save(method.weighting, ...)``).
    """

    name = "torchjd"
    requires_gram = True
    head_weighting = "sum"

    def __init__(self, weighting: Any, *, gramian_input: Optional[bool] = None):
        if isinstance(weighting, GramianWeightedAggregator):
            weighting = weighting.gramian_weighting
        if not isinstance(weighting, Weighting):
            raise TypeError("weighting must be a TorchJD Weighting on the Gramian (e.g. UPGradWeighting()) or a "
                            f"GramianWeightedAggregator, got {type(weighting).__name__}")
        if gramian_input is None:
            declared = _declared_input(weighting)
            if declared is Matrix:
                raise TypeError(f"{type(weighting).__name__} weights the Jacobian matrix itself, not its Gramian, so "
                                "it cannot run in Gram space (for TorchJD's Mean, Sum, Random use fastmtl's 'mean', "
                                "'sum', 'rlw')")
            if declared is None:
                raise TypeError(f"cannot tell whether {type(weighting).__name__} takes a Gramian: pass "
                                "gramian_input=True if it does")
        elif not gramian_input:
            raise TypeError("only weightings of the Gramian can run in Gram space (gramian_input=False)")
        self.weighting = weighting
        # Per instance: the wrapped weighting decides whether there is state across steps.
        self.stateful = isinstance(weighting, Stateful)

    def weights(self, G: Optional[torch.Tensor], ctx: Context) -> torch.Tensor:
        if G is None:
            raise ValueError("a TorchJD weighting needs the Gram matrix G")
        K = G.shape[0]
        with torch.no_grad():
            lam = self.weighting(0.5 * (G + G.T))
        if not isinstance(lam, torch.Tensor) or lam.shape != (K,):
            raise ValueError(f"{type(self.weighting).__name__} returned "
                             f"{getattr(lam, 'shape', type(lam).__name__)} for a {K}×{K} Gramian, not {K} weights")
        return lam.detach().to(device=ctx.device, dtype=torch.float64)

    def reset(self) -> None:
        """Reset the TorchJD weighting's state (its ``reset()``); a no-op for a stateless one."""
        if self.stateful:
            self.weighting.reset()
        self.__dict__.pop("_fastmtl_num_tasks", None)

    def state_dict(self) -> dict:
        if self.stateful:
            raise NotImplementedError(f"the state of {type(self.weighting).__name__} lives in the TorchJD object: "
                                      "checkpoint method.weighting itself (torch.save)")
        return super().state_dict()

    def load_state_dict(self, state: dict, strict: bool = True):
        if self.stateful:
            raise NotImplementedError(f"the state of {type(self.weighting).__name__} lives in the TorchJD object: "
                                      "restore method.weighting itself (torch.load)")
        return super().load_state_dict(state, strict)

    def __repr__(self) -> str:
        return f"TorchJDWeighting({self.weighting!r})"


def from_weighting(weighting: Any, *, gramian_input: Optional[bool] = None) -> TorchJDWeighting:
    """Any TorchJD Gramian ``Weighting`` (or ``GramianWeightedAggregator``) as a fastmtl method.

    ``fastmtl.combine(grads, method=from_weighting(KrumWeighting(n_byzantine=1)))`` and
    ``fastmtl.backward(losses, shared, from_weighting(UPGradWeighting()), head_params=heads)``.
    Keep the returned instance across steps for stateful weightings. ``gramian_input=True`` vouches
    for a weighting whose class does not declare its input (a custom ``Weighting`` without
    ``[PSDMatrix]``); weightings of the Jacobian matrix (TorchJD's Mean, Random, NashMTL, MoDo, ...)
    raise ``TypeError``.
    """
    return TorchJDWeighting(weighting, gramian_input=gramian_input)
