"""B1: the CAGrad paper's 2-D conflict landscape, solved by several methods, with plots.

Two task losses on x ∈ R² (Liu et al., NeurIPS 2021, official toy): the average loss has its
optimum at (0, −8.355); task 1's optimum is at x1 = +7, task 2's at x1 = −7. Each method turns
the two task gradients into one direction (λ₁g₁ + λ₂g₂ from fastmtl's Gram-space code) and Adam
follows it. Expected (official protocol, Adam lr 1e-3, 100k steps): mean GD stalls on the plateau
from (−8.5, 7.5) and (9, 9); MGDA and PCGrad stop at points of the Pareto set x2 ≈ −8.36;
CAGrad (c = 0.5) reaches the average optimum from every start.

Run:
    python examples/toy_landscapes.py                       # official protocol, compiled (a few minutes)
    python examples/toy_landscapes.py --steps 2000 --lr 1e-2 --no-compile   # quick look
    python examples/toy_landscapes.py --reference --steps 3000              # through fastmtl.combine

Writes the trajectories over the contours of the average loss to ``--plot``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from fastmtl.bench import toys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="mean,mgda,pcgrad,cagrad")
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--no-compile", action="store_true", help="eager fast path (no torch.compile)")
    ap.add_argument("--reference", action="store_true",
                    help="one fastmtl.combine call per step and run (slow: ~1-3 ms per step and run)")
    ap.add_argument("--plot", default="bench_out/toy_landscapes.png")
    args = ap.parse_args()
    methods = args.methods.split(",")
    t = time.time()
    if args.reference:
        results = toys.cagrad_toy_table(methods, steps=args.steps, lr=args.lr,
                                        record_every=max(1, args.steps // 200))
    else:
        # Every (method, start) pair in one batched step, compiled once by torch.compile.
        results = toys.run_toy_batched(toys.cagrad_toy_losses, toys.CAGRAD_STARTS, methods, steps=args.steps,
                                       lr=args.lr, compile=not args.no_compile, progress=True,
                                       record_every=max(1, args.steps // 200))
    print(f"# CAGrad toy: Adam lr {args.lr}, {args.steps} steps ({time.time() - t:.0f} s)")
    print(toys.format_cagrad_table(results, methods))
    print(f"(final x and mean loss; ✓ = within 0.01 of the average-loss optimum {toys.CAGRAD_OPTIMUM})")
    os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    if toys.plot_cagrad_trajectories(results, methods, args.plot):
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
