# --- Triton: interpreter mode when there is no GPU -------------------------------------------------
# Triton chooses between its compiler and its interpreter when a kernel is decorated, so
# TRITON_INTERPRET must be set before any module defining @triton.jit kernels is imported (test
# modules import fastmtl.triton at collection time, after this file). Without a CUDA device the
# Triton kernels then run in the interpreter on CPU tensors. An explicit TRITON_INTERPRET wins.
import os as _os

import torch as _torch

if not _torch.cuda.is_available():
    _os.environ.setdefault("TRITON_INTERPRET", "1")
# --- end Triton ------------------------------------------------------------------------------------


# --- the gpu marker: exactly the tests that skip without a CUDA device (see _gpu_marker.py) --------
def pytest_configure(config):
    from _gpu_marker import GpuMarkerPlugin

    config.pluginmanager.register(GpuMarkerPlugin(), "fastmtl-gpu-marker")
# --- end gpu marker --------------------------------------------------------------------------------


# --- one intra-op thread for modules of many tiny K×K solves ---------------------------------------
# Intra-op threads only add synchronisation to them, which on a loaded 2-core machine costs more than
# the arithmetic. A module opts in with pytest.mark.usefixtures("one_intra_op_thread").
import pytest as _pytest  # noqa: E402


@_pytest.fixture(scope="module")
def one_intra_op_thread():
    threads = _torch.get_num_threads()
    _torch.set_num_threads(1)
    yield
    _torch.set_num_threads(threads)
# --- end one thread --------------------------------------------------------------------------------
