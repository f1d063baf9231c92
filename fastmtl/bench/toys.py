"""B1: the 2-D conflict landscapes of the CAGrad paper (Liu et al., NeurIPS 2021, official toy.py)
and the PCGrad paper (Yu et al., NeurIPS 2020), driven through ``fastmtl.combine``.

Each step computes the two task gradients of ``x ∈ R²`` with autograd, combines them, writes the
result into ``x.grad`` and takes an Adam step — the official protocol (Adam lr 1e-3, 100k steps).
The ``steps``/``lr`` arguments allow shorter runs with a larger step.

:func:`run_toy` (one ``combine`` call per step and run) is the reference; :func:`run_toy_batched`
advances all (method, start) pairs at once, optionally ``torch.compile``d, so that the official
100k-step protocol takes about a minute instead of minutes per run.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

import fastmtl
from fastmtl.methods import Context

LOWER = 5e-6
CAGRAD_STARTS = ((-8.5, 7.5), (-8.5, -5.0), (9.0, 9.0), (0.0, 0.0), (10.0, -8.0))
CAGRAD_OPTIMUM = (0.0, -8.3552)
PCGRAD_START = (0.5, -3.0)

# Method settings that reproduce the toy's own solvers (two tasks, mean scale):
# mean: (g1+g2)/2; PCGrad: mean of projected grads; MGDA: min-norm point;
# CAGrad c=0.5: (g0 + c‖g0‖/‖gw‖·gw)/(1+c).
TOY_METHODS: Dict[str, dict] = {
    "mean": {"method": "mean"},
    "mgda": {"method": "mgda"},
    "pcgrad": {"method": "pcgrad", "reduction": "mean"},
    "cagrad": {"method": "cagrad", "c": 0.5, "rescale": 2, "multiply_by_k": False},
}


def cagrad_toy_losses(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two task losses of the CAGrad toy at ``x = (x1, x2)``."""
    x1, x2 = x[0], x[1]
    f1 = torch.log(torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), LOWER)) + 6
    f2 = torch.log(torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), LOWER)) + 6
    # c = max(tanh(±x2/2), 0), written with where() so that the derivative at the boundary x2 = 0 is
    # the one-sided derivative from inside (±1/2), not torch.clamp's 0: with clamp, both gates and
    # their derivatives vanish on x2 = 0 and (0, 0) would be a stationary point of every method.
    t1 = torch.tanh(x2 * 0.5)
    t2 = torch.tanh(-x2 * 0.5)
    c1 = torch.where(t1 >= 0, t1, 0.0)
    g1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    g2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c2 = torch.where(t2 >= 0, t2, 0.0)
    return c1 * f1 + c2 * g1, c1 * f2 + c2 * g2


