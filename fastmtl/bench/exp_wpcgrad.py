"""Weighted PCGrad toy (Bohn et al., ICONIP 2024; fastmtl's reconstruction ``wpcgrad``).

K quadratic tasks ``L_k(x) = ½‖x − a_k‖²`` in R² with optima spread on a circle of radius 5
(two tasks: ``a = (±5, 0)``; three: 120° apart), from a start near the centre where the gradients
conflict, gradient descent on ``fastmtl.combine(G, "wpcgrad", priorities=p)``.

Why the priorities show up *in proportion*: on the segment between two optima the gradients are
exactly opposite, so the projected one vanishes and the step is ``g_i`` with probability ``p̂_i``.
The expected step ``Σ p̂_i (x − a_i)`` vanishes at ``x* = Σ p̂_i a_i``: the iterates settle (in the
mean) at the priority-weighted average of the optima — uniform priorities give PCGrad's
midpoint, and the favoured task's loss falls further, by the ratio of the priorities.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch

import fastmtl

from .exp_io import mean_std


def optima(K: int, radius: float = 5.0) -> torch.Tensor:
    """``[K, 2]`` task optima: ``(±r, 0)`` for two tasks, else K points evenly on the circle."""
    if K == 2:
        return torch.tensor([[radius, 0.0], [-radius, 0.0]], dtype=torch.float64)
    ang = torch.arange(K, dtype=torch.float64) * (2 * math.pi / K)
    return radius * torch.stack([torch.cos(ang), torch.sin(ang)], 1)


def run_wpcgrad_toy(priorities: Sequence[float], seed: int, *, steps: int = 1500, lr: float = 0.02,
                    tail: int = 500, start=(0.0, 0.5)) -> Dict[str, object]:
    """One run: the mean iterate over the last ``tail`` steps, the task losses there, each task's
    loss after 50 steps (how fast it falls) and every step's task losses ``[steps, K]``."""
    K = len(priorities)
    A = optima(K)
    x = torch.tensor(start, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    method = fastmtl.methods.make_method("wpcgrad", {"priorities": list(priorities)})
    acc = torch.zeros(2, dtype=torch.float64)
    early = None
    curve = torch.empty(steps, K, dtype=torch.float64)
    for t in range(steps):
        G = x[None, :] - A  # ∇L_k = x − a_k
        d = fastmtl.combine(G, method, generator=gen)
        x = x - lr * d
        curve[t] = 0.5 * ((x[None, :] - A) ** 2).sum(1)
        if t == 49:
            early = 0.5 * ((x[None, :] - A) ** 2).sum(1)
        if t >= steps - tail:
            acc += x
    xbar = acc / tail
    final = 0.5 * ((xbar[None, :] - A) ** 2).sum(1)
    p = torch.tensor(priorities, dtype=torch.float64)
    target = (p / p.sum()) @ A
    return {"x": xbar, "target": target, "final_losses": final, "early_losses": early, "losses": curve}


#: (label, priorities) of the default table.
SETTINGS = (("2 tasks, p = 1:1 (PCGrad)", (1.0, 1.0)), ("2 tasks, p = 2:1", (2.0, 1.0)),
            ("2 tasks, p = 3:1", (3.0, 1.0)), ("3 tasks, p = 3:2:1", (3.0, 2.0, 1.0)))


def wpcgrad_toy_experiment(seeds: Sequence[int] = (0, 1, 2), *, steps: int = 1500,
                           settings=SETTINGS, curves: Optional[Dict[str, torch.Tensor]] = None
                           ) -> List[Dict[str, object]]:
    """Per-seed rows: setting, seed, final x, the predicted ``Σ p̂_i a_i``, task losses. With a
    ``curves`` dict, ``curves[setting]`` receives the ``[seeds, steps, K]`` loss trajectories."""
    rows = []
    for label, pr in settings:
        runs = []
        for seed in seeds:
            r = run_wpcgrad_toy(pr, seed, steps=steps)
            runs.append(r["losses"])
            row = {"setting": label, "seed": seed, "x1": float(r["x"][0]), "x2": float(r["x"][1]),
                   "pred x1": float(r["target"][0]), "pred x2": float(r["target"][1])}
            for k in range(len(pr)):
                row[f"L{k + 1} final"] = float(r["final_losses"][k])
                row[f"L{k + 1} @50"] = float(r["early_losses"][k])
            rows.append(row)
        if curves is not None:
            curves[label] = torch.stack(runs)
    return rows


def summarize(rows) -> Dict[str, Dict[str, tuple]]:
    out: Dict[str, Dict[str, tuple]] = {}
    for label in dict.fromkeys(r["setting"] for r in rows):
        g = [r for r in rows if r["setting"] == label]
        out[label] = {k: mean_std([r[k] for r in g]) for k in g[0] if k not in ("setting", "seed")}
    return out
