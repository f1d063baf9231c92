"""``python -m fastmtl.bench speed --preset latency``: small-D latency of ``combine`` against the
two-pass floor and TorchJD, at one thread, every number of a row measured in the same run.

For K ∈ {2, 4, 8, 16}, D ∈ {1e4, 1e5, 1e6}, a flat ``[K, D]`` matrix and the same values as 200
per-parameter tensors, and every method that TorchJD also provides, one row holds:

* ``solve µs``: ``method.weights(G, ...)`` alone (the K×K problem, G precomputed);
* ``fastmtl ms``: the whole ``combine`` call;
* ``floor ms``: ``G = J Jᵀ; λᵀJ`` in plain PyTorch on the same ``[K, D]`` matrix, and
  ``×floor`` = fastmtl / floor;
* ``TorchJD ms`` and ``×faster than TorchJD`` = TorchJD / fastmtl. TorchJD's aggregators take a
  matrix, so TorchJD is timed on the ``[K, D]`` matrix in both layouts (the ``torch.cat`` its users
  would need for per-parameter gradients is not counted: the comparison favours TorchJD there);
* for the 200-tensor layout, ``TorchJD+cat ms`` and ``×faster than TorchJD+cat``: what a TorchJD
  user with per-parameter gradients runs (:func:`torchjd_on_parameters`: each task's gradients
  concatenated into a row, the aggregator, the direction split back into per-parameter views).

Timings are interleaved: every round times each contender once (median of a few calls), and the
table shows the median over rounds, so load on a shared machine hits all contenders alike. A second
table times the two primitives alone (Gram, weighted sum) per backend and layout against the floor.
"""

from __future__ import annotations

import csv
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch

import fastmtl
from fastmtl.gradients import losses_tensor
from fastmtl.methods import Context, make_method
from .speed import make_inputs
from .timing import median_time

KS = (2, 4, 8, 16)
DS = (10_000, 100_000, 1_000_000)
LAYOUTS = ("matrix", "params")


def torchjd_peers(K: int) -> Dict[str, Callable]:
    """``{fastmtl method: TorchJD aggregator}`` for the methods both provide (empty without TorchJD).

    Hyper-parameters are both libraries' defaults, except CAGrad's ``c = 0.5`` (set on both sides).
    """
    try:
        import torchjd.aggregation as agg
    except Exception:
        return {}
    makers = {
        "mean": agg.Mean, "sum": agg.Sum, "pcgrad": agg.PCGrad, "upgrad": agg.UPGrad, "dualproj": agg.DualProj,
        "mgda": agg.MGDA, "imtl_g": agg.IMTLG, "aligned_mtl": agg.AlignedMTL, "config": agg.ConFIG,
        "cagrad": lambda: agg.CAGrad(c=0.5), "nash_mtl": lambda: agg.NashMTL(n_tasks=K),
        "graddrop": agg.GradDrop, "gradvac": agg.GradVac, "rlw": agg.Random,
    }
    out = {}
    for name, make in makers.items():
        if name not in fastmtl.methods.METHODS:
            continue
        try:
            out[name] = make()
        except Exception:  # an optional solver dependency missing
            continue
    return out


HYPER = {"cagrad": {"c": 0.5}}


@dataclass
class LatencyRow:
    K: int
    D: int
    layout: str
    method: str
    backend: str
    solve_us: Optional[float]
    ms: float
    floor_ms: float
    ratio_floor: float
    torchjd_ms: Optional[float]
    speedup_vs_torchjd: Optional[float]
    torchjd_cat_ms: Optional[float] = None
    speedup_vs_torchjd_cat: Optional[float] = None


def torchjd_on_parameters(aggregator: Callable, grads: list) -> list:
    """TorchJD on per-parameter gradients as its users run it: ``torch.cat`` of each task's gradients
    into the rows of a ``[K, D]`` matrix, the aggregator, and the direction split back per parameter."""
    J = torch.stack([torch.cat([g.reshape(-1) for g in row]) for row in grads])
    d = aggregator(J)
    return [part.view(g.shape) for part, g in zip(d.split([g.numel() for g in grads[0]]), grads[0])]


