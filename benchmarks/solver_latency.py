"""Latency of one K×K solve: the compiled solvers (``fastmtl._C``) against the PyTorch reference
solvers, at one thread, every number of a row measured in the same run.

    python benchmarks/solver_latency.py [--ks 2,4,8,16] [--rounds 7] [--out results.md]

A "solve" is one call of the public function of :mod:`fastmtl.solvers` with a float64 Gram matrix
of K conflicting task gradients (what the methods hand it), Python call overhead included:
UPGrad = ``project_dual_cone(G, I)`` (its K QPs together), DualProj = ``project_dual_cone(G, p)``,
MGDA = ``min_norm_simplex(G)``, CAGrad = ``cagrad_simplex_weights(G, 0.5)``, Nash-MTL =
``nash_weights(G)``, eigh = ``symmetric_eigh(G)`` (reference: the Jacobi solver in PyTorch; LAPACK's
``torch.linalg.eigh`` is shown for scale), PCGrad = ``project_conflicts(G, orders)``, GradVac =
``vaccine(G, 0, orders)`` (one fixed random order per K; the methods draw theirs per call, which
"method µs" includes). "method µs" is the whole ``method.weights(G)`` call with
the compiled solver (the method's own tensor ops included).

Contenders alternate within every round (so load on a shared machine hits them alike); each entry
is the median over rounds of the mean of a batch of calls, in wall-clock time and in CPU time of
this process (the latter is what a busy machine distorts least).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import torch

import fastmtl
from fastmtl import solvers
from fastmtl.methods import make_method
from fastmtl.methods.ordering import random_task_orders

SOLVERS = ("upgrad", "dualproj", "mgda", "cagrad", "nash_mtl", "eigh", "pcgrad", "gradvac")
METHOD_OF = {"upgrad": "upgrad", "dualproj": "dualproj", "mgda": "mgda", "cagrad": "cagrad", "nash_mtl": "nash_mtl",
             "eigh": "imtl_g", "pcgrad": "pcgrad", "gradvac": "gradvac"}


def gram(K: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(K)
    base = torch.randn(1000, generator=g, dtype=torch.float64)
    signs = torch.where(torch.rand(K, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    J = signs[:, None] * base + 0.5 * torch.randn(K, 1000, generator=g, dtype=torch.float64)
    return J @ J.T


def solve_fn(name: str, G: torch.Tensor) -> Callable:
    K = G.shape[-1]
    eye = torch.eye(K, dtype=torch.float64)
    p = torch.full((1, K), 1.0 / K, dtype=torch.float64)
    orders = random_task_orders(K, generator=torch.Generator().manual_seed(0))
    targets = torch.zeros(K, K, dtype=torch.float64)
    return {
        "upgrad": lambda: solvers.project_dual_cone(G, eye),
        "dualproj": lambda: solvers.project_dual_cone(G, p),
        "mgda": lambda: solvers.min_norm_simplex(G),
        "cagrad": lambda: solvers.cagrad_simplex_weights(G, 0.5),
        "nash_mtl": lambda: solvers.nash_weights(G),
        "eigh": lambda: solvers.symmetric_eigh(G),
        "pcgrad": lambda: solvers.project_conflicts(G, orders),
        "gradvac": lambda: solvers.vaccine(G, targets, orders),
    }[name]


def _under_reference(fn: Callable) -> Callable:
    def run():
        with fastmtl.use_backend("reference"):
            return fn()
    return run


def _batch_size(fn: Callable) -> int:
    t = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t, 1e-6)
    return max(1, min(200, int(0.02 / one)))


def measure(fns: Dict[str, Callable], rounds: int) -> Dict[str, Tuple[float, float]]:
    """``{name: (wall µs, cpu µs)}``: medians over rounds, contenders interleaved."""
    sizes = {name: _batch_size(fn) for name, fn in fns.items()}
    wall: Dict[str, List[float]] = {n: [] for n in fns}
    cpu: Dict[str, List[float]] = {n: [] for n in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            n = sizes[name]
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                fn()
            w1, c1 = time.perf_counter(), time.process_time()
            wall[name].append((w1 - w0) / n * 1e6)
            cpu[name].append((c1 - c0) / n * 1e6)
    return {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in fns}


def run(ks: List[int], rounds: int) -> List[dict]:
    rows = []
    for K in ks:
        G = gram(K)
        for name in SOLVERS:
            fast = solve_fn(name, G)
            method = make_method(METHOD_OF[name], {"c": 0.5} if name == "cagrad" else {})
            losses = torch.ones(K, dtype=torch.float64)
            fns = {"compiled": fast, "reference": _under_reference(fast),
                   "method": lambda method=method, G=G, losses=losses: method.weights(G, losses=losses)}
            if name == "eigh":
                fns["lapack"] = lambda G=G: torch.linalg.eigh(G)
            t = measure(fns, rounds)
            rows.append({"K": K, "solver": name, "compiled": t["compiled"], "reference": t["reference"],
                         "method": t["method"], "lapack": t.get("lapack")})
            print(f"  measured K={K} {name}", file=sys.stderr, flush=True)
    return rows


def format_table(rows: List[dict]) -> str:
    lines = ["| K | solve | compiled µs (wall / CPU) | reference µs (wall / CPU) | reference / compiled (CPU) | "
             "method.weights µs (wall / CPU) |", "|" + "---|" * 6]
    for r in rows:
        c, ref, m = r["compiled"], r["reference"], r["method"]
        extra = "" if r["lapack"] is None else f" (torch.linalg.eigh: {r['lapack'][0]:.0f} / {r['lapack'][1]:.0f})"
        lines.append(f"| {r['K']} | {r['solver']}{extra} | {c[0]:.1f} / {c[1]:.1f} | {ref[0]:.0f} / {ref[1]:.0f} | "
                     f"{ref[1] / c[1]:.0f}× | {m[0]:.1f} / {m[1]:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="2,4,8,16", help="comma-separated numbers of tasks")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    from fastmtl.solvers import compiled

    why = compiled.unavailable_reason("cpu")
    if why is not None:
        print(f"the compiled solvers are unavailable: {why}", file=sys.stderr)
        return 1
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = run([int(k) for k in args.ks.split(",")], args.rounds)
    finally:
        torch.set_num_threads(threads)
    header = (f"# K×K solve latency on {platform.processor() or platform.machine()} CPU, 1 thread "
              f"(torch {torch.__version__}), {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    text = f"{header}\n\n{format_table(rows)}\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
