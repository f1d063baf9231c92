"""Backend selection: explicit argument, context, environment variable, automatic fallback."""

import os
import subprocess
import sys

import pytest
import torch

import fastmtl
from fastmtl.ops import registry


def test_reference_is_always_available():
    assert "reference" in fastmtl.available_backends()


def test_explicit_and_context_selection():
    J = torch.randn(3, 10)
    _, info = fastmtl.combine(J, method="mean", backend="reference", return_info=True)
    assert info.backend == "reference"
    with fastmtl.use_backend("reference"):
        _, info = fastmtl.combine(J, method="mean", return_info=True)
    assert info.backend == "reference"


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        fastmtl.combine(torch.randn(2, 3), backend="nope")
    with pytest.raises(ValueError, match="unknown backend"):
        with fastmtl.use_backend("nope"):
            pass


def test_explicit_request_that_cannot_run_lists_every_backend():
    fake = registry.Backend(name="gpu_only_test", priority=-1, devices=("cuda",), dtypes=(torch.float32,),
                            deterministic=True, probe=lambda: None,
                            implementations={"gramian": None, "weighted_sum": None})
    registry.register_backend(fake)
    try:
        with pytest.raises(RuntimeError, match=r"gpu_only_test.*cuda tensors, got cpu.*Every backend: .*reference: ok"):
            fastmtl.combine(torch.randn(2, 3), method="mean", backend="gpu_only_test")
        # Automatic selection never picks it for CPU tensors and never fails.
        _, info = fastmtl.combine(torch.randn(2, 3), method="mean", return_info=True)
        assert info.backend != "gpu_only_test"
    finally:
        registry.unregister_backend("gpu_only_test")


def test_deterministic_mode_skips_nondeterministic_backends():
    fast = registry.Backend(name="nondet_test", priority=999, devices=("cpu",), dtypes=(torch.float32,),
                            deterministic=False, probe=lambda: None,
                            implementations={"gramian": lambda tg: 1 / 0, "weighted_sum": lambda *a: 1 / 0})
    registry.register_backend(fast)
    try:
        torch.use_deterministic_algorithms(True)
        _, info = fastmtl.combine(torch.randn(2, 3), method="mean", return_info=True)
        assert info.backend != "nondet_test"
    finally:
        torch.use_deterministic_algorithms(False)
        registry.unregister_backend("nondet_test")


def test_environment_variable_is_honoured():
    code = ("import torch, fastmtl; _, i = fastmtl.combine(torch.randn(2, 3), return_info=True); print(i.backend)\n"
            "try:\n    fastmtl.combine(torch.randn(2, 3), backend=None)\nexcept Exception as e: print('ERR')\n")
    env = dict(os.environ, FASTMTL_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == "reference"
    env = dict(os.environ, FASTMTL_BACKEND="bogus")
    out = subprocess.run([sys.executable, "-c", "import torch, fastmtl; fastmtl.combine(torch.randn(2, 3))"],
                         env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "unknown backend 'bogus'" in out.stderr