def pcgrad_toy_losses(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two task losses of the PCGrad toy (natural log)."""
    x1, x2 = x[0], x[1]
    l1 = 20 * torch.log(torch.clamp((0.5 * x1 + torch.tanh(x2)).abs(), LOWER))
    l2 = 25 * torch.log(torch.clamp((0.5 * x1 - torch.tanh(x2) + 2).abs(), LOWER))
    return l1, l2


@dataclass
class ToyRun:
    method: str
    start: Tuple[float, float]
    end: Tuple[float, float]
    losses: Tuple[float, float]
    trajectory: List[Tuple[float, float]]

    @property
    def mean_loss(self) -> float:
        return 0.5 * (self.losses[0] + self.losses[1])


def run_toy(losses_fn: Callable, start: Sequence[float], method: str, *, steps: int, lr: float,
            record_every: int = 0, seed: int = 0) -> ToyRun:
    """Optimise ``x`` from ``start`` with Adam on the direction chosen by ``method``."""
    settings = dict(TOY_METHODS.get(method, {"method": method}))
    name = settings.pop("method")
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    traj = [tuple(start)]
    m = fastmtl.methods.make_method(name, settings)
    for step in range(steps):
        l1, l2 = losses_fn(x)
        g1, = torch.autograd.grad(l1, x, retain_graph=True)
        g2, = torch.autograd.grad(l2, x)
        opt.zero_grad(set_to_none=False)
        if x.grad is None:
            x.grad = torch.zeros_like(x)
        fastmtl.combine(torch.stack([g1, g2]), method=m, losses=torch.stack([l1.detach(), l2.detach()]),
                        generator=gen, out=x.grad)
        opt.step()
        if record_every and step % record_every == 0:
            traj.append(tuple(x.detach().tolist()))
    with torch.no_grad():
        l1, l2 = losses_fn(x)
    traj.append(tuple(x.detach().tolist()))
    return ToyRun(method, tuple(start), tuple(x.detach().tolist()), (l1.item(), l2.item()), traj)


def batched_weights_fn(method, K: int = 2, generator: Optional[torch.Generator] = None) -> Callable:
    """``G [R, K, K] → λ [R, K]``: ``method.weights`` for a batch of Gram matrices.

    CAGrad calls the batched solver :func:`fastmtl.solvers.cagrad_simplex_weights` directly and
    applies :class:`fastmtl.methods.CAGrad`'s scaling; ``mean``/``sum`` are constants; any other
    method runs its own ``weights`` under ``torch.func.vmap``, or row by row when it has an
    operation without a batching rule (PCGrad's in-place index writes).
    """
    from ..methods import CAGrad, Mean, Sum
    from ..solvers import cagrad_simplex_weights

    if isinstance(method, (Mean, Sum)):
        value = 1.0 / K if isinstance(method, Mean) else 1.0
        return lambda G: torch.full(G.shape[:-1], value, dtype=torch.float64, device=G.device)
    if type(method) is CAGrad:
        scale = {0: 1.0, 1: 1.0 / (1.0 + method.c ** 2), 2: 1.0 / (1.0 + method.c)}[method.rescale]
        scale *= K if method.multiply_by_k else 1.0
        return lambda G: cagrad_simplex_weights(G, method.c)[1] * scale

    def one(g):
        return method.weights(g, Context(num_tasks=K, device=g.device, generator=generator))

    vmapped = torch.func.vmap(one, randomness="same")
    try:
        vmapped(torch.eye(K, dtype=torch.float64).expand(2, K, K))
        return vmapped
    except Exception:  # noqa: BLE001 - no batching rule for some operation: loop over the rows
        return lambda G: torch.stack([one(g) for g in G])


def _toy_step(x, m, v, bias1, bias2_sqrt, lr, *, losses_fn, groups):
    """One step of the B1 protocol for R points at once: task gradients, λ per method group, the
    combined gradient ``d = λ₁g₁ + λ₂g₂``, then Adam (torch.optim.Adam's single-tensor update:
    β = (0.9, 0.999), ε = 1e-8), elementwise so that the R rows are R independent optimisers."""
    g1 = torch.func.grad(lambda z: losses_fn(z.T)[0].sum())(x)
    g2 = torch.func.grad(lambda z: losses_fn(z.T)[1].sum())(x)
    J = torch.stack([g1, g2], 1)                                   # [R, 2 tasks, 2 coordinates]
    G = J @ J.transpose(1, 2)
    lam = torch.cat([fn(G[a:b]) for fn, a, b in groups]).to(J.dtype)
    d = (lam.unsqueeze(-1) * J).sum(1)
    m = m.lerp(d, 0.1)
    v = v * 0.999 + d * d * 0.001
    x = x - (lr / bias1) * m / (v.sqrt() / bias2_sqrt + 1e-8)
    return x, m, v


def run_toy_batched(losses_fn: Callable, starts: Sequence[Sequence[float]], methods: Sequence[str], *,
                    steps: int, lr: float, record_every: int = 0, seed: int = 0, compile: bool = False,
                    progress: bool = False) -> Dict[Tuple[str, Tuple[float, float]], ToyRun]:
    """Fast path of :func:`run_toy`: every (method, start) pair advances in one ``[R, 2]`` tensor.

    Same protocol as :func:`run_toy` (autograd task gradients, the method's λ, ``d = Σ λ_k g_k``,
    Adam), but one step for all R points: one gradient evaluation, one batched weights call per
    method (:func:`batched_weights_fn`), an inline Adam update. With ``compile=True`` the whole
    step is compiled by ``torch.compile`` (tens of seconds once, then ~0.2 ms per step on one CPU
    core, so the official 100k-step protocol takes well under a minute). It runs single-threaded:
    the tensors are tiny and OpenMP threads only add latency. :func:`run_toy` (through
    ``fastmtl.combine`` and ``torch.optim.Adam``) is the reference; the two agree to rounding on
    short runs (tests), and trajectories may separate later where Adam runs along a kink.
    """
    starts = [tuple(float(v) for v in s) for s in starts]
    pairs = [(m, s) for m in methods for s in starts]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(seed)
        groups = []
        for i, m in enumerate(methods):
            settings = dict(TOY_METHODS.get(m, {"method": m}))
            name = settings.pop("method")
            method = fastmtl.methods.make_method(name, settings)
            groups.append((batched_weights_fn(method, 2, gen), i * len(starts), (i + 1) * len(starts)))
        step_fn = functools.partial(_toy_step, losses_fn=losses_fn, groups=groups)
        if compile:
            step_fn = torch.compile(step_fn, dynamic=False)
        x = torch.tensor([s for _, s in pairs], dtype=torch.float64)
        m = torch.zeros_like(x)
        v = torch.zeros_like(x)
        lr_t = torch.tensor(lr, dtype=torch.float64)
        trajs = [[s] for _, s in pairs]
        report = max(1, steps // 20)
        for step in range(1, steps + 1):
            bias1 = torch.tensor(1 - 0.9 ** step, dtype=torch.float64)
            bias2_sqrt = torch.tensor(math.sqrt(1 - 0.999 ** step), dtype=torch.float64)
            x, m, v = step_fn(x, m, v, bias1, bias2_sqrt, lr_t)
            if record_every and (step - 1) % record_every == 0:
                for t, p in zip(trajs, x.tolist()):
                    t.append(tuple(p))
            if progress and step % report == 0:
                print(f"  step {step}/{steps}", file=sys.stderr, flush=True)
        l1, l2 = losses_fn(x.T)
        ends = x.tolist()
        results = {}
        for i, (meth, s) in enumerate(pairs):
            trajs[i].append(tuple(ends[i]))
            results[(meth, s)] = ToyRun(meth, s, tuple(ends[i]), (float(l1[i]), float(l2[i])), trajs[i])
        return results
    finally:
        torch.set_num_threads(threads)


def cagrad_toy_table(methods: Sequence[str] = ("mean", "mgda", "pcgrad", "cagrad"), *, steps: int = 100_000,
                     lr: float = 1e-3, starts=CAGRAD_STARTS, record_every: int = 0,
                     progress: bool = True) -> Dict[Tuple[str, Tuple[float, float]], ToyRun]:
    """Run every method from every start of the CAGrad toy; ``{(method, start): ToyRun}``."""
    results = {}
    total = len(methods) * len(starts)
    done = 0
    for method in methods:
        for start in starts:
            results[(method, start)] = run_toy(cagrad_toy_losses, start, method, steps=steps, lr=lr,
                                               record_every=record_every)
            done += 1
            if progress:
                r = results[(method, start)]
                print(f"  [{done:2d}/{total}] {method:7s} from {start}: end ({r.end[0]:.3f}, {r.end[1]:.3f}) "
                      f"mean loss {r.mean_loss:.3f}", file=sys.stderr, flush=True)
    return results


def format_cagrad_table(results, methods, starts=CAGRAD_STARTS) -> str:
    lines = ["| start | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for start in starts:
        cells = []
        for m in methods:
            r = results[(m, start)]
            d = math.dist(r.end, CAGRAD_OPTIMUM)
            mark = " ✓" if d < 0.01 else ""
            cells.append(f"({r.end[0]:.2f}, {r.end[1]:.3f}), {r.mean_loss:.2f}{mark}")
        lines.append(f"| {start} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_cagrad_trajectories(results, methods, path: str) -> bool:
    """Trajectories over the mean-loss contours, one panel per method; False if matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    xs = torch.linspace(-10, 10, 201, dtype=torch.float64)
    X1, X2 = torch.meshgrid(xs, xs, indexing="xy")
    L1, L2 = cagrad_toy_losses(torch.stack([X1, X2]))
    Z = (0.5 * (L1 + L2)).numpy()
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 4), squeeze=False)
    for ax, m in zip(axes[0], methods):
        ax.contourf(X1.numpy(), X2.numpy(), Z, levels=30, cmap="viridis", alpha=0.8)
        for (method, start), r in results.items():
            if method != m:
                continue
            t = torch.tensor(r.trajectory)
            ax.plot(t[:, 0], t[:, 1], "-", color="white", lw=1.2)
            ax.plot(*start, "o", color="black", ms=4)
            ax.plot(*r.end, "*", color="red", ms=9)
        ax.plot(*CAGRAD_OPTIMUM, "x", color="yellow", ms=10, mew=2)
        ax.set_title(m)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-10, 10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
