"""Task-weight trajectories: HydaLearn (first-order and look-ahead "fake update" modes) and OL-AUX
on B3b and on a drift variant of B3b in which the helpful auxiliary switches half-way.

HydaLearn (Verboven et al., Applied Intelligence 2023) claims that task relevance drifts during
training and that per-minibatch weights track it. **B3b-drift**: main task ``y0 = tanh(2 w0·x)``
and two auxiliaries of the same scale, one with weights ``w_r = ρ w0 + √(1−ρ²) e`` (ρ = 0.9,
helpful) and one with independent weights ``w_u`` (unrelated). For the first half of training
auxiliary 1 is the helpful one; at the half-way epoch their training targets are swapped, so
auxiliary 2 becomes the helpful one. 300 train / 200 validation / 1000 test as B3b, no label noise.

Modes: ``hydalearn`` — first-order gains ``δ_k = ⟨g_k, g_val⟩`` with ``g_val`` the main-task
gradient of a clean validation batch (:class:`fastmtl.methods.HydaLearn`); ``hydalearn_la`` —
one fake SGD step per task and the change of the validation-batch main loss
(:func:`fastmtl.training.hydalearn_lookahead_weights`, a reconstruction); ``olaux`` — Lin et al.
2019 with a weight learning rate large enough for the weights to move on this loss scale.
Logged per step: each task's share ``λ_k / Σ_j λ_j``.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch

from .. import training
from ..methods import make_method
from .exp_io import progress
from .problems import Problem, main_mae, make_relreg, mlp_net, regression_losses

TRAJ_METHODS = ("hydalearn", "hydalearn_la", "olaux")

#: OL-AUX settings under which its weights move on B3b's loss scale (the defaults barely do):
#: β = 50 with horizon 5 and non-negative weights.
OLAUX_MOVING = {"main_task": 0, "horizon": 5, "lr": 50.0, "nonnegative": True}


def make_relreg_drift(seed: int, *, rho: float = 0.9, epochs: int = 60, lr: float = 0.01) -> Problem:
    """B3b-drift: the problem of epoch ``< epochs // 2``; :func:`drift_targets` gives the swapped
    training targets of the second half (``problem.notes`` says so)."""
    g = torch.Generator().manual_seed(5000 + seed)
    d, n = 50, 1500
    X = torch.randn(n, d, generator=g)
    w0 = torch.randn(d, generator=g) / math.sqrt(d)
    wr = rho * w0 + math.sqrt(1 - rho ** 2) * torch.randn(d, generator=g) / math.sqrt(d)
    wu = torch.randn(d, generator=g) / math.sqrt(d)
    Y = torch.stack([torch.tanh(2 * X @ w0), torch.tanh(2 * X @ wr), torch.tanh(2 * X @ wu)], 1)

    return Problem("b3b-drift", 3, (X[:300], Y[:300]), (X[300:500], Y[300:500]), (X[500:], Y[500:]),
                   lambda: mlp_net(d, (64, 64), 3, 16), regression_losses, main_mae, (("main MAE", False),),
                   lr=lr, batch_size=16, val_batch_size=32, epochs=epochs, clip=5.0,
                   task_names=("main", "aux1", "aux2"),
                   notes=["aux1 helpful (ρ = 0.9) for the first half, then aux1 ↔ aux2 training targets swapped"])


def drift_targets(problem: Problem) -> torch.Tensor:
    """The second half's training targets: auxiliaries 1 and 2 swapped."""
    Y = problem.train[1].clone()
    Y[:, [1, 2]] = Y[:, [2, 1]]
    return Y


