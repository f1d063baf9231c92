"""Task-weight trajectories on B4 (noisy one-vs-rest digits): HydaLearn (first-order and look-ahead
modes), per step, with the main task's training labels clean or 60% flipped.

HydaLearn's gains compare each task's training gradient with the main task's gradient on a clean
validation batch. With most main labels flipped, the main task's own training gradient points
away from the clean one, so its gain — and its weight — should fall to about zero ("task-level
weighting can only switch the main task off", the benchmark specification's B4 reading), while
with clean labels it keeps a large share. Both modes use ``fallback="main"``: a step in which no
task has a positive gain puts all the weight on the main task ("main-only steps"). OL-AUX is left
out: even with :data:`~fastmtl.bench.exp_trajectories.OLAUX_MOVING` its shares stay within 0.001
of 1/K on B4 (it reads the main task's noisy *training* gradient, not a clean one).
Runs :func:`fastmtl.bench.exp_trajectories.run_trajectory` on
:func:`fastmtl.bench.problems.make_digits_ovr` (no gradient clipping, as B4).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .exp_io import progress
from .exp_trajectories import run_trajectory
from .problems import make_digits_ovr

#: (label, main-label flip rate) of the two B4 settings.
B4_TRAJ_SETTINGS = (("clean", 0.0), ("60% flipped", 0.6))
B4_TRAJ_METHODS = ("hydalearn", "hydalearn_la")
B4_TRAJ_METRICS = ("main AUC", "main share early", "main share late", "top aux share late", "main-only steps")


def b4_trajectory_experiment(seeds: Sequence[int] = (0, 1, 2), *, methods: Sequence[str] = B4_TRAJ_METHODS,
                             quick: bool = False, settings: Sequence[Tuple[str, float]] = B4_TRAJ_SETTINGS,
                             epochs: Optional[int] = None, show_progress: bool = True):
    """Per-seed rows (``setting / method``: main AUC; the main task's mean share over the first
    10% and the last third of the steps; the largest auxiliary's share over the last third; the
    fraction of steps with all the weight on the main task) and
    the shares ``{setting: {method: [seeds, steps, K]}}``."""
    epochs = epochs if epochs is not None else (3 if quick else 30)
    rows: List[dict] = []
    traj: Dict[str, Dict[str, List[torch.Tensor]]] = {}
    jobs = [(lab, flip, m, s) for lab, flip in settings for m in methods for s in seeds]
    for label, flip, method, seed in progress(jobs, total=len(jobs), desc="b4 trajectories", enabled=show_progress):
        problem = make_digits_ovr(seed, flip=flip, epochs=epochs)
        r = run_trajectory(problem, method, seed)
        S = r["shares"]
        T = S.shape[0]
        early, late = S[:max(1, T // 10)], S[T - max(1, T // 3):]
        rows.append({"setting": f"{label} / {method}", "method": method, "seed": seed, "flip": flip,
                     "main AUC": r["metrics"]["main AUC"], "aux AUC": r["metrics"]["aux AUC"],
                     "main share early": float(early[:, 0].mean()), "main share late": float(late[:, 0].mean()),
                     "top aux share late": float(late[:, 1:].mean(0).max()),
                     "main-only steps": float((S[:, 0] > 0.999).double().mean())})
        traj.setdefault(label, {}).setdefault(method, []).append(S)
    return rows, {lab: {m: torch.stack(v) for m, v in d.items()} for lab, d in traj.items()}
