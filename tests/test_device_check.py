"""``tools/device_check.sh --dry-run`` writes well-formed outputs, and the ``gpu`` marker rule holds.

The dry run is the GPU check's every stage on CPU at tiny sizes (or reported as skipped), so the
script cannot rot between the rare runs on a lent GPU. About 25 s on 2 CPU cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

from _gpu_marker import reason_needs_device

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def _env(**extra):
    env = dict(os.environ)
    # The dry run must behave as when started from a shell: no Triton interpreter from this conftest.
    env.pop("TRITON_INTERPRET", None)
    env.update(PYTHON=sys.executable, **extra)
    return env


@pytest.mark.slow
def test_dry_run_writes_well_formed_outputs(tmp_path):
    out = tmp_path / "device"
    proc = subprocess.run(["bash", os.path.join(ROOT, "tools", "device_check.sh"), "--dry-run"], cwd=ROOT,
                          env=_env(OUT=str(out)), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    files = sorted(os.listdir(out))
    assert len(files) <= 8, files  # what the device tool brings back
    for name in ("device_check.log", "summary.txt", "tests_gpu.xml", "sweep.csv", "sweep.md"):
        assert (out / name).stat().st_size > 0, (name, files)

    log = (out / "device_check.log").read_text()
    assert "===== env" in log and "===== sweep" in log and "device check done" in log
    assert log.strip() in proc.stdout.strip() or proc.stdout.strip() in log.strip()

    summary = (out / "summary.txt").read_text()
    stages = {line.split("|")[0].strip(): line.split("|")[1].strip() for line in summary.splitlines()
              if line.count("|") >= 3}
    assert stages["env"] == "ok" and stages["gpu-tests"] == "ok" and stages["sweep"] == "ok", summary
    assert stages["build"].startswith("skipped") and stages["triton-tests"].startswith("skipped"), summary
    assert "result name: " in summary

    # Without CUDA every test of `pytest -m gpu` is collected and skipped, none fails.
    suite = ET.parse(out / "tests_gpu.xml").getroot()
    suite = suite if suite.tag == "testsuite" else next(suite.iter("testsuite"))
    assert int(suite.get("tests")) > 0
    assert int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    assert int(suite.get("skipped")) == int(suite.get("tests"))

    from fastmtl.bench import speed

    preset = speed.PRESETS["quick-dry"]
    rows = speed.read_csv(str(out / "sweep.csv"))
    got = {(r.method, r.dtype, r.layout, r.K) for r in rows if r.backend == "reference"}
    want = {(m, d, lay, K) for m in preset.methods for d in preset.dtypes for lay in preset.layouts
            for K in preset.Ks}
    assert got == want
    for r in rows:
        assert r.ms > 0 and r.floor_ms > 0 and r.gbps > 0 and r.copy_gbps > 0
        assert abs(r.pct_copy_bw - 100 * r.gbps / r.copy_gbps) < 1e-6 * max(1.0, r.pct_copy_bw)
        if r.backend != "reference":
            assert r.speedup_vs_reference is not None and r.rel_err_vs_reference is not None
            if r.dtype == "float32":
                assert r.rel_err_vs_reference < 1e-4, r
    md = (out / "sweep.md").read_text()
    assert "fraction of HBM floor" in md and "×faster than TorchJD" in md
    for m in preset.methods:
        assert f"| {m} |" in md
    if (out / "sweep.png").exists():
        assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_device_reasons():
    assert reason_needs_device("needs a CUDA device")
    assert reason_needs_device("cuda backend unavailable: no CUDA device is available")
    assert not reason_needs_device("Triton kernels need a CUDA device or TRITON_INTERPRET=1")
    assert not reason_needs_device("torch 2.4.0+cpu is not a CUDA build")
    assert not reason_needs_device("TorchJD (bench extra) not installed")


def test_unmarked_cuda_skip_fails_and_marked_test_skips(tmp_path):
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        from _gpu_marker import GpuMarkerPlugin

        def pytest_configure(config):
            config.addinivalue_line("markers", "gpu: needs a CUDA device")
            config.pluginmanager.register(GpuMarkerPlugin(), "fastmtl-gpu-marker")
    """))
    (tmp_path / "test_cases.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.skipif(True, reason="needs a CUDA device")
        def test_unmarked_skipif():
            pass

        def test_unmarked_runtime_skip():
            pytest.skip("cuda backend unavailable: no CUDA device is available")

        @pytest.mark.gpu
        def test_marked_runs_only_with_cuda():
            raise AssertionError("must be skipped without CUDA")

        def test_interpreter_skip_is_not_a_device_skip():
            pytest.skip("Triton kernels need a CUDA device or TRITON_INTERPRET=1")
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
                          cwd=tmp_path, env=_env(FASTMTL_ASSUME_NO_CUDA="1"), capture_output=True, text=True,
                          timeout=120)
    # A skip in the setup phase (skipif) turned into a failure is reported as an error.
    tail = proc.stdout.strip().splitlines()[-1]
    assert "1 failed" in tail and "1 error" in tail and "2 skipped" in tail and "passed" not in tail, proc.stdout
    assert "test_unmarked_skipif skips without a CUDA device" in proc.stdout
    assert "test_unmarked_runtime_skip skips without a CUDA device" in proc.stdout
    assert "not marked @pytest.mark.gpu" in proc.stdout
