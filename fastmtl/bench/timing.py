"""Timing that is honest on CPU and GPU: warm-up, then the median of repeated runs.

On CPU each run is timed by the host clock. On CUDA each run is bracketed by a pair of CUDA events
recorded on the current stream, so launch latency of the host code is counted only where the device
waits for it, and module loading, compilation and handle creation fall into the warm-up. A function
that synchronises inside (a host-side branch on a device value) still shows its idle gaps, because
they lie between its two events.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

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
    if device.type == "cuda":
        return _median_event_time(fn, device, reps, max_seconds)
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


def _median_event_time(fn: Callable[[], object], device: torch.device, reps: int, max_seconds: float) -> float:
    """Median seconds between CUDA events around each of ``reps`` runs (fewer if slow)."""
    times = []
    budget_start = time.perf_counter()
    with torch.cuda.device(device):
        for _ in range(reps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            # Hazard: reading elapsed_time before the end event completed raises; synchronise on it.
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
            if time.perf_counter() - budget_start > max_seconds and len(times) >= 3:
                break
    return statistics.median(times)


def copy_bandwidth(device: torch.device | str = "cpu", numel: Optional[int] = None) -> float:
    """Measured bytes/s of ``dst.copy_(src)`` (read + write) on ``device``: the practical ceiling.

    The default size is 128 MiB per buffer on CPU and 1 GiB on CUDA, many times a GPU's L2, so the
    copy measures device memory, not the cache.
    """
    device = torch.device(device)
    if numel is None:
        numel = 1 << 28 if device.type == "cuda" else 1 << 25
    src = torch.empty(numel, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = median_time(lambda: dst.copy_(src), device, warmup=2, reps=7)
    return 2 * numel * 4 / t
