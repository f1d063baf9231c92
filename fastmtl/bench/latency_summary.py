"""The README's summary of a latency-preset run (``python -m fastmtl.bench.latency_summary CSV``).

From the ``latency.csv`` that ``python -m fastmtl.bench speed --preset latency`` writes: the K = 8
flat-layout table, the 200-tensor ÷ flat table, and where the run stands against the preset's CPU
targets (every method faster than TorchJD at every K and D; every Gram method ≤ 1.5× the floor at
D = 1e5 and ≤ 1.15× at D = 1e6; one solve ≤ 50 µs at K = 8; the 200-tensor layout within 1.2× of
the flat one). Every number is read from the CSV, so the README's tables can be regenerated.
"""

from __future__ import annotations

import csv
import statistics
import sys
from typing import Dict, List, Optional

DS = (10_000, 100_000, 1_000_000)


def read_rows(path: str) -> List[dict]:
    """The CSV's rows with numbers parsed (empty cells become ``None``)."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for key, value in raw.items():
                if key in ("layout", "method", "backend"):
                    row[key] = value
                elif value in ("", None):
                    row[key] = None
                else:
                    row[key] = int(value) if key in ("K", "D") else float(value)
            rows.append(row)
    return rows


def _d(D: int) -> str:
    return f"{D:.0e}".replace("e+0", "e").replace("e+", "e")


def _f(x: Optional[float], spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _index(rows: List[dict]) -> Dict[tuple, dict]:
    return {(r["K"], r["D"], r["layout"], r["method"]): r for r in rows}


def methods_in(rows: List[dict]) -> List[str]:
    seen: List[str] = []
    for r in rows:
        if r["method"] not in seen:
            seen.append(r["method"])
    return seen


def flat_table(rows: List[dict], K: int = 8) -> str:
    """Per method: solve µs, then per D ``ms · ×floor · ×TorchJD`` (flat ``[K, D]`` layout)."""
    at = _index(rows)
    lines = ["| method | solve µs | D = 1e4: ms · ×floor · ×TorchJD | D = 1e5 | D = 1e6 |", "|---|---|---|---|---|"]
    for m in methods_in(rows):
        cells = []
        solve = None
        for D in DS:
            r = at.get((K, D, "matrix", m))
            if r is None:
                cells.append("—")
                continue
            solve = r["solve_us"] if solve is None else solve
            cells.append(f"{r['ms']:.3f} · {r['ratio_floor']:.2f} · {_f(r['speedup_vs_torchjd'], '.2f')}")
        lines.append(f"| `{m}` | {_f(solve, '.0f')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layout_table(rows: List[dict], K: int = 8) -> str:
    """Per method and D: 200-tensor time ÷ flat time, and the 200-tensor call's speed-up over TorchJD
    run as its users run it on per-parameter gradients (``TorchJD+cat``)."""
    at = _index(rows)
    lines = ["| method | D = 1e4: 200 tensors ÷ flat · ×TorchJD+cat | D = 1e5 | D = 1e6 |", "|---|---|---|---|"]
    for m in methods_in(rows):
        cells = []
        for D in DS:
            p, f = at.get((K, D, "params", m)), at.get((K, D, "matrix", m))
            if p is None or f is None:
                cells.append("—")
                continue
            cells.append(f"{p['ms'] / f['ms']:.2f} · {_f(p.get('speedup_vs_torchjd_cat'), '.2f')}")
        lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(rows: List[dict]) -> str:
    """Where the run stands against each CPU target, as counts and the cells that miss."""
    out = []
    jd = [r for r in rows if r["speedup_vs_torchjd"] is not None]
    slower = [r for r in jd if r["speedup_vs_torchjd"] < 1]
    out.append(f"- TorchJD (on the prepared matrix) is faster in {len(slower)} of {len(jd)} cells: "
               + ", ".join(f"{layout} {n}" for layout, n in _count(slower, "layout").items()) + ".")
    for layout in ("matrix", "params"):
        names = _count([r for r in slower if r["layout"] == layout], "method")
        if names:
            out.append(f"  - {layout}: " + ", ".join(f"`{m}` {n}" for m, n in names.items()) + ".")
    cat = [r for r in rows if r.get("speedup_vs_torchjd_cat") is not None]
    if cat:
        cat_slower = [r for r in cat if r["speedup_vs_torchjd_cat"] < 1]
        out.append(f"- 200-tensor layout against TorchJD with its users' `torch.cat`: TorchJD faster in "
                   f"{len(cat_slower)} of {len(cat)} cells"
                   + (": " + ", ".join(f"`{m}` {n}" for m, n in _count(cat_slower, "method").items()) if cat_slower
                      else "") + ".")
    for D, limit in ((100_000, 1.5), (1_000_000, 1.15)):
        gram = [r for r in rows if r["D"] == D and r["layout"] == "matrix" and r["solve_us"] is not None]
        over = [r for r in gram if r["ratio_floor"] > limit]
        worst = max((r["ratio_floor"] for r in gram), default=float("nan"))
        out.append(f"- Gram methods, flat layout, D = {_d(D)}: {len(gram) - len(over)} of {len(gram)} cells ≤ "
                   f"{limit}× the floor (largest {worst:.2f}×)"
                   + (": over in " + ", ".join(f"`{m}` {n}" for m, n in _count(over, "method").items()) if over
                      else "") + ".")
    solves = {r["method"]: r["solve_us"] for r in rows if r["K"] == 8 and r["layout"] == "matrix"
              and r["solve_us"] is not None and r["D"] == DS[0]}
    over = {m: s for m, s in solves.items() if s > 50}
    out.append(f"- One solve at K = 8 ≤ 50 µs: {len(solves) - len(over)} of {len(solves)} methods"
               + ("; over: " + ", ".join(f"`{m}` {s:.0f} µs" for m, s in over.items()) if over else "") + ".")
    at = _index(rows)
    for D in DS:
        ratios = [at[(K, D, "params", m)]["ms"] / at[(K, D, "matrix", m)]["ms"]
                  for (K, DD, layout, m) in at if DD == D and layout == "params" and (K, D, "matrix", m) in at]
        if ratios:
            out.append(f"- 200 tensors ÷ flat at D = {_d(D)}: median {statistics.median(ratios):.2f}×, "
                       f"{sum(r <= 1.2 for r in ratios)} of {len(ratios)} cells ≤ 1.2×.")
    return "\n".join(out)


def _count(rows: List[dict], key: str) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for r in rows:
        counts[r[key]] = counts.get(r[key], 0) + 1
    return counts


def main(argv: Optional[List[str]] = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m fastmtl.bench.latency_summary LATENCY_CSV")
    rows = read_rows(args[0])
    print(flat_table(rows), layout_table(rows), targets(rows), sep="\n\n")


if __name__ == "__main__":
    main()
