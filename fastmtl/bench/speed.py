"""Speed of ``combine`` against the two-pass memory floor, the reference backend and TorchJD.

The floor for a Gram-space method is what any implementation must do: form ``G = J Jᵀ`` (one read
of the K·D values) and ``λᵀJ`` (a second read and a write of D values) on the same matrix, timed
here with the plain PyTorch calls. ``ratio_floor`` = combine time / floor time; 1.0 is perfect.
``pct_copy_bw`` is the same floor in bytes (two reads of the K·D values, one write of D) over the
measured copy bandwidth: the share of the device-memory (HBM) floor that ``combine`` reaches.

Presets (:data:`PRESETS`, ``python -m fastmtl.bench speed --preset NAME``) are fixed sweeps run by
:func:`run_sweep`, which writes its CSV row by row and stops at a deadline, so that an interrupted
run still leaves every finished row behind.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import torch

import fastmtl
from .peers import LIBMTL_STYLE, torchjd_aggregators
from .timing import copy_bandwidth, median_time


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
    copy_gbps: Optional[float] = None
    rel_err_vs_reference: Optional[float] = None


def make_inputs(K: int, D: int, dtype: torch.dtype, device: str, layout: str, seed: int = 0):
    if torch.device(device).type == "cuda":
        # Drawn on the device: a host draw of 16·1e8 values would take longer than the timings.
        g = torch.Generator(device=device).manual_seed(seed)
        J = torch.randn(K, D, generator=g, dtype=torch.float32, device=device).to(dtype)
    else:
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


def _flat(out) -> torch.Tensor:
    parts = [t.reshape(-1) for t in (out if isinstance(out, (list, tuple)) else [out]) if t is not None]
    return torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)


def _rel_err(out, ref) -> float:
    a, b = _flat(out), _flat(ref)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


_SKIPS_SAID: set = set()


def run_point(methods: Iterable[str], K: int, D: int, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
              layout: str = "matrix", backends: Sequence[Optional[str]] = (None,), peers: bool = True,
              reps: int = 7, warmup: int = 2, copy_bw: Optional[float] = None, with_reference: bool = True,
              deadline: Optional[float] = None, on_row: Optional[Callable[[SpeedRow], None]] = None,
              progress: bool = True) -> List[SpeedRow]:
    """Time ``combine`` for each method on each backend at one (K, D, dtype, layout) point.

    One set of inputs, one floor and one timing of each peer (TorchJD, LibMTL-style; fp32 matrix
    layout only) serve every backend of the point. ``None`` in ``backends`` is automatic selection;
    a named backend that cannot run these inputs is skipped with its reason on stderr.
    ``copy_bw`` (bytes/s, from :func:`copy_bandwidth`) adds the share of the copy bandwidth;
    ``deadline`` (``time.monotonic()`` value) stops before the next measurement once passed;
    ``on_row`` receives each row as soon as it is measured.
    """
    grads, J = make_inputs(K, D, dtype, device, layout)
    floor = floor_time(J)
    fp32_matrix = layout == "matrix" and dtype == torch.float32
    jd = torchjd_aggregators(K) if peers and fp32_matrix else {}
    # The LibMTL-style PCGrad holds a second [K, D] copy and does K² full-vector passes.
    lib_limit = 2e8 if torch.device(device).type == "cpu" else 2e9
    rows: List[SpeedRow] = []
    losses = torch.linspace(1.0, 2.0, K)
    for method in methods:
        ref_t: Optional[float] = None
        ref_out = None
        peer_t: Optional[Tuple[Optional[float], Optional[float]]] = None
        for backend in backends:
            if deadline is not None and time.monotonic() > deadline:
                print(f"  deadline: {method} K={K} D={D:.0e} and later not measured", file=sys.stderr, flush=True)
                return rows

            def run(b=backend, method=method):
                return fastmtl.combine(grads, method=method, losses=losses,
                                       generator=torch.Generator(device="cpu").manual_seed(0), backend=b)

            try:
                out, info = fastmtl.combine(grads, method=method, losses=losses, backend=backend, return_info=True,
                                            generator=torch.Generator(device="cpu").manual_seed(0))
                t = median_time(run, device, reps=reps, warmup=warmup)
            except Exception as exc:  # a backend that cannot run here must not stop the sweep
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if (backend, why) not in _SKIPS_SAID:  # said once per backend and reason
                    _SKIPS_SAID.add((backend, why))
                    print(f"  skip {method} backend={backend} K={K} D={D:.0e} {dtype} {layout}: {why}",
                          file=sys.stderr, flush=True)
                continue
            if info.backend == "reference":
                ref_t, ref_out = t, out
            elif with_reference and ref_t is None:
                ref_out = run("reference")
                ref_t = median_time(lambda: run("reference"), device, reps=reps, warmup=warmup)
            err = None if ref_out is None or info.backend == "reference" else _rel_err(out, ref_out)
            del out
            if peer_t is None:
                jd_t = lib_t = None
                if method in jd:
                    try:
                        jd_t = median_time(lambda agg=jd[method]: agg(J), device, reps=reps, warmup=warmup)
                    except Exception as exc:  # a peer failing must not stop the table
                        print(f"  torchjd {method} failed: {exc!r}", file=sys.stderr)
                if peers and method in LIBMTL_STYLE and fp32_matrix and K * D <= lib_limit:
                    lib_t = median_time(lambda fn=LIBMTL_STYLE[method]: fn(J), device, reps=max(1, min(3, reps)),
                                        warmup=min(1, warmup))
                peer_t = (jd_t, lib_t)
            jd_t, lib_t = peer_t
            # Bytes of the floor: two reads of J (Gram, weighted sum), one write of the D outputs.
            bytes_moved = 2 * K * D * J.element_size() + D * J.element_size()
            row = SpeedRow(
                method=method, K=K, D=D, dtype=str(dtype).replace("torch.", ""), device=str(device), layout=layout,
                backend=info.backend, ms=t * 1e3, floor_ms=floor * 1e3, ratio_floor=t / floor,
                gbps=bytes_moved / t / 1e9, pct_copy_bw=None if copy_bw is None else 100 * bytes_moved / t / copy_bw,
                ref_ms=None if ref_t is None or info.backend == "reference" else ref_t * 1e3,
                speedup_vs_reference=None if ref_t is None or info.backend == "reference" else ref_t / t,
                torchjd_ms=None if jd_t is None else jd_t * 1e3,
                speedup_vs_torchjd=None if jd_t is None else jd_t / t,
                libmtl_style_ms=None if lib_t is None else lib_t * 1e3,
                speedup_vs_libmtl_style=None if lib_t is None else lib_t / t,
                copy_gbps=None if copy_bw is None else copy_bw / 1e9, rel_err_vs_reference=err)
            rows.append(row)
            if on_row is not None:
                on_row(row)
            if progress:
                print(f"  measured {method:10s} {info.backend:9s} K={K} D={D:.0e} {row.dtype} {layout}: "
                      f"{row.ms:9.3f} ms, x{row.ratio_floor:.2f} floor", file=sys.stderr, flush=True)
    return rows


def run_speed(methods: Iterable[str], K: int, D: int, *, dtype: torch.dtype = torch.float32, device: str = "cpu",
              layout: str = "matrix", backend: Optional[str] = None, peers: bool = True, reps: int = 7,
              progress: bool = True, copy_bw: Optional[float] = None) -> List[SpeedRow]:
    """Time ``combine`` for each method on one backend (default automatic); see :func:`run_point`."""
    return run_point(methods, K, D, dtype=dtype, device=device, layout=layout, backends=(backend,), peers=peers,
                     reps=reps, progress=progress, copy_bw=copy_bw)


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
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))


# ---- presets: fixed sweeps, one table ------------------------------------------------------------

QUICK_METHODS = ("pcgrad", "cagrad", "upgrad", "mgda", "nash_mtl", "graddrop")
ALL_BACKENDS = ("reference", "triton", "cuda", "cpu")  # tried in this order; the reference first


@dataclass(frozen=True)
class SweepPreset:
    """One fixed sweep: every (D, dtype, layout, K) point times every method on every backend."""

    methods: Tuple[str, ...]
    Ks: Tuple[int, ...]
    Ds: Tuple[int, ...]
    dtypes: Tuple[str, ...]
    layouts: Tuple[str, ...]
    backends: Tuple[str, ...] = ALL_BACKENDS
    reps: int = 5
    warmup: int = 2
    device: Optional[str] = None  # None: CUDA when available
    help: str = ""


PRESETS = {
    "quick": SweepPreset(
        QUICK_METHODS, Ks=(2, 8, 16), Ds=(10 ** 6, 10 ** 7, 10 ** 8), dtypes=("float32", "bfloat16"),
        layouts=("matrix", "params"),
        help="the GPU check: K 2/8/16, D 1e6-1e8, fp32/bf16, flat and 200-tensor layouts, every backend, "
             "TorchJD and LibMTL-style peers; D = 1e8 first"),
    "quick-dry": SweepPreset(
        QUICK_METHODS, Ks=(2, 8), Ds=(2048,), dtypes=("float32", "bfloat16"), layouts=("matrix", "params"),
        reps=1, warmup=1, device="cpu", help="the quick preset's code path at CPU size (seconds)"),
}


def sweep_points(preset: SweepPreset) -> List[Tuple[int, str, str, int]]:
    """(D, dtype, layout, K) in run order: largest D first, fp32 flat first, so that the D = 1e8
    headline (floor fraction, TorchJD) is measured before a deadline can cut the sweep."""
    return [(D, dt, lay, K) for D in sorted(preset.Ds, reverse=True) for dt in preset.dtypes
            for lay in preset.layouts for K in preset.Ks]


class RowWriter:
    """Appends rows to a CSV and flushes each one, so a killed run keeps what it measured."""

    def __init__(self, path: str):
        self.path, self.rows = path, []
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self._fh = open(path, "w", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=[f.name for f in fields(SpeedRow)])
        self._writer.writeheader()
        self._fh.flush()

    def __call__(self, row: SpeedRow) -> None:
        self.rows.append(row)
        self._writer.writerow(asdict(row))
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def run_sweep(preset: SweepPreset, csv_path: str, *, device: Optional[str] = None,
              deadline_s: Optional[float] = None) -> Tuple[List[SpeedRow], float]:
    """Run ``preset``, streaming rows into ``csv_path``; returns (rows, copy bytes/s).

    Points whose inputs would not fit (60% of the free device memory; 2 GB on CPU) are skipped and
    said so on stderr, as is everything left when ``deadline_s`` seconds have passed.
    """
    t0 = time.monotonic()
    deadline = None if deadline_s is None else t0 + deadline_s
    dev = device or preset.device or ("cuda" if torch.cuda.is_available() else "cpu")
    copy_bw = copy_bandwidth(dev)
    print(f"# copy bandwidth on {dev}: {copy_bw / 1e9:.1f} GB/s (read + write)", file=sys.stderr, flush=True)
    writer = RowWriter(csv_path)
    points = sweep_points(preset)
    try:
        for i, (D, dt, layout, K) in enumerate(points, 1):
            dtype = getattr(torch, dt)
            if deadline is not None and time.monotonic() > deadline:
                print(f"  deadline after {time.monotonic() - t0:.0f} s: {len(points) - i + 1} points not measured",
                      file=sys.stderr, flush=True)
                break
            es = torch.tensor([], dtype=dtype).element_size()
            # J, its per-parameter copy, the LibMTL-style copy and the outputs.
            need = K * D * es * (3 if layout == "params" else 2) + 4 * D * 8
            free = torch.cuda.mem_get_info()[0] if dev.startswith("cuda") else 2e9
            if need > 0.6 * free:
                print(f"[{i}/{len(points)}] skip K={K} D={D:.0e} {dt} {layout}: needs {need / 1e9:.1f} GB, "
                      f"{free / 1e9:.1f} GB free", file=sys.stderr, flush=True)
                continue
            print(f"[{i}/{len(points)}] K={K} D={D:.0e} {dt} {layout} ({time.monotonic() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
            run_point(preset.methods, K, D, dtype=dtype, device=dev, layout=layout, backends=preset.backends,
                      reps=preset.reps, warmup=preset.warmup, copy_bw=copy_bw, with_reference=False, deadline=deadline, on_row=writer,
                      progress=True)
            if dev.startswith("cuda"):
                torch.cuda.empty_cache()
    finally:
        writer.close()
    return writer.rows, copy_bw


def read_csv(path: str) -> List[SpeedRow]:
    """Rows written by :func:`write_csv` or :class:`RowWriter` (empty cells read as ``None``)."""
    types = {f.name: f.type for f in fields(SpeedRow)}
    rows = []
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            kw = {}
            for name, typ in types.items():
                v = rec.get(name, "")
                if v in ("", None):
                    kw[name] = None
                elif "int" in str(typ):
                    kw[name] = int(v)
                elif "float" in str(typ):
                    kw[name] = float(v)
                else:
                    kw[name] = v
            rows.append(SpeedRow(**kw))
    return rows


def format_floor_summary(rows: List[SpeedRow], D: Optional[int] = None) -> str:
    """Per method and backend at the largest D (or ``D``): the share of the HBM floor (floor bytes
    over the measured copy bandwidth, divided by the measured time; 1.0 = at the floor), the ratio
    to the PyTorch two-pass floor and the speed-up over TorchJD, fp32 flat layout, K = each K."""
    if not rows:
        return "(no rows)"
    D = D or max(r.D for r in rows)
    sel = sorted((r for r in rows if r.D == D), key=lambda r: (r.method, r.backend, r.dtype, r.layout, r.K))
    lines = ["| method | backend | dtype | layout | K | ms | fraction of HBM floor | ×PyTorch floor | "
             "×faster than reference | ×faster than TorchJD | rel. error vs reference |", "|" + "---|" * 11]
    for r in sel:
        frac = None if r.pct_copy_bw is None else r.pct_copy_bw / 100

        def f(x, spec):
            return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)
        lines.append(f"| {r.method} | {r.backend} | {r.dtype} | {r.layout} | {r.K} | {r.ms:.3f} | {f(frac, '.2f')} | "
                     f"{r.ratio_floor:.2f} | {f(r.speedup_vs_reference, '.2f')} | {f(r.speedup_vs_torchjd, '.1f')} | "
                     f"{f(r.rel_err_vs_reference, '.1e')} |")
    return f"D = {D:.0e}\n\n" + "\n".join(lines)


def write_report(rows: List[SpeedRow], csv_path: str, title: str) -> List[str]:
    """The Markdown table (headline at the largest D, then every row) and the PNG plot beside
    ``csv_path`` (same stem); returns the paths written (no PNG without matplotlib)."""
    stem = os.path.splitext(csv_path)[0]
    text = (f"# {title}\n\n## Share of the HBM floor, speed-up over TorchJD\n\n{format_floor_summary(rows)}\n\n"
            f"## Every row\n\n{format_table(rows) if rows else '(no rows)'}\n")
    with open(stem + ".md", "w") as fh:
        fh.write(text)
    written = [stem + ".md"]
    if rows and plot_sweep(rows, stem + ".png", title):
        written.append(stem + ".png")
    return written


def run_preset(name: str, csv_path: str, *, deadline_s: Optional[float] = None, device: Optional[str] = None,
               title: str = "") -> List[SpeedRow]:
    """Run ``PRESETS[name]`` into ``csv_path`` and write its Markdown table and plot beside it."""
    rows, copy_bw = run_sweep(PRESETS[name], csv_path, device=device, deadline_s=deadline_s)
    paths = write_report(rows, csv_path, f"{title} preset {name}, copy bandwidth {copy_bw / 1e9:.0f} GB/s".strip())
    print(format_floor_summary(rows))
    print(f"wrote {csv_path}, " + ", ".join(paths))
    return rows
