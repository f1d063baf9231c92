"""Speed of ``combine`` against the two-pass memory floor, the reference backend and TorchJD.

The floor for a Gram-space method is what any implementation must do: form ``G = J Jᵀ`` (one read
of the K·D values) and ``λᵀJ`` (a second read and a write of D values) on the same matrix, timed
here with the plain PyTorch calls. ``ratio_floor`` = combine time / floor time; 1.0 is perfect.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Iterable, List, Optional

import torch

import fastmtl
from .peers import LIBMTL_STYLE, torchjd_aggregators
from .timing import median_time


@dataclass
class SpeedRow:
    method: str
    K: int
    D: int
    dtype: str
    device: str
    layout: str
    backend: str
    ms: float
    floor_ms: float
    ratio_floor: float
    gbps: float
    pct_copy_bw: Optional[float]
    ref_ms: Optional[float]
    speedup_vs_reference: Optional[float]
    torchjd_ms: Optional[float]
    speedup_vs_torchjd: Optional[float]
    libmtl_style_ms: Optional[float] = None
    speedup_vs_libmtl_style: Optional[float] = None


def make_inputs(K: int, D: int, dtype: torch.dtype, device: str, layout: str, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    J = torch.randn(K, D, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)
    # Mild conflict so that projections actually happen.
    J[1::2] -= 0.5 * J[0]
    if layout == "matrix":
        return J, J
    if layout == "params":
        # ~200 tensors of mixed sizes, the shape of a real model's gradient list.
        sizes, rest = [], D
        weights = [4, 1, 16, 1, 64, 2] * 40
        scale = D / sum(weights[:200])
        for w in weights[:199]:
            n = max(1, int(w * scale))
            n = min(n, rest - (200 - len(sizes) - 1))
            sizes.append(n)
            rest -= n
        sizes.append(rest)
        rows = []
        for k in range(K):
            row, start = [], 0
            for n in sizes:
                row.append(J[k, start:start + n].clone())
                start += n
            rows.append(row)
        return rows, J
    raise ValueError(layout)


def floor_time(J: torch.Tensor) -> float:
    lam = torch.full((J.shape[0],), 1.0 / J.shape[0], device=J.device, dtype=torch.float32)
    acc = torch.float64 if J.dtype == torch.float64 else torch.float32

    def two_pass():
        if J.dtype == acc:
            G = J @ J.T
            return G, lam.to(acc) @ J
        # Low precision: the floor is still two reads; PyTorch's matmul accumulates in fp32.
        G = J @ J.T
        return G, lam.to(J.dtype) @ J

    return median_time(two_pass, J.device)


def run_speed(methods: Iterable[str], K: int, D: int, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
              layout: str = "matrix", backend: Optional[str] = None, peers: bool = True, reps: int = 7,
              progress: bool = True, copy_bw: Optional[float] = None) -> List[SpeedRow]:
    """Time ``combine`` for each method; ``copy_bw`` (bytes/s, e.g. from :func:`copy_bandwidth`)
    adds the achieved fraction of the device's copy bandwidth."""
    grads, J = make_inputs(K, D, dtype, device, layout)
    floor = floor_time(J)
    jd = torchjd_aggregators() if peers and layout == "matrix" else {}
    rows = []
    for method in methods:
        gen = torch.Generator(device="cpu").manual_seed(0)
        losses = torch.linspace(1.0, 2.0, K)

        def run(b=backend, method=method, losses=losses, gen=gen):
            return fastmtl.combine(grads, method=method, losses=losses, generator=gen, backend=b)

        _, info = fastmtl.combine(grads, method=method, losses=losses, generator=gen, backend=backend,
                                  return_info=True)
        t = median_time(run, device, reps=reps)
        ref_t = None
        if info.backend != "reference":
            ref_t = median_time(lambda: run("reference"), device, reps=reps)
        jd_t = None
        if method in jd and dtype == torch.float32:
            agg = jd[method]
            try:
                jd_t = median_time(lambda agg=agg: agg(J), device, reps=reps)
            except Exception as exc:  # a peer failing must not stop the table
                print(f"  torchjd {method} failed: {exc!r}", file=sys.stderr)
        lib_t = None
        if peers and method in LIBMTL_STYLE and layout == "matrix" and dtype == torch.float32 and K * D <= 2e8:
            fn = LIBMTL_STYLE[method]
            lib_t = median_time(lambda fn=fn: fn(J), device, reps=max(3, reps // 2))
        bytes_moved = 2 * K * D * J.element_size() + D * J.element_size()
        rows.append(SpeedRow(
            method=method, K=K, D=D, dtype=str(dtype).replace("torch.", ""), device=str(device), layout=layout,
            backend=info.backend, ms=t * 1e3, floor_ms=floor * 1e3, ratio_floor=t / floor,
            gbps=bytes_moved / t / 1e9, pct_copy_bw=None if copy_bw is None else 100 * bytes_moved / t / copy_bw,
            ref_ms=None if ref_t is None else ref_t * 1e3,
            speedup_vs_reference=None if ref_t is None else ref_t / t,
            torchjd_ms=None if jd_t is None else jd_t * 1e3,
            speedup_vs_torchjd=None if jd_t is None else jd_t / t,
            libmtl_style_ms=None if lib_t is None else lib_t * 1e3,
            speedup_vs_libmtl_style=None if lib_t is None else lib_t / t))
        if progress:
            print(f"  measured {method:12s} K={K} D={D:.0e} {rows[-1].ms:9.2f} ms", file=sys.stderr, flush=True)
    return rows


def format_table(rows: List[SpeedRow]) -> str:
    head = ("| method | K | D | dtype | layout | backend | combine ms | floor ms | ×floor | GB/s | % copy BW | "
            "×faster than reference | TorchJD ms | ×faster than TorchJD | LibMTL-style ms | ×faster than LibMTL-style |")
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        def f(x, spec):
            return "–" if x is None else format(x, spec)
        lines.append(f"| {r.method} | {r.K} | {r.D:.0e} | {r.dtype} | {r.layout} | {r.backend} | {r.ms:.2f} | "
                     f"{r.floor_ms:.2f} | {r.ratio_floor:.2f} | {r.gbps:.1f} | {f(r.pct_copy_bw, '.0f')} | "
                     f"{f(r.speedup_vs_reference, '.2f')} | {f(r.torchjd_ms, '.2f')} | {f(r.speedup_vs_torchjd, '.1f')} | "
                     f"{f(r.libmtl_style_ms, '.2f')} | {f(r.speedup_vs_libmtl_style, '.1f')} |")
    return "\n".join(lines)


def plot_sweep(rows: List[SpeedRow], path: str, title: str) -> bool:
    """Achieved GB/s against D, one line per (method, backend, dtype, layout), one panel per K.

    Returns False when matplotlib is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    Ks = sorted({r.K for r in rows})
    fig, axes = plt.subplots(1, len(Ks), figsize=(4.5 * len(Ks), 4), squeeze=False, sharey=True)
    for ax, K in zip(axes[0], Ks):
        series = {}
        for r in rows:
            if r.K == K:
                series.setdefault((r.method, r.backend, r.dtype, r.layout), []).append((r.D, r.gbps))
        for (method, backend, dtype, layout), pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                    label=f"{method} {backend} {dtype} {layout}")
        ax.set_xscale("log")
        ax.set_xlabel("D (values per task)")
        ax.set_title(f"K = {K}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("effective GB/s (2 reads of K·D + 1 write of D)")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_csv(rows: List[SpeedRow], path: str) -> None:
    import csv
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
