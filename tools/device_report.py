"""Reports for ``tools/device_check.sh``: environment, test summaries, the sweep's table and plot.

Subcommands (run from the repository root with the Python that holds torch):

* ``env``: versions (Python, torch, CUDA, Triton, fastmtl's build), the device, which optional
  packages are importable, the commit;
* ``finish OUT_DIR``: appends the JUnit results of every ``tests_*.xml`` to ``summary.txt``,
  rewrites ``sweep.md`` / ``sweep.png`` from ``sweep.csv`` when the sweep was cut short, and prints
  the summary and the headline table last (the part of a log that a truncated reply still shows);
* ``collect OUT_DIR [--dest benchmarks/results]``: copies the results of a device run into the
  results folder as ``<device>_<date>_<commit>_sweep.csv`` etc. (see ``benchmarks/results/README.md``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:  # run as a script: the repository's fastmtl, not an installed one
    sys.path.insert(0, ROOT)

OPTIONAL = ("torchjd", "pytest_timeout", "pytest_benchmark", "hypothesis", "matplotlib", "scipy", "quadprog",
            "cvxpy", "ecos")


def commit() -> str:
    """Short commit of the tree: ``FASTMTL_COMMIT``, else git (``+dirty`` with local changes)."""
    if os.environ.get("FASTMTL_COMMIT"):
        return os.environ["FASTMTL_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except Exception:  # the device machine's copy of the tree has no .git
        return "unknown"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU"


def result_stem(device: str, day: str, rev: str) -> str:
    """``nvidia-h200_2026-12-04_8dd6e04``: device slug, UTC date, commit."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"
    return f"{slug}_{day}_{re.sub(r'[^A-Za-z0-9+]+', '-', rev)}"


def cmd_env(_args) -> int:
    import torch

    print(f"python {platform.python_version()} ({sys.executable})")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    try:
        import triton
        print(f"triton {triton.__version__}")
    except Exception as exc:
        print(f"triton not importable: {exc!r}")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print(f"device {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
              f"{p.total_memory / 2**30:.0f} GiB, L2 {getattr(p, 'L2_cache_size', 0) / 2**20:.0f} MiB")
    else:
        print("device: no CUDA device visible")
    for name in OPTIONAL:
        try:
            mod = importlib.import_module(name)
            print(f"  {name}: {getattr(mod, '__version__', 'installed')}")
        except Exception as exc:
            print(f"  {name}: missing ({type(exc).__name__}); stages that need it are skipped or reduced")
    print(f"commit {commit()}; UTC {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}")
    return 0


def junit_summary(path: str) -> str:
    """Counts and the names (with the first message line) of failed and errored tests."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        return f"{os.path.basename(path)}: unreadable ({exc})"
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    t = sum(float(s.get("time", 0)) for s in suites)
    lines = [f"{os.path.basename(path)}: {n['tests']} tests, {n['failures']} failed, {n['errors']} errors, "
             f"{n['skipped']} skipped, {n['tests'] - n['failures'] - n['errors'] - n['skipped']} passed, {t:.0f} s"]
    for case in root.iter("testcase"):
        for kind in ("failure", "error"):
            el = case.find(kind)
            if el is not None:
                msg = (el.get("message") or "").splitlines()
                lines.append(f"  {kind.upper()} {case.get('classname')}::{case.get('name')}: "
                             f"{msg[0][:200] if msg else ''}")
    return "\n".join(lines)


def cmd_finish(args) -> int:
    from fastmtl.bench import speed

    out = args.out_dir
    summary = os.path.join(out, "summary.txt")
    parts = []
    for name in sorted(os.listdir(out)):
        if name.startswith("tests_") and name.endswith(".xml"):
            parts.append(junit_summary(os.path.join(out, name)))
    csv_path = os.path.join(out, "sweep.csv")
    rows = []
    if os.path.exists(csv_path):
        rows = speed.read_csv(csv_path)
        md = os.path.join(out, "sweep.md")
        # A sweep killed at its deadline leaves the CSV only: make the table and plot from it.
        if not os.path.exists(md) or os.path.getmtime(md) < os.path.getmtime(csv_path):
            speed.write_report(rows, csv_path, f"combine on {args.device or 'the device'} (from the CSV of a "
                                               f"sweep that did not finish)")
        parts.append(f"sweep: {len(rows)} rows in sweep.csv")
    else:
        parts.append("sweep: no sweep.csv")
    stem = result_stem(args.device or device_name(), f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}",
                       commit())
    parts.append(f"result name: {stem}  (python3 tools/device_report.py collect {out})")
    with open(summary, "a") as fh:
        fh.write("\n".join(parts) + "\n")
    print("\n" + open(summary).read())
    if rows:
        print(speed.format_floor_summary([r for r in rows if r.dtype == "float32" and r.layout == "matrix"]
                                         or rows))
    return 0


def cmd_collect(args) -> int:
    src, dest = args.out_dir, args.dest
    stem = args.name
    if stem is None:
        with open(os.path.join(src, "summary.txt")) as fh:
            found = re.findall(r"^result name: (\S+)", fh.read(), flags=re.M)
        if not found:
            print("summary.txt names no result; pass --name", file=sys.stderr)
            return 2
        stem = found[-1]
    os.makedirs(dest, exist_ok=True)
    copies = {"sweep.csv": "_sweep.csv", "sweep.md": "_sweep.md", "sweep.png": "_sweep.png",
              "summary.txt": "_summary.txt", "device_check.log": "_device_check.log"}
    for name, suffix in copies.items():
        path = os.path.join(src, name)
        if os.path.exists(path):
            shutil.copyfile(path, os.path.join(dest, stem + suffix))
            print(f"{path} -> {os.path.join(dest, stem + suffix)}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env").set_defaults(fn=cmd_env)
    p = sub.add_parser("finish")
    p.add_argument("out_dir")
    p.add_argument("--device", default=None, help="device name for the result's file name (default: detected)")
    p.set_defaults(fn=cmd_finish)
    p = sub.add_parser("collect")
    p.add_argument("out_dir")
    p.add_argument("--dest", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--name", default=None, help="file stem (default: the summary's result name)")
    p.set_defaults(fn=cmd_collect)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
