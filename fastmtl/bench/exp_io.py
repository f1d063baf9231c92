"""Output helpers of the offline experiments: progress bars, per-seed CSVs, mean ± std, bar charts
with error bars and trajectory plots (rolling mean, band over seeds)."""

from __future__ import annotations

import csv
import math
import os
import sys
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch

#: Where the experiments write their CSVs and PNGs.
OUT_DIR = "bench_out"


def progress(iterable: Iterable, *, total: Optional[int] = None, desc: str = "", enabled: bool = True):
    """``iterable`` wrapped in a progress bar: tqdm when installed, else a one-line counter on
    stderr; nothing when ``enabled`` is false or stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield from iterable
        return
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(iterable, total=total, desc=desc, leave=False)
        return
    for i, item in enumerate(iterable):
        sys.stderr.write(f"\r{desc} {i + 1}/{total if total is not None else '?'}")
        sys.stderr.flush()
        yield item
    sys.stderr.write("\n")


def mean_std(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (``n − 1``; 0 for one value), NaNs dropped."""
    v = [float(x) for x in values if not math.isnan(float(x))]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def write_csv(path: str, rows: Sequence[Mapping[str, object]]) -> str:
    """One row per (method, seed, ...) with the union of the keys as columns."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    cols: List[str] = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:  # noqa: BLE001 - matplotlib missing
        return None
    return plt


def _save(plt, fig, path: str, title: str) -> bool:
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_bars(table: Mapping[str, Mapping[str, Tuple[float, float]]], metrics: Sequence[str], path: str,
              title: str = "") -> bool:
    """``table[row][metric] = (mean, std)``: one bar chart per metric with ±std error bars."""
    plt = _pyplot()
    if plt is None:
        return False
    rows = list(table)
    fig, axes = plt.subplots(1, len(metrics), figsize=(len(metrics) * (0.55 * len(rows) + 1.4), 3.6), squeeze=False)
    for ax, c in zip(axes[0], metrics):
        means = [table[r].get(c, (float("nan"), 0.0))[0] for r in rows]
        stds = [table[r].get(c, (0.0, 0.0))[1] for r in rows]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=3, color="#4c72b0")
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(rows, rotation=30, ha="right", fontsize=8)
        ax.set_title(c, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    return _save(plt, fig, path, title)


def plot_grouped_bars(table: Mapping[str, Mapping[str, Mapping[str, Tuple[float, float]]]], metrics: Sequence[str],
                      path: str, title: str = "") -> bool:
    """``table[group][series][metric] = (mean, std)``: per metric, one cluster of bars per group
    (one bar per series present in it) with ±std error bars."""
    plt = _pyplot()
    if plt is None:
        return False
    groups = list(table)
    series = list(dict.fromkeys(s for g in groups for s in table[g]))
    width = 0.8 / max(1, len(series))
    fig, axes = plt.subplots(1, len(metrics), figsize=(len(metrics) * (0.5 * len(groups) * (1 + 0.15 * len(series)) + 1.5),
                                                        3.8), squeeze=False)
    for ax, c in zip(axes[0], metrics):
        for j, s in enumerate(series):
            xs, ms, sd = [], [], []
            for i, g in enumerate(groups):
                if s in table[g] and c in table[g][s]:
                    xs.append(i + (j - (len(series) - 1) / 2) * width)
                    ms.append(table[g][s][c][0])
                    sd.append(table[g][s][c][1])
            ax.bar(xs, ms, width=width, yerr=sd, capsize=2, label=s)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
        ax.set_title(c, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    return _save(plt, fig, path, title)


def rolling_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Trailing rolling mean along the last axis (the first ``window − 1`` points average what exists)."""
    x = x.to(torch.float64)
    c = torch.cumsum(torch.nn.functional.pad(x, (1, 0)), -1)
    idx = torch.arange(1, x.shape[-1] + 1)
    lo = (idx - window).clamp_min(0)
    return (c[..., idx] - c[..., lo]) / (idx - lo).to(torch.float64)


def plot_trajectories(panels: Mapping[str, Mapping[str, torch.Tensor]], path: str, *, window: int = 1,
                      xlabel: str = "step", ylabel: str = "λ share", title: str = "",
                      vline: Optional[float] = None) -> bool:
    """``panels[panel][curve]`` is a ``[seeds, T]`` tensor: per panel, each curve's rolling mean
    over ``window`` steps averaged over seeds, with a ±std band over seeds."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (pname, curves) in zip(axes[0], panels.items()):
        for label, y in curves.items():
            r = rolling_mean(y, window)
            m = r.mean(0)
            sd = r.std(0) if r.shape[0] > 1 else torch.zeros_like(m)
            t = torch.arange(m.shape[0])
            ax.plot(t.numpy(), m.numpy(), label=label, lw=1.2)
            ax.fill_between(t.numpy(), (m - sd).numpy(), (m + sd).numpy(), alpha=0.2)
        if vline is not None:
            ax.axvline(vline, color="k", ls="--", lw=0.8)
        ax.set_title(pname, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(plt, fig, path, title)


def table_markdown(table: Mapping[str, Mapping[str, Tuple[float, float]]], metrics: Sequence[str],
                   digits: int = 3) -> str:
    """A ``row × metric`` markdown table of ``mean ± std``."""
    lines = ["| | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for r, row in table.items():
        cells = [f"{row[c][0]:.{digits}f} ± {row[c][1]:.{digits}f}" if c in row else "–" for c in metrics]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize_rows(rows: Sequence[Mapping[str, object]], key: str, metrics: Sequence[str]
                   ) -> Dict[str, Dict[str, Tuple[float, float]]]:
    """Group per-seed ``rows`` by ``row[key]`` and reduce each metric to (mean, std)."""
    out: Dict[str, Dict[str, Tuple[float, float]]] = {}
    for name in dict.fromkeys(str(r[key]) for r in rows):
        group = [r for r in rows if str(r[key]) == name]
        out[name] = {m: mean_std([float(r[m]) for r in group if m in r]) for m in metrics
                     if any(m in r for r in group)}
    return out
