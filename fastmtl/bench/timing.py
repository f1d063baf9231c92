"""Wall-clock timing that is honest on CPU and GPU: warm-up, device synchronisation, median."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device: torch.device | str = "cpu", *, warmup: int = 2,
                reps: int = 7, max_seconds: float = 10.0) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after ``warmup`` runs (fewer if slow)."""
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    budget_start = time.perf_counter()
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if time.perf_counter() - budget_start > max_seconds and len(times) >= 3:
            break
    return statistics.median(times)


def copy_bandwidth(device: torch.device | str = "cpu", numel: int = 1 << 25) -> float:
    """Measured bytes/s of ``dst.copy_(src)`` (read + write) on ``device``: the practical ceiling."""
    device = torch.device(device)
    src = torch.empty(numel, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), device, warmup=2, reps=7)
    return 2 * numel * 4 / t
