"""The ``memory`` command: run :mod:`fastmtl.bench.memory` and :mod:`fastmtl.bench.memory_slgrad`,
print the tables, and write them (Markdown, CSV, PNG) as ``<machine>_<date>_<commit>_memory.*``."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List, Optional

import torch

from .memory import Config, MemoryRow, lambda_agreement, measure


def machine_slug(device: str) -> str:
    """``cpu-x86_64-2core`` or the GPU's name, lower-case with dashes."""
    import platform
    import re

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"cpu-{platform.machine()}-{os.cpu_count()}core"
    return re.sub(r"[^a-z0-9_]+", "-", name.lower()).strip("-")


def commit() -> str:
    """Short commit of the tree (``+dirty`` with local changes), ``FASTMTL_COMMIT`` when set."""
    if os.environ.get("FASTMTL_COMMIT"):
        return os.environ["FASTMTL_COMMIT"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def format_report(title: str, rows: List[MemoryRow], lam: Dict[str, Dict[str, float]],
                  slg: Optional[Dict[str, float]]) -> str:
    base = next((r for r in rows if r.mode == "materialize"), None)
    lines = [title, "", "| mode | peak MiB (probe) | peak MiB (RSS) | ms / step | peak ÷ materialize's | "
             "× faster than materialize | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = (f"{r.peak_mb / base.peak_mb:.3f}" if base and r.peak_mb and base.peak_mb else "–")
        speed = (f"{base.ms / r.ms:.2f}" if base and r.ms and base.ms else "–")
        lines.append(f"| {r.mode} | {_cell(r.peak_mb)} | {_cell(r.rss_mb)} | {_cell(r.ms)} | {ratio} | {speed} | "
                     f"{r.note} |")
    if lam:
        keys = sorted({k for v in lam.values() for k in v})
        lines += ["", "float64, same model, batch and generator seed: max |λ − λ_materialize| and the Gram's "
                  "max |G − G_materialize| / max |G_materialize|", "",
                  "| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for method, v in lam.items():
            lines.append(f"| {method} | " + " | ".join(f"{v[k]:.1e}" if k in v else "–" for k in keys) + " |")
        lines += ["", "hooks: the same G, hence the same λ. representation: λ from the representation's Gram (the "
                  "MGDA-UB approximation), not expected to match. torchjd-autogram: its dG is the engine's accuracy; "
                  "its dλ compares TorchJD's own weightings (MGDA by Frank–Wolfe to ε = 1e-3, its CAGrad scale) with "
                  "fastmtl's, so only UPGrad, defined alike, matches."]
    if slg:
        lines += ["", f"SLGrad on B4 (K = {int(slg['K'])}, batch {int(slg['B'])}, scale 'convex'): hooks "
                  "(`fastmtl.training.slgrad_backward`) vs the forward-mode JVP (`fastmtl.training.slgrad_step`)", "",
                  "| max abs diff of W (float64) | max W | max abs diff of ⟨∇ℓ, v⟩ | max abs diff of .grad | "
                  "JVP ms / step | hooks ms / step | × faster |", "|---|---|---|---|---|---|---|",
                  f"| {slg['max |dW|']:.1e} | {slg['max |W|']:.3g} | {slg['max |d dots|']:.1e} | "
                  f"{slg['max |d grad|']:.1e} | {slg['jvp ms']:.1f} | {slg['hooks ms']:.1f} | "
                  f"{slg['jvp ms'] / slg['hooks ms']:.2f} |"]
    return "\n".join(lines) + "\n"


def _cell(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.1f}"


def write_csv(rows: List[MemoryRow], path: str) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["mode", "method", "peak_mib_probe", "peak_mib_rss", "ms_per_step", "note"])
        for r in rows:
            w.writerow([r.mode, r.method, r.peak_mb, r.rss_mb, r.ms, r.note])


def plot(rows: List[MemoryRow], path: str, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    done = [r for r in rows if r.ms is not None]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = [r.mode for r in done]
    for ax, values, label in ((axes[0], [r.peak_mb for r in done], "peak MiB (probe)"),
                              (axes[1], [r.ms for r in done], "ms / step")):
        bars = ax.bar(range(len(done)), values, color=["#888888" if n == "materialize" else "#3b75af" for n in names])
        ax.set_xticks(range(len(done)))
        ax.set_xticklabels(names, rotation=20, ha="right")
        ax.set_ylabel(label)
        ax.bar_label(bars, fmt="%.1f")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(args) -> None:
    """The ``memory`` command (arguments from ``python -m fastmtl.bench memory``)."""
    import datetime

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config(depth=args.depth, width=args.width, K=args.K, batch=args.batch, device=args.device)
    day = datetime.datetime.now(datetime.timezone.utc)
    rev = commit()
    where = (torch.cuda.get_device_name(torch.device(cfg.device)) if cfg.device.startswith("cuda")
             else f"{os.cpu_count()}-core CPU, {torch.get_num_threads()} torch threads")
    if hasattr(os, "getloadavg"):  # a shared machine's load at the start bears on the times
        where += f", load average {os.getloadavg()[0]:.1f} at the start"
    cmd = "python -m fastmtl.bench " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    title = (f"# One training step: MLP trunk {cfg.depth} × {cfg.width}, K = {cfg.K} heads, batch {cfg.batch}, "
             f"float32, method {args.method}\n\n{where}; torch {torch.__version__}; {day:%Y-%m-%d %H:%M} UTC; "
             f"commit {rev}; `{cmd}`")
    print(title, flush=True)
    rows = measure(cfg, args.method, reps=args.reps, rss=args.rss)
    lam = lambda_agreement(cfg) if args.lambda_check else {}
    slg = None
    if args.slgrad:
        from .memory_slgrad import slgrad_b4
        slg = slgrad_b4(reps=args.reps * 6)
    report = format_report(title, rows, lam, slg)
    print(report)
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)
        stem = os.path.join(args.out_dir, f"{machine_slug(cfg.device)}_{day:%Y-%m-%d}_{rev}_memory")
        with open(stem + ".md", "w") as f:
            f.write(report)
        write_csv(rows, stem + ".csv")
        wrote = [stem + ".md", stem + ".csv"]
        if plot(rows, stem + ".png", title.splitlines()[0].lstrip("# ") + f"\n{where}, {day:%Y-%m-%d}"):
            wrote.append(stem + ".png")
        print("wrote " + ", ".join(wrote))


def add_arguments(p) -> None:
    """The ``memory`` sub-command's options."""
    import argparse

    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--K", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--method", default="upgrad", help="the method of the timed steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reps", type=int, default=5, help="timed steps per mode (interleaved)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--rss", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure the RSS high-water mark of one step in a subprocess per mode (CPU)")
    p.add_argument("--lambda-check", action=argparse.BooleanOptionalAction, default=True,
                   help="float64 λ agreement for mgda, upgrad, cagrad, pcgrad")
    p.add_argument("--slgrad", action=argparse.BooleanOptionalAction, default=True,
                   help="SLGrad on B4: hooks vs the forward-mode JVP")
    p.add_argument("--out-dir", default="bench_out", help="where the .md/.csv/.png go ('' for none)")
    p.set_defaults(argv=None)
