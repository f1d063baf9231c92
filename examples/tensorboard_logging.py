"""Logging a multi-task run to TensorBoard: task weights, gradient norms and cosines per step.

Three regression tasks share a trunk; two of them conflict (opposite targets on half the inputs).
Each step ``fastmtl.backward`` combines the task gradients with UPGrad and returns the step's
``CombineInfo``; ``fastmtl.integrations.logging.scalars`` turns it into a flat dict of 0-d tensors
(no host synchronisation while building it), which ``SummaryWriter.add_scalar`` writes.

Run:  python examples/tensorboard_logging.py --logdir runs/mtl [--steps 200] [--method upgrad]
then: tensorboard --logdir runs/mtl
Needs the ``tensorboard`` package (``pip install tensorboard``, in fastmtl's ``dev`` extra).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import fastmtl
from fastmtl.integrations.logging import scalars

TASKS = ("sine", "anti_sine", "square")


def make_batch(g: torch.Generator, batch: int = 64):
    x = torch.rand(batch, 4, generator=g) * 4 - 2
    s = torch.sin(x.sum(1))
    y = torch.stack([s, torch.where(x[:, 0] > 0, -s, s), (x ** 2).mean(1)], 1)
    return x, y


def train(logdir: str, steps: int = 200, method: str = "upgrad", seed: int = 0) -> dict:
    """Train for ``steps`` steps, log every step under ``logdir``; returns the last step's scalars."""
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
    heads = nn.ModuleList([nn.Linear(32, 1) for _ in TASKS])
    opt = torch.optim.Adam([*trunk.parameters(), *heads.parameters()], lr=1e-2)
    last = {}
    with SummaryWriter(logdir) as writer:
        for step in range(steps):
            x, y = make_batch(g)
            h = trunk(x)
            losses = [nn.functional.mse_loss(head(h).squeeze(-1), y[:, k]) for k, head in enumerate(heads)]
            opt.zero_grad()
            info = fastmtl.backward(losses, trunk.parameters(), method, head_params=heads)
            opt.step()
            last = scalars(info, "mtl/", task_names=TASKS, losses=losses)
            for tag, value in last.items():
                writer.add_scalar(tag, value, step)
    return last


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logdir", default="runs/fastmtl_tensorboard")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--method", default="upgrad")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    last = train(args.logdir, args.steps, args.method, args.seed)
    print(f"wrote {len(last)} scalars per step for {args.steps} steps to {args.logdir}")
    for tag, value in last.items():
        print(f"  {tag:32s} {float(value):.4f}")


if __name__ == "__main__":
    main()
