"""Auxiliary-task regression with fastmtl's training API.

A main regression task with 30% corrupted training targets, a helpful auxiliary task (its weights
are correlated with the main task's) and a harmful one (unrelated, 3× the scale) — the B3b
"RelReg" recipe. One trunk, three heads, SGD with momentum. Four ways to train it:

* ``mean``           — ``fastmtl.training.backward(losses, trunk, "mean", head_params=heads)``
* ``hydalearn``      — first-order HydaLearn: auxiliary weights ∝ ⟨v, g_k⟩⁺ with ``v`` the main-task
                       gradient on a clean validation batch (``reference_grad=v``)
* ``hydalearn-exact``— HydaLearn's look-ahead: one fake optimizer step per task, main-task validation
                       loss measured after each, parameters and optimizer state restored
* ``slgrad``         — SLGrad: one weight per (task, sample) from the same validation gradient,
                       dot products from one forward-mode JVP (``fastmtl.training.slgrad_step``)

Run:  python examples/auxiliary_regression.py [--epochs 150] [--seed 0]
Prints the main-task test MAE of each method (lower is better) and of the main task trained alone.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import fastmtl
from fastmtl import training


def make_data(seed: int, noise: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    d, rho = 50, 0.9
    X = torch.randn(1500, d, generator=g)
    w0 = torch.randn(d, generator=g) / math.sqrt(d)
    w1 = rho * w0 + math.sqrt(1 - rho ** 2) * torch.randn(d, generator=g) / math.sqrt(d)   # helpful
    w2 = torch.randn(d, generator=g) / math.sqrt(d)                                        # harmful
    Y = torch.stack([torch.tanh(2 * X @ w0), torch.tanh(2 * X @ w1), 3 * torch.tanh(2 * X @ w2)], 1)
    Ytr = Y[:300].clone()
    noisy = torch.rand(300, generator=g) < noise
    Ytr[noisy, 0] = torch.randn(int(noisy.sum()), generator=g)
    return (X[:300], Ytr), (X[300:500], Y[300:500]), (X[500:], Y[500:])


class Net(nn.Module):
    def __init__(self, d=50, K=3):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1)) for _ in range(K)])

    def forward(self, x):
        return self.outputs(self.trunk(x))

    def outputs(self, h):
        return torch.cat([head(h) for head in self.heads], 1)    # [B, K]


def per_sample_losses(pred, y):
    return ((pred - y) ** 2).T                                   # [K, B]


def train(method: str, seed: int, epochs: int, lr: float = 0.01, batch: int = 16):
    train_set, val_set, test_set = make_data(seed)
    torch.manual_seed(seed)
    net = Net()
    trunk, heads = list(net.trunk.parameters()), list(net.heads.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    X, Y = train_set
    Xv, Yv = val_set
    gen = torch.Generator().manual_seed(seed)

    def val_loss():                                             # main task on a clean validation batch
        idx = torch.randint(0, len(Xv), (32,), generator=gen)
        return per_sample_losses(net(Xv[idx]), Yv[idx])[0].mean()

    for _ in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        for s in range(0, len(X), batch):
            idx = perm[s:s + batch]
            xb, yb = X[idx], Y[idx]
            opt.zero_grad(set_to_none=True)
            if method == "stl":
                per_sample_losses(net(xb), yb)[0].mean().backward()
            elif method == "slgrad":
                training.slgrad_step(net.trunk, lambda h, yb=yb: per_sample_losses(net.outputs(h), yb), val_loss,
                                     trunk, inputs=(xb,), scale="convex")
            elif method == "hydalearn-exact":
                params = list(net.parameters())
                losses = per_sample_losses(net(xb), yb).mean(1)
                grads = training.task_gradients(losses, params)           # K × [P], shared and heads
                xv_idx = torch.randint(0, len(Xv), (64,), generator=gen)
                metric = lambda i=xv_idx: per_sample_losses(net(Xv[i]), Yv[i])[0].mean()  # noqa: E731
                res = training.hydalearn_lookahead_weights(params, opt, grads, metric, higher_is_better=False)
                for p in params:
                    p.grad = torch.zeros_like(p)
                fastmtl.weighted_sum(grads, res.weights, out=[p.grad for p in params])
            else:
                losses = per_sample_losses(net(xb), yb).mean(1)           # [K] task losses
                ref = None
                if method == "hydalearn":
                    ref = torch.autograd.grad(val_loss(), trunk)
                training.backward(losses, trunk, method, head_params=heads, reference_grad=ref,
                                  main_task=0 if method == "hydalearn" else None, return_info=False)
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            opt.step()
    Xt, Yt = test_set
    with torch.no_grad():
        return float((net(Xt)[:, 0] - Yt[:, 0]).abs().mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="stl,mean,hydalearn,hydalearn-exact,slgrad")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"main-task test MAE after {args.epochs} epochs (seed {args.seed}; lower is better)")
    for method in args.methods.split(","):
        t = time.time()
        mae = train(method, args.seed, args.epochs)
        print(f"  {method:16s} {mae:.3f}   ({time.time() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
