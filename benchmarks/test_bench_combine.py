"""pytest-benchmark suite for ``combine`` on the CPU/GPU at hand.

Run: ``python -m pytest benchmarks --benchmark-only`` (sizes via ``FASTMTL_BENCH_K`` /
``FASTMTL_BENCH_D``, default K=8, D=4e6). Each method is benchmarked beside the two-pass floor
(``G = J Jᵀ`` and ``λᵀJ`` on the same matrix) and, when TorchJD is installed, TorchJD's aggregator
on the same matrix, all in the same run, so the ratios in the report compare like with like.
The ``floor_ratio`` extra-info field is combine's median over the floor's median, from interleaved
(floor, combine) pairs in this process; the terminal summary prints the whole table at the end (see conftest.py).
"""

import os
import statistics
import time

import pytest
import torch

import fastmtl
from fastmtl.bench.peers import torchjd_aggregators
from fastmtl.bench.timing import median_time

K = int(os.environ.get("FASTMTL_BENCH_K", "8"))
D = int(float(os.environ.get("FASTMTL_BENCH_D", "4e6")))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
METHODS = ["mean", "pcgrad", "cagrad", "mgda", "upgrad", "dualproj", "imtl_g", "aligned_mtl"]
RESULTS = {}


@pytest.fixture(scope="module")
def J():
    g = torch.Generator().manual_seed(0)
    J = torch.randn(K, D, generator=g).to(DEVICE)
    J[1::2] -= 0.5 * J[0]
    return J


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.fixture(scope="module")
def floor_seconds(J):
    lam = torch.full((K,), 1.0 / K, device=DEVICE)
    seconds = median_time(lambda: (J @ J.T, lam @ J), DEVICE, reps=9)
    RESULTS["_floor"] = seconds
    return seconds


def test_floor(benchmark, J):
    lam = torch.full((K,), 1.0 / K, device=DEVICE)

    def run():
        out = (J @ J.T, lam @ J)
        _sync()
        return out

    benchmark.pedantic(run, rounds=7, warmup_rounds=2)


@pytest.mark.parametrize("method", METHODS)
def test_combine(benchmark, J, floor_seconds, method):
    gen = torch.Generator().manual_seed(0)

    def run():
        out = fastmtl.combine(J, method=method, generator=gen)
        _sync()
        return out

    benchmark.pedantic(run, rounds=7, warmup_rounds=2)
    # The ratio to the floor is taken from interleaved pairs (floor, combine, floor, combine, ...):
    # on a shared machine bandwidth drifts between tests, and pairing cancels most of that drift.
    lam = torch.full((K,), 1.0 / K, device=DEVICE)
    floor_t, ours_t = [], []
    for _ in range(9):
        t0 = time.perf_counter()
        J @ J.T, lam @ J
        _sync()
        t1 = time.perf_counter()
        run()
        t2 = time.perf_counter()
        floor_t.append(t1 - t0)
        ours_t.append(t2 - t1)
    paired_floor, paired_ours = statistics.median(floor_t), statistics.median(ours_t)
    ratio = paired_ours / paired_floor
    benchmark.extra_info.update(floor_ratio=round(ratio, 3), K=K, D=D, device=DEVICE)
    RESULTS.setdefault(method, {}).update(fastmtl=paired_ours, floor=paired_floor)


@pytest.mark.parametrize("method", METHODS)
def test_torchjd(benchmark, J, method):
    aggs = torchjd_aggregators()
    if method not in aggs:
        pytest.skip("TorchJD (bench extra) not installed or has no such aggregator")
    agg = aggs[method]

    def run():
        out = agg(J)
        _sync()
        return out

    benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    RESULTS.setdefault(method, {})["torchjd"] = benchmark.stats.stats.median
