import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


def pytest_terminal_summary(terminalreporter):
    """Print combine vs the floor and TorchJD, all measured in this run."""
    mod = sys.modules.get("test_bench_combine")
    if mod is None or "_floor" not in mod.RESULTS:
        return
    floor = mod.RESULTS["_floor"]
    tr = terminalreporter
    tr.write_line(f"combine vs two-pass floor and TorchJD: K={mod.K}, D={mod.D:.0e}, {mod.DEVICE}, "
                  f"floor {floor * 1e3:.2f} ms")
    tr.write_line("| method | fastmtl ms | ×floor (interleaved pairs) | TorchJD ms | fastmtl speed-up |")
    tr.write_line("|---|---|---|---|---|")
    for m in mod.METHODS:
        r = mod.RESULTS.get(m, {})
        if "fastmtl" not in r:
            continue
        jd = r.get("torchjd")
        ours = r["fastmtl"]
        jd_ms = "–" if jd is None else f"{jd * 1e3:.2f}"
        speedup = "–" if jd is None else f"{jd / ours:.1f}×"
        pair_floor = r.get("floor", floor)
        tr.write_line(f"| {m} | {ours * 1e3:.2f} | {ours / pair_floor:.2f} | {jd_ms} | {speedup} |")
