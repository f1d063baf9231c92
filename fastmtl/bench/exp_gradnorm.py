"""B2: the GradNorm σ-scale toy (Chen, Badrinarayanan, Lee, Rabinovich, "GradNorm: Gradient
Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018, §4).

Targets ``f_i(x) = σ_i · tanh((B + ε_i) x)`` with ``x ∈ R^250``, outputs in ``R^100``,
``B ~ N(0, 10²)`` shared and ``ε_i ~ N(0, 3.5²)`` per task (standard deviations, as the public
re-implementations read the paper), σ = [1, 100]; inputs ``x ~ N(0, I)``. A 4×100 ReLU trunk and
one affine head ``100 → 100`` per task, MSE, Adam. GradNorm (``variant="paper"``, α = 0.12,
norms at the last shared layer, weights trained by Adam) against uniform weights.

Claims checked: the weights separate by the σ ratio (the small-σ task gets the large weight), the
weighted gradient norms ``‖∇_W w_i L_i‖`` at the last shared layer move toward each other, and the
small-σ task trains faster (lower ``L_i(t)/L_i(0)``) than under uniform weighting, where the
σ = 100 task dominates every step.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import nn

from .. import training
from ..methods import make_method
from .exp_io import progress

SIGMAS = (1.0, 100.0)


def make_data(seed: int, *, n: int = 10_000, n_test: int = 2_000, d_in: int = 250, d_out: int = 100,
              sigmas: Sequence[float] = SIGMAS):
    """``(X, Ys, Xte, Ytes)``: inputs and the per-task targets of the σ-scale toy."""
    g = torch.Generator().manual_seed(4000 + seed)
    B = 10.0 * torch.randn(d_out, d_in, generator=g)
    eps = [3.5 * torch.randn(d_out, d_in, generator=g) for _ in sigmas]
    X = torch.randn(n + n_test, d_in, generator=g)
    Y = [s * torch.tanh(X @ (B + e).T) for s, e in zip(sigmas, eps)]
    return X[:n], [y[:n] for y in Y], X[n:], [y[n:] for y in Y]


def _model(d_in: int, d_out: int, K: int):
    layers: List[nn.Module] = []
    d = d_in
    for _ in range(4):
        layers += [nn.Linear(d, 100), nn.ReLU()]
        d = 100
    return nn.Sequential(*layers), nn.ModuleList([nn.Linear(100, d_out) for _ in range(K)])


def train_b2(method: str, seed: int, *, n: int = 10_000, steps: int = 3000, batch: int = 100, lr: float = 1e-3,
             alpha: float = 0.12, weight_lr: float = 0.025, sigmas: Sequence[float] = SIGMAS,
             show_progress: bool = False) -> Dict[str, object]:
    """Train with ``method`` ∈ {"mean", "gradnorm"}; returns the weight trajectory ``[steps, K]``
    (Σ w = K; uniform: all ones), the per-step weighted gradient norms at the last shared layer,
    the training-loss ratios ``L_i(t)/L_i(0)`` and the test MSE per task divided by σ_i²."""
    if method not in ("mean", "gradnorm"):
        raise ValueError(f"method must be 'mean' or 'gradnorm', got {method!r}")
    X, Ys, Xte, Ytes = make_data(seed, n=n, sigmas=sigmas)
    K = len(sigmas)
    torch.manual_seed(seed)
    trunk, heads = _model(X.shape[1], Ys[0].shape[1], K)
    shared = list(trunk.parameters())
    last = len(shared) - 2  # weight of the last shared Linear: GradNorm's W
    opt = torch.optim.Adam(list(trunk.parameters()) + list(heads.parameters()), lr=lr)
    m = (make_method("gradnorm", {"alpha": alpha, "lr": weight_lr, "optimizer": "adam", "param_indices": [last]})
         if method == "gradnorm" else None)
    gen = torch.Generator().manual_seed(seed)
    W = torch.empty(steps, K, dtype=torch.float64)
    norms = torch.empty(steps, K, dtype=torch.float64)
    train_loss = torch.empty(steps, K, dtype=torch.float64)
    for t in progress(range(steps), total=steps, desc=f"b2 {method} seed {seed}", enabled=show_progress):
        idx = torch.randint(0, len(X), (batch,), generator=gen)
        h = trunk(X[idx])
        losses = torch.stack([((heads[k](h) - Ys[k][idx]) ** 2).mean() for k in range(K)])
        w = torch.ones(K, dtype=torch.float64) if m is None or m.task_weights is None else \
            m.task_weights.detach().to(torch.float64).reshape(-1)
        gW = torch.stack([torch.autograd.grad(losses[k], shared[last], retain_graph=True)[0].norm()
                          for k in range(K)]).to(torch.float64)
        opt.zero_grad(set_to_none=True)
        if m is None:  # uniform: Σ_i L_i (λ = 1, the scale of GradNorm's Σ w = K)
            losses.sum().backward()
        else:
            training.backward(losses, shared, m, head_params=list(heads.parameters()), return_info=False)
        opt.step()
        W[t] = w
        norms[t] = w * gW
        train_loss[t] = losses.detach().to(torch.float64)
    with torch.no_grad():
        h = trunk(Xte)
        test = torch.tensor([float(((heads[k](h) - Ytes[k]) ** 2).mean()) / sigmas[k] ** 2 for k in range(K)])
    window = max(1, steps // 20)
    ratio = train_loss[-window:].mean(0) / train_loss[:window].mean(0)
    return {"weights": W, "norms": norms, "loss_ratio": ratio, "test_rel_mse": test, "train_loss": train_loss}


def b2_experiment(seeds: Sequence[int] = (0, 1, 2), *, quick: bool = False, show_progress: bool = True):
    """Rows per (method, seed) and the trajectories ``{method: {"weights": [S, T, K], "norms": ...}}``."""
    kw = dict(n=2_000, steps=600) if quick else {}
    rows, traj = [], {}
    for method in ("mean", "gradnorm"):
        ws, ns = [], []
        for seed in seeds:
            r = train_b2(method, seed, show_progress=show_progress, **kw)
            tail = max(1, r["weights"].shape[0] // 10)
            wl, nl = r["weights"][-tail:].mean(0), r["norms"][-tail:].mean(0)
            rows.append({"method": method, "seed": seed, "w1": float(wl[0]), "w2": float(wl[1]),
                         "w1/w2": float(wl[0] / wl[1]), "G2/G1": float(nl[1] / nl[0]),
                         "loss ratio 1": float(r["loss_ratio"][0]), "loss ratio 2": float(r["loss_ratio"][1]),
                         "test MSE/σ² 1": float(r["test_rel_mse"][0]), "test MSE/σ² 2": float(r["test_rel_mse"][1])})
            ws.append(r["weights"])
            ns.append(r["norms"])
        traj[method] = {"weights": torch.stack(ws), "norms": torch.stack(ns)}
    return rows, traj


B2_METRICS = ("w1/w2", "G2/G1", "loss ratio 1", "loss ratio 2", "test MSE/σ² 1", "test MSE/σ² 2")
