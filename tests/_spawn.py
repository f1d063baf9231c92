"""Multi-process test runs on gloo: a free port, and a spawn with a wall-clock guard whose ranks
each save ``rank{r}.pt`` under one folder."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(worker, world: int, outdir, guard_s: float) -> tuple[list, list]:
    """Run ``worker(rank, world, port, outdir)`` on ``world`` spawned processes.

    Fails the test if any rank is still running after ``guard_s`` seconds (a hang; the survivors are
    killed). Returns the exit codes and each rank's saved results (``None`` where a rank saved none).
    """
    import torch.multiprocessing as mp

    outdir = str(outdir)
    ctx = mp.start_processes(worker, args=(world, free_port(), outdir), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + guard_s
    for p in ctx.processes:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    alive = [r for r, p in enumerate(ctx.processes) if p.is_alive()]
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
    if alive:
        pytest.fail(f"ranks {alive} of the {world}-process run were still running after {guard_s} s (a hang)")
    paths = [os.path.join(outdir, f"rank{r}.pt") for r in range(world)]
    results = [torch.load(path, weights_only=False) if os.path.exists(path) else None for path in paths]
    return [p.exitcode for p in ctx.processes], results