def run_trajectory(problem: Problem, method: str, seed: int, *, drift: bool = False,
                   show_progress: bool = False) -> Dict[str, object]:
    """Train with ``method`` (one of :data:`TRAJ_METHODS`); ``shares`` is ``[steps, K]``."""
    if method not in TRAJ_METHODS:
        raise ValueError(f"method must be one of {TRAJ_METHODS}, got {method!r}")
    torch.manual_seed(seed)
    model = problem.make_model()
    shared, heads = list(model.trunk.parameters()), list(model.heads.parameters())
    params = shared + heads
    lr = problem.lr / problem.K if method == "olaux" else problem.lr  # OL-AUX: Σλ ≈ K
    opt = torch.optim.SGD(params, lr=lr, momentum=problem.momentum)
    if method == "olaux":
        m = make_method("olaux", dict(OLAUX_MOVING, model_lr=lr))
    elif method == "hydalearn":
        m = make_method("hydalearn", {"main_task": 0, "normalize": "sum", "fallback": "main"})
    else:
        m = None
    gen = torch.Generator().manual_seed(seed)
    Xtr, Ytr = problem.train
    Xv, Yv = problem.val
    n, bs = len(Xtr), problem.batch_size
    shares: List[torch.Tensor] = []
    for epoch in progress(range(problem.epochs), total=problem.epochs, desc=f"{problem.name} {method}",
                          enabled=show_progress):
        if drift and epoch == problem.epochs // 2:
            Ytr = drift_targets(problem)
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            vidx = torch.randint(0, len(Xv), (problem.val_batch_size,), generator=gen)
            xv, yv = Xv[vidx], Yv[vidx]
            opt.zero_grad(set_to_none=True)
            losses = problem.per_sample_losses(model(Xtr[idx]), Ytr[idx]).mean(1)
            if method == "hydalearn_la":
                grads = training.task_gradients(losses, params)

                def val_main(xv=xv, yv=yv):
                    return problem.per_sample_losses(model(xv), yv)[0].mean()
                res = training.hydalearn_lookahead_weights(params, None, grads, val_main, lr=problem.lr)
                lam = res.weights.detach().to(torch.float64)
                for j, p in enumerate(params):
                    parts = [lam[k].to(p.dtype) * grads[k][j] for k in range(problem.K) if grads[k][j] is not None]
                    p.grad = torch.stack(parts).sum(0) if parts else None
            else:
                ref = None
                if method == "hydalearn":
                    ref = torch.autograd.grad(problem.per_sample_losses(model(xv), yv)[0].mean(), shared,
                                              allow_unused=True)
                info = training.backward(losses, shared, m, head_params=heads, reference_grad=ref, return_info=True)
                lam = info.weights.detach().to(torch.float64).cpu()
            tot = float(lam.sum())
            shares.append(lam / tot if tot != 0 else lam)
            if problem.clip is not None:
                torch.nn.utils.clip_grad_norm_(params, problem.clip)
            opt.step()
    return {"shares": torch.stack(shares), "metrics": problem.evaluate(model, *problem.test),
            "steps_per_epoch": math.ceil(n / bs)}


def trajectory_experiment(setting: str, seeds: Sequence[int] = (0, 1, 2), *, methods: Sequence[str] = TRAJ_METHODS,
                          quick: bool = False, show_progress: bool = True):
    """``setting`` ``"b3b"`` (clean B3b, helpful aux 1, harmful aux 2) or ``"drift"``. Returns the
    per-seed rows (mean shares over the last third of each half of training, test MAE) and
    ``{method: [seeds, steps, K]}`` shares."""
    epochs = (12 if quick else 60)
    rows, traj = [], {}
    for method in methods:
        runs = []
        for seed in seeds:
            if setting == "drift":
                problem = make_relreg_drift(seed, epochs=epochs)
            elif setting == "b3b":
                problem = make_relreg(seed, noise=0.0, epochs=epochs)
            else:
                raise ValueError(f"setting must be 'b3b' or 'drift', got {setting!r}")
            r = run_trajectory(problem, method, seed, drift=setting == "drift", show_progress=show_progress)
            S = r["shares"]
            half = S.shape[0] // 2
            third = max(1, half // 3)  # the last third of each half: after the weights have adapted
            row = {"method": method, "seed": seed, "main MAE": r["metrics"]["main MAE"]}
            for k, name in enumerate(problem.task_names):
                row[f"{name} 1st half"] = float(S[half - third:half, k].mean())
                row[f"{name} 2nd half"] = float(S[S.shape[0] - third:, k].mean())
            rows.append(row)
            runs.append(S)
        traj[method] = torch.stack(runs)
    return rows, traj
