"""TorchJD's and LibMTL's names for fastmtl's methods: one row per (library, class) → fastmtl name.

The README's "Coming from TorchJD / LibMTL" table is :func:`markdown_table` of :data:`ROWS`
(``python -m fastmtl.integrations.peer_names`` prints it); the tests check that every row names a
registered method, that the README shows exactly this table, and, for TorchJD, that each row's
``options`` and ``factor`` reproduce TorchJD's own class. Adding a method that a peer also has is
one line in :data:`ROWS`.

Fields of a row:

* ``library``, ``theirs`` — the peer and its class (TorchJD: ``aggregation.X`` / ``scalarization.X``
  in ``torchjd``; LibMTL: ``LibMTL.weighting.X``, selected by that name in its trainer);
* ``ours`` — the fastmtl registry name;
* ``options`` — fastmtl hyper-parameters that reproduce the peer's defaults (empty: fastmtl's
  defaults already do);
* ``factor`` — fastmtl's λ (with ``options``) = ``factor`` × the peer's weights: ``"1"`` or ``"K"``;
* ``note`` — remaining differences;
* ``their_args`` — arguments the peer's constructor needs (used by the tests);
* ``check`` — how the tests compare with TorchJD: ``"any_k"`` (K = 2…4), ``"two_tasks"`` (random
  visiting orders or an iterative stopping rule agree only for K = 2), ``"three_tasks"`` (K = 3, 4:
  Krum needs K ≥ 3), ``"first_call"`` (the weights a scalarizer gives its first losses), ``"none"``
  (random draws), ``"stateful"`` (compared over several steps in ``tests/test_stateful_peers.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

__all__ = ["PeerName", "ROWS", "markdown_table"]


@dataclass(frozen=True)
class PeerName:
    library: str
    theirs: str
    ours: str
    options: Tuple[Tuple[str, Any], ...] = ()
    factor: str = "1"
    note: str = ""
    their_args: Tuple[Tuple[str, Any], ...] = ()
    check: str = "any_k"

    def __post_init__(self):
        if self.library not in ("TorchJD", "LibMTL"):
            raise ValueError(f"library must be 'TorchJD' or 'LibMTL', got {self.library!r}")
        if self.factor not in ("1", "K"):
            raise ValueError(f"factor must be '1' or 'K', got {self.factor!r}")
        if self.check not in ("any_k", "two_tasks", "three_tasks", "first_call", "none", "stateful"):
            raise ValueError(f"unknown check {self.check!r}")


def _row(library: str, theirs: str, ours: str, options: dict = None, factor: str = "1", note: str = "",
         their_args: dict = None, check: str = "any_k") -> PeerName:
    return PeerName(library, theirs, ours, tuple((options or {}).items()), factor, note,
                    tuple((their_args or {}).items()), check)


_T, _L = "TorchJD", "LibMTL"

#: One row per peer class. Keep TorchJD rows first, then LibMTL's, each in the peer's own order.
ROWS: Tuple[PeerName, ...] = (
    _row(_T, "aggregation.Mean", "mean"),
    _row(_T, "aggregation.Sum", "sum"),
    _row(_T, "aggregation.UPGrad", "upgrad"),
    _row(_T, "aggregation.DualProj", "dualproj"),
    _row(_T, "aggregation.MGDA", "mgda", note="TorchJD stops Frank–Wolfe at ε = 1e-3; fastmtl solves exactly",
         check="two_tasks"),
    _row(_T, "aggregation.IMTLG", "imtl_g"),
    _row(_T, "aggregation.AlignedMTL", "aligned_mtl", factor="K", note="TorchJD uses B·1/K, the official code B·1"),
    _row(_T, "aggregation.CAGrad", "cagrad", {"c": 0.5, "rescale": 0, "multiply_by_k": False},
         note="fastmtl's defaults (`rescale=1`, ×K) give K/(1+c²) × TorchJD's", their_args={"c": 0.5}),
    _row(_T, "aggregation.PCGrad", "pcgrad", {"eps": 0.0},
         note="TorchJD draws orders from the global RNG and divides by ‖g_j‖² without the official 1e-8",
         check="two_tasks"),
    _row(_T, "aggregation.GradVac", "gradvac", note="TorchJD draws orders from the global RNG", check="two_tasks"),
    _row(_T, "aggregation.ConFIG", "config"),
    _row(_T, "aggregation.NashMTL", "nash_mtl", note="both fold in the global-norm clip `max_norm=1`; on strongly "
         "conflicting gradients of different norms TorchJD's conic solver (like the official one) can stop far from "
         "`α_i (Gα)_i = 1`, which fastmtl's Newton solver reaches", their_args={"n_tasks": "K"}),
    _row(_T, "aggregation.GradDrop", "graddrop", note="masks drawn from `generator` (TorchJD: global RNG)",
         check="none"),
    _row(_T, "aggregation.Random", "rlw", note="same distribution (softmax of N(0, I)), other draws", check="none"),
    _row(_T, "aggregation.TrimmedMean", "trimmed_mean", note="`trim_number` as TorchJD's (fastmtl's default 0 is "
         "the mean); coordinate-wise, no λ", their_args={"trim_number": 0}),
    _row(_T, "aggregation.FairGrad", "fairgrad", {"multiply_by_k": False, "max_norm": 0.0},
         note="fastmtl's defaults follow the official code: K·w clipped to norm 1; TorchJD's scipy least squares "
         "stops short of `Gw = w^{-1/α}` on gradients of different norms", their_args={"alpha": 1.0}),
    _row(_T, "aggregation.PCD", "pcd", note="task 0 is the primary; the EMA of the norms is kept for one K"),
    _row(_T, "aggregation.Constant", "constant", note="`weights` as given; fastmtl's default (none given) is 1 each",
         their_args={"weights": "ones_K"}),
    _row(_T, "aggregation.Krum", "krum", note="TorchJD's unsquared distances (`squared=True`: the paper's score)",
         their_args={"n_byzantine": 0}, check="three_tasks"),
    _row(_T, "aggregation.ExcessMTL", "excess_mtl", factor="K", note="fastmtl starts λ at 1 (official code), TorchJD at "
         "1/K: equal to TorchJD's `n_warmup_steps=1` × K; `robust_step_size` 1e-2 (LibMTL's) vs TorchJD's 1.0",
         check="stateful"),
    _row(_T, "aggregation.MoDoWeighting", "modo", note="a weighting only in TorchJD (no aggregator)", check="stateful"),
    _row(_T, "aggregation.SDMGradWeighting", "sdmgrad", note="a weighting only in TorchJD (no aggregator)",
         check="stateful"),
    _row(_T, "aggregation.CRMOGMWeighting", "cr_mogm", note="TorchJD wraps any weighting; fastmtl's `base=` names "
         "the method (default MGDA)", check="stateful"),
    _row(_T, "scalarization.Mean", "mean", check="first_call"),
    _row(_T, "scalarization.Sum", "sum", check="first_call"),
    _row(_T, "scalarization.DWA", "dwa", note="TorchJD's `step()` is `end_epoch()`", check="first_call"),
    _row(_T, "scalarization.UW", "uw", note="both start at s = 0; train `loss_term` (or `lr=`)",
         their_args={"shape": "K"}, check="first_call"),
    _row(_T, "scalarization.FAMO", "famo", note="`update(new_losses)` after the step, as TorchJD's",
         their_args={"shape": "K"}, check="first_call"),
    _row(_L, "EW", "sum", note="LibMTL's equal weighting sums the losses (λ = 1)"),
    _row(_L, "UW", "uw", {"init": -0.5}, note="LibMTL starts at s = −0.5"),
    _row(_L, "GradNorm", "gradnorm", {"variant": "libmtl"}, note="`w = K·softmax(s)`, Adam, first-epoch ℓ(0)"),
    _row(_L, "MGDA", "mgda", note="`mgda_gn` is `normalization`"),
    _row(_L, "DWA", "dwa", note="`T` is `temperature`"),
    _row(_L, "PCGrad", "pcgrad"),
    _row(_L, "GradVac", "gradvac", note="`GradVac_group_type=2` (every parameter tensor) is "
                                        "`granularity=\"per_param\"`"),
    _row(_L, "GradDrop", "graddrop", note="LibMTL drops on representation gradients (`rep_grad=True`)"),
    _row(_L, "IMTL", "imtl", note="`loss_scale` is `s`: train it via `loss_term` (or `lr=`); LibMTL's heads get "
         "`e^{s}∇ℓ`, fastmtl's their plain gradients"),
    _row(_L, "CAGrad", "cagrad", {"multiply_by_k": False}, note="`calpha` is `c`; `rescale` as LibMTL's"),
    _row(_L, "Nash_MTL", "nash_mtl"),
    _row(_L, "RLW", "rlw"),
    _row(_L, "Aligned_MTL", "aligned_mtl"),
    _row(_L, "DB_MTL", "db_mtl", note="`DB_beta`, `DB_beta_sigma` are `beta`, `sigma`"),
    _row(_L, "FAMO", "famo", note="`FAMO_w_lr`, `FAMO_w_gamma` are `w_lr`, `gamma`; `update_w` is `update`"),
    _row(_L, "UPGrad", "upgrad"),
    _row(_L, "MoCo", "moco", {"variant": "libmtl"}, note="`variant=\"paper\"` (default) is the authors' code"),
    _row(_L, "STCH", "stch", note="`STCH_mu`, `STCH_warmup_epoch` are `mu`, `warmup_epoch`; call `end_epoch()`"),
    _row(_L, "ExcessMTL", "excess_mtl"),
    _row(_L, "FairGrad", "fairgrad", note="`FairGrad_alpha` is `alpha`"),
    _row(_L, "MoDo", "modo", {"gamma": 1e-3}, note="two or three minibatches: `fastmtl.training.double_sampling_backward`"),
    _row(_L, "SDMGrad", "sdmgrad", {"lr": 5.0}, note="two or three minibatches: "
         "`fastmtl.training.double_sampling_backward`"),
)


def _options_text(row: PeerName) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in row.options)


def markdown_table(rows: Tuple[PeerName, ...] = ROWS) -> str:
    """The README table: their class, our name, options matching their defaults, scale, notes."""
    lines = ["| library | their class | fastmtl | options for their defaults | fastmtl λ vs theirs | notes |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        options = f"`{_options_text(r)}`" if r.options else "—"
        scale = "same" if r.factor == "1" else "K × theirs"
        lines.append(f"| {r.library} | `{r.theirs}` | `{r.ours}` | {options} | {scale} | {r.note or '—'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
