"""``python -m fastmtl.info``: which backends can run here, and why the others cannot.

Prints the versions (fastmtl, torch, CUDA, Triton), the visible devices, which parts of the compiled
extension ``fastmtl._C`` ``setup.py`` built (the CPU part: solvers and CPU multi-tensor kernels; the
CUDA part: GPU kernels) or why it skipped them, whether they loaded, and every registered backend
with its availability. :func:`collect` returns the same information as a dict.
"""

from __future__ import annotations

import platform
import sys
from typing import Any, Dict, List


def _triton_version() -> str:
    try:
        import triton
    except Exception as exc:  # missing, or broken by a mismatched install
        return f"not importable ({type(exc).__name__}: {exc})"
    return getattr(triton, "__version__", "unknown")


def _devices(torch) -> List[str]:
    try:
        if not torch.cuda.is_available():
            return []
        out = []
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            out.append(f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{major}{minor})")
        return out
    except Exception as exc:
        return [f"error while querying CUDA devices: {type(exc).__name__}: {exc}"]


def collect() -> Dict[str, Any]:
    """Versions, devices, build information and backend availability."""
    import torch

    import fastmtl
    from fastmtl import cuda as fcuda
    from fastmtl.ops import backends
    from fastmtl.solvers import compiled

    rows = []
    for b in backends():
        why = b.unavailable_reason()
        rows.append({
            "name": b.name,
            "priority": b.priority,
            "available": why is None,
            "reason": why,
            "devices": list(b.devices),
            "dtypes": [str(d).replace("torch.", "") for d in b.dtypes],
            "deterministic": b.deterministic,
            "primitives": b.primitives,
        })
    return {
        "fastmtl": fastmtl.__version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _triton_version(),
        "devices": _devices(torch),
        "build": fcuda.build_info(),
        "extension_loaded": fcuda.extension_loaded(),
        "extension_error": fcuda.load_error(),
        "parts_loaded": {"cpu": compiled.unavailable_reason("cpu") is None, "cuda": fcuda.cuda_part_loaded()},
        "backends": rows,
    }


def format_report(info: Dict[str, Any]) -> str:
    lines = [
        f"fastmtl {info['fastmtl']}",
        f"python  {info['python']}",
        f"torch   {info['torch']} (CUDA {info['torch_cuda'] or 'none: CPU build'})",
        f"triton  {info['triton']}",
        "devices " + ("; ".join(info["devices"]) if info["devices"] else "no CUDA device"),
        "",
        "compiled extension fastmtl._C:",
    ]
    build = info["build"]
    loaded = info.get("parts_loaded", {})
    if not build:
        lines.append("  no build information (fastmtl/_build_info.py is missing: setup.py has not run here)")
    else:
        # Builds before the CPU part existed recorded the CUDA extension only.
        cpu_built = build.get("CPU_EXTENSION_BUILT", build.get("CUDA_EXTENSION_BUILT"))
        cuda_built = build.get("CUDA_EXTENSION_BUILT")
        lines.append("  CPU part (K×K solvers, CPU multi-tensor kernels):")
        lines.append(f"    built:    {'yes' if cpu_built else 'no'}"
                     + ("" if cpu_built else f" ({build.get('CPU_SKIP_REASON') or build.get('SKIP_REASON') or 'no reason recorded'})"))
        lines.append(f"    loaded:   {'yes' if loaded.get('cpu') else 'no'}")
        lines.append("  CUDA extension fastmtl._C, CUDA part (Gram / weighted-sum kernels, device solvers):")
        lines.append(f"    built:    {'yes' if cuda_built else 'no'}"
                     + ("" if cuda_built else f" ({build.get('SKIP_REASON') or 'no reason recorded'})"))
        lines.append(f"    loaded:   {'yes' if loaded.get('cuda') else 'no'}")
        for key, label in (("TORCH_VERSION", "torch"), ("CUDA_VERSION", "CUDA"), ("ARCH_LIST", "archs"),
                           ("NVCC", "nvcc")):
            if build.get(key):
                lines.append(f"  {label + ':':<11} {build[key]}")
    lines.append(f"  loaded:     {'yes' if info['extension_loaded'] else 'no'}"
                 + (f" ({info['extension_error']})" if info["extension_error"] else ""))
    lines.append("")
    lines.append("backends (automatic selection picks the first available one that supports the inputs):")
    for b in info["backends"]:
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        lines.append(f"  {b['name']:<10} priority {b['priority']:>3}  {state}")
        lines.append(f"  {'':<10} devices {','.join(b['devices'])}; dtypes {','.join(b['dtypes'])}; "
                     f"deterministic {'yes' if b['deterministic'] else 'no'}; "
                     f"primitives {','.join(b['primitives']) or 'none'}")
    return "\n".join(lines)


def main() -> int:
    print(format_report(collect()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
