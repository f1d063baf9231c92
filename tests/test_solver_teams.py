"""The solvers' split over the threads of a CUDA block, checked without a GPU.

tests/solver_team_check.cpp runs the header-only solver templates of csrc/solvers/ the way the
kernels do (a block of threads cut into sub-teams, with barriers standing for __syncthreads and
__syncwarp), on host threads, and requires every result to be bitwise equal to the one-thread host
solve; under ThreadSanitizer it also reports any missing barrier as a data race.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "tests", "solver_team_check.cpp")
CXX = os.environ.get("CXX", "g++").split()[0]


def _build(tmp_path, *flags):
    if shutil.which(CXX) is None:
        pytest.skip(f"no C++ compiler ({CXX}) on PATH: toolchain missing")
    exe = str(tmp_path / "solver_team_check")
    cmd = [CXX, "-std=c++20", "-O1", "-g", "-pthread", *flags, "-I", os.path.join(ROOT, "csrc"), SOURCE, "-o", exe]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0 and flags:
        pytest.skip(f"the toolchain cannot build with {' '.join(flags)}: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr
    return exe


def _run(exe, threads, sub, env=None):
    res = subprocess.run([exe, str(threads), str(sub)], capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1].startswith("OK"), res.stdout + res.stderr
    return res


def test_block_split_is_bitwise_equal_to_the_host_solve(tmp_path):
    exe = _build(tmp_path)
    for threads, sub in ((4, 2), (3, 1)):
        _run(exe, threads, sub)


@pytest.mark.slow
def test_block_split_has_no_data_race(tmp_path):
    exe = _build(tmp_path, "-fsanitize=thread")
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1 exitcode=66")
    res = _run(exe, 4, 2, env=env)
    assert "ThreadSanitizer" not in res.stderr, res.stderr[-2000:]
