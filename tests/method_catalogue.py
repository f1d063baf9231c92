"""One entry per registered method: how to call it, and its literal oracle for one call.

``tests/test_method_catalogue.py`` checks that every name in ``fastmtl.methods.METHODS`` has an
entry here and runs the checks every method must pass (finite output on the input families, the
same direction from every input layout, ``d = Σ λ_k g_k`` where λ is reported, agreement with the
oracle, ``info.backend`` naming the backend that ran). Adding a method = its file, its oracle in
:mod:`fastmtl.reference.literal`, and one entry here; method-specific behaviour (options, state over
many steps) gets its own tests beside.

An oracle maps ``(J, call)`` to the direction of **one** ``combine`` call on a fresh instance:
``J`` is the float64 ``[K, D]`` task-gradient matrix, ``call`` the :class:`Call` inputs (losses,
reference gradient, and a twin of the call's seeded generator, so random draws can be replayed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from fastmtl.methods.ordering import plackett_luce_order, random_task_orders
from fastmtl.reference import literal as L


@dataclass
class Call:
    """The inputs of one catalogue call (made by :func:`call_inputs`)."""

    losses: Optional[torch.Tensor]
    reference: Optional[torch.Tensor]
    generator: torch.Generator  # a twin of the generator the call draws from


@dataclass(frozen=True)
class Entry:
    hyper: dict = field(default_factory=dict)       # hyper-parameters of the standard call
    needs_losses: bool = False
    needs_reference: bool = False
    oracle: Optional[Callable] = None               # (J, Call) -> d, or None with `elsewhere`
    elsewhere: str = ""                             # where its one-call oracle test lives instead
    tol: float = 1e-6                               # relative error against the oracle
    oracle_skips: tuple = ()                        # input families the oracle is not defined on
    primitive: str = "weighted_sum"                 # the registry primitive that forms the direction
    # A direction computed in plain PyTorch (no registry primitive): info.backend is "reference".
    plain_torch_direction: bool = False


def _lam(J: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return J.T @ lam.to(J)


def _pcgrad(J, c):
    return L.pcgrad_literal(J, random_task_orders(J.shape[0], generator=c.generator, device="cpu"))


def _wpcgrad(J, c):
    priorities = c.losses.clamp_min(1e-12) ** 1.0  # dynamic priorities ∝ ℓ^γ, γ = 1, from the current losses
    return L.wpcgrad_literal(J, plackett_luce_order(priorities, generator=c.generator))


def _gradvac(J, c):
    K = J.shape[0]
    orders = random_task_orders(K, generator=c.generator, device="cpu")
    return L.gradvac_literal(J, orders, torch.zeros(K, K, dtype=torch.float64))[0]


def _rlw(J, c):
    z = torch.randn(J.shape[0], generator=c.generator, dtype=torch.float64)
    return _lam(J, torch.softmax(z, 0))


def _slgrad(J, c):
    # Every row a sample of one task (num_samples = K): W = max(a, 0)/Σ max(a, 0), d = (1/B) Σ W g.
    a = J @ c.reference
    w = a.clamp_min(0)
    W = w / w.sum() if float(w.sum()) > 0 else torch.zeros_like(w)
    return J.T @ W / J.shape[0]


CATALOGUE = {
    "mean": Entry(oracle=lambda J, c: J.mean(0)),
    "sum": Entry(oracle=lambda J, c: J.sum(0)),
    "pcgrad": Entry(oracle=_pcgrad),
    "wpcgrad": Entry(needs_losses=True, oracle=_wpcgrad),
    "cagrad": Entry(oracle=lambda J, c: L.cagrad_literal(J), tol=1e-5),
    "mgda": Entry(oracle=lambda J, c: L.mgda_literal(J), tol=1e-5),
    # The closed form needs non-zero gradients; zero rows: tests/test_methods_literal.py (TorchJD's form).
    "imtl_g": Entry(oracle=lambda J, c: L.imtl_g_literal(J), oracle_skips=("zero",)),
    "upgrad": Entry(hyper={"reg_eps": 0.0}, oracle=lambda J, c: L.upgrad_literal(J), tol=1e-5),
    "dualproj": Entry(hyper={"reg_eps": 0.0}, oracle=lambda J, c: L.dualproj_literal(J), tol=1e-5),
    "aligned_mtl": Entry(oracle=lambda J, c: L.aligned_mtl_literal(J)),
    "hydalearn": Entry(needs_reference=True, oracle=lambda J, c: L.hydalearn_literal(J, reference=c.reference)),
    "gcosim": Entry(oracle=lambda J, c: L.gcosim_literal(J)),
    "config": Entry(oracle=lambda J, c: L.config_literal(J)),
    "nash_mtl": Entry(hyper={"max_norm": 0.0}, oracle=lambda J, c: _lam(J, L.nash_mtl_literal(J)), tol=1e-5),
    "gradvac": Entry(oracle=_gradvac),
    "db_mtl": Entry(needs_losses=True, oracle=lambda J, c: L.db_mtl_literal([J], [c.losses])[0],
                    plain_torch_direction=True),
    "olaux": Entry(oracle=lambda J, c: L.olaux_literal([J])[0]),
    "gradnorm": Entry(needs_losses=True, oracle=lambda J, c: L.gradnorm_literal([J], [c.losses])[0]),
    "gemtl": Entry(needs_losses=True, oracle=lambda J, c: _lam(J, L.gemtl_literal(c.losses, -0.5))),
    "famo": Entry(needs_losses=True, oracle=lambda J, c: _lam(J, L.famo_literal([(c.losses, c.losses)])[0])),
    "uw": Entry(oracle=lambda J, c: 0.5 * J.sum(0)),          # λ = ½e^{−s}, s = 0 at the first call
    "dwa": Entry(needs_losses=True, oracle=lambda J, c: J.sum(0)),  # λ = 1 in the first two epochs
    "rlw": Entry(oracle=_rlw),
    # Stateful methods, first call of a fresh instance; several steps: tests/test_methods_stateful.py.
    "modo": Entry(oracle=lambda J, c: L.modo_literal([J])[0][0]),
    "sdmgrad": Entry(oracle=lambda J, c: L.sdmgrad_literal([J])[0][0]),
    "cr_mogm": Entry(oracle=lambda J, c: L.cr_mogm_literal([J])[0][0], tol=1e-5),  # λ_0 = λ̂_1: MGDA's weights
    "moco": Entry(oracle=lambda J, c: L.moco_literal([J])[0][0], plain_torch_direction=True),
    "excess_mtl": Entry(oracle=lambda J, c: L.excess_mtl_literal([J])[0][0]),   # the baseline call: λ = 1
    "stch": Entry(needs_losses=True, oracle=lambda J, c: _lam(J, L.stch_literal([c.losses], [0])[0])),
    "auto_lambda": Entry(oracle=lambda J, c: 0.1 * J.sum(0)),   # λ = w = init before any meta step
    "graddrop": Entry(elsewhere="tests/test_graddrop_method.py (Philox-matched literal masks)", primitive="graddrop"),
    "slgrad": Entry(needs_reference=True, oracle=_slgrad),
    "constant": Entry(oracle=lambda J, c: J.sum(0)),           # weights=None: every weight 1
    # Methods with a `min_tasks` attribute raise ValueError below it (checked by the catalogue test).
    "krum": Entry(hyper={"n_selected": 2}, oracle=lambda J, c: L.krum_literal(J, 0, 2)),
    "trimmed_mean": Entry(hyper={"trim_number": 1}, plain_torch_direction=True,
                          oracle=lambda J, c: L.trimmed_mean_literal(J, 1)),
    "fairgrad": Entry(oracle=lambda J, c: L.fairgrad_literal(J), tol=1e-7),
    "pcd": Entry(oracle=lambda J, c: L.pcd_literal([J])[0], tol=1e-7),
    # The closed form of IMTL-G needs non-zero gradients (see imtl_g).
    "imtl": Entry(oracle=lambda J, c: L.imtl_literal([J])[0][0], oracle_skips=("zero",)),
}


def call_inputs(name: str, J: torch.Tensor, seed: int):
    """``(combine kwargs, Call for the oracle)`` of the standard call of method ``name`` on ``J``."""
    entry = CATALOGUE[name]
    K, D = J.shape
    g = torch.Generator().manual_seed(seed)
    losses = 0.5 + torch.rand(K, generator=g, dtype=torch.float64) if entry.needs_losses else None
    reference = torch.randn(D, generator=g, dtype=torch.float64).to(J.dtype) if entry.needs_reference else None
    kwargs = dict(entry.hyper, generator=torch.Generator().manual_seed(seed + 1))
    if losses is not None:
        kwargs["losses"] = losses
    if reference is not None:
        kwargs["reference"] = reference
    if name == "slgrad":
        kwargs["num_samples"] = K
    call = Call(losses=losses, reference=None if reference is None else reference.to(torch.float64),
                generator=torch.Generator().manual_seed(seed + 1))
    return kwargs, call