def _interleaved(fns: Dict[str, Callable], rounds: int, reps: int) -> Dict[str, float]:
    """Median over ``rounds`` of each function's per-round median; functions alternate every round."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_time(fn, "cpu", warmup=1, reps=reps, max_seconds=2.0))
    return {name: statistics.median(ts) for name, ts in times.items()}


def run_point(K: int, D: int, layout: str, methods: Optional[List[str]] = None, rounds: int = 5,
              reps: int = 3) -> List[LatencyRow]:
    grads, J = make_inputs(K, D, torch.float32, "cpu", layout)
    peers = torchjd_peers(K)
    names = methods if methods is not None else list(peers)
    losses = torch.linspace(1.0, 2.0, K)
    G = fastmtl.gramian(grads)
    rows = []
    for name in names:
        hyper = HYPER.get(name, {})
        gen = torch.Generator().manual_seed(0)
        _, info = fastmtl.combine(grads, name, losses=losses, generator=gen, return_info=True, **hyper)
        fns = {"floor": lambda: floor_time_once(J),
               "fastmtl": lambda name=name, hyper=hyper, gen=gen: fastmtl.combine(
                   grads, name, losses=losses, generator=gen, **hyper)}
        method = make_method(name, hyper)
        if method.requires_gram:
            fns["solve"] = lambda name=name, hyper=hyper, gen=gen: make_method(name, hyper).weights(
                G, Context(num_tasks=G.shape[0], device=G.device, losses=losses_tensor(losses, G.shape[0], G.device),
                           generator=gen))
        if name in peers:
            agg = peers[name]
            fns["torchjd"] = lambda agg=agg: agg(J)
            if layout == "params":
                fns["torchjd_cat"] = lambda agg=agg: torchjd_on_parameters(agg, grads)
        try:
            t = _interleaved(fns, rounds, reps)
        except Exception as exc:  # a peer failing must not stop the table
            print(f"  {name} K={K} D={D:.0e} {layout}: {exc!r}; without TorchJD", file=sys.stderr)
            fns.pop("torchjd", None)
            fns.pop("torchjd_cat", None)
            t = _interleaved(fns, rounds, reps)
        jd = t.get("torchjd")
        jd_cat = t.get("torchjd_cat")
        rows.append(LatencyRow(K=K, D=D, layout=layout, method=name, backend=info.backend,
                               solve_us=None if "solve" not in t else t["solve"] * 1e6, ms=t["fastmtl"] * 1e3,
                               floor_ms=t["floor"] * 1e3, ratio_floor=t["fastmtl"] / t["floor"],
                               torchjd_ms=None if jd is None else jd * 1e3,
                               speedup_vs_torchjd=None if jd is None else jd / t["fastmtl"],
                               torchjd_cat_ms=None if jd_cat is None else jd_cat * 1e3,
                               speedup_vs_torchjd_cat=None if jd_cat is None else jd_cat / t["fastmtl"]))
    return rows


def floor_time_once(J: torch.Tensor):
    """One call of the floor: ``G = J Jᵀ`` and ``λᵀJ`` in plain PyTorch (see :func:`.speed.floor_time`)."""
    lam = torch.full((J.shape[0],), 1.0 / J.shape[0], dtype=J.dtype)
    return J @ J.T, lam @ J


@dataclass
class PrimitiveRow:
    K: int
    D: int
    dtype: str
    layout: str
    backend: str
    gram_ms: float
    wsum_ms: float
    floor_ms: float
    ratio_floor: float


def run_primitives(K: int, D: int, dtype: torch.dtype, rounds: int = 5, reps: int = 3) -> List[PrimitiveRow]:
    """Gram + weighted sum alone, per-parameter vs flat, compiled CPU kernels vs reference."""
    rows = []
    lam = torch.linspace(0.5, 1.5, K)
    grads_p, J = make_inputs(K, D, dtype, "cpu", "params")
    cases = [("params", grads_p, "cpu"), ("params", grads_p, "reference"), ("matrix", J, "cpu"),
             ("matrix", J, "reference")]
    fns = {"floor": lambda: floor_time_once(J) if dtype == torch.float32 else (J @ J.T, lam.to(dtype) @ J)}
    for layout, grads, backend in cases:
        fns[f"{layout}/{backend}/gram"] = lambda g=grads, b=backend: fastmtl.gramian(g, backend=b)
        fns[f"{layout}/{backend}/wsum"] = lambda g=grads, b=backend: fastmtl.weighted_sum(g, lam, backend=b)
    t = _interleaved(fns, rounds, reps)
    for layout, _, backend in cases:
        g, w = t[f"{layout}/{backend}/gram"], t[f"{layout}/{backend}/wsum"]
        rows.append(PrimitiveRow(K=K, D=D, dtype=str(dtype).replace("torch.", ""), layout=layout, backend=backend,
                                 gram_ms=g * 1e3, wsum_ms=w * 1e3, floor_ms=t["floor"] * 1e3,
                                 ratio_floor=(g + w) / t["floor"]))
    return rows


def _f(x, spec):
    return "–" if x is None else format(x, spec)


def format_latency(rows: List[LatencyRow]) -> str:
    lines = ["| K | D | layout | method | backend | solve µs | fastmtl ms | floor ms | ×floor | TorchJD ms | "
             "×faster than TorchJD | TorchJD+cat ms | ×faster than TorchJD+cat |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r.K} | {r.D:.0e} | {r.layout} | {r.method} | {r.backend} | {_f(r.solve_us, '.0f')} | "
                     f"{r.ms:.3f} | {r.floor_ms:.3f} | {r.ratio_floor:.2f} | {_f(r.torchjd_ms, '.3f')} | "
                     f"{_f(r.speedup_vs_torchjd, '.2f')} | {_f(r.torchjd_cat_ms, '.3f')} | "
                     f"{_f(r.speedup_vs_torchjd_cat, '.2f')} |")
    return "\n".join(lines)


def format_primitives(rows: List[PrimitiveRow]) -> str:
    lines = ["| K | D | dtype | layout | backend | Gram ms | weighted sum ms | floor ms | (Gram + sum) / floor |",
             "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r.K} | {r.D:.0e} | {r.dtype} | {r.layout} | {r.backend} | {r.gram_ms:.3f} | "
                     f"{r.wsum_ms:.3f} | {r.floor_ms:.3f} | {r.ratio_floor:.2f} |")
    return "\n".join(lines)


def _write_csv(rows, path: str) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))


def main(Ks=KS, Ds=DS, layouts=LAYOUTS, methods: Optional[List[str]] = None, rounds: int = 5, reps: int = 3,
         out_dir: Optional[str] = "bench_out", header: str = "") -> List[LatencyRow]:
    """Run the preset at one thread, print both tables, write them under ``out_dir``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows: List[LatencyRow] = []
        for K in Ks:
            for D in Ds:
                for layout in layouts:
                    rows += run_point(K, D, layout, methods, rounds, reps)
                    print(f"  measured K={K} D={D:.0e} {layout}", file=sys.stderr, flush=True)
        prim: List[PrimitiveRow] = []
        for dtype in (torch.float32, torch.bfloat16):
            for D in (100_000, 1_000_000):
                prim += run_primitives(8, D, dtype, rounds, reps)
    finally:
        torch.set_num_threads(threads)
    text = (f"{header}\n\n## combine latency, 1 thread\n\n{format_latency(rows)}\n\n"
            f"## primitives alone, K = 8, 200-tensor (params) vs flat (matrix) layout, 1 thread\n\n"
            f"{format_primitives(prim)}\n")
    print(text)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "latency.md"), "w") as fh:
            fh.write(text)
        _write_csv(rows, os.path.join(out_dir, "latency.csv"))
        _write_csv(prim, os.path.join(out_dir, "latency_primitives.csv"))
        print(f"wrote {out_dir}/latency.md, latency.csv, latency_primitives.csv")
    return rows
