"""GradVac — Wang, Tsvetkov, Firat, Cao, "Gradient Vaccine: Investigating and Improving Multi-task
Optimization in Massively Multilingual Models", ICLR 2021 (arXiv 2010.05874)."""

from __future__ import annotations


import torch

from ..collectives import all_reduce_sum
from ..solvers import vaccine
from . import sharded_state
from .base import Direction, DirectionMethod, GramMethod
from .common import check_choice, check_num_tasks, check_positive
from .ordering import random_task_orders
from .registry import register_method

_GRANULARITIES = ("whole", "per_param")


@register_method
class GradVac(GramMethod, DirectionMethod):
    """Gradient Vaccine (Wang et al., ICLR 2021): pull pairwise similarities up to EMA targets.

    Paper / LibMTL form: for each task ``i``, ``p_i = g_i``; for every other task ``j`` in a
    random order (independent per ``i``), with ``φ = ⟨p_i, g_j⟩ / (‖p_i‖‖g_j‖ + eps)`` and the
    target ``φ̂_ij``: if ``φ < φ̂_ij``,
    ``p_i ← p_i + g_j · ‖p_i‖ (φ̂_ij √(1−φ²) − φ √(1−φ̂_ij²)) / (‖g_j‖ √(1−φ̂_ij²) + eps)``;
    then always ``φ̂_ij ← (1−β) φ̂_ij + β φ``. ``d = Σ_i p_i`` (**sum**, as LibMTL).

    Gram form (exact, as PCGrad): ``p_i = Σ_k C_ik g_k``, ``‖p_i‖² = C_i G C_iᵀ``,
    ``⟨p_i, g_j⟩ = (C G)_ij``; a correction adds ``w`` to ``C_ij``. Each ``φ̂_ij`` is touched
    only by row ``i``, so the K rows of a round run as one batched step; ``λ = Σ_i C_i``
    (:func:`fastmtl.solvers.vaccine`: compiled in ``fastmtl._C`` where available, else the PyTorch
    reference).

    State: the targets ``φ̂`` (``[K, K]``; ``[P, K, K]`` per parameter, where a parameter no task
    touches in a call keeps its targets; initially 0).
    Defaults: ``beta = 0.5`` (LibMTL; the paper's EMA rate is small, ≈1e-2 by recollection,
    **unverified**), ``eps = 1e-8``. A zero-norm ``g_j`` is never added (LibMTL would add the zero
    vector with a ``1/eps``-sized coefficient: same direction, meaningless weight); its ``φ = 0``
    still enters the EMA.

    Granularity: ``"whole"`` (default) treats the shared parameters as one vector: one Gram, one
    λ. ``"per_param"`` runs the method independently on every parameter tensor (LibMTL's
    ``all_matrix`` grouping; the paper applies GradVac per layer/parameter block), with one Gram,
    one ``φ̂`` and one λ per parameter and the same random orders for every block; the direction is
    not a single combination of the task gradients, so ``info.weights`` is ``None`` there.

    Sharded (``combine(..., process_group=pg)``, every rank passing its shard of the same P
    parameters): ``"whole"`` is a Gram-space method (one all-reduce of G); ``"per_param"``
    all-reduces the P block Grams (and which blocks any rank touches) and draws its orders from
    rank 0's generator, so every rank holds the same λ and targets as the unsharded run. Its
    checkpoint then follows :mod:`fastmtl.methods.sharded_state` (same world size only).
    """

    name = "gradvac"
    head_weighting = "sum"  # gradient surgery: heads get their own task's gradient
    requires_gram = True  # granularity="whole": one Gram; "per_param": its own block Grams
    stateful = True
    _state_attrs = ("_phi",)

    def __init__(self, beta: float = 0.5, eps: float = 1e-8, shuffle: bool = True,
                 granularity: str = "whole"):
        beta = check_positive("beta", beta)
        if beta > 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        check_choice("granularity", granularity, _GRANULARITIES)
        self.beta = beta
        self.eps = check_positive("eps", eps)
        self.shuffle = bool(shuffle)
        self.uses_generator = self.shuffle  # a fixed order draws nothing
        self.granularity = granularity
        self.reset()

    @property
    def computes_direction(self) -> bool:  # per-parameter blocks need their own Grams
        return self.granularity == "per_param"

    @property
    def sharded_direction(self) -> bool:  # its own all-reduce of the block Grams under a process group
        return self.granularity == "per_param"

    def _has_unsharded_state(self) -> bool:
        return self._phi is not None and getattr(self, "_shard", None) is None

    def state_dict(self, process_group=None) -> dict:
        """As :meth:`Method.state_dict`; per-parameter GradVac under a process group (after
        sharded calls, or with ``process_group`` given for a fresh instance's ``dcp.load``
        template) uses the layout of :mod:`fastmtl.methods.sharded_state`."""
        return sharded_state.state_dict(self, process_group) or super().state_dict()

    def load_state_dict(self, state: dict, strict: bool = True, process_group=None):
        """As :meth:`Method.load_state_dict`; a sharded state dict needs the same world size."""
        if sharded_state.is_sharded(state):
            return sharded_state.load(self, state, process_group, strict)
        return super().load_state_dict(state, strict)

    def reset(self) -> None:
        """Reset the similarity targets to 0."""
        self._phi = None

    @property
    def targets(self):
        """The EMA targets ``φ̂`` (``[K, K]``, or ``[P, K, K]`` per parameter)."""
        if self._phi is None or self.granularity == "per_param":
            return self._phi
        return self._phi[0]

    def _lambdas(self, Gb: torch.Tensor, generator, blocks=None, num_blocks: int = 1) -> torch.Tensor:
        """λ per block for the block Grams ``Gb`` ``[B, K, K]`` of the blocks ``blocks`` (indices into
        ``num_blocks`` blocks; default all); updates those blocks' targets."""
        K = Gb.shape[-1]
        if self._phi is not None:
            check_num_tasks("GradVac", self._phi.shape[-1], K)
            if self._phi.shape[0] != num_blocks:
                raise ValueError(f"this GradVac instance holds targets for {self._phi.shape[0]} parameter "
                                 f"blocks but was called with {num_blocks}; create a new instance for other "
                                 "parameters")
            phi = self._phi.to(Gb.device)
        else:
            phi = torch.zeros(num_blocks, K, K, dtype=torch.float64, device=Gb.device)
        orders = random_task_orders(K, generator=generator, device=Gb.device, shuffle=self.shuffle)
        if blocks is None:
            lam, phi = vaccine(Gb, phi, orders, beta=self.beta, eps=self.eps)
        else:
            index = torch.tensor(blocks, device=Gb.device)
            lam, sub = vaccine(Gb, phi[index], orders, beta=self.beta, eps=self.eps)
            phi = phi.index_copy(0, index, sub)
        self._phi = phi
        return lam

    def weights(self, G, ctx):
        if self.granularity == "per_param":
            raise TypeError("GradVac(granularity='per_param') needs the gradients themselves: call "
                            "fastmtl.combine(grads, method=instance)")
        G = G.to(torch.float64)
        G = 0.5 * (G + G.T)
        return self._lambdas(G[None], ctx.generator)[0]

    def direction(self, engine, ctx):
        tg = engine.tg
        blocks = [p for p in range(tg.num_params) if tg.shapes[p] is not None]
        subs = [engine.restrict([p]) for p in blocks]
        grams = [sub.gramian() for sub in subs]
        if ctx.process_group is None:
            Gb = torch.stack(grams).to(torch.float64)
            Gb = 0.5 * (Gb + Gb.transpose(-1, -2))
            lam = self._lambdas(Gb, ctx.generator, blocks, tg.num_params)
            row = {p: b for b, p in enumerate(blocks)}
        else:
            lam = self._sharded_lambdas(tg, grams, blocks, ctx)
            row = {p: p for p in blocks}
        parts = [None if engine.targets is None else engine.targets[p] for p in range(tg.num_params)]
        for b, p in enumerate(blocks):
            parts[p] = subs[b].weighted_sum(lam[row[p]])[0]
        G = grams[0] if grams else torch.zeros(tg.num_tasks, tg.num_tasks, dtype=torch.float64, device=tg.device)
        for g in grams[1:]:
            G = G + g
        return Direction(parts, None, G)  # this rank's partial Gram: the pipeline all-reduces it for the info

    def _sharded_lambdas(self, tg, grams, blocks, ctx):
        """Sharded: λ ``[P, K]`` from the global block Grams (``ctx.generator`` holds rank 0's state).

        Every block runs (the ranks must agree on the work without a host read); a block that no
        rank touches in this call gets a zero Gram and keeps its targets (``torch.where``), as in
        the unsharded method."""
        sharded_state.record(self, ctx.process_group)
        K, P = tg.num_tasks, tg.num_params
        buf = torch.zeros(P, K * K + 1, dtype=torch.float64, device=tg.device)
        for g, p in zip(grams, blocks):
            buf[p, :-1] = g.reshape(-1).to(torch.float64)
            buf[p, -1] = 1.0
        buf = all_reduce_sum(buf, ctx.process_group, "all_reduce of GradVac's block Gram matrices")
        Gb = buf[:, :-1].reshape(P, K, K)
        Gb = 0.5 * (Gb + Gb.transpose(-1, -2))
        touched = buf[:, -1] > 0
        old = self._phi
        lam = self._lambdas(Gb, ctx.generator, None, P)
        keep = torch.zeros_like(self._phi) if old is None else old.to(self._phi.device)
        self._phi = torch.where(touched[:, None, None], self._phi, keep)
        return lam

