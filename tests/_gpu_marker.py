"""pytest plugin: ``@pytest.mark.gpu`` marks exactly the tests that skip without a CUDA device.

``pytest -m gpu`` is the GPU part of the suite (``tools/device_check.sh`` runs it on a lent GPU),
so the marker must be right in both directions:

* a ``gpu`` test is skipped when no CUDA device is visible (added here, whatever its own skip
  conditions say);
* without a CUDA device, a test that skips with a reason that names a CUDA device (or the cuda
  backend being unavailable) but lacks the marker fails, naming the missing marker. Reasons that
  mention the Triton interpreter (a test that also runs without a GPU when the interpreter is on)
  or the CUDA toolkit (torch not a CUDA build, nvcc missing) do not need a device and are left
  alone.

Registered by ``tests/conftest.py``. ``FASTMTL_ASSUME_NO_CUDA=1`` makes it act as if no device
were visible (used by its own test).
"""

from __future__ import annotations

import os
import re

import pytest

NEEDS_DEVICE = re.compile(r"cuda device|gpu|cuda backend unavailable|cuda is not available|no cuda", re.I)
NOT_A_DEVICE = re.compile(r"TRITON_INTERPRET|interpreter|not a CUDA build|nvcc|toolchain", re.I)


def cuda_visible() -> bool:
    if os.environ.get("FASTMTL_ASSUME_NO_CUDA") == "1":
        return False
    import torch

    return torch.cuda.is_available()


def reason_needs_device(reason: str) -> bool:
    """True when a skip reason says the test needs a CUDA device."""
    return bool(NEEDS_DEVICE.search(reason)) and not NOT_A_DEVICE.search(reason)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


class GpuMarkerPlugin:
    def __init__(self):
        self.cuda = cuda_visible()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config, items):
        if self.cuda:
            return
        skip = pytest.mark.skip(reason="marked gpu: needs a CUDA device (none visible)")
        for item in items:
            if item.get_closest_marker("gpu") is not None:
                item.add_marker(skip)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if self.cuda or not report.skipped or item.get_closest_marker("gpu") is not None:
            return
        if hasattr(report, "wasxfail"):
            return
        reason = _skip_reason(report)
        if reason_needs_device(reason):
            report.outcome = "failed"
            report.longrepr = (f"{item.nodeid} skips without a CUDA device ({reason!r}) but is not marked "
                               f"@pytest.mark.gpu, so `pytest -m gpu` would leave it out")
