"""Driver for the method-state resume tests: the same steps for every stateful method, split
anywhere, with the method state and the generator state checkpointed in between.

Run as a script (``python tests/_method_resume.py CKPT OUT``) it is the fresh process: it loads every
checkpoint in ``CKPT`` (``torch.load(weights_only=True)``), runs the remaining steps and saves the
results to ``OUT``.
"""

from __future__ import annotations

import sys

import torch

import fastmtl
from fastmtl.methods import METHODS, make_method

K, N = 3, 8
# Extra configurations whose state differs from the defaults'.
EXTRA = [("gradvac", {"granularity": "per_param"}), ("gradnorm", {"variant": "libmtl"}),
         ("gradnorm", {"param_indices": [1]}), ("dwa", {"window": 2}), ("uw", {"lr": 0.1}),
         ("nash_mtl", {"update_weights_every": 2}), ("olaux", {"horizon": 2})]


def configs():
    """``(label, name, hyper-parameters)`` for every stateful registered method, plus EXTRA."""
    out = [(n, n, {}) for n in sorted(METHODS) if METHODS[n].stateful]
    out += [(f"{n}{sorted(h.items())}", n, h) for n, h in EXTRA]
    return out


def step_inputs(step: int):
    g = torch.Generator().manual_seed(1000 + step)
    grads = [[torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)]
             for _ in range(K)]
    losses = torch.rand(K, generator=g, dtype=torch.float64) + 0.5
    return grads, losses


def run_steps(m, gen: torch.Generator, start: int, stop: int):
    """Directions (flattened) of steps ``start … stop−1``, with epochs of 3 steps and FAMO's update."""
    out = []
    for step in range(start, stop):
        grads, losses = step_inputs(step)
        d = fastmtl.combine(grads, m, losses=losses, generator=gen)
        out.append(torch.cat([t.reshape(-1) for t in d]))
        if hasattr(m, "update"):
            m.update(losses * 0.9)
        if hasattr(m, "end_epoch") and step % 3 == 2:
            m.end_epoch()
    return torch.stack(out)


def fresh(name, hp):
    return make_method(name, dict(hp))


def resume_all(ckpt_path: str, out_path: str) -> None:
    ckpt = torch.load(ckpt_path, weights_only=True)
    results = {}
    for label, name, hp in configs():
        m = fresh(name, hp)
        m.load_state_dict(ckpt[label]["method"])
        gen = torch.Generator()
        gen.set_state(ckpt[label]["generator"])
        results[label] = run_steps(m, gen, N // 2, N)
    torch.save(results, out_path)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 6))
        self.heads = torch.nn.ModuleList(torch.nn.Linear(6, 1) for _ in range(K))

    def losses(self, step: int):
        g = torch.Generator().manual_seed(5000 + step)
        x = torch.randn(8, 4, generator=g)
        y = torch.randn(8, K, generator=g)
        h = self.trunk(x)
        return [((head(h)[:, 0] - y[:, k]) ** 2).mean() for k, head in enumerate(self.heads)]


def new_run(name):
    net = Net()
    return net, torch.optim.Adam(net.parameters(), lr=1e-2), fresh(name, {}), torch.Generator().manual_seed(7)


def train_steps(net, opt, m, gen, start: int, stop: int) -> None:
    for step in range(start, stop):
        opt.zero_grad()
        fastmtl.backward(net.losses(step), net.trunk, m, head_params=net.heads, generator=gen)
        opt.step()
        if hasattr(m, "update"):
            with torch.no_grad():
                m.update(torch.stack(net.losses(step)))
        if hasattr(m, "end_epoch") and step % 3 == 2:
            m.end_epoch()


def checkpoint(net, opt, m, gen) -> dict:
    """What a training checkpoint holds: model, optimizer, method and generator state."""
    return {"model": net.state_dict(), "optimizer": opt.state_dict(), "method": m.state_dict(),
            "generator": gen.get_state()}


def train_names():
    return [n for n in sorted(METHODS) if METHODS[n].stateful]


def resume_training(ckpt_path: str, out_path: str) -> None:
    ckpt = torch.load(ckpt_path, weights_only=True)
    results = {}
    for name in train_names():
        net, opt, m, gen = new_run(name)
        c = ckpt[name]
        net.load_state_dict(c["model"])
        opt.load_state_dict(c["optimizer"])
        m.load_state_dict(c["method"])
        gen.set_state(c["generator"])
        train_steps(net, opt, m, gen, N // 2, N)
        results[name] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save(results, out_path)


if __name__ == "__main__":
    torch.set_num_threads(1)
    resume_all(sys.argv[1] + ".combine", sys.argv[2] + ".combine")
    resume_training(sys.argv[1] + ".train", sys.argv[2] + ".train")
